"""The role contracts run against the drivers of the simulated rig (real driver code over
the simulated DAQ and world)."""

import pytest
from contract_suites import FocusContract, ScannerContract, StimulatorContract

from drivers.focus.piezo import AnalogPiezo, PiezoCalibration
from drivers.scanning.galvo import GalvoGalvoScanner
from drivers.scanning.galvo_waveforms import GalvoScanSettings
from drivers.stimulation.light import LightStimulator, LightStimulus
from simulators.daq import SimulatedDAQ
from simulators.world.config import WorldConfig
from simulators.world.world import World


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig(), seed=3)


@pytest.fixture
def daq(world):
    return SimulatedDAQ(world)


class TestGalvoScanner(ScannerContract):
    @pytest.fixture
    def device(self, daq):
        settings = GalvoScanSettings(pixels_per_line=64, lines=32, fov_um=(100.0, 50.0))
        return GalvoGalvoScanner(daq, settings)


class TestLightStimulator(StimulatorContract):
    @pytest.fixture
    def device(self, daq):
        return LightStimulator(daq)

    @pytest.fixture
    def sent(self, daq):
        return lambda: len(daq._stim_log)

    @pytest.fixture
    def good_stimulus(self):
        return LightStimulus(
            targets_um=((0.0, 0.0), (20.0, -10.0)),
            power_mw=5.0,
            pulse_ms=5.0,
            n_pulses=3,
            pulse_rate_hz=10.0,
        )

    @pytest.fixture
    def bad_stimuli(self):
        ok = dict(
            targets_um=((0.0, 0.0),), power_mw=5.0, pulse_ms=5.0, n_pulses=3, pulse_rate_hz=10.0
        )
        return [
            LightStimulus(**{**ok, "power_mw": 80.0}),  # over max_power_mw
            LightStimulus(**{**ok, "targets_um": ((400.0, 0.0),)}),  # outside the field
            LightStimulus(**{**ok, "pulse_ms": 60.0}),  # duty cycle 0.6 > 0.5
            LightStimulus(**{**ok, "n_pulses": 1000}),  # over max_pulses
            LightStimulus(**{**ok, "targets_um": ()}),  # no target
            LightStimulus(
                **{**ok, "power_mw": 45.0, "pulse_ms": 50.0, "n_pulses": 10, "pulse_rate_hz": 10.0}
            ),  # 22.5 mJ within 1 s: heating limit
        ]


class TestAnalogPiezo(FocusContract):
    @pytest.fixture
    def device(self, daq):
        return AnalogPiezo(daq, "ao5", PiezoCalibration(min_um=-50.0, max_um=50.0))

    @pytest.fixture
    def travel_um(self):
        return (-50.0, 50.0)

    @pytest.fixture
    def sent(self, daq):
        writes = []
        original = daq.write_static_ao

        def spy(*args, **kw):
            writes.append(args)
            return original(*args, **kw)

        daq.write_static_ao = spy
        return lambda: len(writes)

    def test_the_world_focus_follows_the_piezo(self, device, world):
        with device:
            device.move_to_um(12.0)
            assert world.focus_z_um == pytest.approx(12.0)
        assert world.focus_z_um == pytest.approx(0.0)  # safe state: rest position
