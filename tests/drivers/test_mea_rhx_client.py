"""The RHX client at the wire, against the simulated RHX server on loopback (ephemeral ports):
command replies and typed errors, run modes, upload refused while running, triggers,
refused stimuli and faults (nothing sent), reconnection, and the spike source's data on the
device clock (hardware.md section 4)."""

import socket

import numpy as np
import pytest

from drivers.errors import DeviceNotFound, DeviceStateError, DeviceTimeout, LimitError
from drivers.mea.errors import ConnectionLost, StimulationFailed
from drivers.mea.intan_rhx import RHXClient, RHXStimulatorBackend
from drivers.mea.rhx_protocol import RHXInvalidValue, RHXNotNow, RHXUnknownCommand
from drivers.mea.rhx_spike_source import RHXSpikeSource
from drivers.mea.stimulator import MEAStimulator
from drivers.mea.stimulus import MEAStimulus, Pulse
from simulators.culture import Culture, preset_config
from simulators.rhx_server import RHXSimServer

# lsa_minimal: the input neuron sits on electrode 20, the output on 27
INPUT, OUTPUT = "A-020", "A-027"
SAMPLES_PER_MS = 30


@pytest.fixture
def server():
    with RHXSimServer(Culture(preset_config("lsa_minimal"), seed=1)) as srv:
        yield srv


@pytest.fixture
def client(server):
    c = RHXClient("127.0.0.1", server.command_port, pace=server.pace)
    yield c
    c.close()


@pytest.fixture
def stimulator(client):
    s = MEAStimulator(RHXStimulatorBackend(client, sample_rate_hz=30000, stim_step_ua=1.0))
    yield s
    s.close()


def pulse_stim(electrode=INPUT, ua=10.0, **kw) -> MEAStimulus:
    return MEAStimulus.on(electrode, Pulse(ua, 100.0), **kw)


# -- command channel -------------------------------------------------------------------------


def test_connect_reads_what_controller_this_is(client):
    client.connect()
    assert client.controller_type == "ControllerStimRecord"
    assert client.sample_rate_hz == 30000.0 and client.stim_step_ua == 1.0
    assert client.run_mode == "Stop"


def test_set_is_silent_and_get_returns_the_value(client, server):
    client.connect()
    assert client.command(f"set {INPUT}.FirstPhaseAmplitudeMicroAmps 12.5") == []
    assert list(server.command_log)[-2:] == [
        f"set {INPUT}.FirstPhaseAmplitudeMicroAmps 12.5",
        "get runmode",
    ]  # the batch's sentinel
    client.set(f"{INPUT}.StimEnabled", True)
    assert client.get(f"{INPUT}.FirstPhaseAmplitudeMicroAmps") == "12.5"
    assert client.get(f"{INPUT}.StimEnabled") == "True"


def test_error_replies_are_typed_and_name_their_command(client):
    client.connect()
    with pytest.raises(RHXUnknownCommand) as e:
        client.command("get runmode", "get bogusparameter", "get sampleratehertz")
    assert e.value.command == "get bogusparameter" and e.value.command_index == 2
    assert "Unrecognized parameter" in str(e.value)
    with pytest.raises(
        RHXInvalidValue, match="Acceptable: Biphasic, BiphasicWithInterphaseDelay, Triphasic"
    ):
        client.set(f"{INPUT}.Shape", "square")
    with pytest.raises(RHXInvalidValue, match="FirstPhaseAmplitudeMicroAmps"):
        client.set(f"{INPUT}.FirstPhaseAmplitudeMicroAmps", 3000)  # RHX range 0-2550
    with pytest.raises(RHXUnknownCommand, match="Unrecognized command"):
        client.command("jump high")
    with pytest.raises(RHXNotNow, match="cannot be changed once software has started"):
        client.set("SampleRateHertz", 20000)
    assert client.get("runmode") == "Stop"  # still in step after the errors


def test_run_modes_and_their_refusals(client):
    client.connect()
    client.set_run_mode("run")
    assert client.get("runmode") == "Run" and client.running
    with pytest.raises(RHXNotNow, match="Board must be stopped in order to start running"):
        client.set("runmode", "run")
    client.set_run_mode("stop")
    with pytest.raises(RHXNotNow, match="Board must be running in order to stop"):
        client.set("runmode", "stop")
    with pytest.raises(RHXNotNow, match="Filename.BaseFilename and Filename.Path"):
        client.set("runmode", "record")
    assert client.run_mode == "Stop"


def test_upload_while_running_is_refused_before_sending_and_by_rhx(client, server):
    client.connect()
    client.set_run_mode("run")
    before = server.commands_received
    with pytest.raises(DeviceStateError, match="nothing was sent"):
        client.upload_stim_parameters()
    assert server.commands_received == before
    # sent anyway, RHX refuses it: both forms
    with pytest.raises(
        RHXNotNow, match="UploadStimParameters cannot be executed while the board is running"
    ):
        client.execute("uploadstimparameters")
    with pytest.raises(RHXNotNow, match="UploadStimParameters cannot be executed"):
        client.execute("uploadstimparameters", INPUT)
    with pytest.raises(RHXNotNow, match="TCPNumberDataBlocksPerWrite cannot be set while"):
        client.set("TCPNumberDataBlocksPerWrite", 1)


def test_parameters_act_only_after_an_upload(client, server):
    client.connect()
    client.command(
        f"set {INPUT}.Source KeyPressF1",
        f"set {INPUT}.StimEnabled true",
        f"set {INPUT}.FirstPhaseAmplitudeMicroAmps 10",
        f"set {INPUT}.SecondPhaseAmplitudeMicroAmps 10",
    )
    client.set_run_mode("run")
    client.execute("manualstimtriggerpulse", "f1")
    assert server.stimulation_log == []  # set, but never uploaded
    client.set_run_mode("stop")
    client.upload_stim_parameters()
    client.set_run_mode("run")
    client.execute("manualstimtriggerpulse", "f1")
    assert [p["channel"] for p in server.stimulation_log] == [INPUT]


# -- stimulator: refusals and faults ---------------------------------------------------------


def test_refused_stimuli_send_nothing(stimulator, server):
    stimulator.open()
    before = server.commands_received
    bad = [
        pulse_stim(ua=300.0),  # over 255 steps of 1 uA
        MEAStimulus.on(INPUT, Pulse(10.0, 100.0, second_phase_ua=4.0)),  # unbalanced
        pulse_stim(electrode="C-005"),  # no such electrode
        MEAStimulus.on(INPUT, Pulse(10.0, 100.0), 300, 100.0),  # over 256 pulses
    ]
    for stim in bad:
        with pytest.raises(LimitError):
            stimulator.stimulate(stim)
    assert server.commands_received == before and server.stimulation_log == []


def test_the_trigger_time_is_the_delivered_onset(stimulator, server):
    stimulator.open()
    for _ in range(3):
        record = stimulator.stimulate(pulse_stim())
        server.pace()
    onsets = [p["onset_sample"] for p in server.stimulation_log]
    assert record.description["device_sample"] == onsets[-1]
    assert record.device_time_s == pytest.approx(onsets[-1] / 30000)
    assert record.description["status"] == "sent"
    assert np.diff(onsets).tolist() == [1280, 1280]  # one write (10 blocks) apart


def test_stimulation_while_disconnected_sends_nothing(stimulator, server, client):
    stimulator.open()
    stimulator.stimulate(pulse_stim())
    client.close()
    before = server.commands_received
    with pytest.raises(DeviceStateError, match="disconnected; nothing was sent"):
        stimulator.stimulate(pulse_stim())
    assert server.commands_received == before


def test_a_dropped_connection_fails_the_stimulation_and_reconnect_recovers(stimulator, server):
    stimulator.open()
    stimulator.stimulate(pulse_stim())
    server.drop_connections()
    with pytest.raises(StimulationFailed) as e:
        stimulator.stimulate(pulse_stim())
    assert e.value.record.description["status"] == "failed"
    assert stimulator.failed[-1] is e.value.record
    with pytest.raises(DeviceStateError, match="disconnected"):
        stimulator.stimulate(pulse_stim())
    assert len(server.stimulation_log) == 1
    stimulator.reconnect()  # RHX kept running with its parameters: fire right away
    server.pace()
    record = stimulator.stimulate(pulse_stim())
    assert len(server.stimulation_log) == 2
    assert server.stimulation_log[-1]["onset_sample"] == record.description["device_sample"]


def test_a_held_stimulus_repeats_until_released(stimulator, server):
    held = MEAStimulus.on(INPUT, Pulse(10.0, 100.0), 1, 1000.0, repeat_while_held=True)
    stimulator.open()
    stimulator.prepare([held])
    on = stimulator.start(held).description["device_sample"]
    for _ in range(3):
        server.pace()
    off = stimulator.stop(held).description["device_sample"]
    assert off - on == 3 * 1280
    onsets = [p["onset_sample"] for p in server.stimulation_log]
    assert onsets == list(range(on, off, SAMPLES_PER_MS))  # 1 kHz while held, none after
    server.pace()
    assert len(server.stimulation_log) == len(onsets)


def test_digital_line_triggers_after_the_eight_keys(client, server):
    backend = RHXStimulatorBackend(client, digital_lines={1: server.digital_line(1)})
    stimulator = MEAStimulator(backend)
    with stimulator:
        stims = [pulse_stim(electrode=f"A-{k:03d}") for k in range(9)]
        stimulator.prepare(stims)
        assert stimulator.prepared[stimulator.validate(stims[8])] == "DigitalIn01"
        assert client.get("A-008.Source") == "DigitalIn01"
        stimulator.stimulate(stims[8])
        assert [p["channel"] for p in server.stimulation_log] == ["A-008"]
        with pytest.raises(LimitError, match="exceed the 9 trigger slots"):
            stimulator.prepare([pulse_stim(electrode="A-009")])
        with pytest.raises(LimitError, match="used by two different stimuli"):
            stimulator.prepare([pulse_stim(electrode="A-000", ua=20.0)])


def test_programming_while_running_is_refused_and_sends_nothing(stimulator, server, client):
    stimulator.open()
    stimulator.stimulate(pulse_stim())  # prepares, then starts running
    before = server.commands_received
    with pytest.raises(DeviceStateError, match="prepare all stimuli before acquisition"):
        stimulator.stimulate(pulse_stim(electrode=OUTPUT))
    assert server.commands_received == before


def test_safe_state_disarms_every_channel(stimulator, server, client):
    stimulator.open()
    stimulator.stimulate(pulse_stim())
    stimulator.safe()
    assert client.get("runmode") == "Stop"
    assert server.programs[INPUT].enabled is False  # uploaded disabled


# -- spike source ----------------------------------------------------------------------------


def record_session(seed: int, n_blocks: int, wideband=()):
    """Hold 1 nC per ms on the input electrode (the LSA stimulation) and read spike blocks."""
    culture = Culture(preset_config("lsa_minimal"), seed=seed)
    held = MEAStimulus.on(INPUT, Pulse(10.0, 100.0), 1, 1000.0, repeat_while_held=True)
    with RHXSimServer(culture) as srv:
        client = RHXClient("127.0.0.1", srv.command_port, pace=srv.pace)
        stimulator = MEAStimulator(RHXStimulatorBackend(client))
        source = RHXSpikeSource(client, blocks_per_write=1, wideband=wideband)
        with stimulator, source:
            stimulator.prepare([held])
            source.start()
            stimulator.start(held)
            block = source.new_block()
            blocks = []
            for _ in range(n_blocks):
                source.read_block(block)
                e, s, u = block.spikes()
                oe, os_ = block.onsets()
                blocks.append(
                    dict(
                        first=block.first_sample,
                        n=block.n_samples,
                        spikes=(e.copy(), s.copy(), u.copy()),
                        onsets=(oe.copy(), os_.copy()),
                        wide=block.wideband().copy(),
                        lost=block.lost_samples_before,
                        late=block.late_spikes,
                    )
                )
            source.stop()
        return blocks, srv.stimulation_log, culture, srv.recorder.step_offset, source


def test_spike_blocks_come_from_the_culture_on_the_device_clock():
    blocks, stims, culture, step0, source = record_session(seed=2, n_blocks=400)
    firsts = [b["first"] for b in blocks]
    assert firsts == [128 * k for k in range(len(blocks))]  # back to back, no loss
    assert all(b["lost"] == 0 and b["late"] == 0 for b in blocks)
    for b in blocks:
        s = b["spikes"][1]
        assert ((s >= b["first"]) & (s < b["first"] + b["n"])).all()
    # every spike record is a culture spike: input neuron on A-020, output neuron on A-027,
    # in the culture step = sample // 30 (+ the step at which sampling started)
    names = source.electrodes
    records = {
        (names[e], int(s) // SAMPLES_PER_MS + step0)
        for b in blocks
        for e, s in zip(b["spikes"][0], b["spikes"][1])
    }
    neurons, steps = culture.spike_log.since(0)
    end_step = step0 + blocks[-1]["first"] // SAMPLES_PER_MS
    truth = {
        ({0: INPUT, 1: OUTPUT}[n], int(t)) for n, t in zip(neurons, steps) if step0 <= t < end_step
    }
    assert truth and truth <= records
    # onsets read back from the STIM band are the pulses the controller delivered
    read_back = [int(s) for b in blocks for s in b["onsets"][1]]
    delivered = [p["onset_sample"] for p in stims if p["onset_sample"] < 128 * len(blocks)]
    assert read_back == delivered and len(delivered) > 100


def test_the_same_seed_gives_the_same_session():
    a = record_session(seed=4, n_blocks=150)[0]
    b = record_session(seed=4, n_blocks=150)[0]
    for x, y in zip(a, b):
        for k in (0, 1, 2):
            np.testing.assert_array_equal(x["spikes"][k], y["spikes"][k])


def test_wideband_shows_spikes_over_the_noise():
    # single 20 nC pulses (100 uA x 200 us) on the input electrode every 5 blocks: the input
    # neuron fires a few ms after each, well clear of the stimulation artifact
    pulse = MEAStimulus.on(INPUT, Pulse(100.0, 200.0))
    with RHXSimServer(Culture(preset_config("lsa_minimal"), seed=3)) as srv:
        client = RHXClient("127.0.0.1", srv.command_port, pace=srv.pace)
        stimulator = MEAStimulator(RHXStimulatorBackend(client))
        source = RHXSpikeSource(client, blocks_per_write=1, wideband=(INPUT,))
        with stimulator, source:
            stimulator.prepare([pulse])
            source.start()
            block = source.new_block()
            wide, spikes, onsets = [], [], []
            for k in range(500):
                if k % 5 == 0:
                    stimulator.stimulate(pulse)
                source.read_block(block)
                wide.append(block.wideband()[:, 0].copy())
                e, s, _ = block.spikes()
                spikes += s[e == 20].tolist()
                onsets += block.onsets()[1].tolist()
    wide = np.concatenate(wide)
    assert len(spikes) > 50 and len(onsets) == 100
    artifact = np.zeros(wide.size, bool)
    for o in onsets:
        artifact[o : o + 12] = True  # 200 + 200 us at 30 kHz
    assert (wide[artifact] < -6000).sum() == len(onsets) * 6  # cathodic phase clips
    troughs = [wide[s : s + 20].min() for s in spikes if not artifact[s : s + 20].any()]
    assert len(troughs) > 50
    assert np.median(troughs) == pytest.approx(-200.0, abs=20.0)  # spike_amplitude_uv
    quiet = ~artifact
    for s in spikes:
        quiet[max(0, s - 5) : s + 70] = False
    assert wide[quiet].std() == pytest.approx(5.0, rel=0.1)  # electrode_noise_uv


def test_the_spike_stream_reconnects_after_a_drop(server):
    client = RHXClient("127.0.0.1", server.command_port, pace=server.pace)
    source = RHXSpikeSource(client, blocks_per_write=2)
    with source:
        source.start()
        block = source.new_block()
        source.read_block(block)
        server.drop_connections()
        with pytest.raises(ConnectionLost):
            source.read_block(block)
        source.reconnect()
        source.read_block(block)
        assert block.first_sample == 2 * 256  # the write produced during the drop is lost
        assert block.lost_samples_before == 256


def test_no_rhx_at_the_address_is_device_not_found():
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    with pytest.raises(DeviceNotFound, match="sim-culture"):
        RHXClient("127.0.0.1", port, timeout_s=0.5).connect()


def test_a_silent_server_times_out_and_the_channel_is_closed():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = RHXClient("127.0.0.1", listener.getsockname()[1], timeout_s=0.2)
    with pytest.raises(DeviceTimeout, match="did not answer"):
        client.connect()  # accepted by the kernel, never answered
    assert not client.connected  # a late answer must not be taken for the next one
    listener.close()
