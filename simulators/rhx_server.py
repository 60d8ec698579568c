"""A simulated Intan RHX (RHS stim/record controller) on loopback TCP, wired to a culture.

The real RHX client (drivers/mea/intan_rhx.py) talks to this server exactly as to RHX: the
command port parses `set` / `get` / `execute` as RHX's TCPDisplay::parseCommands and
CommandParser do (same item names, ranges and refusals; errors as "Error - Command N: ...",
see hardware.md section 4), and the data ports send RHX's waveform blocks and spike records
(codecs in drivers/mea/rhx_protocol.py). Unlike RHX's own synthetic controller, stimulation
is real: an uploaded, enabled channel fires its pulses into the simulated culture when its
trigger source (KeyPressF1-F8 via `execute manualstimtrigger{pulse,on,off}`, or DigitalIn01-16
via `digital_line(n)`, the simulated TTL wire) becomes active, and the spike and waveform
streams come from the culture's neurons near each electrode (simulators/culture/electrodes.py).

Board model (what RHX does with the parameters): `set` changes the software state only;
`execute uploadstimparameters` copies it to the board (refused while running, both forms,
as hardware.md states). Amplitudes become round(uA / step) clipped to 0..255 steps, durations
round(us x rate) samples (RHX's own conversion). Edge-triggered channels start one sequence
(a pulse or a train of NumberOfStimPulses at PulseTrainPeriod) per trigger edge, after
PostTriggerDelay, unless still busy with the previous sequence plus RefractoryPeriod;
level-triggered channels repeat sequences for as long as the trigger is active (each starts
when the previous one and the refractory period are over). A key pulse is active for one
sample. Triggers act only while the controller runs.

Culture coupling: a pulse's leading phase charge (steps x step uA x first phase us) goes into
the culture step (1 ms) its onset falls in; if that step was already simulated (the stream
runs up to the end of the step containing the last frame sent), the next step. Spikes of a
culture step get a sub-millisecond offset inside their step (uniform, from the server's own
random stream), so binning timestamps by 1 ms recovers the culture's step.

Streams: each write sends the waveform blocks, then the spike records of the same frames
(RHX's order; a client may read a spike one block late, and gets it then with its true
timestamp). In lock-step, `pace()` returns the number of spike bytes of the write, so the
client can wait for exactly those and a session stays deterministic. Amplifier words:
Gaussian noise (`electrode_noise_uv` rms) + spike templates (WIDE and HIGH bands; no LFP, so
LOW is flat), stimulation artifacts clip the stimulated channel; STIM words as RHX sends them.

Speeds: "max" - lock-step: one write (TCPNumberDataBlocksPerWrite x 128 frames) is produced
per `pace()` call (the client calls it before each read), so a session is deterministic for
a seed; the device clock is the stream position. "realtime" - a thread produces each write
when the wall clock reaches its last frame.
"""

from __future__ import annotations

import logging
import math
import queue
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drivers.mea.rhx_protocol import (
    AMPLIFIER_OFFSET,
    AMPLIFIER_UV_PER_BIT,
    BAND_ITEMS,
    DIGITAL_INPUTS,
    FRAMES_PER_BLOCK,
    KEYS,
    SAMPLE_RATES_HZ,
    STIM_STEP_SIZES_UA,
    WaveformLayout,
    channel_name,
    encode_spikes,
    encode_waveform_blocks,
    stim_word,
)
from simulators.culture.culture import Culture
from simulators.culture.recording import MEARecorder

log = logging.getLogger(__name__)

SOFTWARE_VERSION = "3.3.0 (looprig simulator)"
CHANNELS_PER_PORT = 32
STIM_LOG_DTYPE = np.dtype(
    [
        ("onset_sample", "i8"),
        ("electrode", "i4"),
        ("charge_nc", "f8"),
        ("culture_step_requested", "i8"),
        ("culture_step", "i8"),
    ]
)
READ_ONLY_MESSAGE = "cannot be changed once software has started."
RUNNING_MESSAGE = "cannot be set while controller is running."


# -- state items (names, kinds, ranges and defaults as in RHX's StimParameters / Channel) ------


@dataclass(frozen=True)
class Item:
    name: str
    kind: str  # bool, discrete, double, int, string
    default: Any
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()
    restrict: str = ""  # "", "running", "always"

    def parse(self, text: str) -> Any:
        """The value for `set`, or None when RHX would refuse it."""
        t = text.lower()
        if self.kind == "bool":
            return {"true": True, "false": False, "1": True, "0": False}.get(t)
        if self.kind == "discrete":
            for c in self.choices:
                if c.lower() == t:
                    return c
            return None
        if self.kind == "string":
            return text
        try:
            x = float(text)
        except ValueError:
            return None
        if not math.isfinite(x) or not self.low <= x <= self.high:
            return None
        if self.kind == "int":
            return int(round(x)) if x == round(x) else None
        return x

    def format(self, value: Any) -> str:
        if self.kind == "bool":
            return "True" if value else "False"
        if self.kind == "double":
            return f"{value:.6g}"  # Qt's QString::number(double)
        return str(value)

    def valid_values(self) -> str:
        if self.kind == "bool":
            return "True or False"
        if self.kind == "discrete":
            return ", ".join(self.choices)
        if self.kind == "int":
            return f"{int(self.low)} to {int(self.high)}"
        return f"{self.low:g} to {self.high:g}"


_SOURCES = (
    DIGITAL_INPUTS
    + tuple(f"AnalogIn{i:02d}" for i in range(1, 9))
    + tuple(f"KeyPress{k}" for k in KEYS)
)

CHANNEL_ITEMS: dict[str, Item] = {
    i.name.lower(): i
    for i in (
        Item(
            "Shape",
            "discrete",
            "Biphasic",
            choices=("Biphasic", "BiphasicWithInterphaseDelay", "Triphasic"),
        ),
        Item("Polarity", "discrete", "NegativeFirst", choices=("NegativeFirst", "PositiveFirst")),
        Item("Source", "discrete", "DigitalIn01", choices=_SOURCES),
        Item("TriggerEdgeOrLevel", "discrete", "Edge", choices=("Edge", "Level")),
        Item("TriggerHighOrLow", "discrete", "High", choices=("High", "Low")),
        Item("PulseOrTrain", "discrete", "SinglePulse", choices=("SinglePulse", "PulseTrain")),
        Item("StimEnabled", "bool", False),
        Item("MaintainAmpSettle", "bool", False),
        Item("EnableAmpSettle", "bool", True),
        Item("EnableChargeRecovery", "bool", False),
        Item("FirstPhaseDurationMicroseconds", "double", 100.0, 0.0, 5000.0),
        Item("SecondPhaseDurationMicroseconds", "double", 100.0, 0.0, 5000.0),
        Item("InterphaseDelayMicroseconds", "double", 100.0, 0.0, 5000.0),
        Item("FirstPhaseAmplitudeMicroAmps", "double", 0.0, 0.0, 2550.0),
        Item("SecondPhaseAmplitudeMicroAmps", "double", 0.0, 0.0, 2550.0),
        Item("PostTriggerDelayMicroseconds", "double", 0.0, 0.0, 500000.0),
        Item("PulseTrainPeriodMicroseconds", "double", 10000.0, 0.0, 1000000.0),
        Item("RefractoryPeriodMicroseconds", "double", 1000.0, 0.0, 1000000.0),
        Item("PreStimAmpSettleMicroseconds", "double", 0.0, 0.0, 500000.0),
        Item("PostStimAmpSettleMicroseconds", "double", 1000.0, 0.0, 500000.0),
        Item("PostStimChargeRecovOnMicroseconds", "double", 0.0, 0.0, 1000000.0),
        Item("PostStimChargeRecovOffMicroseconds", "double", 0.0, 0.0, 1000000.0),
        Item("NumberOfStimPulses", "int", 2, 0, 256),
        Item("TCPDataOutputEnabled", "bool", False),
        Item("TCPDataOutputEnabledLow", "bool", False),
        Item("TCPDataOutputEnabledHigh", "bool", False),
        Item("TCPDataOutputEnabledSpike", "bool", False),
        Item("TCPDataOutputEnabledDC", "bool", False),
        Item("TCPDataOutputEnabledStim", "bool", False),
        Item("SpikeThresholdMicroVolts", "int", -70, -5000, 5000),
        Item("Enabled", "bool", True),
    )
}

DEPENDENCY_ITEMS = {
    n.lower()
    for n in (
        "PostTriggerDelayMicroseconds",
        "PreStimAmpSettleMicroseconds",
        "PostStimAmpSettleMicroseconds",
        "PostStimChargeRecovOffMicroseconds",
        "PostStimChargeRecovOnMicroseconds",
        "RefractoryPeriodMicroseconds",
        "PulseTrainPeriodMicroseconds",
        "FirstPhaseDurationMicroseconds",
        "SecondPhaseDurationMicroseconds",
        "InterphaseDelayMicroseconds",
        "Shape",
    )
}


def _stim_warning(p: dict[str, Any]) -> str:
    """RHX's CommandParser::validateStimParams (first problem found, or '')."""
    if p["PostTriggerDelayMicroseconds"] < p["PreStimAmpSettleMicroseconds"]:
        return "PostTriggerDelayMicroseconds cannot be less than PreStimAmpSettleMicroseconds"
    if p["PostStimChargeRecovOffMicroseconds"] < p["PostStimChargeRecovOnMicroseconds"]:
        return (
            "PostStimChargeRecovOffMicroseconds cannot be less than "
            "PostStimChargeRecovOnMicroseconds"
        )
    if p["RefractoryPeriodMicroseconds"] < p["PostStimAmpSettleMicroseconds"]:
        return "RefractoryPeriodMicroseconds cannot be less than PostStimAmpSettleMicroseconds"
    if p["RefractoryPeriodMicroseconds"] < p["PostStimChargeRecovOffMicroseconds"]:
        return "RefractoryPeriodMicroseconds cannot be less than PostStimChargeRecovOffMicroseconds"
    d1, d2 = p["FirstPhaseDurationMicroseconds"], p["SecondPhaseDurationMicroseconds"]
    if p["Shape"] == "Biphasic":
        total = d1 + d2
    elif p["Shape"] == "BiphasicWithInterphaseDelay":
        total = d1 + p["InterphaseDelayMicroseconds"] + d2
    else:
        total = 2 * d1 + d2
    if p["PulseTrainPeriodMicroseconds"] < total:
        return (
            "PulseTrainPeriodMicroseconds cannot be less than total pulse duration (sum of "
            "all phases used for this Shape)"
        )
    return ""


# -- the board's view of one channel --


@dataclass
class Program:
    """Uploaded stimulation of one channel, in samples and amplitude steps."""

    enabled: bool
    source: str
    level: bool
    active_low: bool
    phases: list[tuple[int, int, int, bool]]  # (offset, length, steps, negative)
    pulse_len: int
    n_pulses: int
    period: int
    post_delay: int
    refractory: int
    leading_charge_nc: float

    @property
    def sequence_len(self) -> int:
        return (max(self.n_pulses, 1) - 1) * self.period + self.pulse_len


@dataclass
class ChannelRuntime:
    busy_until: int = 0
    active: bool = False
    holding: bool = False
    next_start: int = 0


@dataclass
class DataPort:
    name: str
    listener: socket.socket
    status: str = "Disconnected"  # Disconnected, Pending, Connected
    sock: socket.socket | None = None
    pending: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])


class SimulatedDigitalLine:
    """A TTL wire into the controller's digital input `line` (1..16)."""

    def __init__(self, server: RHXSimServer, line: int) -> None:
        self.server = server
        self.source = DIGITAL_INPUTS[line - 1]

    def set(self, level: bool) -> None:
        self.server.set_source_level(self.source, bool(level))

    def pulse(self) -> None:
        self.server.pulse_source(self.source)


def _listener(host: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(4)
    s.settimeout(0.05)
    return s


class RHXSimServer:
    """The simulated RHX: command port, waveform port, spike port (see module docstring).

    electrode e of the culture is amplifier channel A-000 .. A-031, B-000 ... (32 per port).
    """

    def __init__(
        self,
        culture: Culture,
        *,
        sample_rate_hz: int = 30000,
        stim_step_ua: float = 1.0,
        speed: str = "max",
        host: str = "127.0.0.1",
        command_port: int = 0,
        waveform_port: int = 0,
        spike_port: int = 0,
    ) -> None:
        if sample_rate_hz not in SAMPLE_RATES_HZ:
            raise ValueError(
                f"sample_rate_hz = {sample_rate_hz} must be one of "
                f"{', '.join(map(str, SAMPLE_RATES_HZ))}"
            )
        if stim_step_ua not in STIM_STEP_SIZES_UA:
            raise ValueError(
                f"stim_step_ua = {stim_step_ua} must be one of "
                f"{', '.join(f'{s:g}' for s in STIM_STEP_SIZES_UA)}"
            )
        if speed not in ("max", "realtime"):
            raise ValueError(f"speed = {speed!r}: choose 'max' or 'realtime'")
        self.culture = culture
        self.sample_rate_hz = int(sample_rate_hz)
        self.stim_step_ua = float(stim_step_ua)
        self.speed = speed
        self.host = host
        n_el = culture.n_electrodes
        self.channels = [
            channel_name("ABCDEFGH"[e // CHANNELS_PER_PORT], e % CHANNELS_PER_PORT)
            for e in range(n_el)
        ]
        self._channel_index = {c: e for e, c in enumerate(self.channels)}
        self.items: dict[str, dict[str, Any]] = {
            c: {i.name: i.default for i in CHANNEL_ITEMS.values()} for c in self.channels
        }
        self.programs: dict[str, Program] = {}
        self.runtime = {c: ChannelRuntime() for c in self.channels}
        self.blocks_per_write = 10
        self.filename = {"path": "", "basefilename": ""}
        self.running = False
        self.recording = False
        self.trigger_set = False
        self.next_sample = 0
        self._run_wall_start = 0.0
        self._levels = {s: False for s in _SOURCES}
        self._pulses: list[tuple[int, int, Program]] = []  # (onset, electrode, program)
        self._stim_log = np.zeros(1024, STIM_LOG_DTYPE)
        self._n_stim = 0
        recorder_seq = np.random.SeedSequence(
            culture.seed, spawn_key=(2, culture.config.noise_stream)
        )
        self.recorder = MEARecorder(
            culture, self.sample_rate_hz, np.random.default_rng(recorder_seq)
        )
        self.command_log: deque[str] = deque(maxlen=100_000)
        self.commands_received = 0
        self._layout_cache: WaveformLayout | None = None
        self._stim_columns: dict[int, int] = {}
        self._last_spike_bytes = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._command_listener = _listener(host, command_port)
        self._command_sock: socket.socket | None = None
        self.data = {
            "waveform": DataPort("Waveform", _listener(host, waveform_port)),
            "spike": DataPort("Spike", _listener(host, spike_port)),
        }
        self._send_queue: queue.Queue[tuple[bytes, bytes] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    # -- lifecycle --
    @property
    def command_port(self) -> int:
        return int(self._command_listener.getsockname()[1])

    @property
    def waveform_port(self) -> int:
        return self.data["waveform"].port

    @property
    def spike_port(self) -> int:
        return self.data["spike"].port

    def start(self) -> RHXSimServer:
        targets = [
            ("command", self._serve_commands),
            ("sender", self._send_loop),
            ("waveform-accept", lambda: self._accept_data(self.data["waveform"])),
            ("spike-accept", lambda: self._accept_data(self.data["spike"])),
        ]
        if self.speed == "realtime":
            targets.append(("realtime", self._realtime_loop))
        for name, fn in targets:
            t = threading.Thread(target=fn, name=f"rhx-sim-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        self._stop.set()
        self._send_queue.put(None)
        for t in self._threads:
            t.join(timeout=2.0)
        self.drop_connections()
        self._command_listener.close()
        for port in self.data.values():
            port.listener.close()

    def __enter__(self) -> RHXSimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drop_connections(self) -> None:
        """Close every client connection at once, as when RHX or the network fails. The
        controller keeps its state (running, parameters, held keys) and listens again."""
        with self._lock:
            socks = [self._command_sock] + [p.sock for p in self.data.values()]
            self._command_sock = None
            for p in self.data.values():
                p.sock = None
                p.status = "Disconnected"
                p.pending.clear()
        for s in socks:
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    # -- command port --
    def _serve_commands(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._command_listener.accept()
            except (socket.timeout, OSError):
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(0.1)
            with self._lock:
                self._command_sock = sock
            while not self._stop.is_set() and self._command_sock is sock:
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not data:
                    break
                reply = self.handle(data.decode("latin-1"))
                if reply:
                    try:
                        sock.sendall(reply.encode("latin-1"))
                    except OSError:
                        break
            with self._lock:
                if self._command_sock is sock:
                    self._command_sock = None
            try:
                sock.close()
            except OSError:
                pass

    def handle(self, text: str) -> str:
        """Parse one received chunk of commands as RHX does; return what RHX would write."""
        commands = text.split(";")
        if commands and commands[-1] == "":
            commands.pop()
        out: list[str] = []
        with self._lock:
            for i, command in enumerate(commands):
                self.commands_received += 1
                self.command_log.append(command)
                words = [w.strip() for w in command.split(" ")]
                words = [w for w in words if w]
                n = i + 1
                verb = words[0].lower() if words else ""
                if verb == "set":
                    if len(words) < 2:
                        out.append(self._error(n, "Set commands require a parameter and a value"))
                    elif words[1].lower().startswith("filename") or words[1].lower() in (
                        "note1",
                        "note2",
                        "note3",
                    ):
                        self._set_text(n, words[1], " ".join(words[2:]), out)
                    elif len(words) == 3:
                        self._set(n, words[1], words[2], out)
                    else:
                        out.append(self._error(n, "Set commands require a parameter and a value"))
                elif verb == "get":
                    if len(words) == 2:
                        self._get(n, words[1], out)
                    else:
                        out.append(self._error(n, "Get commands require a parameter"))
                elif verb == "execute":
                    if len(words) in (2, 3):
                        self._execute(n, words[1], words[2] if len(words) == 3 else None, out)
                    else:
                        out.append(self._error(n, "Execute commands require an action"))
                elif verb == "livenotes":
                    if not self.recording:
                        out.append(
                            self._error(
                                n, "LiveNotes cannot be added unless the board is recording"
                            )
                        )
                else:
                    out.append(self._error(n, "Unrecognized command"))
        return "".join(out)

    @staticmethod
    def _error(n: int, text: str) -> str:
        return f"Error - Command {n}: {text}"

    def _channel_item(self, parameter: str) -> tuple[str, Item] | None:
        if "." not in parameter:
            return None
        ch, name = parameter.split(".", 1)
        ch = ch.upper()
        item = CHANNEL_ITEMS.get(name.lower())
        if ch not in self.items or item is None:
            return None
        return ch, item

    def _set(self, n: int, parameter: str, value: str, out: list[str]) -> None:
        p = parameter.lower()
        found = self._channel_item(parameter)
        if found is not None:
            ch, item = found
            v = item.parse(value)
            if v is None:
                out.append(
                    self._error(
                        n,
                        f"Invalid value for {item.name} command. Acceptable: {item.valid_values()}",
                    )
                )
                return
            self.items[ch][item.name] = v
            if item.name.startswith("TCPDataOutputEnabled"):
                self._layout_cache = None
            if item.name.lower() in DEPENDENCY_ITEMS:
                warning = _stim_warning(self.items[ch])
                if warning:
                    out.append(f"Warning: {warning}")
            return
        if p in (
            "type",
            "sampleratehertz",
            "stimstepsizemicroamps",
            "synthetic",
            "version",
            "playback",
            "testmode",
            "expanderconnected",
            "uploadinprogress",
        ):
            name = self._global_name(p)
            out.append(self._error(n, f"{name} {READ_ONLY_MESSAGE}"))
        elif p == "tcpnumberdatablocksperwrite":
            if self.running:
                out.append(self._error(n, f"TCPNumberDataBlocksPerWrite {RUNNING_MESSAGE}"))
                return
            v = Item("TCPNumberDataBlocksPerWrite", "int", 10, 1, 100).parse(value)
            if v is None:
                out.append(
                    self._error(
                        n,
                        "Invalid value for TCPNumberDataBlocksPerWrite "
                        "command. Acceptable: 1 to 100",
                    )
                )
            else:
                self.blocks_per_write = v
        elif p == "runmode":
            self._set_run_mode(n, value.lower(), out)
        elif p in ("tcpwaveformdataoutputport", "tcpspikedataoutputport"):
            which = "waveform" if "waveform" in p else "spike"
            if self.running:
                out.append(
                    self._error(
                        n,
                        f"TCP{which.capitalize()}DataOutputPort cannot be set "
                        "while controller is running.",
                    )
                )
                return
            try:
                port = int(value)
            except ValueError:
                port = -1
            if not 0 <= port <= 9999:
                out.append(
                    self._error(
                        n, f"Invalid value for TCP{which.capitalize()}DataOutputPort command"
                    )
                )
                return
            self._rebind(which, port, n, out)
        elif p in ("tcpwaveformdataoutputhost", "tcpspikedataoutputhost"):
            if self.running:
                out.append(
                    self._error(
                        n, f"{self._global_name(p)} cannot be set while controller is running."
                    )
                )
        elif p in ("tcpwaveformdataoutputconnectionstatus", "tcpspikedataoutputconnectionstatus"):
            which = "Waveform" if "waveform" in p else "Spike"
            out.append(
                self._error(
                    n,
                    f"Connection status cannot be changed through this command"
                    f". Execute ConnectTCP{which}DataOutput or "
                    f"DisconnectTCP{which}DataOutput",
                )
            )
        else:
            out.append(self._error(n, "Unrecognized parameter"))

    def _set_text(self, n: int, parameter: str, value: str, out: list[str]) -> None:
        p = parameter.lower()
        if p in ("filename.path", "filename.basefilename"):
            if self.running:
                out.append(self._error(n, f"Filename {RUNNING_MESSAGE}"))
                return
            self.filename[p.split(".")[1]] = value
        elif p not in ("note1", "note2", "note3"):
            out.append(self._error(n, "Unrecognized parameter"))

    def _rebind(self, which: str, port: int, n: int, out: list[str]) -> None:
        dp = self.data[which]
        try:
            new = _listener(self.host, port)
        except OSError as exc:
            out.append(self._error(n, f"cannot listen on port {port}: {exc}"))
            return
        old = dp.listener
        dp.listener = new
        old.close()

    @staticmethod
    def _global_name(p: str) -> str:
        names = {
            "type": "Type",
            "sampleratehertz": "SampleRateHertz",
            "stimstepsizemicroamps": "StimStepSizeMicroAmps",
            "synthetic": "Synthetic",
            "version": "Version",
            "playback": "Playback",
            "testmode": "TestMode",
            "expanderconnected": "ExpanderConnected",
            "uploadinprogress": "UploadInProgress",
            "tcpwaveformdataoutputhost": "TCPWaveformDataOutputHost",
            "tcpspikedataoutputhost": "TCPSpikeDataOutputHost",
        }
        return names.get(p, p)

    def _set_run_mode(self, n: int, value: str, out: list[str]) -> None:
        if value in ("run", "record", "trigger"):
            if self.running:
                word = {
                    "run": "start running",
                    "record": "start recording",
                    "trigger": "start trigger",
                }[value]
                out.append(self._error(n, f"Board must be stopped in order to {word}"))
                return
            if value != "run" and not (self.filename["path"] and self.filename["basefilename"]):
                what = "recording" if value == "record" else "triggered recording"
                out.append(
                    self._error(
                        n,
                        "Filename.BaseFilename and Filename.Path must both be "
                        f"specified before {what} can occur",
                    )
                )
                return
            self.recording = value == "record"
            self.trigger_set = value == "trigger"
            self._start_running()
        elif value == "stop":
            if not self.running:
                out.append(self._error(n, "Board must be running in order to stop"))
                return
            self.running = self.recording = self.trigger_set = False
        else:
            out.append(self._error(n, "Invalid value for SetRunMode command"))

    def _start_running(self) -> None:
        """Timestamps restart at 0; the culture lives on (its step count continues)."""
        self.running = True
        self.next_sample = 0
        self.recorder.restart()
        self._run_wall_start = time.monotonic()
        self._pulses = []
        for rt in self.runtime.values():
            rt.busy_until = 0
            rt.next_start = 0
            if rt.holding:  # a trigger held across a stop keeps repeating from the start
                rt.next_start = 0

    def _get(self, n: int, parameter: str, out: list[str]) -> None:
        p = parameter.lower()
        found = self._channel_item(parameter)
        if found is not None:
            ch, item = found
            out.append(f"Return: {item.name} {item.format(self.items[ch][item.name])}")
            return
        simple = {
            "type": ("Type", "ControllerStimRecord"),
            "sampleratehertz": ("SampleRateHertz", str(self.sample_rate_hz)),
            "stimstepsizemicroamps": ("StimStepSizeMicroAmps", f"{self.stim_step_ua:g}"),
            "synthetic": ("Synthetic", "True"),
            "playback": ("Playback", "False"),
            "version": ("Version", SOFTWARE_VERSION),
            "uploadinprogress": ("UploadInProgress", "False"),
            "tcpnumberdatablocksperwrite": (
                "TCPNumberDataBlocksPerWrite",
                str(self.blocks_per_write),
            ),
            "tcpwaveformdataoutputport": ("TCPWaveformDataOutputPort", str(self.waveform_port)),
            "tcpspikedataoutputport": ("TCPSpikeDataOutputPort", str(self.spike_port)),
            "tcpwaveformdataoutputhost": ("TCPWaveformDataOutputHost", self.host),
            "tcpspikedataoutputhost": ("TCPSpikeDataOutputHost", self.host),
            "tcpwaveformdataoutputconnectionstatus": (
                "TCPWaveformDataOutputConnectionStatus",
                self.data["waveform"].status,
            ),
            "tcpspikedataoutputconnectionstatus": (
                "TCPSpikeDataOutputConnectionStatus",
                self.data["spike"].status,
            ),
        }
        if p in simple:
            name, value = simple[p]
            out.append(f"Return: {name} {value}")
        elif p == "runmode":
            mode = (
                "Record"
                if self.recording
                else "Trigger"
                if self.trigger_set
                else "Run"
                if self.running
                else "Stop"
            )
            out.append(f"Return: RunMode {mode}")
        elif p == "currenttimestamp":
            out.append(f"Return: {self._now_sample() if self.running else -1}")
        elif p == "currenttimeseconds":
            value = self._now_sample() / self.sample_rate_hz if self.running else -1
            out.append(f"Return: {value:g}")
        elif p in ("filename.path", "filename.basefilename"):
            key = p.split(".")[1]
            out.append(
                f"Return: Filename.{'Path' if key == 'path' else 'BaseFilename'} "
                f"{self.filename[key]}"
            )
        else:
            out.append(self._error(n, "Unrecognized parameter"))

    def _execute(self, n: int, action: str, parameter: str | None, out: list[str]) -> None:
        a = action.lower()
        if parameter is not None:
            key = parameter.upper()
            if a in ("manualstimtriggerpulse", "manualstimtriggeron", "manualstimtriggeroff"):
                if key not in KEYS:
                    return  # RHX ignores keys it does not know
                source = f"KeyPress{key}"
                if a == "manualstimtriggerpulse":
                    self.pulse_source(source)
                else:
                    self.set_source_level(source, a == "manualstimtriggeron")
            elif a == "uploadstimparameters":
                if self.running:
                    out.append(
                        self._error(
                            n, "UploadStimParameters cannot be executed while the board is running"
                        )
                    )
                elif key in self.items:
                    self._upload(key)
            else:
                out.append(self._error(n, "Unrecognized action"))
            return
        if a in (
            "measureimpedance",
            "rescanports",
            "uploadbandwidthsettings",
            "setspikedetectionthresholds",
            "uploadampsettlesettings",
            "uploadchargerecoverysettings",
            "uploadstimparameters",
        ):
            if self.running:
                name = {
                    "measureimpedance": "MeasureImpedance",
                    "rescanports": "RescanPorts",
                    "uploadbandwidthsettings": "UploadBandwidthSettings",
                    "setspikedetectionthresholds": "SetSpikeDetectionThresholds",
                    "uploadampsettlesettings": "UploadAmpSettleSettings",
                    "uploadchargerecoverysettings": "UploadChargeRecoverySettings",
                    "uploadstimparameters": "UploadStimParameters",
                }[a]
                out.append(self._error(n, f"{name} cannot be executed while the board is running"))
            elif a == "uploadstimparameters":
                for ch in self.channels:
                    self._upload(ch)
        elif a == "saveimpedance":
            pass
        elif a in ("connecttcpwaveformdataoutput", "connecttcpspikedataoutput"):
            dp = self.data["waveform" if "waveform" in a else "spike"]
            if dp.status == "Disconnected":
                dp.status = "Pending"
                dp.pending.set()
        elif a in ("disconnecttcpwaveformdataoutput", "disconnecttcpspikedataoutput"):
            self._disconnect_data(self.data["waveform" if "waveform" in a else "spike"])
        elif a == "clearalldataoutputs":
            self._layout_cache = None
            for ch in self.channels:
                for item in BAND_ITEMS.values():
                    self.items[ch][item] = False
        else:
            out.append(self._error(n, "Unrecognized action"))

    # -- stimulation (the board) --
    def _upload(self, ch: str) -> None:
        p = self.items[ch]
        fs, step = self.sample_rate_hz, self.stim_step_ua

        def samples(us: float) -> int:
            return int(round(us * fs / 1e6))

        def steps(ua: float) -> int:
            return min(255, max(0, int(round(ua / step))))

        d1 = samples(p["FirstPhaseDurationMicroseconds"])
        d2 = samples(p["SecondPhaseDurationMicroseconds"])
        gap = samples(p["InterphaseDelayMicroseconds"])
        s1 = steps(p["FirstPhaseAmplitudeMicroAmps"])
        s2 = steps(p["SecondPhaseAmplitudeMicroAmps"])
        lead_neg = p["Polarity"] == "NegativeFirst"
        if p["Shape"] == "Triphasic":
            phases = [
                (0, d1, s1, lead_neg),
                (d1, d2, s2, not lead_neg),
                (d1 + d2, d1, s1, lead_neg),
            ]
        elif p["Shape"] == "BiphasicWithInterphaseDelay":
            phases = [(0, d1, s1, lead_neg), (d1 + gap, d2, s2, not lead_neg)]
        else:
            phases = [(0, d1, s1, lead_neg), (d1, d2, s2, not lead_neg)]
        pulse_len = max(off + length for off, length, _, _ in phases)
        n_pulses = 1 if p["PulseOrTrain"] == "SinglePulse" else int(p["NumberOfStimPulses"])
        self.programs[ch] = Program(
            enabled=bool(p["StimEnabled"]),
            source=p["Source"],
            level=p["TriggerEdgeOrLevel"] == "Level",
            active_low=p["TriggerHighOrLow"] == "Low",
            phases=phases,
            pulse_len=pulse_len,
            n_pulses=n_pulses,
            period=max(1, samples(p["PulseTrainPeriodMicroseconds"])),
            post_delay=samples(p["PostTriggerDelayMicroseconds"]),
            refractory=samples(p["RefractoryPeriodMicroseconds"]),
            leading_charge_nc=s1 * step * (d1 * 1e6 / fs) * 1e-3,
        )
        self.runtime[ch].active = self._levels[p["Source"]] != (p["TriggerHighOrLow"] == "Low")

    def _now_sample(self) -> int:
        if self.speed == "realtime" and self.running:
            wall = int((time.monotonic() - self._run_wall_start) * self.sample_rate_hz)
            return max(self.next_sample, wall)
        return self.next_sample

    def digital_line(self, line: int) -> SimulatedDigitalLine:
        if not 1 <= line <= 16:
            raise ValueError(f"line = {line} must be 1 .. 16 (DigitalIn01 .. DigitalIn16)")
        return SimulatedDigitalLine(self, line)

    def pulse_source(self, source: str) -> None:
        """The source goes active for one sample (a manual key press, a TTL pulse)."""
        with self._lock:
            t = self._now_sample()
            self._source_change(source, True, t)
            self._source_change(source, False, t + 1)

    def set_source_level(self, source: str, level: bool) -> None:
        with self._lock:
            self._source_change(source, level, self._now_sample())

    def _source_change(self, source: str, level: bool, t: int) -> None:
        self._levels[source] = level
        if not self.running:
            return
        for ch, prog in self.programs.items():
            if not prog.enabled or prog.source != source or prog.n_pulses < 1:
                continue
            rt = self.runtime[ch]
            active = level != prog.active_low
            if prog.level:
                if active and not rt.holding:
                    rt.holding = True
                    rt.next_start = max(t + prog.post_delay, rt.busy_until)
                elif not active and rt.holding:
                    self._extend_held(ch, prog, rt, t)
                    rt.holding = False
            elif active and not rt.active:
                start = t + prog.post_delay
                if start >= rt.busy_until:
                    self._schedule_sequence(ch, prog, rt, start)
            rt.active = active

    def _extend_held(self, ch: str, prog: Program, rt: ChannelRuntime, until: int) -> None:
        while rt.next_start < until:
            start = rt.next_start
            self._schedule_sequence(ch, prog, rt, start)
            rt.next_start = rt.busy_until

    def _schedule_sequence(self, ch: str, prog: Program, rt: ChannelRuntime, start: int) -> None:
        e = self._channel_index[ch]
        for k in range(prog.n_pulses):
            onset = start + k * prog.period
            self._pulses.append((onset, e, prog))
            step = self.recorder.culture_step(onset)
            applied = self.culture.queue_pulse(e, prog.leading_charge_nc, step)
            if self._n_stim == self._stim_log.shape[0]:
                self._stim_log = np.resize(self._stim_log, 2 * self._n_stim)
            self._stim_log[self._n_stim] = (onset, e, prog.leading_charge_nc, step, applied)
            self._n_stim += 1
        rt.busy_until = start + prog.sequence_len + prog.refractory

    # -- data --
    @property
    def stimulation_log(self) -> list[dict[str, Any]]:
        """Every pulse the board delivered (ground truth): channel, electrode, onset_sample,
        charge_nc (leading phase), culture_step_requested, culture_step (where it acted)."""
        rows = self._stim_log[: self._n_stim]
        return [
            {
                "channel": self.channels[int(r["electrode"])],
                "electrode": int(r["electrode"]),
                "onset_sample": int(r["onset_sample"]),
                "charge_nc": float(r["charge_nc"]),
                "culture_step_requested": int(r["culture_step_requested"]),
                "culture_step": int(r["culture_step"]),
            }
            for r in rows
        ]

    def pace(self) -> int | None:
        """Lock-step (max speed): produce the next write of data now and return the number of
        spike-stream bytes it holds for a connected spike client (so the client can wait for
        exactly those). Does nothing (returns None) while stopped or in realtime mode."""
        if self.speed != "max":
            return None
        with self._lock:
            if not self.running:
                return None
            return self._produce()

    def _realtime_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                due = (
                    (
                        self._run_wall_start
                        + (self.next_sample + self.blocks_per_write * FRAMES_PER_BLOCK)
                        / self.sample_rate_hz
                    )
                    if self.running
                    else None
                )
            if due is None:
                time.sleep(0.002)
                continue
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 0.01))
                continue
            with self._lock:
                if self.running:
                    self._produce()

    def _layout(self) -> WaveformLayout:
        if self._layout_cache is not None:
            return self._layout_cache
        enabled = {}
        for ch in self.channels:
            bands = [
                b for b in ("WIDE", "LOW", "HIGH", "DC", "STIM") if self.items[ch][BAND_ITEMS[b]]
            ]
            if bands:
                enabled[ch] = bands
        self._layout_cache = WaveformLayout.from_enabled(enabled)
        self._stim_columns = {
            self._channel_index[ch]: k
            for k, (ch, band) in enumerate(self._layout_cache.words)
            if band == "STIM"
        }
        return self._layout_cache

    def _produce(self) -> int:
        """Simulate the culture over the next write and queue its waveform and spike bytes;
        returns the spike bytes that a connected spike client will receive."""
        s0 = self.next_sample
        n = self.blocks_per_write * FRAMES_PER_BLOCK
        s1 = s0 + n
        for ch, rt in self.runtime.items():
            if rt.holding:
                self._extend_held(ch, self.programs[ch], rt, s1)
        self.recorder.advance(s1)
        chunk = self.recorder.take(s1)
        spike_bytes = self._spike_records(chunk)
        self._last_spike_bytes = len(spike_bytes) if self.data["spike"].sock is not None else 0
        layout = self._layout()
        wave_bytes = b""
        if layout.n_words:
            words = self._waveform_words(layout, s0, n, chunk)
            timestamps = np.arange(s0, s1, dtype=np.int64)
            wave_bytes = encode_waveform_blocks(timestamps, words, layout)
        self._pulses = [p for p in self._pulses if p[0] + p[2].pulse_len > s1]
        self.next_sample = s1
        if self.data["spike"].sock is None:
            spike_bytes = b""
        if self.data["waveform"].sock is None:
            wave_bytes = b""
        if self.speed == "max" and self._send_queue.empty():
            # lock-step: the client read everything sent before, so the sockets have room;
            # send from this thread (no hand-over), leaving what does not fit to the sender
            wave_bytes = self._send_now(self.data["waveform"], wave_bytes)
            if wave_bytes:
                self._send_queue.put((spike_bytes, wave_bytes))
                return len(spike_bytes)
            spike_bytes = self._send_now(self.data["spike"], spike_bytes)
            if spike_bytes:
                self._send_queue.put((spike_bytes, b""))
            return self._last_spike_bytes
        self._send_queue.put((spike_bytes, wave_bytes))
        return len(spike_bytes)

    def _send_now(self, dp: DataPort, data: bytes) -> bytes:
        """Send without blocking as much of data as the socket takes; return the rest."""
        sock = dp.sock
        if sock is None or not data:
            return b""
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                k = sock.send(view[sent:], socket.MSG_DONTWAIT)
                if k == 0:
                    break
                sent += k
        except BlockingIOError:
            pass
        except OSError:
            self._disconnect_data(dp)
            return b""
        return bytes(view[sent:])

    def _spike_records(self, chunk: np.ndarray) -> bytes:
        if chunk.size == 0:
            return b""
        names, stamps, ids = [], [], []
        for s, e, a, u in chunk.tolist():
            ch = self.channels[e]
            items = self.items[ch]
            if not items["TCPDataOutputEnabledSpike"]:
                continue
            threshold = items["SpikeThresholdMicroVolts"]
            peak = -a if threshold < 0 else 0.3 * a  # negative trough; positive rebound 0.3 a
            if (threshold < 0 and peak <= threshold) or (threshold >= 0 and peak >= threshold):
                names.append(ch)
                stamps.append(s)
                ids.append(min(u, 255))
        if not names:
            return b""
        return encode_spikes(names, np.array(stamps), np.array(ids, dtype=np.uint8))

    def _waveform_words(
        self, layout: WaveformLayout, s0: int, n: int, chunk: np.ndarray
    ) -> np.ndarray:
        words = np.empty((n, layout.n_words), np.uint16)
        amp_cols = [k for k, (_, b) in enumerate(layout.words) if b in ("WIDE", "HIGH")]
        if amp_cols:
            col_of: dict[int, list[int]] = {}
            for j, k in enumerate(amp_cols):
                col_of.setdefault(self._channel_index[layout.words[k][0]], []).append(j)
            recorded = list(col_of)
            traces = np.empty((n, len(recorded)))
            self.recorder.wideband_uv(s0, chunk, recorded, traces)
            signal = np.empty((n, len(amp_cols)))
            for i, e in enumerate(recorded):
                for j in col_of[e]:
                    signal[:, j] = traces[:, i]
            for onset, e, prog in self._pulses:  # artifacts: the amplifier saturates
                for j in col_of.get(e, ()):
                    for off, length, st, negative in prog.phases:
                        a = max(onset + off - s0, 0)
                        b = min(onset + off + length - s0, n)
                        if b > a and st > 0:
                            signal[a:b, j] = -1e9 if negative else 1e9
            np.clip(np.rint(signal / AMPLIFIER_UV_PER_BIT) + AMPLIFIER_OFFSET, 0, 65535, out=signal)
            words[:, amp_cols] = signal.astype(np.uint16)
        for k, (_ch, band) in enumerate(layout.words):
            if band == "LOW":
                words[:, k] = AMPLIFIER_OFFSET  # no local field potential in the model
            elif band == "DC":
                words[:, k] = 512  # 0 V electrode DC: round(V / -0.01923) + 512
            elif band == "STIM":
                words[:, k] = 0
        for onset, e, prog in self._pulses:
            k = self._stim_columns.get(e)
            if k is None:
                continue
            for off, length, st, negative in prog.phases:
                a = max(onset + off - s0, 0)
                b = min(onset + off + length - s0, n)
                if b > a:
                    words[a:b, k] = stim_word(st, negative)
        return words

    # -- data ports --
    def _accept_data(self, dp: DataPort) -> None:
        while not self._stop.is_set():
            if not dp.pending.wait(0.05):
                continue
            try:
                sock, _ = dp.listener.accept()
            except (socket.timeout, OSError):
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                dp.sock = sock
                dp.status = "Connected"
                dp.pending.clear()

    def _disconnect_data(self, dp: DataPort) -> None:
        sock, dp.sock = dp.sock, None
        dp.status = "Disconnected"
        dp.pending.clear()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _send_loop(self) -> None:
        """Write each produced block to the data clients, waveform first (RHX's order)."""
        while True:
            item = self._send_queue.get()
            if item is None:
                return
            spike_bytes, wave_bytes = item
            try:
                if wave_bytes:
                    self._send(self.data["waveform"], wave_bytes)
                if spike_bytes:
                    self._send(self.data["spike"], spike_bytes)
            except Exception:  # noqa: BLE001 - the sender must outlive any one failure
                log.exception("simulated RHX: sending data failed")

    def _send(self, dp: DataPort, data: bytes) -> bool:
        sock = dp.sock
        if sock is None:
            return False
        try:
            sock.sendall(data)
            return True
        except OSError:
            with self._lock:
                if dp.sock is sock:
                    self._disconnect_data(dp)
            return False
