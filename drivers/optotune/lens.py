"""Optotune electrically tunable lens on a Lens Driver 4 (EL-10-30, EL-16-40): FocusDevice.

Protocol: drivers/optotune/codec.py (hardware.md section 1). What the driver adds:

- open(): optional handshake (`Start`, which also zeroes the current), then it reads what it
  must not guess: firmware type (focal power encoding), version, lens serial number, the
  maximum output current (`CrMA`, instead of a hard-coded 292.84 mA), the software current
  limits (`CrUA`, `CrLA`) and the mode (`MMA`). In focal power mode it re-enters the mode
  (`MwCA`, idempotent) because the focal power range is only reported there and by `PwTA`.
- Limits before bytes: a current beyond the hardware maximum or the software limits, a focal
  power outside the reported range, a mode-mismatched command (`Aw` outside current mode,
  `PwDA` outside focal power mode) raise LimitError (ModeMismatchError) and send nothing.
- The current scaling's full-scale code (4095 in the manual, 4096 in some drivers) is a
  setting, `full_scale_code`.
- FocusDevice: `move_to_um(z)` maps z to focal power through a calibration (fitted from a
  bead stack, see analysis.optics.FocalPowerZCalibration) and sets it in focal power mode
  (closed loop, temperature compensated), switching to that mode if needed. Travel is the
  calibration's z range. `position_um()` is the last commanded z.
- safe(): current mode at 0 mA, the lens at rest (no drive current, no heating), confirmed
  by reading the current back.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

from drivers.errors import DeviceError, DeviceStateError, LimitError, ProtocolError
from drivers.optotune import codec
from drivers.optotune.codec import LensMode
from drivers.optotune.connection import DEFAULT_PORT, LensConnection
from drivers.optotune.errors import ModeMismatchError, UnexpectedReplyError
from drivers.roles import FocusDevice

log = logging.getLogger(__name__)


class ZCalibration(Protocol):
    """Focal power <-> z of the imaged plane (analysis.optics.FocalPowerZCalibration)."""

    def z_um(self, focal_power_dpt: float) -> float: ...

    def focal_power_dpt(self, z_um: float) -> float: ...

    @property
    def z_range_um(self) -> tuple[float, float]: ...


@dataclass(frozen=True)
class FirmwareVersion:
    major: int
    minor: int
    build: int
    revision: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}.{self.revision}"


@dataclass(frozen=True)
class FocalPowerRange:
    """Focal power the lens guarantees over its temperature limits (`MwCA` / `PwTA` reply);
    error_code is the reply's status byte (0: no error)."""

    min_dpt: float
    max_dpt: float
    error_code: int = 0


def _mode_from(mode: LensMode | str | int) -> LensMode:
    if isinstance(mode, LensMode):
        return mode
    if isinstance(mode, int):
        try:
            return LensMode(mode)
        except ValueError:
            pass
    if isinstance(mode, str):
        key = mode.strip().lower().replace("_", " ").replace("-", " ")
        aliases = {
            "dc": "current",
            "dc current": "current",
            "sine": "sinusoidal",
            "triangle": "triangular",
            "rectangle": "rectangular",
            "square": "rectangular",
        }
        key = aliases.get(key, key)
        for m in LensMode:
            if m.label == key:
                return m
    names = ", ".join(m.label for m in LensMode)
    raise LimitError(f"mode = {mode!r} is not a lens mode; choose one of: {names}")


class OptotuneLens(FocusDevice):
    """An Optotune lens on a Lens Driver 4, opened from a port, a description or a URL."""

    def __init__(
        self,
        port: str = DEFAULT_PORT,
        calibration: ZCalibration | None = None,
        *,
        timeout_s: float = 0.5,
        handshake: bool = True,
        full_scale_code: int = 4095,
        temperature_limits_c: tuple[float, float] | None = None,
        version_query: bytes = b"V",
        current_limits_ma: tuple[float, float] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name or "tunable lens")
        if full_scale_code not in codec.FULL_SCALE_CODES:
            raise LimitError(
                f"full_scale_code = {full_scale_code!r}: the Lens Driver 4 scales current codes "
                f"by 4095 (manual) or 4096 (some drivers); choose one of {codec.FULL_SCALE_CODES}"
            )
        if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s <= 60):
            raise LimitError(f"timeout_s = {timeout_s!r} must be in (0, 60] s")
        if temperature_limits_c is not None:
            _check_temperature_limits(*temperature_limits_c)
        codec.get_firmware_version(version_query)  # validates the query bytes
        if current_limits_ma is not None:
            lower, upper = (float(v) for v in current_limits_ma)
            if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
                raise LimitError(
                    f"current_limits_ma = {current_limits_ma!r} must be (lower, upper) mA with "
                    "lower < upper"
                )
            current_limits_ma = (lower, upper)
        self.current_limits_at_open_ma = current_limits_ma
        self.port = port
        self.calibration = calibration
        self.timeout_s = float(timeout_s)
        self.handshake = bool(handshake)
        self.full_scale_code = int(full_scale_code)
        self.temperature_limits_c = temperature_limits_c
        self.version_query = version_query
        self.connection: LensConnection | None = None
        self._bytes_sent_closed = 0
        # what open() reads
        self.url = ""
        self.firmware_type = ""
        self.firmware_version: FirmwareVersion | None = None
        self.lens_serial = ""
        self.max_current_ma = math.nan
        self._upper_code = 0
        self._lower_code = 0
        self._mode: LensMode | None = None
        self._range: FocalPowerRange | None = None
        # last commands
        self._current_setpoint_ma: float | None = None
        self._focal_power_setpoint_dpt: float | None = None
        self._position_um = math.nan

    # -- lifecycle hooks -------------------------------------------------------------------
    def _open(self) -> None:
        conn = LensConnection.open(self.port, self.timeout_s)
        try:
            if self.handshake:
                conn.handshake()
                self._current_setpoint_ma = 0.0
            (ftype,) = conn.query(codec.get_firmware_type())
            self.firmware_type = ftype.decode("ascii", "replace")
            self.firmware_version = FirmwareVersion(
                *conn.query(codec.get_firmware_version(self.version_query))
            )
            (serial_bytes,) = conn.query(codec.get_lens_serial())
            self.lens_serial = serial_bytes.decode("ascii", "replace").rstrip("\x00 ")
            (max_raw,) = conn.query(codec.get_max_current())
            if max_raw <= 0:
                raise ProtocolError(f"the lens reports a maximum current of {max_raw} x 10 uA")
            self.max_current_ma = max_raw / codec.MAX_CURRENT_LSB_PER_MA
            (self._upper_code,) = conn.query(codec.get_current_limit("upper"))
            (self._lower_code,) = conn.query(codec.get_current_limit("lower"))
            self._mode = _reported_mode(conn.query(codec.get_mode())[0])
            if self.current_limits_at_open_ma is not None:
                lower_ma, upper_ma = self._checked_software_limits(*self.current_limits_at_open_ma)
                (self._lower_code,) = conn.query(
                    codec.set_current_limit("lower", self._ma_to_code(lower_ma))
                )
                (self._upper_code,) = conn.query(
                    codec.set_current_limit("upper", self._ma_to_code(upper_ma))
                )
            if self.temperature_limits_c is not None:
                self._range = _range_from(
                    self.firmware_type,
                    *conn.query(
                        codec.set_temperature_limits(
                            codec.temperature_raw(self.temperature_limits_c[1]),
                            codec.temperature_raw(self.temperature_limits_c[0]),
                        )
                    ),
                )
            if self._mode is LensMode.FOCAL_POWER and self._range is None:
                self._range = _range_from(
                    self.firmware_type, *conn.query(codec.set_mode(LensMode.FOCAL_POWER))
                )
        except BaseException:
            self._bytes_sent_closed += conn.bytes_written
            conn.close()
            raise
        self.connection = conn
        self.url = conn.url

    def _close(self) -> None:
        conn, self.connection = self.connection, None
        if conn is not None:
            self._bytes_sent_closed += conn.bytes_written
            conn.close()

    def _safe(self) -> None:
        """Current mode, 0 mA: the lens at rest. Confirmed with `Ar`, because `Aw` has no
        reply: a lens that cannot be reached raises instead of being assumed at rest."""
        conn = self._conn()
        if self._mode is not LensMode.CURRENT:
            conn.query(codec.set_mode(LensMode.CURRENT))
            self._mode = LensMode.CURRENT
        conn.send(codec.set_current(0))
        (code,) = conn.query(codec.get_current())
        if code != 0:
            raise DeviceError(
                f"{self.name} reports current code {code} after being set to 0 "
                "mA: it is not at rest"
            )
        self._current_setpoint_ma = 0.0
        self._focal_power_setpoint_dpt = None
        self._position_um = math.nan

    def _snapshot(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "url": self.url,
            "firmware_type": self.firmware_type,
            "firmware_version": str(self.firmware_version) if self.firmware_version else None,
            "lens_serial": self.lens_serial,
            "max_current_ma": _finite_or_none(self.max_current_ma),
            "software_current_limits_ma": list(self.software_current_limits_ma)
            if self.connection is not None
            else None,
            "full_scale_code": self.full_scale_code,
            "mode": self._mode.label if self._mode else None,
            "focal_power_range_dpt": [self._range.min_dpt, self._range.max_dpt]
            if self._range
            else None,
            "temperature_limits_c": list(self.temperature_limits_c)
            if self.temperature_limits_c
            else None,
            "current_setpoint_ma": self._current_setpoint_ma,
            "focal_power_setpoint_dpt": self._focal_power_setpoint_dpt,
            "position_um": _finite_or_none(self._position_um),
            "calibration": _calibration_snapshot(self.calibration),
        }

    # -- identity ----------------------------------------------------------------------------
    @property
    def bytes_sent(self) -> int:
        """Bytes written to the lens over this object's lifetime (all connections)."""
        conn = self.connection
        return self._bytes_sent_closed + (conn.bytes_written if conn is not None else 0)

    def device_id(self) -> str:
        """`IR`: the driver board's id (8 ASCII characters)."""
        (raw,) = self._conn().query(codec.get_device_id())
        return raw.decode("ascii", "replace").rstrip("\x00 ")

    def firmware_branch(self) -> int:
        (branch,) = self._conn().query(codec.get_firmware_branch())
        return int(branch)

    # -- mode --------------------------------------------------------------------------------
    @property
    def mode(self) -> LensMode | None:
        """The mode as last read or set (no bytes sent); `read_mode()` asks the lens."""
        return self._mode

    def read_mode(self) -> LensMode:
        self._mode = _reported_mode(self._conn().query(codec.get_mode())[0])
        return self._mode

    def set_mode(self, mode: LensMode | str) -> FocalPowerRange | None:
        """Switch mode; focal power mode returns the focal power range it reports."""
        target = _mode_from(mode)
        if target not in codec.MODE_LETTERS:
            raise LimitError(
                f"mode = {target.label!r} cannot be set over the serial protocol; "
                f"settable: {', '.join(m.label for m in codec.MODE_LETTERS)}"
            )
        values = self._conn().query(codec.set_mode(target))
        self._mode = target
        if target is LensMode.FOCAL_POWER:
            self._range = _range_from(self.firmware_type, *values)
            return self._range
        return None

    # -- current -------------------------------------------------------------------------------
    @property
    def software_current_limits_ma(self) -> tuple[float, float]:
        """(lower, upper) software current limits as read at open or last set, mA."""
        return (self._code_to_ma(self._lower_code), self._code_to_ma(self._upper_code))

    def current_limits_ma(self) -> tuple[float, float]:
        """The allowed current: software limits within +- the hardware maximum, mA."""
        lower, upper = self.software_current_limits_ma
        return (max(lower, -self.max_current_ma), min(upper, self.max_current_ma))

    def set_current_ma(self, current_ma: float) -> None:
        """`Aw` (current mode only), after checking the hardware and software limits."""
        self._require_mode(LensMode.CURRENT, "set_current_ma")
        code = self._checked_current_code("current_ma", current_ma)
        self._conn().send(codec.set_current(code))
        self._current_setpoint_ma = self._code_to_ma(code)

    def current_ma(self) -> float:
        """`Ar`: the output current the driver reports, mA."""
        (code,) = self._conn().query(codec.get_current())
        return self._code_to_ma(code)

    def set_software_current_limits_ma(self, lower_ma: float, upper_ma: float) -> None:
        """`CwLA`, `CwUA`: limits the driver enforces itself, within the hardware maximum."""
        self.require_open()
        self._checked_software_limits(lower_ma, upper_ma)
        conn = self._conn()
        (self._lower_code,) = conn.query(
            codec.set_current_limit("lower", self._ma_to_code(lower_ma))
        )
        (self._upper_code,) = conn.query(
            codec.set_current_limit("upper", self._ma_to_code(upper_ma))
        )
        self._range = None  # the focal power range follows the current limits: ask again

    def _checked_software_limits(self, lower_ma: float, upper_ma: float) -> tuple[float, float]:
        m = self.max_current_ma
        for label, value in (("lower_ma", lower_ma), ("upper_ma", upper_ma)):
            if not -m <= value <= m:
                raise LimitError(
                    f"{label} = {value:g} mA is outside the hardware range "
                    f"[{-m:g}, {m:g}] mA (maximum read with CrMA)"
                )
        if not lower_ma < upper_ma:
            raise LimitError(f"lower_ma = {lower_ma:g} must be below upper_ma = {upper_ma:g} mA")
        return float(lower_ma), float(upper_ma)

    # -- focal power ---------------------------------------------------------------------------
    @property
    def focal_power_range_dpt(self) -> tuple[float, float] | None:
        """(min, max) reported by the last `MwCA` or `PwTA`; None until then."""
        return (self._range.min_dpt, self._range.max_dpt) if self._range else None

    def set_focal_power_dpt(self, focal_power_dpt: float) -> None:
        """`PwDA` (focal power mode only), inside the range the lens reported."""
        self._require_mode(LensMode.FOCAL_POWER, "set_focal_power_dpt")
        raw = self._checked_focal_power_raw(focal_power_dpt)
        self._conn().send(codec.set_focal_power(raw))
        self._focal_power_setpoint_dpt = codec.focal_power_dpt(raw, self.firmware_type)

    def focal_power_dpt(self) -> float:
        """`PrDA`: the focal power the driver reports, dpt."""
        (raw,) = self._conn().query(codec.get_focal_power())
        return codec.focal_power_dpt(raw, self.firmware_type)

    def set_temperature_limits_c(self, lower_c: float, upper_c: float) -> FocalPowerRange:
        """`PwTA`: the temperatures over which focal power mode must hold; returns the focal
        power range the lens can guarantee over them."""
        _check_temperature_limits(lower_c, upper_c)
        values = self._conn().query(
            codec.set_temperature_limits(
                codec.temperature_raw(upper_c), codec.temperature_raw(lower_c)
            )
        )
        self.temperature_limits_c = (float(lower_c), float(upper_c))
        self._range = _range_from(self.firmware_type, *values)
        return self._range

    def temperature_c(self) -> float:
        """`TCA`: the lens's temperature sensor (1/16 degC steps, slow to follow heating)."""
        (raw,) = self._conn().query(codec.get_temperature())
        return codec.temperature_c(raw)

    # -- signal generator ------------------------------------------------------------------------
    def start_signal(
        self, waveform: str, lower_ma: float, upper_ma: float, frequency_hz: float
    ) -> None:
        """Sinusoidal, triangular or rectangular current between lower_ma and upper_ma:
        `PwUA`, `PwLA`, `PwFA` (mHz), then the mode."""
        self.require_open()
        mode = _mode_from(waveform)
        if mode not in codec.SIGNAL_MODES:
            raise LimitError(
                f"waveform = {waveform!r}: choose sinusoidal, triangular or rectangular"
            )
        if not lower_ma < upper_ma:
            raise LimitError(f"lower_ma = {lower_ma:g} must be below upper_ma = {upper_ma:g} mA")
        lower = self._checked_current_code("lower_ma", lower_ma)
        upper = self._checked_current_code("upper_ma", upper_ma)
        millihertz = round(frequency_hz * 1000.0)
        if not (math.isfinite(frequency_hz) and 1 <= millihertz <= 0xFFFFFFFF):
            raise LimitError(
                f"frequency_hz = {frequency_hz:g} is outside [0.001, "
                f"{0xFFFFFFFF / 1000:g}] Hz (a 32-bit count of mHz)"
            )
        conn = self._conn()
        conn.send(codec.set_signal_current("upper", upper))
        conn.send(codec.set_signal_current("lower", lower))
        conn.send(codec.set_signal_frequency(millihertz))
        self.set_mode(mode)

    # -- FocusDevice -----------------------------------------------------------------------------
    def move_to_um(self, z_um: float) -> None:
        """Focal power for z from the calibration, in focal power mode (entered if needed)."""
        calibration = self.calibration
        if calibration is None:
            raise DeviceStateError(
                f"{self.name} has no focal power -> z calibration: fit one from a bead stack "
                "(analysis.optics.FocalPowerZCalibration.fit) and pass calibration=..."
            )
        lo, hi = calibration.z_range_um
        z = float(z_um)
        if not lo <= z <= hi:
            raise LimitError(
                f"focus z = {z:g} um is outside the calibrated range "
                f"[{lo:g}, {hi:g}] um of {self.name}"
            )
        dpt = calibration.focal_power_dpt(z)
        self.require_open()
        if self._range is not None:
            self._checked_focal_power_raw(dpt)  # refuse before the mode switch, if we can
        if self._mode is not LensMode.FOCAL_POWER:
            self.set_mode(LensMode.FOCAL_POWER)
        self.set_focal_power_dpt(dpt)
        self._position_um = z

    def position_um(self) -> float:
        """Last commanded z (NaN after safe(): the lens rests at 0 mA, not at a z)."""
        return self._position_um

    def readings(self) -> dict[str, Any]:
        """What the lens reports now (for a session's events): mode, current, focal power,
        temperature."""
        return {
            "mode": self.read_mode().label,
            "current_ma": self.current_ma(),
            "focal_power_dpt": self.focal_power_dpt(),
            "temperature_c": self.temperature_c(),
        }

    # -- helpers -----------------------------------------------------------------------------------
    def _conn(self) -> LensConnection:
        self.require_open()
        assert self.connection is not None
        return self.connection

    def _require_mode(self, needed: LensMode, what: str) -> None:
        self.require_open()
        if self._mode is not needed:
            now = self._mode.label if self._mode else "unknown"
            raise ModeMismatchError(
                f"{what} needs {needed.label} mode, but {self.name} is in {now} mode: call "
                f"set_mode({needed.label!r}) first"
            )

    def _code_to_ma(self, code: int) -> float:
        return codec.current_ma(code, self.max_current_ma, self.full_scale_code)

    def _ma_to_code(self, current_ma: float) -> int:
        return codec.current_code(current_ma, self.max_current_ma, self.full_scale_code)

    def _checked_current_code(self, label: str, current_ma: float) -> int:
        lo, hi = self.current_limits_ma()
        if not (math.isfinite(current_ma) and lo <= current_ma <= hi):
            raise LimitError(
                f"{label} = {current_ma:g} mA is outside the allowed range [{lo:g}, {hi:g}] mA "
                f"(hardware maximum {self.max_current_ma:g} mA from CrMA, software limits "
                f"{self.software_current_limits_ma[0]:g} .. "
                f"{self.software_current_limits_ma[1]:g} mA)"
            )
        return self._ma_to_code(current_ma)

    def _checked_focal_power_raw(self, focal_power_dpt: float) -> int:
        r = self._range
        if r is None:
            raise DeviceStateError(
                f"{self.name}: the focal power range is not known; it is "
                "reported by set_mode('focal power') or set_temperature_limits_c"
            )
        if not (math.isfinite(focal_power_dpt) and r.min_dpt <= focal_power_dpt <= r.max_dpt):
            raise LimitError(
                f"focal_power_dpt = {focal_power_dpt:g} dpt is outside the range the lens "
                f"reported, [{r.min_dpt:g}, {r.max_dpt:g}] dpt"
            )
        return codec.focal_power_raw(focal_power_dpt, self.firmware_type)


def _reported_mode(number: int) -> LensMode:
    try:
        return LensMode(number)
    except ValueError:
        raise UnexpectedReplyError(
            f"the lens reports mode number {number}, which the protocol does not define (1-7)"
        ) from None


def _range_from(firmware_type: str, error_code: int, max_raw: int, min_raw: int) -> FocalPowerRange:
    r = FocalPowerRange(
        min_dpt=codec.focal_power_dpt(min_raw, firmware_type),
        max_dpt=codec.focal_power_dpt(max_raw, firmware_type),
        error_code=int(error_code),
    )
    if r.error_code:
        log.warning(
            "the lens reports error code %d with its focal power range [%g, %g] dpt",
            r.error_code,
            r.min_dpt,
            r.max_dpt,
        )
    return r


def _check_temperature_limits(lower_c: float, upper_c: float) -> None:
    lo, hi = codec.INT16_RANGE[0] * codec.DEGC_PER_LSB, codec.INT16_RANGE[1] * codec.DEGC_PER_LSB
    for label, value in (("lower_c", lower_c), ("upper_c", upper_c)):
        if not (math.isfinite(value) and lo <= value <= hi):
            raise LimitError(
                f"{label} = {value:g} degC is outside [{lo:g}, {hi:g}] degC "
                "(a 16-bit count of 1/16 degC)"
            )
    if not lower_c < upper_c:
        raise LimitError(f"lower_c = {lower_c:g} must be below upper_c = {upper_c:g} degC")


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _calibration_snapshot(calibration: Any) -> Any:
    if calibration is None:
        return None
    to_dict = getattr(calibration, "to_dict", None)
    return to_dict() if callable(to_dict) else repr(calibration)
