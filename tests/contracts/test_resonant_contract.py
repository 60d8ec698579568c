"""The Scanner contract against the resonant-galvo scanner on simulated resonant hardware
(the real driver code over the simulated mirror, digitizer and world).

The contract's frames are exactly 1 / frame_rate_hz apart on the device clock. A resonant
scanner's device clock is its line clock: frame times are the sums of the measured line
periods, so they are that regular only for a mirror that does not drift, measured by an
ideal counter - which is what this fixture simulates. The drifting, tick-quantised case is
tested in tests/drivers/test_resonant_scanner.py (device times follow the true line clock
within two counter ticks).
"""

import pytest
from contract_suites import ScannerContract

from drivers.scanning.resonant import ResonantGalvoScanner, ResonantScanSettings
from simulators.resonant import ResonantPhysics, SimulatedResonantHardware
from simulators.world.config import WorldConfig
from simulators.world.world import World

STEADY = ResonantPhysics(heating_k=0.0, amplitude_shift_hz=0.0, counter_timebase_hz=None)


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig(), seed=3)


class TestResonantGalvoScanner(ScannerContract):
    @pytest.fixture
    def device(self, world):
        hw = SimulatedResonantHardware(world, physics=STEADY, seed=1)
        settings = ResonantScanSettings(
            fov_um=(300.0, 150.0), pixels_per_line=128, lines=64, sample_rate_hz=20e6
        )
        return ResonantGalvoScanner(hw.digitizer, hw.io, settings)
