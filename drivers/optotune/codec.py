"""Optotune Lens Driver 4 wire protocol: CRC-16/ARC, command frames, reply parsing, scalings.

Source: shared/reference/hardware.md section 1 (the Lens Driver 4 manual's command table as
used by open-source drivers). One codec serves the real driver and the simulated lens.

Framing
    command  opcode + big-endian payload + CRC-16(opcode + payload), CRC low byte first
    reply    echo + big-endian payload + CRC-16(echo + payload) low byte first + b"\\r\\n"
    refusal  b"N\\r\\n" for a frame whose CRC does not match
    handshake b"Start" (no CRC) -> b"Ready\\r\\n"

The echo repeats the opcode without its read/write letter (`CrMA` -> `CMA`, `MwCA` -> `MCA`),
truncated to the number of echo bytes the command table gives (`PrDA` -> `PD`). The count is
what every source agrees on; `parse_reply` therefore checks the count and the first echo byte
(the opcode letter, which is what detects a misaligned stream) and leaves the rest unchecked.

Silent writes (`Aw`, `PwDA`, and the signal generator's `PwUA`, `PwLA`, `PwFA`) get no reply
on success.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from drivers.optotune.errors import (
    IncompleteReplyError,
    LensRefusedError,
    ReplyCrcError,
    UnexpectedReplyError,
)

HANDSHAKE = b"Start"
HANDSHAKE_REPLY = b"Ready\r\n"
REFUSAL = b"N\r\n"
TERMINATOR = b"\r\n"
BAUDRATE = 115200

#: temperature: one sensor LSB is 1/16 degC (raw * 0.0625)
DEGC_PER_LSB = 0.0625
#: focal power: one LSB is 1/200 dpt; firmware type 'A' adds an offset of 5 dpt
DPT_PER_LSB = 1.0 / 200.0
FIRMWARE_A_OFFSET_DPT = 5.0
#: maximum output current is reported in units of 10 uA (29284 -> 292.84 mA)
MAX_CURRENT_LSB_PER_MA = 100
#: full-scale current code: 4095 in the manual's formula, 4096 in some drivers
FULL_SCALE_CODES = (4095, 4096)
INT16_RANGE = (-32768, 32767)


# -- CRC-16/ARC ------------------------------------------------------------------------------
def _crc_table() -> tuple[int, ...]:
    """Byte-wise table of CRC-16/ARC: reflected polynomial 0xA001 (0x8005 reversed)."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/ARC ("IBM"): reflected poly 0xA001, init 0x0000, no final XOR.

    Check values: crc16(b"123456789") == 0xBB3D, crc16(b"Start") == 0xA5EA. (Not Modbus,
    which starts at 0xFFFF.)
    """
    crc = 0
    for byte in bytes(data):
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def crc_bytes(data: bytes) -> bytes:
    """The CRC of `data` as it goes on the wire: low byte first."""
    return crc16(data).to_bytes(2, "little")


def command_frame(body: bytes) -> bytes:
    """opcode + payload -> the bytes on the wire (CRC appended low byte first)."""
    return bytes(body) + crc_bytes(body)


def reply_frame(payload: bytes) -> bytes:
    """echo + payload -> the bytes the lens sends back (CRC low byte first, then CRLF)."""
    return bytes(payload) + crc_bytes(payload) + TERMINATOR


# -- modes -------------------------------------------------------------------------------------
class LensMode(enum.IntEnum):
    """Operating modes as numbered by the `MMA` reply."""

    CURRENT = 1
    SINUSOIDAL = 2
    TRIANGULAR = 3
    RECTANGULAR = 4
    FOCAL_POWER = 5
    ANALOG = 6
    POSITION = 7

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


#: the letter in `Mw?A` that selects a mode (position mode has no set command)
MODE_LETTERS: dict[LensMode, bytes] = {
    LensMode.CURRENT: b"D",
    LensMode.SINUSOIDAL: b"S",
    LensMode.TRIANGULAR: b"T",
    LensMode.RECTANGULAR: b"Q",
    LensMode.ANALOG: b"A",
    LensMode.FOCAL_POWER: b"C",
}
SIGNAL_MODES = (LensMode.SINUSOIDAL, LensMode.TRIANGULAR, LensMode.RECTANGULAR)


# -- requests and replies ----------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """Shape of a reply: `echo` bytes, then values packed as struct format `fields`
    (big-endian, without the leading '>')."""

    echo: bytes
    fields: str = ""

    @property
    def payload_size(self) -> int:
        return len(self.echo) + struct.calcsize(">" + self.fields)

    @property
    def size(self) -> int:
        """Bytes on the wire: payload, CRC (2) and CRLF (2)."""
        return self.payload_size + 4


@dataclass(frozen=True)
class Request:
    """One command: its name (for messages), its exact bytes, and its reply (None: silent)."""

    name: str
    frame: bytes
    reply: Reply | None


def _request(name: str, body: bytes, reply: Reply | None) -> Request:
    return Request(name, command_frame(body), reply)


def _int16(name: str, value: int) -> bytes:
    if not INT16_RANGE[0] <= value <= INT16_RANGE[1]:
        raise ValueError(f"{name} = {value} does not fit a signed 16-bit field")
    return struct.pack(">h", value)


def get_current() -> Request:
    return _request("get current (Ar)", b"Ar\x00\x00", Reply(b"A", "h"))


def set_current(code: int) -> Request:
    return _request("set current (Aw)", b"Aw" + _int16("current code", code), None)


def get_max_current() -> Request:
    return _request("get maximum output current (CrMA)", b"CrMA\x00\x00", Reply(b"CMA", "h"))


def get_current_limit(which: str) -> Request:
    letter = _limit_letter(which)
    return _request(
        f"get {which} software current limit (Cr{letter.decode()}A)",
        b"Cr" + letter + b"A\x00\x00",
        Reply(b"C" + letter + b"A", "h"),
    )


def set_current_limit(which: str, code: int) -> Request:
    letter = _limit_letter(which)
    return _request(
        f"set {which} software current limit (Cw{letter.decode()}A)",
        b"Cw" + letter + b"A" + _int16("current limit code", code),
        Reply(b"C" + letter + b"A", "h"),
    )


def _limit_letter(which: str) -> bytes:
    if which not in ("upper", "lower"):
        raise ValueError(f"which = {which!r}: choose 'upper' or 'lower'")
    return b"U" if which == "upper" else b"L"


def set_mode(mode: LensMode) -> Request:
    """`Mw?A`; the focal power mode's reply also carries err u8, max fp, min fp (int16)."""
    if mode not in MODE_LETTERS:
        raise ValueError(f"mode {mode.label!r} has no set command (settable: {_settable()})")
    letter = MODE_LETTERS[mode]
    fields = "Bhh" if mode is LensMode.FOCAL_POWER else ""
    return _request(
        f"set {mode.label} mode (Mw{letter.decode()}A)",
        b"Mw" + letter + b"A",
        Reply(b"M" + letter + b"A", fields),
    )


def _settable() -> str:
    return ", ".join(m.label for m in MODE_LETTERS)


def get_mode() -> Request:
    return _request("get mode (MMA)", b"MMA", Reply(b"MMA", "B"))


def set_focal_power(raw: int) -> Request:
    return _request(
        "set focal power (PwDA)", b"PwDA" + _int16("focal power raw", raw) + b"\0\0", None
    )


def get_focal_power() -> Request:
    return _request("get focal power (PrDA)", b"PrDA\x00\x00\x00\x00", Reply(b"PD", "h"))


def get_temperature() -> Request:
    return _request("get temperature (TCA)", b"TCA", Reply(b"TCA", "h"))


def set_temperature_limits(upper_raw: int, lower_raw: int) -> Request:
    """`PwTA` + int16(upper * 16) + int16(lower * 16) -> err u8, max fp, min fp."""
    body = b"PwTA" + _int16("upper temperature raw", upper_raw)
    body += _int16("lower temperature raw", lower_raw)
    return _request("set temperature limits (PwTA)", body, Reply(b"PT", "Bhh"))


def get_firmware_type() -> Request:
    return _request("get firmware type (H)", b"H", Reply(b"H", "c"))


def get_firmware_branch() -> Request:
    return _request("get firmware branch (F)", b"F", Reply(b"F", "B"))


def get_lens_serial() -> Request:
    return _request("get lens serial number (X)", b"X", Reply(b"X", "8s"))


def get_firmware_version(query: bytes = b"V") -> Request:
    """`V` per the command table; some drivers send `V\\x00`: the query is configurable."""
    if query not in (b"V", b"V\x00"):
        raise ValueError(f"version query = {query!r}: use b'V' or b'V\\x00'")
    return _request("get firmware version (V)", query, Reply(b"V", "BBHH"))


def get_device_id() -> Request:
    return _request("get device id (IR)", b"IR" + bytes(8), Reply(b"IR", "8s"))


def set_signal_current(which: str, code: int) -> Request:
    """Signal generator swing: `PwUA` / `PwLA` + int16 current code + two zero bytes."""
    letter = _limit_letter(which)
    return _request(
        f"set signal {which} current (Pw{letter.decode()}A)",
        b"Pw" + letter + b"A" + _int16("signal current code", code) + b"\0\0",
        None,
    )


def set_signal_frequency(millihertz: int) -> Request:
    if not 0 <= millihertz <= 0xFFFFFFFF:
        raise ValueError(f"frequency = {millihertz} mHz does not fit an unsigned 32-bit field")
    return _request("set signal frequency (PwFA)", b"PwFA" + struct.pack(">I", millihertz), None)


def parse_reply(request: Request, raw: bytes) -> tuple:
    """Check a complete reply to `request` and return its values (echo stripped).

    Raises LensRefusedError for `N\\r\\n`, IncompleteReplyError for a short reply,
    UnexpectedReplyError for a wrong echo or missing CRLF, ReplyCrcError for a bad CRC.
    """
    reply = request.reply
    if reply is None:
        raise ValueError(f"{request.name} is a silent write: it has no reply to parse")
    raw = bytes(raw)
    if raw[:3] == REFUSAL:
        raise LensRefusedError(
            f"the lens answered N to {request.name} (sent {request.frame.hex(' ')}): a frame "
            "reached it with a bad CRC (this one, or an earlier silent write) - check the cable"
        )
    if len(raw) < reply.size:
        raise IncompleteReplyError(
            f"reply to {request.name} stopped after {len(raw)} of {reply.size} bytes "
            f"({raw.hex(' ') or 'nothing'}): bytes were lost on the line"
        )
    if len(raw) > reply.size or raw[:1] != reply.echo[:1] or raw[-2:] != TERMINATOR:
        raise UnexpectedReplyError(
            f"reply to {request.name} is {raw.hex(' ')}; expected {reply.size} bytes starting "
            f"with {reply.echo!r} and ending in CRLF"
        )
    payload, received = raw[:-4], int.from_bytes(raw[-4:-2], "little")
    expected = crc16(payload)
    if received != expected:
        raise ReplyCrcError(
            f"reply to {request.name} carries CRC 0x{received:04X}, but its payload "
            f"{payload.hex(' ')} has CRC 0x{expected:04X}"
        )
    return struct.unpack(">" + reply.fields, payload[len(reply.echo) :])


# -- scalings ------------------------------------------------------------------------------------
def current_code(current_ma: float, max_current_ma: float, full_scale: int = 4095) -> int:
    """code = I / Imax * full_scale (rounded to the nearest code)."""
    return int(round(current_ma / max_current_ma * full_scale))


def current_ma(code: int, max_current_ma: float, full_scale: int = 4095) -> float:
    """I = code * Imax / full_scale."""
    return code * max_current_ma / full_scale


def focal_power_raw(focal_power_dpt: float, firmware_type: str) -> int:
    """raw = (dpt + 5) * 200 for firmware type 'A', else dpt * 200."""
    offset = FIRMWARE_A_OFFSET_DPT if firmware_type == "A" else 0.0
    return int(round((focal_power_dpt + offset) / DPT_PER_LSB))


def focal_power_dpt(raw: int, firmware_type: str) -> float:
    """dpt = raw / 200 - 5 for firmware type 'A', else raw / 200."""
    offset = FIRMWARE_A_OFFSET_DPT if firmware_type == "A" else 0.0
    return raw * DPT_PER_LSB - offset


def temperature_c(raw: int) -> float:
    return raw * DEGC_PER_LSB


def temperature_raw(temperature_c_: float) -> int:
    return int(round(temperature_c_ / DEGC_PER_LSB))
