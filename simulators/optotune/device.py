"""The simulated Optotune Lens Driver 4 with its lens, byte for byte.

It receives the bytes a driver writes and returns the bytes the real driver board would send
(hardware.md section 1), with the physics of simulators/optotune/model.py behind them:

- frames are cut by opcode length; `Start` -> `Ready\\r\\n` (and DC mode at 0 mA); a frame
  whose CRC does not match, or bytes that begin no known opcode, get `N\\r\\n` (unknown bytes
  are discarded up to the end of what arrived);
- queries reply with their echo, payload, CRC (low byte first) and CRLF; `Aw`, `PwDA`,
  `PwUA`, `PwLA`, `PwFA` are silent;
- modes: DC current (1), sinusoidal (2), triangular (3), rectangular (4), focal power (5,
  closed loop with the temperature sensor's reading), analog (6). A command for another mode
  (`Aw` outside DC mode, `PwDA` outside focal power mode) is ignored, silently;
- limits: currents are clamped to the software limits (`CwUA`/`CwLA`, themselves clamped to
  the full-scale code), focal power to the range the lens reports; the range is what the
  current limits reach at the ends of the temperature limits (`PwTA`): the maximum at the
  upper current and lower temperature, the minimum at the lower current and upper temperature,
  rounded inwards. Its status byte is 1 if that range is empty or the sensor reads outside
  the temperature limits, else 0;
- analog mode drives lower + analog_input_fraction x (upper - lower) software limit current
  (there is no analog input in the simulation; set the fraction on the object);
- faults (LensFaults) for testing the driver's error handling.

Simulator assumptions, where the references are silent: `Start` also selects DC mode; `PrDA`
reports the set focal power in focal power mode and the estimate from current and sensor
temperature otherwise; a mode switch keeps the output current; both `V` and `V\\0` are
accepted as the version query.
"""

from __future__ import annotations

import itertools
import math
import struct
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drivers.optotune import codec
from drivers.optotune.codec import LensMode
from simulators.optotune.clock import LensClock, RealTimeClock
from simulators.optotune.model import LensMechanics, LensModel

SCHEME = "optotune_sim"

#: opcode -> frame length on the wire (with CRC; `Start` has none). `V` is handled apart.
FRAME_LENGTHS: dict[bytes, int] = {
    b"Start": 5,
    b"Aw": 6,
    b"Ar": 6,
    b"CrMA": 8,
    b"CrUA": 8,
    b"CrLA": 8,
    b"CwUA": 8,
    b"CwLA": 8,
    **{b"Mw" + letter + b"A": 6 for letter in codec.MODE_LETTERS.values()},
    b"MMA": 5,
    b"PwDA": 10,
    b"PrDA": 10,
    b"PwUA": 10,
    b"PwLA": 10,
    b"PwFA": 10,
    b"PwTA": 10,
    b"TCA": 5,
    b"H": 3,
    b"F": 3,
    b"X": 3,
    b"IR": 12,
}
_LETTER_MODES = {letter: mode for mode, letter in codec.MODE_LETTERS.items()}
_WAVEFORM_OF = {
    LensMode.SINUSOIDAL: "sinusoidal",
    LensMode.TRIANGULAR: "triangular",
    LensMode.RECTANGULAR: "rectangular",
}


@dataclass
class LensFaults:
    """Faults to inject. Commands are numbered from 1 in the order frames arrive (the
    handshake and refused frames count)."""

    corrupt_crc_at: set[int] = field(default_factory=set)  # replies with a wrong CRC
    drop_bytes_at: set[int] = field(default_factory=set)  # replies that lose bytes ...
    drop_count: int = 2  # ... this many, from their start
    stop_after: int | None = None  # answer only the first N commands, then nothing
    stop_after_s: float | None = None  # answer nothing from this lens-clock time on
    reply_delay_s: float = 0.0  # slow replies (wall time, applied by the transport)
    wire_delay: bool = True  # bytes take 10 bits / baud on the wire (transport)


@dataclass(frozen=True)
class LogEntry:
    t_s: float
    number: int
    received: bytes
    replied: bytes
    note: str = ""


_REGISTRY: weakref.WeakValueDictionary[str, SimulatedLens] = weakref.WeakValueDictionary()
_NAMES = itertools.count(1)
_REGISTRY_LOCK = threading.Lock()


class SimulatedLens:
    """A Lens Driver 4 with an EL lens. Address it as `lens.url` (optotune_sim://NAME);
    `optotune_sim://` (no name) makes a fresh one on the wall clock per connection."""

    def __init__(
        self,
        model: LensModel | None = None,
        clock: LensClock | None = None,
        *,
        name: str | None = None,
        firmware_type: str = "A",
        max_current_ma: float = 292.84,
        full_scale: int = 4095,
        lower_limit_ma: float | None = None,
        upper_limit_ma: float | None = None,
        temperature_limits_c: tuple[float, float] = (20.0, 40.0),
        lens_serial: str = "EL103001",
        device_id: str = "LD4SIM01",
        firmware_version: tuple[int, int, int, int] = (1, 9, 2, 0),
        firmware_branch: int = 1,
        analog_input_fraction: float = 0.5,
        faults: LensFaults | None = None,
    ) -> None:
        self.model = model or LensModel()
        self.clock: LensClock = clock or RealTimeClock()
        if len(firmware_type) != 1 or not firmware_type.isascii():
            raise ValueError(f"firmware_type = {firmware_type!r} must be one ASCII letter")
        if full_scale not in codec.FULL_SCALE_CODES:
            raise ValueError(f"full_scale = {full_scale!r}: choose one of {codec.FULL_SCALE_CODES}")
        if not (math.isfinite(max_current_ma) and 0 < max_current_ma <= 327.67):
            raise ValueError(
                f"max_current_ma = {max_current_ma!r} must be in (0, 327.67] mA "
                "(reported in a 16-bit count of 10 uA)"
            )
        for label, text in (("lens_serial", lens_serial), ("device_id", device_id)):
            if len(text) > 8 or not text.isascii():
                raise ValueError(f"{label} = {text!r} must be at most 8 ASCII characters")
        self.firmware_type = firmware_type
        self.max_current_ma = float(max_current_ma)
        self.full_scale = int(full_scale)
        self.lens_serial = lens_serial
        self.device_id = device_id
        self.firmware_version = tuple(int(v) for v in firmware_version)
        self.firmware_branch = int(firmware_branch)
        self.analog_input_fraction = float(analog_input_fraction)
        self.faults = faults or LensFaults()

        lower = -self.max_current_ma if lower_limit_ma is None else lower_limit_ma
        upper = self.max_current_ma if upper_limit_ma is None else upper_limit_ma
        self.lower_code = self._clamp_code(self._code(lower))
        self.upper_code = self._clamp_code(self._code(upper))
        self.temperature_limits_c = (float(temperature_limits_c[0]), float(temperature_limits_c[1]))

        self._lock = threading.RLock()
        self._rx = bytearray()
        self.t0_s = float(self.clock.now_s())  # power-on: the thermal model's origin
        self.mode = LensMode.CURRENT
        self.current_code = 0
        self.focal_power_target_dpt = 0.0
        self.signal_lower_code = 0
        self.signal_upper_code = 0
        self.signal_millihertz = 1000
        self.mechanics = LensMechanics(self.model, self.t0_s, 0.0)
        self.frames_received = 0
        self.log: deque[LogEntry] = deque(maxlen=10000)

        with _REGISTRY_LOCK:
            if name is None:
                name = f"lens{next(_NAMES)}"
                while name in _REGISTRY:
                    name = f"lens{next(_NAMES)}"
            elif name in _REGISTRY:
                raise ValueError(f"a simulated lens named {name!r} exists already")
            if not name.isidentifier():
                raise ValueError(f"name = {name!r} must be letters, digits and '_'")
            self.name = name
            _REGISTRY[name] = self

    @property
    def url(self) -> str:
        return f"{SCHEME}://{self.name}"

    # -- what the simulated world reads ---------------------------------------------------------
    def focal_power_dpt_at(self, t_s: float) -> float:
        """The lens's true focal power at lens-clock time t_s (dynamics, drift, compensation)."""
        return float(self.focal_power_trace_dpt(np.array([t_s]))[0])

    def focal_power_trace_dpt(self, times_s: np.ndarray) -> np.ndarray:
        """True focal power at many lens-clock times (vectorised)."""
        with self._lock:
            t = np.asarray(times_s, dtype=np.float64)
            deflection, _, _, compensated = self.mechanics.evaluate(t)
            m = self.model
            since = t - self.t0_s
            thermal = m.thermal_offset_dpt(m.lens_temperature_c(since))
            compensation = compensated * m.thermal_offset_dpt(m.sensor_reading_c(since))
            return deflection + m.focal_power_at_zero_ma_dpt + thermal - compensation

    def lens_temperature_c_at(self, t_s: float) -> float:
        return float(self.model.lens_temperature_c(t_s - self.t0_s))

    def sensor_reading_c_at(self, t_s: float) -> float:
        return float(self.model.sensor_reading_c(t_s - self.t0_s))

    def current_ma_at(self, t_s: float) -> float:
        """The output current the driver board drives at t_s, mA."""
        with self._lock:
            return self._drive_current_ma(t_s)

    # -- bytes in, bytes out ----------------------------------------------------------------------
    def receive(self, data: bytes) -> bytes:
        """Feed bytes from the host; return the bytes the board sends back."""
        out = bytearray()
        with self._lock:
            self._rx += data
            while self._rx:
                length = self._frame_length(self._rx)
                if length is None:
                    break  # a frame is still arriving
                if length == 0:
                    frame = bytes(self._rx)
                    self._rx.clear()
                else:
                    frame = bytes(self._rx[:length])
                    del self._rx[:length]
                out += self._handle(frame, known=length != 0)
        return bytes(out)

    def _frame_length(self, buf: bytearray) -> int | None:
        """Length of the frame at the start of buf; None: need more bytes; 0: not a frame."""
        if buf[:1] == b"V":
            if len(buf) < 3:
                return None
            if bytes(buf[1:3]) == codec.crc_bytes(b"V"):
                return 3
            return 4 if len(buf) >= 4 else None
        waiting = False
        for opcode, length in FRAME_LENGTHS.items():
            if buf.startswith(opcode):
                return length if len(buf) >= length else None
            if opcode.startswith(bytes(buf)):
                waiting = True
        return None if waiting else 0

    def _handle(self, frame: bytes, known: bool) -> bytes:
        self.frames_received += 1
        number = self.frames_received
        t = float(self.clock.now_s())
        faults = self.faults
        if (faults.stop_after is not None and number > faults.stop_after) or (
            faults.stop_after_s is not None and t - self.t0_s >= faults.stop_after_s
        ):
            self.log.append(LogEntry(t, number, frame, b"", "not answering (fault)"))
            return b""
        note = ""
        if frame == codec.HANDSHAKE:
            self._set_dc(t, 0)
            reply = codec.HANDSHAKE_REPLY
        elif not known:
            reply, note = codec.REFUSAL, "not a frame of the protocol"
        elif frame[-2:] != codec.crc_bytes(frame[:-2]):
            reply, note = codec.REFUSAL, "bad CRC"
        else:
            payload, note = self._execute(frame[:-2], t)
            reply = codec.reply_frame(payload) if payload is not None else b""
        if (
            reply
            and number in faults.corrupt_crc_at
            and reply.endswith(codec.TERMINATOR)
            and reply not in (codec.REFUSAL, codec.HANDSHAKE_REPLY)
        ):
            reply = reply[:-4] + bytes([reply[-4] ^ 0xFF]) + reply[-3:]
            note += " (fault: reply CRC corrupted)"
        if reply and number in faults.drop_bytes_at:
            reply = reply[faults.drop_count :]
            note += f" (fault: {faults.drop_count} bytes dropped)"
        self.log.append(LogEntry(t, number, frame, reply, note.strip()))
        return reply

    # -- the command set --------------------------------------------------------------------------
    def _execute(self, body: bytes, t: float) -> tuple[bytes | None, str]:
        """Run one checked command; return (reply payload or None, log note)."""
        op2, op3, op4 = body[:2], body[:3], body[:4]
        if op2 == b"Ar":
            return b"A" + _h(self._code(self._drive_current_ma(t))), ""
        if op2 == b"Aw":
            if self.mode is not LensMode.CURRENT:
                return None, f"ignored: Aw in {self.mode.label} mode"
            (code,) = struct.unpack(">h", body[2:4])
            clamped = min(max(code, self.lower_code), self.upper_code)
            self._set_dc(t, clamped)
            return None, "" if clamped == code else f"current code {code} clamped to {clamped}"
        if op4 == b"CrMA":
            return b"CMA" + _h(int(round(self.max_current_ma * codec.MAX_CURRENT_LSB_PER_MA))), ""
        if op4 in (b"CrUA", b"CrLA"):
            code = self.upper_code if op4 == b"CrUA" else self.lower_code
            return b"C" + op4[2:4] + _h(code), ""
        if op4 in (b"CwUA", b"CwLA"):
            (code,) = struct.unpack(">h", body[4:6])
            code = self._clamp_code(code)
            if op4 == b"CwUA":
                self.upper_code = code
            else:
                self.lower_code = code
            if self.mode is LensMode.CURRENT:
                self._set_dc(t, min(max(self.current_code, self.lower_code), self.upper_code))
            return b"C" + op4[2:4] + _h(code), ""
        if op2 == b"Mw":
            return self._set_mode(_LETTER_MODES[body[2:3]], t)
        if op3 == b"MMA":
            return b"MMA" + bytes([int(self.mode)]), ""
        if op4 == b"PwDA":
            if self.mode is not LensMode.FOCAL_POWER:
                return None, f"ignored: PwDA in {self.mode.label} mode"
            (raw,) = struct.unpack(">h", body[4:6])
            dpt = codec.focal_power_dpt(raw, self.firmware_type)
            lo, hi = self._range_dpt()
            self._set_focal_power(t, min(max(dpt, lo), hi))
            return (
                None,
                "" if lo <= dpt <= hi else f"focal power {dpt:g} clamped to [{lo:g}, {hi:g}]",
            )
        if op4 == b"PrDA":
            return b"PD" + _h(
                codec.focal_power_raw(self._reported_focal_power(t), self.firmware_type)
            ), ""
        if op4 in (b"PwUA", b"PwLA"):
            (code,) = struct.unpack(">h", body[4:6])
            code = min(max(code, self.lower_code), self.upper_code)
            if op4 == b"PwUA":
                self.signal_upper_code = code
            else:
                self.signal_lower_code = code
            self._restart_signal(t)
            return None, ""
        if op4 == b"PwFA":
            (self.signal_millihertz,) = struct.unpack(">I", body[4:8])
            self._restart_signal(t)
            return None, ""
        if op4 == b"PwTA":
            upper_raw, lower_raw = struct.unpack(">hh", body[4:8])
            self.temperature_limits_c = (
                codec.temperature_c(lower_raw),
                codec.temperature_c(upper_raw),
            )
            return b"PT" + self._range_fields(t), ""
        if op3 == b"TCA":
            return b"TCA" + _h(codec.temperature_raw(self.sensor_reading_c_at(t))), ""
        if body == b"H":
            return b"H" + self.firmware_type.encode("ascii"), ""
        if body == b"F":
            return b"F" + bytes([self.firmware_branch]), ""
        if body == b"X":
            return b"X" + self.lens_serial.encode("ascii").ljust(8, b" "), ""
        if body in (b"V", b"V\x00"):
            return b"V" + struct.pack(">BBHH", *self.firmware_version), ""
        if op2 == b"IR":
            return b"IR" + self.device_id.encode("ascii").ljust(8, b" "), ""
        raise AssertionError(f"frame table and command set disagree on {body!r}")

    # -- state changes -------------------------------------------------------------------------
    def _set_dc(self, t: float, code: int) -> None:
        shift = self._leaving_compensation(t)
        self.mode = LensMode.CURRENT
        self.current_code = int(code)
        self.mechanics.step(
            t, self.model.dpt_per_ma * self._ma(code), tag=0.0, state_shift_dpt=shift
        )

    def _compensation_dpt(self, t: float) -> float:
        """Focal power mode's temperature compensation from the sensor reading."""
        return float(self.model.thermal_offset_dpt(self.sensor_reading_c_at(t)))

    def _leaving_compensation(self, t: float) -> float:
        """State shift when the drive stops being compensated (see LensMechanics.step)."""
        return -self._compensation_dpt(t) if self.mode is LensMode.FOCAL_POWER else 0.0

    def _set_mode(self, mode: LensMode, t: float) -> tuple[bytes, str]:
        echo = b"M" + codec.MODE_LETTERS[mode] + b"A"
        if mode is LensMode.CURRENT:
            self._set_dc(t, self._code(self._drive_current_ma(t)))
            return echo, ""
        if mode is LensMode.FOCAL_POWER:
            if self.mode is not LensMode.FOCAL_POWER:  # hold the focal power it has now
                present = self._estimated_focal_power(t)
                self.mode = LensMode.FOCAL_POWER
                lo, hi = self._range_dpt()
                self._set_focal_power(
                    t, min(max(present, lo), hi), state_shift_dpt=self._compensation_dpt(t)
                )
            return echo + self._range_fields(t), ""
        shift = self._leaving_compensation(t)
        self.mode = mode
        if mode is LensMode.ANALOG:
            self.mechanics.step(
                t, self.model.dpt_per_ma * self._analog_current_ma(), tag=0.0, state_shift_dpt=shift
            )
        else:
            self._restart_signal(t)
        return echo, ""

    def _set_focal_power(self, t: float, dpt: float, state_shift_dpt: float = 0.0) -> None:
        self.focal_power_target_dpt = float(dpt)
        self.mechanics.step(
            t, dpt - self.model.focal_power_at_zero_ma_dpt, tag=1.0, state_shift_dpt=state_shift_dpt
        )

    def _restart_signal(self, t: float) -> None:
        if self.mode not in _WAVEFORM_OF:
            return
        k = self.model.dpt_per_ma
        self.mechanics.periodic(
            t,
            _WAVEFORM_OF[self.mode],
            k * self._ma(self.signal_lower_code),
            k * self._ma(self.signal_upper_code),
            max(self.signal_millihertz, 1) / 1000.0,
            tag=0.0,
        )

    # -- readbacks ------------------------------------------------------------------------------
    def _drive_current_ma(self, t: float) -> float:
        if self.mode is LensMode.CURRENT:
            return self._ma(self.current_code)
        if self.mode is LensMode.FOCAL_POWER:
            m = self.model
            ma = (
                self.focal_power_target_dpt
                - m.focal_power_at_zero_ma_dpt
                - self._compensation_dpt(t)
            ) / m.dpt_per_ma
            return min(max(ma, self._ma(self.lower_code)), self._ma(self.upper_code))
        if self.mode is LensMode.ANALOG:
            return self._analog_current_ma()
        _, _, drive, _ = self.mechanics.evaluate(np.array([t]))
        return float(drive[0]) / self.model.dpt_per_ma

    def _analog_current_ma(self) -> float:
        lo, hi = self._ma(self.lower_code), self._ma(self.upper_code)
        return lo + min(max(self.analog_input_fraction, 0.0), 1.0) * (hi - lo)

    def _estimated_focal_power(self, t: float) -> float:
        """What the firmware believes: P0 + k I + drift (T_sensor - T_ref)."""
        m = self.model
        return (
            m.focal_power_at_zero_ma_dpt
            + m.dpt_per_ma * self._drive_current_ma(t)
            + self._compensation_dpt(t)
        )

    def _reported_focal_power(self, t: float) -> float:
        if self.mode is LensMode.FOCAL_POWER:
            return self.focal_power_target_dpt
        return self._estimated_focal_power(t)

    def _range_dpt(self) -> tuple[float, float]:
        m = self.model
        lower_t, upper_t = self.temperature_limits_c
        top = (
            m.focal_power_at_zero_ma_dpt
            + m.dpt_per_ma * self._ma(self.upper_code)
            + float(m.thermal_offset_dpt(lower_t))
        )
        bottom = (
            m.focal_power_at_zero_ma_dpt
            + m.dpt_per_ma * self._ma(self.lower_code)
            + float(m.thermal_offset_dpt(upper_t))
        )
        step = codec.DPT_PER_LSB  # round inwards to whole raw steps
        return (math.ceil(bottom / step - 1e-9) * step, math.floor(top / step + 1e-9) * step)

    def _range_fields(self, t: float) -> bytes:
        lo, hi = self._range_dpt()
        sensor = self.sensor_reading_c_at(t)
        lower_t, upper_t = self.temperature_limits_c
        error = 0 if lo < hi and lower_t <= sensor <= upper_t else 1
        ftype = self.firmware_type
        return (
            bytes([error])
            + _h(codec.focal_power_raw(hi, ftype))
            + _h(codec.focal_power_raw(lo, ftype))
        )

    # -- units ---------------------------------------------------------------------------------
    def _ma(self, code: int) -> float:
        return codec.current_ma(code, self.max_current_ma, self.full_scale)

    def _code(self, current_ma: float) -> int:
        return codec.current_code(current_ma, self.max_current_ma, self.full_scale)

    def _clamp_code(self, code: int) -> int:
        return min(max(int(code), -self.full_scale), self.full_scale)


def _h(value: int) -> bytes:
    return struct.pack(">h", max(-32768, min(32767, int(value))))


# -- URLs ----------------------------------------------------------------------------------------
DEVICE_OPTIONS = {
    "firmware_type": str,
    "max_current_ma": float,
    "full_scale": int,
    "lower_limit_ma": float,
    "upper_limit_ma": float,
    "lens_serial": str,
    "device_id": str,
}
FAULT_OPTIONS = (
    "corrupt_crc",
    "drop_bytes",
    "drop_count",
    "stop_after",
    "stop_after_s",
    "reply_delay_ms",
    "wire_delay",
)


def lens_for_url(url: str) -> SimulatedLens:
    """`optotune_sim://[NAME][?option=value&...]` -> the simulated lens it addresses.

    Without NAME: a fresh lens on the wall clock, configured by device options
    (firmware_type, max_current_ma, full_scale, lower_limit_ma, upper_limit_ma, lens_serial,
    device_id) and LensModel fields (drift_dpt_per_k=0.04, ...). With NAME: the lens made with
    SimulatedLens(name=NAME) (only faults may be given). Faults, both cases: corrupt_crc=3,5;
    drop_bytes=4 and drop_count=2; stop_after=N; stop_after_s=S; reply_delay_ms=MS;
    wire_delay=0|1. Raises ValueError naming the bad option and the allowed ones.
    """
    from urllib.parse import parse_qsl

    # urllib's urlsplit does not accept '_' in a scheme: split by hand
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != SCHEME:
        raise ValueError(f"{url!r} is not an {SCHEME}:// URL")
    location, _, query = rest.partition("?")
    name = location.rstrip("/")
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        options[key] = value
    model_names = {f for f in LensModel.__dataclass_fields__}
    allowed = set(DEVICE_OPTIONS) | model_names | set(FAULT_OPTIONS)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} in {url!r}; allowed: "
            f"{', '.join(sorted(allowed))}"
        )
    settings = {k: v for k, v in options.items() if k not in FAULT_OPTIONS}
    if name:
        with _REGISTRY_LOCK:
            lens = _REGISTRY.get(name)
        if lens is None:
            raise ValueError(
                f"no simulated lens is named {name!r} (known: "
                f"{', '.join(sorted(_REGISTRY)) or 'none'}); make one with "
                "SimulatedLens(name=...) or use optotune_sim:// for a fresh lens"
            )
        if settings:
            raise ValueError(
                f"{', '.join(sorted(settings))}: a named simulated lens is "
                "configured when it is made; only faults may be given in its URL"
            )
    else:
        try:
            model = LensModel(**{k: float(v) for k, v in settings.items() if k in model_names})
            device = {k: DEVICE_OPTIONS[k](v) for k, v in settings.items() if k in DEVICE_OPTIONS}
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad option in {url!r}: {e}") from e
        lens = SimulatedLens(model, **device)
    _apply_fault_options(lens.faults, options, url)
    return lens


def lens_on_clock(url: str, clock: LensClock) -> tuple[SimulatedLens, str]:
    """A simulated lens on `clock` (a simulated rig's virtual time) from an unnamed
    `optotune_sim://[?options]` URL: device and LensModel options configure the lens made
    here; fault options stay in the returned URL (`optotune_sim://NAME?faults`), which is
    what the driver opens. Raises ValueError naming a bad option."""
    from urllib.parse import parse_qsl, urlencode

    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != SCHEME:
        raise ValueError(f"{url!r} is not an {SCHEME}:// URL")
    location, _, query = rest.partition("?")
    if location.rstrip("/"):
        raise ValueError(
            f"{url!r} names a lens; a simulated rig makes its own lens on its clock: "
            f"use {SCHEME}:// (options after '?')"
        )
    options = dict(parse_qsl(query, keep_blank_values=True))
    model_names = set(LensModel.__dataclass_fields__)
    allowed = set(DEVICE_OPTIONS) | model_names | set(FAULT_OPTIONS)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} in {url!r}; allowed: "
            f"{', '.join(sorted(allowed))}"
        )
    try:
        model = LensModel(**{k: float(v) for k, v in options.items() if k in model_names})
        device = {k: DEVICE_OPTIONS[k](v) for k, v in options.items() if k in DEVICE_OPTIONS}
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad option in {url!r}: {e}") from e
    lens = SimulatedLens(model, clock, **device)
    faults = {k: v for k, v in options.items() if k in FAULT_OPTIONS}
    _apply_fault_options(lens.faults, faults, url)  # checked now, applied again on open
    return lens, lens.url + (f"?{urlencode(faults)}" if faults else "")


def _apply_fault_options(faults: LensFaults, options: dict[str, str], url: str) -> None:
    def ints(key: str) -> set[int]:
        return {int(v) for v in options[key].split(",") if v.strip()}

    try:
        if "corrupt_crc" in options:
            faults.corrupt_crc_at = ints("corrupt_crc")
        if "drop_bytes" in options:
            faults.drop_bytes_at = ints("drop_bytes")
        if "drop_count" in options:
            faults.drop_count = int(options["drop_count"])
        if "stop_after" in options:
            faults.stop_after = int(options["stop_after"])
        if "stop_after_s" in options:
            faults.stop_after_s = float(options["stop_after_s"])
        if "reply_delay_ms" in options:
            faults.reply_delay_s = float(options["reply_delay_ms"]) / 1000.0
        if "wire_delay" in options:
            if options["wire_delay"] not in ("0", "1", "true", "false"):
                raise ValueError(f"wire_delay = {options['wire_delay']!r}: use 0 or 1")
            faults.wire_delay = options["wire_delay"] in ("1", "true")
    except ValueError as e:
        raise ValueError(f"bad fault option in {url!r}: {e}") from e


def describe(lens: SimulatedLens) -> dict[str, Any]:
    """Settings of a simulated lens (for snapshots and reports)."""
    return {
        "name": lens.name,
        "firmware_type": lens.firmware_type,
        "max_current_ma": lens.max_current_ma,
        "full_scale": lens.full_scale,
        "model": {f: getattr(lens.model, f) for f in LensModel.__dataclass_fields__},
    }
