"""Intan RHX over TCP: the command channel, the data streams, the stimulator back end and the
spike source (hardware.md section 4; bytes and texts in rhx_protocol.py).

One `RHXClient` holds the command connection (RHX serves one command client at a time), so the
stimulator back end and the spike source of a rig share it:

    client = RHXClient("127.0.0.1", 5000)
    stimulator = MEAStimulator(RHXStimulatorBackend(client, sample_rate_hz=30000,
                                                    stim_step_ua=1.0))
    spikes = RHXSpikeSource(client, blocks_per_write=1)

Command channel. Every batch of commands is sent in one write followed by a sentinel
`get runmode`; everything RHX answers up to the sentinel's "Return: RunMode ..." belongs to
the batch. So successful sets (which answer nothing) are confirmed, errors are attributed to
their command and raised as typed errors (RHXUnknownCommand, RHXInvalidValue, RHXNotNow), and
the run mode is always known. Uploading stimulation parameters while the controller runs is
refused by the client before anything is sent (DeviceStateError), as RHX itself refuses it.
A connection that breaks raises ConnectionLost; `reconnect()` opens a new one.

Data streams. The spike source enables, per channel, the spike stream and the STIM band of
the waveform stream (the stimulation actually delivered, read back on the device clock); the
waveform stream, even when only STIM words are enabled, is the clock that says a block is
complete. Timestamps restart at 0 each time the controller starts running; the client keeps
a session clock across runs (`session_sample`).

Lock-step simulation: a client constructed with `pace=callable` calls it before waiting for
each data block; the simulated RHX server uses this to produce exactly one block per read
(max speed, deterministic) and returns how many spike-stream bytes belong to that block, so
the client waits for exactly those. Real rigs leave it None: spikes that arrive after their
waveform block are delivered with the next block, with their true timestamps.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from drivers.errors import (
    DeviceError,
    DeviceNotFound,
    DeviceStateError,
    DeviceTimeout,
    LimitError,
)
from drivers.mea.errors import ConnectionLost
from drivers.mea.rhx_protocol import (
    KEYS,
    MAX_AMPLITUDE_STEPS,
    MAX_PHASE_US,
    MAX_PULSE_TRAIN_PERIOD_US,
    MAX_STIM_PULSES,
    RUN_MODES,
    SAMPLE_RATES_HZ,
    STIM_STEP_SIZES_UA,
    channel_name,
    count_returns,
    encode_commands,
    error_from_reply,
    execute_command,
    get_command,
    parse_channel_name,
    parse_replies,
    set_command,
)
from drivers.mea.stimulator import FireReceipt, MEABackend
from drivers.mea.stimulus import MEAStimulus, StimulatorCapabilities

log = logging.getLogger(__name__)

SENTINEL = "get runmode"
MAX_BATCH_BYTES = 1024
"""Commands per write are limited so a batch arrives in one piece (RHX parses each read on
its own; a command split across two TCP segments would be misread)."""


def default_channels(n_electrodes: int, channels_per_port: int = 32) -> list[str]:
    """Channel names for n electrodes on consecutive ports: A-000 .. A-031, B-000, ..."""
    ports = "ABCDEFGH"
    return [
        channel_name(ports[i // channels_per_port], i % channels_per_port)
        for i in range(n_electrodes)
    ]


class RHXClient:
    """The command connection to RHX, shared by the devices of a rig (see module doc)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        command_port: int = 5000,
        *,
        timeout_s: float = 2.0,
        pace: Callable[[], int | None] | None = None,
    ) -> None:
        self.host = host
        self.command_port = int(command_port)
        self.timeout_s = float(timeout_s)
        self.pace = pace
        self._sock: socket.socket | None = None
        self._lock = threading.RLock()
        self._users = 0
        self.run_mode = "Stop"
        self.sample_rate_hz: float | None = None
        self.stim_step_ua: float | None = None
        self.controller_type: str | None = None
        self.commands_sent = 0
        self.bytes_sent = 0
        self.last_send_s = math.nan  # time.monotonic() when the last batch left the host
        self.warnings: list[str] = []
        self.lead_negative: dict[str, bool] = {}  # channel -> leading phase negative (uploaded)
        self._epoch_offset = 0
        self._max_raw_seen = -1
        self.epochs = 0

    # -- connection --
    @property
    def connected(self) -> bool:
        return self._sock is not None

    def acquire(self) -> None:
        """Connect on first use (reference counted between the devices sharing the client)."""
        with self._lock:
            if self._users == 0 and not self.connected:
                self.connect()
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users == 0:
                self.close()

    def connect(self) -> None:
        with self._lock:
            if self.connected:
                return
            try:
                sock = socket.create_connection(
                    (self.host, self.command_port), timeout=self.timeout_s
                )
            except OSError as exc:
                raise DeviceNotFound(
                    f"no Intan RHX command server at {self.host}:{self.command_port} ({exc}): "
                    "start RHX, open Network > Remote TCP Control and click Connect, or use "
                    "the simulated rig (--rig sim-culture)"
                ) from exc
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            values = self.command(
                get_command("type"),
                get_command("sampleratehertz"),
                get_command("stimstepsizemicroamps"),
            )
            self.controller_type = values[0].split()[-1]
            self.sample_rate_hz = float(values[1].split()[-1])
            step = values[2].split()[-1]
            self.stim_step_ua = float(step) if step not in ("Min", "Max") else None

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.close()
                finally:
                    self._sock = None

    def reconnect(self) -> None:
        """Drop the old command connection (if any) and open a new one."""
        with self._lock:
            self.close()
            self.connect()

    def _timed_out(self, received: str) -> DeviceTimeout:
        """A late answer would be read as the answer to the next batch: close the channel."""
        self.close()
        return DeviceTimeout(
            f"RHX at {self.host}:{self.command_port} did not answer within {self.timeout_s:g} s "
            f"(received so far: {received!r}); the connection was closed, call reconnect()"
        )

    def _lost(self, why: str) -> ConnectionLost:
        self.close()
        return ConnectionLost(
            f"connection to RHX at {self.host}:{self.command_port} lost: {why}; call reconnect()"
        )

    # -- command channel --
    def command(self, *commands: str) -> list[str]:
        """Send commands (in batches, each confirmed by the sentinel); return the bodies of
        their "Return:" replies in order. Raises the typed error of the first error reply
        (after reading the whole batch, so the channel stays in step)."""
        values: list[str] = []
        batch: list[str] = []
        size = 0
        for c in commands:
            n = len(c) + 1
            if batch and size + n > MAX_BATCH_BYTES:
                values += self._batch(batch)
                batch, size = [], 0
            batch.append(c)
            size += n
        if batch:
            values += self._batch(batch)
        return values

    def _batch(self, commands: list[str]) -> list[str]:
        with self._lock:
            if self._sock is None:
                raise DeviceStateError(
                    f"RHX client for {self.host}:{self.command_port} is not "
                    "connected; nothing was sent (call connect/reconnect)"
                )
            data = encode_commands(commands + [SENTINEL])
            expected = 1 + sum(1 for c in commands if c.strip().lower() == SENTINEL)
            try:
                self._sock.sendall(data)
            except OSError as exc:
                raise self._lost(f"sending failed ({exc})") from exc
            self.last_send_s = time.monotonic()
            self.commands_sent += len(commands)
            self.bytes_sent += len(data)
            text = self._read_until(expected)
        replies = parse_replies(text)
        returns = [r for r in replies if r.kind == "return"]
        sentinel = returns.pop()
        self.run_mode = sentinel.text.split()[-1]
        errors = [r for r in replies if r.kind == "error"]
        for w in (r for r in replies if r.kind == "warning"):
            log.warning("RHX warning: %s", w.text)
            self.warnings.append(w.text)
        if errors:
            first = error_from_reply(errors[0], commands + [SENTINEL])
            first.all_errors = [error_from_reply(e, commands + [SENTINEL]) for e in errors]
            raise first
        return [r.text for r in returns]

    def _read_until(self, n_sentinels: int) -> str:
        assert self._sock is not None
        chunks: list[bytes] = []
        text = ""
        deadline = time.monotonic() + self.timeout_s
        while count_returns(text, "RunMode") < n_sentinels:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out(text)
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except socket.timeout as exc:
                raise self._timed_out(text) from exc
            except OSError as exc:
                raise self._lost(f"receiving failed ({exc})") from exc
            if not data:
                raise self._lost("the server closed the connection")
            chunks.append(data)
            text = b"".join(chunks).decode("latin-1")
        return text

    def get(self, parameter: str) -> str:
        """The value RHX returns for `get parameter` (the text after the parameter name)."""
        body = self.command(get_command(parameter))[0]
        return body.split(" ", 1)[1] if " " in body else body

    def set(self, parameter: str, value: object) -> None:
        self.command(set_command(parameter, value))

    def execute(self, action: str, parameter: str | None = None) -> None:
        self.command(execute_command(action, parameter))

    def refresh_run_mode(self) -> str:
        self._batch([])  # just the sentinel
        return self.run_mode

    @property
    def running(self) -> bool:
        return self.run_mode != "Stop"

    def set_run_mode(self, mode: str) -> None:
        """'run', 'stop', 'record' or 'trigger' (RHX refuses run when already running, and
        stop when stopped: this call does nothing if the mode is already right)."""
        mode = mode.lower()
        if mode.capitalize() not in RUN_MODES:
            raise ValueError(f"run mode {mode!r} must be one of run, stop, record, trigger")
        with self._lock:
            if self.run_mode.lower() == mode:
                return
            if mode != "stop" and self.running:
                self.set("runmode", "stop")
            starting = mode != "stop"
            self.set("runmode", mode)
            if starting:
                self._new_epoch()

    def upload_stim_parameters(self, channel: str | None = None) -> None:
        """execute uploadstimparameters [channel]: refused here, before sending, while the
        controller runs (RHX refuses it then: parameters are uploaded while stopped)."""
        with self._lock:
            if self.running:
                raise DeviceStateError(
                    f"cannot upload stimulation parameters while RHX is in run mode "
                    f"{self.run_mode}: stop the controller first (nothing was sent)"
                )
            self.execute("uploadstimparameters", channel)

    def current_timestamp(self) -> int:
        """RHX's current timestamp (samples since the run started), -1 when stopped."""
        return int(self.command(get_command("currenttimestamp"))[0].split()[-1])

    # -- session clock --
    def _new_epoch(self) -> None:
        if self._max_raw_seen >= 0:
            self._epoch_offset += self._max_raw_seen + 1
            self.epochs += 1
        self._max_raw_seen = -1

    def session_sample(self, raw: np.ndarray | int) -> np.ndarray | int:
        """Device timestamps of this run -> samples since the first run of the session."""
        m = int(np.max(raw)) if np.size(raw) else -1
        if m > self._max_raw_seen:
            self._max_raw_seen = m
        return raw + self._epoch_offset


# -- stimulator back end --


class RHXStimulatorBackend(MEABackend):
    """Stimulation through RHX: per-channel parameters, upload while stopped, key triggers
    (F1..F8 via `execute manualstimtrigger{pulse,on,off}`) and digital-input triggers
    (DigitalIn01..16, driven by the rig through `digital_lines`: objects with pulse() and
    set(level), e.g. a DAQ digital output wired to the controller's input).

    `electrodes` maps electrode names (what stimuli use) to RHX channels; by default the
    channel names themselves. `sample_rate_hz` and `stim_step_ua` come from the rig file so
    stimuli are validated before connecting; connect() checks that RHX agrees.
    """

    name = "Intan RHX"

    def __init__(
        self,
        client: RHXClient,
        *,
        sample_rate_hz: float = 30000.0,
        stim_step_ua: float = 1.0,
        electrodes: dict[str, str] | None = None,
        digital_lines: dict[int, Any] | None = None,
        max_charge_per_phase_nc: float = math.inf,
        max_rate_hz: float = 1000.0,
    ) -> None:
        if sample_rate_hz not in SAMPLE_RATES_HZ:
            raise LimitError(
                f"sample_rate_hz = {sample_rate_hz:g} must be one of "
                f"{', '.join(str(r) for r in SAMPLE_RATES_HZ)} (RHS controller)"
            )
        if stim_step_ua not in STIM_STEP_SIZES_UA:
            raise LimitError(
                f"stim_step_ua = {stim_step_ua:g} must be one of "
                f"{', '.join(f'{s:g}' for s in STIM_STEP_SIZES_UA)} uA"
            )
        self.client = client
        self.sample_rate_hz = float(sample_rate_hz)
        self.stim_step_ua = float(stim_step_ua)
        self.electrodes = dict(electrodes) if electrodes else {c: c for c in default_channels(64)}
        for _label, ch in self.electrodes.items():
            parse_channel_name(ch)
        self.digital_lines = dict(digital_lines or {})
        for line in self.digital_lines:
            if not 1 <= line <= 16:
                raise LimitError(f"digital line {line} must be 1 .. 16 (DigitalIn01 .. 16)")
        self._caps = StimulatorCapabilities(
            name=self.name,
            electrodes=tuple(self.electrodes),
            amplitude_step_ua=self.stim_step_ua,
            max_amplitude_ua=MAX_AMPLITUDE_STEPS * self.stim_step_ua,
            time_step_us=1e6 / self.sample_rate_hz,
            max_phase_us=MAX_PHASE_US,
            max_interphase_us=MAX_PHASE_US,
            max_pulses=MAX_STIM_PULSES,
            max_rate_hz=float(max_rate_hz),
            min_rate_hz=1e6 / MAX_PULSE_TRAIN_PERIOD_US,
            max_charge_per_phase_nc=max_charge_per_phase_nc,
        )
        self._programmed: dict[str, dict[str, str]] = {}  # channel -> parameters set
        self._held_keys: set[str] = set()
        self._connected = False
        self._sent_before = 0

    # -- MEABackend --
    def capabilities(self) -> StimulatorCapabilities:
        return self._caps

    def trigger_slots(self) -> tuple[str, ...]:
        return KEYS + tuple(f"DigitalIn{n:02d}" for n in sorted(self.digital_lines))

    @property
    def connected(self) -> bool:
        return self._connected and self.client.connected

    @property
    def commands_sent(self) -> int:
        return self.client.commands_sent

    def connect(self) -> None:
        self.client.acquire()
        self._connected = True
        self._check_device()

    def _check_device(self) -> None:
        c = self.client
        if c.controller_type != "ControllerStimRecord":
            raise DeviceError(
                f"RHX reports controller type {c.controller_type!r}: stimulation "
                "needs an RHS stim/record controller (ControllerStimRecord)"
            )
        if c.sample_rate_hz != self.sample_rate_hz:
            raise DeviceError(
                f"RHX samples at {c.sample_rate_hz:g} Hz but the rig file says "
                f"{self.sample_rate_hz:g} Hz: fix stimulator.sample_rate_hz"
            )
        if c.stim_step_ua != self.stim_step_ua:
            raise DeviceError(
                f"RHX uses a stimulation step of {c.stim_step_ua} uA but the rig "
                f"file says {self.stim_step_ua:g} uA: fix stimulator.stim_step_ua"
            )

    def disconnect(self) -> None:
        if self._connected:
            self._connected = False
            self._held_keys.clear()
            self.client.release()

    def reconnect(self) -> None:
        self.client.reconnect()
        self._connected = True
        self._held_keys.clear()
        self._check_device()

    def verify_programmed(self) -> bool:
        """After a reconnection: does RHX still hold the parameters we set?"""
        try:
            for ch, params in self._programmed.items():
                for key in ("StimEnabled", "Source", "FirstPhaseAmplitudeMicroAmps"):
                    got = self.client.get(f"{ch}.{key}")
                    if got.lower() != params[key].lower() and not _same_number(got, params[key]):
                        return False
        except DeviceError:
            return False
        return bool(self._programmed)

    def can_program_now(self) -> bool:
        return not self.client.running

    def ready_to_fire(self) -> bool:
        return self.client.running

    def arm(self) -> None:
        self.client.set_run_mode("run")

    def channel_parameters(self, stim: MEAStimulus, slot: str) -> dict[str, dict[str, str]]:
        """RHX parameter values per channel for a validated stimulus bound to a slot."""
        source = f"KeyPress{slot}" if slot in KEYS else slot
        out = {}
        for et in stim.trains:
            tr, p = et.train, et.train.pulse
            if p.shape == "triphasic":
                shape = "Triphasic"
            elif p.interphase_us > 0:
                shape = "BiphasicWithInterphaseDelay"
            else:
                shape = "Biphasic"
            period_us = tr.period_us if tr.rate_hz else 0.0
            pulse_train_period = period_us if tr.n_pulses > 1 else max(period_us, p.duration_us)
            if stim.repeat_while_held:
                sequence_us = (tr.n_pulses - 1) * period_us + p.duration_us
                refractory = max(0.0, tr.n_pulses * period_us - sequence_us)
            else:
                refractory = 0.0
            # order matters: RHX checks the dependent timings after each set and warns about
            # intermediate states, so settle times go first and the period last
            params = {
                "PreStimAmpSettleMicroseconds": "0",
                "PostStimAmpSettleMicroseconds": "0",
                "PostStimChargeRecovOnMicroseconds": "0",
                "PostStimChargeRecovOffMicroseconds": "0",
                "PostTriggerDelayMicroseconds": "0",
                "Shape": shape,
                "Polarity": "NegativeFirst" if p.cathodic_first else "PositiveFirst",
                "FirstPhaseDurationMicroseconds": _num(p.first_phase_us),
                "SecondPhaseDurationMicroseconds": _num(float(p.second_phase_us or 0)),
                "InterphaseDelayMicroseconds": _num(p.interphase_us),
                "FirstPhaseAmplitudeMicroAmps": _num(p.first_phase_ua),
                "SecondPhaseAmplitudeMicroAmps": _num(float(p.second_phase_ua or 0)),
                "PulseOrTrain": "PulseTrain" if tr.n_pulses > 1 else "SinglePulse",
                "NumberOfStimPulses": str(tr.n_pulses),
                "PulseTrainPeriodMicroseconds": _num(pulse_train_period),
                "RefractoryPeriodMicroseconds": _num(refractory),
                "Source": source,
                "TriggerEdgeOrLevel": "Level" if stim.repeat_while_held else "Edge",
                "TriggerHighOrLow": "High",
                "StimEnabled": "True",
            }
            for e in et.electrodes:
                out[self.electrodes[e]] = params
        return out

    def program(self, assignments: Sequence[tuple[str, MEAStimulus]]) -> None:
        if self.client.running:
            raise DeviceStateError("cannot program RHX while it runs; nothing was sent")
        wanted: dict[str, dict[str, str]] = {}
        for slot, stim in assignments:
            wanted.update(self.channel_parameters(stim, slot))
        commands = []
        for ch in self._programmed:
            if ch not in wanted:
                commands.append(set_command(f"{ch}.stimenabled", False))
        for ch, params in wanted.items():
            # stimenabled last: RHX checks the other settings when a channel is enabled
            for key, value in params.items():
                if key != "StimEnabled":
                    commands.append(f"set {ch}.{key.lower()} {value.lower()}")
            commands.append(set_command(f"{ch}.stimenabled", True))
        self.client.command(*commands)
        self.client.upload_stim_parameters()
        self._programmed = wanted
        for ch, params in wanted.items():
            self.client.lead_negative[ch] = params["Polarity"] == "NegativeFirst"

    def fire(self, slot: str, action: str) -> FireReceipt:
        if slot in KEYS:
            verb = {
                "pulse": "manualstimtriggerpulse",
                "on": "manualstimtriggeron",
                "off": "manualstimtriggeroff",
            }[action]
            # the trigger and the timestamp query in one batch: RHX takes the trigger at the
            # timestamp it reports
            values = self.client.command(
                execute_command(verb, slot.lower()), get_command("currenttimestamp")
            )
            host = self.client.last_send_s
            raw = int(values[0].split()[-1])
        else:
            line = self.digital_lines[int(slot[-2:])]
            if action == "pulse":
                line.pulse()
            else:
                line.set(action == "on")
            host = time.monotonic()
            raw = self.client.current_timestamp()
        if action == "on":
            self._held_keys.add(slot)
        elif action == "off":
            self._held_keys.discard(slot)
        sample = int(self.client.session_sample(max(raw, 0)))
        return FireReceipt(
            host_time_s=host, device_time_s=sample / self.sample_rate_hz, device_sample=sample
        )

    def disarm(self) -> None:
        """Release held triggers, stop the controller (RHX can only disable stimulation by an
        upload, and uploads only while stopped), disable every programmed channel, upload."""
        c = self.client
        commands = [
            execute_command("manualstimtriggeroff", k.lower())
            for k in sorted(self._held_keys)
            if k in KEYS
        ]
        for slot in sorted(self._held_keys):
            if slot not in KEYS:
                self.digital_lines[int(slot[-2:])].set(False)
        if commands:
            c.command(*commands)
        self._held_keys.clear()
        c.set_run_mode("stop")
        if self._programmed:
            c.command(*(set_command(f"{ch}.stimenabled", False) for ch in self._programmed))
            c.upload_stim_parameters()
            self._programmed = {}

    def snapshot(self) -> dict[str, Any]:
        return {
            "host": self.client.host,
            "command_port": self.client.command_port,
            "sample_rate_hz": self.sample_rate_hz,
            "stim_step_ua": self.stim_step_ua,
            "programmed_channels": sorted(self._programmed),
            "digital_lines": sorted(self.digital_lines),
        }


def _num(x: float) -> str:
    return f"{x:.10g}"


def _same_number(a: str, b: str) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    except ValueError:
        return False
