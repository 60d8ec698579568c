"""The FocusDevice contract for the Optotune lens driver, talking bytes to the simulated lens
through serial_for_url("optotune_sim://")."""

import pytest
from contract_suites import FocusContract

import simulators.optotune  # noqa: F401  (registers optotune_sim://)
from analysis.optics import FocalPowerZCalibration, remote_focus_shift
from drivers.optotune import LensMode, OptotuneLens
from simulators.optotune import LensFaults, ManualClock, SimulatedLens


@pytest.fixture
def calibration():
    # a lens conjugate to the back focal plane of a 16x objective, f_t / f_s = 4
    um_per_dpt = remote_focus_shift(1.0, f_objective_mm=12.5, f_scan_mm=50.0, f_tube_mm=200.0)
    return FocalPowerZCalibration.linear(um_per_dpt, (-5.0, 5.0))


@pytest.fixture
def sim():
    return SimulatedLens(clock=ManualClock(), faults=LensFaults(wire_delay=False))


class TestOptotuneLens(FocusContract):
    @pytest.fixture
    def device(self, sim, calibration):
        return OptotuneLens(sim.url, calibration)

    @pytest.fixture
    def travel_um(self, calibration):
        return calibration.z_range_um

    @pytest.fixture
    def sent(self, device):
        return lambda: device.bytes_sent

    def test_the_simulated_lens_follows_the_driver(self, device, sim, calibration):
        with device:
            device.move_to_um(20.0)
            sim.clock.advance(0.1)
            fp = sim.focal_power_dpt_at(sim.clock.now_s())
            assert calibration.z_um(fp) == pytest.approx(20.0, abs=0.1)
        assert sim.mode is LensMode.CURRENT and sim.current_code == 0  # safe: at rest
