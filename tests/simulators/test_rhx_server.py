"""The simulated RHX server at the byte level (raw sockets, no client code): RHX's replies
and refusals, the board's treatment of uploaded parameters, the data streams, and that a
trigger really stimulates the culture (hardware.md section 4)."""

import socket
import struct
import time

import numpy as np
import pytest

from drivers.mea.rhx_protocol import FRAMES_PER_BLOCK
from simulators.culture import Culture, preset_config
from simulators.rhx_server import RHXSimServer

INPUT = "A-020"  # lsa_minimal's input neuron sits on electrode 20


class Raw:
    """A bare TCP command connection: send text, read until the k-th RunMode return."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
        self.text = b""

    def ask(self, commands: str, sentinels: int = 1) -> bytes:
        self.sock.sendall(commands.encode("ascii"))
        data = b""
        while data.count(b"Return: RunMode ") < sentinels:
            chunk = self.sock.recv(65536)
            assert chunk, "server closed the connection"
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server():
    with RHXSimServer(Culture(preset_config("lsa_minimal", noise_sd=0.0), seed=1)) as srv:
        yield srv


@pytest.fixture
def raw(server):
    r = Raw(server.command_port)
    yield r
    r.close()


def wait_connected(server: RHXSimServer, port: str) -> None:
    deadline = time.monotonic() + 2.0
    while server.data[port].status != "Connected":
        assert time.monotonic() < deadline, f"{port} client never accepted"
        time.sleep(0.001)


def read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk
        data += chunk
    return data


def test_replies_and_errors_byte_for_byte(raw):
    reply = raw.ask("get runmode;get bogus;set a-000.stimenabled true;jump;get runmode;", 2)
    assert reply == (
        b"Return: RunMode Stop"
        b"Error - Command 2: Unrecognized parameter"
        b"Error - Command 4: Unrecognized command"
        b"Return: RunMode Stop"
    )


def test_channel_items_have_rhx_names_defaults_and_ranges(raw):
    reply = raw.ask(
        "get A-000.FirstPhaseDurationMicroseconds;get a-000.pulsetrainperiodmicroseconds;"
        "get a-000.stimenabled;get a-000.numberofstimpulses;"
        "set a-000.numberofstimpulses 300;get runmode;"
    )
    assert reply == (
        b"Return: FirstPhaseDurationMicroseconds 100"
        b"Return: PulseTrainPeriodMicroseconds 10000"
        b"Return: StimEnabled False"
        b"Return: NumberOfStimPulses 2"
        b"Error - Command 5: Invalid value for NumberOfStimPulses command. "
        b"Acceptable: 0 to 256"
        b"Return: RunMode Stop"
    )


def test_refusals_while_running(raw):
    reply = raw.ask(
        "set runmode run;execute uploadstimparameters;"
        "execute uploadstimparameters a-000;set tcpnumberdatablocksperwrite 1;"
        "set runmode run;get runmode;"
    )
    assert reply == (
        b"Error - Command 2: UploadStimParameters cannot be executed while the "
        b"board is running"
        b"Error - Command 3: UploadStimParameters cannot be executed while the "
        b"board is running"
        b"Error - Command 4: TCPNumberDataBlocksPerWrite cannot be set while "
        b"controller is running."
        b"Error - Command 5: Board must be stopped in order to start running"
        b"Return: RunMode Run"
    )


def test_waveform_and_spike_streams_carry_rhx_blocks(server, raw):
    raw.ask(
        "execute clearalldataoutputs;set tcpnumberdatablocksperwrite 2;"
        "set a-000.tcpdataoutputenabled true;set a-000.tcpdataoutputenabledstim true;"
        "set a-001.tcpdataoutputenabledspike true;"
        "execute connecttcpwaveformdataoutput;execute connecttcpspikedataoutput;get runmode;"
    )
    wave = socket.create_connection(("127.0.0.1", server.waveform_port), timeout=2.0)
    spikes = socket.create_connection(("127.0.0.1", server.spike_port), timeout=2.0)
    wait_connected(server, "waveform")
    wait_connected(server, "spike")
    raw.ask("set runmode run;get runmode;")
    for _ in range(2):
        server.pace()
    frame = 4 + 2 * 2  # timestamp + WIDE + STIM words of A-000
    block = 4 + FRAMES_PER_BLOCK * frame
    data = read_exact(wave, 4 * block)  # two writes of two blocks
    stamps = []
    for b in range(4):
        (magic,) = struct.unpack_from("<I", data, b * block)
        assert magic == 0x2EF07A08
        for f in range(FRAMES_PER_BLOCK):
            ts, wide, stim = struct.unpack_from("<iHH", data, b * block + 4 + f * frame)
            stamps.append(ts)
            assert stim == 0 and abs(0.195 * (wide - 32768)) < 60  # noise, no stimulation
    assert stamps == list(range(4 * FRAMES_PER_BLOCK))
    wave.close()
    spikes.close()


def test_uploads_are_rounded_to_steps_and_clipped_like_rhx(server, raw):
    raw.ask(
        "set a-000.firstphaseamplitudemicroamps 10.4;"
        "set a-000.secondphaseamplitudemicroamps 400;"
        "set a-000.firstphasedurationmicroseconds 110;execute uploadstimparameters;"
        "get runmode;"
    )
    prog = server.programs["A-000"]
    (_, d1, s1, neg1), (off2, _, s2, neg2) = prog.phases
    assert (s1, s2) == (10, 255)  # round(10.4 / 1 uA); 400 uA clipped to 255 steps
    assert d1 == 3 and off2 == 3  # round(110 us x 30 kHz) samples
    assert neg1 and not neg2  # NegativeFirst by default


def test_a_trigger_really_stimulates_the_culture(server, raw):
    # 100 uA x 200 us = 20 nC on the input's electrode; noise is off: nothing fires without it
    raw.ask(
        f"set {INPUT}.source keypressf1;set {INPUT}.firstphaseamplitudemicroamps 100;"
        f"set {INPUT}.secondphaseamplitudemicroamps 100;"
        f"set {INPUT}.firstphasedurationmicroseconds 200;"
        f"set {INPUT}.secondphasedurationmicroseconds 200;set {INPUT}.stimenabled true;"
        "execute uploadstimparameters;set runmode run;get runmode;"
    )
    for _ in range(3):
        server.pace()
    assert server.culture.spike_log.n == 0
    raw.ask("execute manualstimtriggerpulse f1;get runmode;")
    onset = server.stimulation_log[-1]["onset_sample"]
    assert onset == 3 * 10 * FRAMES_PER_BLOCK  # the trigger lands where the stream is
    server.pace()
    neurons, steps = server.culture.spike_log.since(0)
    assert neurons.tolist() == [0]  # the input neuron, right after the pulse
    pulse_step = server.stimulation_log[-1]["culture_step"]
    assert 0 <= steps[0] - pulse_step <= 2
    assert server.stimulation_log[-1]["charge_nc"] == pytest.approx(20.0)


def test_triggers_do_nothing_while_stopped(server, raw):
    raw.ask(
        f"set {INPUT}.source keypressf1;set {INPUT}.stimenabled true;"
        f"set {INPUT}.firstphaseamplitudemicroamps 10;execute uploadstimparameters;"
        "execute manualstimtriggerpulse f1;get runmode;"
    )
    assert server.stimulation_log == []


def test_edge_triggers_during_a_train_and_its_refractory_period_are_ignored(server, raw):
    # train: 3 pulses at 1 kHz (period 1000 us), refractory 10 ms -> busy 12 ms after a start
    raw.ask(
        f"set {INPUT}.source keypressf2;set {INPUT}.pulseortrain pulsetrain;"
        f"set {INPUT}.numberofstimpulses 3;set {INPUT}.pulsetrainperiodmicroseconds 1000;"
        f"set {INPUT}.refractoryperiodmicroseconds 10000;"
        f"set {INPUT}.firstphaseamplitudemicroamps 5;set {INPUT}.stimenabled true;"
        "set tcpnumberdatablocksperwrite 1;execute uploadstimparameters;"
        "set runmode run;get runmode;"
    )
    starts = []
    for k in range(8):  # a key press every 4.27 ms (one block)
        raw.ask("execute manualstimtriggerpulse f2;get runmode;")
        starts.append(k * FRAMES_PER_BLOCK)
        server.pace()
    onsets = [p["onset_sample"] for p in server.stimulation_log]
    busy = 2 * 30 + 6 + 300  # two periods + the last pulse + refractory, in samples
    accepted = []
    for s in starts:
        if not accepted or s >= accepted[-1] + busy:
            accepted.append(s)
    assert onsets == [a + 30 * k for a in accepted for k in range(3)]


def test_digital_input_and_level_triggering(server, raw):
    raw.ask(
        f"set {INPUT}.source digitalin03;set {INPUT}.triggeredgeorlevel level;"
        f"set {INPUT}.triggerhighorlow low;set {INPUT}.refractoryperiodmicroseconds 1800;"
        f"set {INPUT}.firstphaseamplitudemicroamps 5;set {INPUT}.stimenabled true;"
        "set tcpnumberdatablocksperwrite 1;execute uploadstimparameters;"
        "set runmode run;get runmode;"
    )
    line = server.digital_line(3)
    line.set(True)  # active low: high = inactive
    server.pace()
    assert server.stimulation_log == []
    line.set(False)  # active: repeats every pulse (200 us) + refractory (1800 us) = 60 samples
    server.pace()
    server.pace()
    line.set(True)
    server.pace()
    onsets = [p["onset_sample"] for p in server.stimulation_log]
    assert onsets == list(range(128, 3 * 128, 60))


def test_realtime_mode_streams_contiguous_blocks():
    culture = Culture(preset_config("lsa_minimal"), seed=2)
    with RHXSimServer(culture, speed="realtime") as srv:
        raw = Raw(srv.command_port)
        raw.ask(
            "set tcpnumberdatablocksperwrite 1;set a-000.tcpdataoutputenabledstim true;"
            "execute connecttcpwaveformdataoutput;get runmode;"
        )
        wave = socket.create_connection(("127.0.0.1", srv.waveform_port), timeout=2.0)
        wait_connected(srv, "waveform")
        raw.ask("set runmode run;get runmode;")
        block = 4 + FRAMES_PER_BLOCK * 6
        data = read_exact(wave, 3 * block)
        stamps = [
            struct.unpack_from("<i", data, b * block + 4 + f * 6)[0]
            for b in range(3)
            for f in range(FRAMES_PER_BLOCK)
        ]
        assert stamps == list(range(3 * FRAMES_PER_BLOCK))
        assert srv.pace() is None  # realtime: the clock paces, not the client
        wave.close()
        raw.close()


def test_dropped_connections_keep_the_controller_state(server, raw):
    raw.ask("set runmode run;get runmode;")
    server.drop_connections()
    assert raw.sock.recv(10) == b""
    again = Raw(server.command_port)
    assert again.ask("get runmode;") == b"Return: RunMode Run"
    again.close()


def test_timestamps_restart_when_the_controller_starts_again(server, raw):
    raw.ask("set runmode run;get runmode;")
    server.pace()
    assert raw.ask("get currenttimestamp;get runmode;") == b"Return: 1280Return: RunMode Run"
    steps = server.culture.steps_done
    raw.ask("set runmode stop;set runmode run;get runmode;")
    assert raw.ask("get currenttimestamp;get runmode;") == b"Return: 0Return: RunMode Run"
    assert server.culture.steps_done == steps  # the culture lives on
    assert np.isfinite(server.culture.t_s)
