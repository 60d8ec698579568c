"""The role contracts for the MEA devices: the real RHX driver code against the simulated RHX
server (loopback, ephemeral ports) wired to a simulated culture."""

import pytest
from contract_suites import DeviceContract, StimulatorContract

from drivers.mea.intan_rhx import RHXClient, RHXStimulatorBackend
from drivers.mea.rhx_spike_source import RHXSpikeSource
from drivers.mea.stimulator import MEAStimulator
from drivers.mea.stimulus import MEAStimulus, Pulse
from simulators.culture import Culture, preset_config
from simulators.rhx_server import RHXSimServer


@pytest.fixture
def server():
    with RHXSimServer(Culture(preset_config("lsa_minimal"), seed=1)) as srv:
        yield srv


@pytest.fixture
def client(server):
    return RHXClient("127.0.0.1", server.command_port, pace=server.pace)


@pytest.fixture
def sent(server):
    """Commands the simulated RHX received (at the wire)."""
    return lambda: server.commands_received


class TestRHXStimulator(StimulatorContract):
    @pytest.fixture
    def device(self, client):
        return MEAStimulator(RHXStimulatorBackend(client, sample_rate_hz=30000, stim_step_ua=1.0))

    @pytest.fixture
    def good_stimulus(self):
        return MEAStimulus.on("A-020", Pulse(10.0, 200.0), n_pulses=3, rate_hz=50.0)

    @pytest.fixture
    def bad_stimuli(self):
        return [
            MEAStimulus.on("A-020", Pulse(300.0, 200.0)),  # over 255 x 1 uA
            MEAStimulus.on("A-020", Pulse(10.0, 200.0, second_phase_ua=3.0)),  # unbalanced
            MEAStimulus.on("D-099", Pulse(10.0, 200.0)),  # no such electrode
            MEAStimulus.on("A-020", Pulse(10.0, 6000.0)),  # phase over 5000 us
            MEAStimulus.on("A-020", Pulse(10.0, 200.0), 500, 50.0),  # over 256 pulses
            MEAStimulus.on("A-020", Pulse(10.0, 100.0), 3, 2000.0),  # over max_rate_hz 1000
        ]


class TestRHXSpikeSource(DeviceContract):
    @pytest.fixture
    def device(self, client):
        return RHXSpikeSource(client, blocks_per_write=1)

    def test_blocks_follow_each_other_on_the_device_clock(self, device):
        with device:
            device.start()
            block = device.new_block()
            firsts = [device.read_block(block).first_sample for _ in range(3)]
            device.stop()
        assert firsts == [0, device.samples_per_block, 2 * device.samples_per_block]
        assert block.index == 2 and block.host_time_s > 0
