"""The Intan RHX TCP protocol as bytes and text: commands, replies, data streams (no sockets).

Reference: hardware.md section 4 and the RHX source (Engine/Processing/commandparser.cpp,
GUI/Widgets/tcpdisplay.cpp, Engine/Threads/tcpdataoutputthread.cpp). Both the client
(intan_rhx.py) and the simulated server (simulators/rhx_server.py) use these codecs, so the
tests pin the bytes once.

Commands (port 5000): ASCII, separated by ';', keywords case-insensitive:
    set <param> <value>        nothing comes back on success
    get <param>                "Return: <Name> <value>"
    execute <action> [param]   nothing comes back on success
Replies are written without any terminator; several may arrive concatenated. Errors are
"Error - Command N: <text>" (N = 1-based position of the command in the received text);
RHX 3.3 sends some errors (refusals raised after parsing, e.g. "UploadStimParameters cannot
be executed while the board is running") as bare text, which `parse_replies` also accepts.
Warnings ("Warning: ...") follow some stimulation settings.

Waveform stream (port 5001): blocks of 128 frames; a block is the magic number 0x2ef07a08
(uint32, little endian) then 128 frames of [int32 timestamp, one uint16 per enabled word].
Words are ordered by channel (port A, B, ..., channel index), and within an amplifier channel
by band: WIDE, LOW, HIGH, DC, STIM (SPK goes to the spike stream). Amplifier words are
microvolts = 0.195 (x - 32768); a STIM word has the stimulation magnitude in steps in its
low byte, bit 8 set for a negative (cathodic) phase, bit 14 amp settle, bit 15 charge recovery.

Spike stream (port 5002): 14-byte records: magic 0x3ae2710f (uint32), 5 ASCII characters of
the native channel name, uint32 timestamp, uint8 spike id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from drivers.errors import DeviceStateError, ProtocolError

WAVEFORM_MAGIC = 0x2EF07A08
SPIKE_MAGIC = 0x3AE2710F
FRAMES_PER_BLOCK = 128
AMPLIFIER_UV_PER_BIT = 0.195
AMPLIFIER_OFFSET = 32768
SPIKE_RECORD_BYTES = 14

SAMPLE_RATES_HZ = (20000, 25000, 30000)
STIM_STEP_SIZES_UA = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
MAX_AMPLITUDE_STEPS = 255
MAX_STIM_PULSES = 256
MAX_PHASE_US = 5000.0
MAX_PULSE_TRAIN_PERIOD_US = 1_000_000.0
KEYS = tuple(f"F{i}" for i in range(1, 9))
DIGITAL_INPUTS = tuple(f"DigitalIn{i:02d}" for i in range(1, 17))
BANDS = ("WIDE", "LOW", "HIGH", "DC", "STIM")
BAND_ITEMS = {
    "WIDE": "TCPDataOutputEnabled",
    "LOW": "TCPDataOutputEnabledLow",
    "HIGH": "TCPDataOutputEnabledHigh",
    "SPK": "TCPDataOutputEnabledSpike",
    "DC": "TCPDataOutputEnabledDC",
    "STIM": "TCPDataOutputEnabledStim",
}
RUN_MODES = ("Stop", "Run", "Record", "Trigger")

STIM_MAGNITUDE_MASK = 0x00FF
STIM_NEGATIVE_BIT = 0x0100
STIM_AMP_SETTLE_BIT = 0x4000
STIM_CHARGE_RECOVERY_BIT = 0x8000

SPIKE_DTYPE = np.dtype([("magic", "<u4"), ("name", "S5"), ("timestamp", "<u4"), ("id", "u1")])
assert SPIKE_DTYPE.itemsize == SPIKE_RECORD_BYTES


# -- channel names ------------------------------------------------------------------------------

_CHANNEL = re.compile(r"^([A-H])-(\d{3})$")


def channel_name(port: str, index: int) -> str:
    """Native RHX amplifier channel name, e.g. channel_name('A', 10) == 'A-010'."""
    return f"{port.upper()}-{index:03d}"


def parse_channel_name(name: str) -> tuple[str, int]:
    m = _CHANNEL.match(name.upper())
    if not m:
        raise ValueError(f"{name!r} is not an RHX amplifier channel name like 'A-010'")
    return m.group(1), int(m.group(2))


def channel_sort_key(name: str) -> tuple[str, int]:
    """RHX streams channels port by port, then by channel index."""
    return parse_channel_name(name)


# -- commands ------------------------------------------------------------------------------------


def format_value(value: object) -> str:
    """A value as RHX parses it: booleans true/false, numbers without float noise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.10g}"
    text = str(value)
    if not text or any(c in text for c in " ;"):
        raise ValueError(f"value {value!r} cannot be sent: RHX values have no spaces or ';'")
    return text


def set_command(parameter: str, value: object) -> str:
    return f"set {parameter} {format_value(value)}"


def get_command(parameter: str) -> str:
    return f"get {parameter}"


def execute_command(action: str, parameter: str | None = None) -> str:
    return f"execute {action}" if parameter is None else f"execute {action} {parameter}"


def encode_commands(commands: Sequence[str]) -> bytes:
    """'cmd1;cmd2;' as ASCII (RHX accepts a ';' after the last command)."""
    for c in commands:
        if ";" in c or not c.strip():
            raise ValueError(f"command {c!r} is empty or contains ';'")
    return ("".join(f"{c};" for c in commands)).encode("ascii")


# -- replies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One message from the command port."""

    kind: str  # "return", "error", "warning"
    text: str  # without the "Return: " / "Error - Command N: " / "Warning: " prefix
    command_index: int | None = None  # 1-based, for errors that say which command


_MARKER = re.compile(r"Return: |Error - Command (\d+): |Error - |Warning: ")


def parse_replies(text: str) -> list[Reply]:
    """Split concatenated replies (RHX writes them without separators). Text before the first
    marker, or not introduced by one, is a bare RHX error message."""
    out: list[Reply] = []
    marks = list(_MARKER.finditer(text))
    if not marks:
        return [Reply("error", text.strip())] if text.strip() else []
    if marks[0].start() > 0 and text[: marks[0].start()].strip():
        out.append(Reply("error", text[: marks[0].start()].strip()))
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        body = text[m.end() : end].strip()
        prefix = m.group(0)
        if prefix.startswith("Return"):
            out.append(Reply("return", body))
        elif prefix.startswith("Warning"):
            out.append(Reply("warning", body))
        else:
            index = int(m.group(1)) if m.group(1) else None
            out.append(Reply("error", body, index))
    return out


def count_returns(text: str, name: str) -> int:
    """How many 'Return: <name> ' replies the text holds (used to find the end of a batch;
    replies have no terminator, so only the prefix is reliable)."""
    return text.count(f"Return: {name} ")


class RHXError(ProtocolError):
    """RHX refused a command. `command` is the command it refers to (when known),
    `text` RHX's own words."""

    def __init__(
        self, text: str, command: str | None = None, command_index: int | None = None
    ) -> None:
        where = f" (command {command_index}: {command!r})" if command else ""
        super().__init__(f"RHX refused{where}: {text}")
        self.text = text
        self.command = command
        self.command_index = command_index


class RHXUnknownCommand(RHXError):
    """The command, parameter or action is not known to RHX (or malformed)."""


class RHXInvalidValue(RHXError):
    """The value is not one RHX accepts for that parameter."""


class RHXNotNow(RHXError, DeviceStateError):
    """Refused in the controller's current state (running, recording, upload in progress),
    or read-only after start-up."""


def error_from_reply(reply: Reply, commands: Sequence[str]) -> RHXError:
    """The typed error for an error reply, attributed to its command when RHX says which."""
    text = reply.text
    command = None
    if reply.command_index is not None and 1 <= reply.command_index <= len(commands):
        command = commands[reply.command_index - 1]
    lower = text.lower()
    if (
        ("while" in lower and ("running" in lower or "recording" in lower))
        or "must be stopped" in lower
        or "must be running" in lower
        or "cannot be changed" in lower
        or "another upload" in lower
        or "cannot be added unless" in lower
        or "must both be specified" in lower
    ):
        cls: type[RHXError] = RHXNotNow
    elif lower.startswith("invalid value") or "acceptable" in lower:
        cls = RHXInvalidValue
    elif "unrecognized" in lower or "require" in lower:
        cls = RHXUnknownCommand
    else:
        cls = RHXError
    return cls(text, command, reply.command_index)


# -- waveform stream -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WaveformLayout:
    """The words of one frame: (channel, band) in stream order."""

    words: tuple[tuple[str, str], ...]

    @classmethod
    def from_enabled(cls, enabled: dict[str, Sequence[str]]) -> WaveformLayout:
        """Stream order from {channel: bands}: channels by port and index, bands in BANDS order."""
        words = []
        for ch in sorted(enabled, key=channel_sort_key):
            for band in BANDS:
                if band in enabled[ch]:
                    words.append((ch.upper(), band))
        return cls(tuple(words))

    @property
    def n_words(self) -> int:
        return len(self.words)

    @property
    def frame_bytes(self) -> int:
        return 4 + 2 * self.n_words

    @property
    def block_bytes(self) -> int:
        return 4 + FRAMES_PER_BLOCK * self.frame_bytes

    def dtype(self) -> np.dtype:
        frame = np.dtype([("timestamp", "<i4"), ("words", "<u2", (self.n_words,))])
        return np.dtype([("magic", "<u4"), ("frames", frame, (FRAMES_PER_BLOCK,))])

    def columns(self, band: str) -> tuple[list[str], list[int]]:
        """Channels carrying `band`, and their word columns."""
        chans, cols = [], []
        for k, (ch, b) in enumerate(self.words):
            if b == band:
                chans.append(ch)
                cols.append(k)
        return chans, cols


def decode_waveform_blocks(
    data: bytes | memoryview,
    layout: WaveformLayout,
    timestamps_out: np.ndarray,
    words_out: np.ndarray,
) -> int:
    """Parse whole blocks of `data` into timestamps_out (int64, n_frames) and words_out
    (uint16, n_frames x n_words); returns frames written. Raises ProtocolError on a bad
    magic number or a partial block."""
    size = layout.block_bytes
    if len(data) % size:
        raise ProtocolError(
            f"waveform data of {len(data)} bytes is not a whole number of "
            f"{size}-byte blocks ({layout.n_words} words per frame): the "
            "enabled channels differ from what the client expects"
        )
    blocks = np.frombuffer(data, dtype=layout.dtype())
    bad = np.flatnonzero(blocks["magic"] != WAVEFORM_MAGIC)
    if bad.size:
        raise ProtocolError(
            f"waveform block {bad[0]} starts with 0x{int(blocks['magic'][bad[0]]):08x}, "
            f"not the magic number 0x{WAVEFORM_MAGIC:08x}: stream out of step"
        )
    n = blocks.shape[0] * FRAMES_PER_BLOCK
    frames = blocks["frames"].reshape(n)
    timestamps_out[:n] = frames["timestamp"].view(np.uint32)
    words_out[:n] = frames["words"]
    return n


def encode_waveform_blocks(
    timestamps: np.ndarray, words: np.ndarray, layout: WaveformLayout
) -> bytes:
    """Blocks for frames (n multiple of 128) with the given timestamps and words."""
    n = timestamps.shape[0]
    if n % FRAMES_PER_BLOCK or words.shape != (n, layout.n_words):
        raise ValueError(
            f"{n} frames x {words.shape} words do not make whole blocks of "
            f"{FRAMES_PER_BLOCK} frames x {layout.n_words} words"
        )
    nb = n // FRAMES_PER_BLOCK
    blocks = np.zeros(nb, dtype=layout.dtype())
    blocks["magic"] = WAVEFORM_MAGIC
    stamps = (timestamps.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
    blocks["frames"]["timestamp"] = stamps.reshape(nb, FRAMES_PER_BLOCK)
    blocks["frames"]["words"] = words.reshape(nb, FRAMES_PER_BLOCK, layout.n_words)
    return blocks.tobytes()


def amplifier_uv(words: np.ndarray) -> np.ndarray:
    """uV = 0.195 (x - 32768)."""
    return AMPLIFIER_UV_PER_BIT * (words.astype(np.float64) - AMPLIFIER_OFFSET)


# -- spike stream --------------------------------------------------------------------------------


def decode_spikes(data: bytes | memoryview) -> np.ndarray:
    """Whole 14-byte records -> structured array (name, timestamp, id); ProtocolError on a
    wrong magic number."""
    if len(data) % SPIKE_RECORD_BYTES:
        raise ProtocolError(f"spike data of {len(data)} bytes is not whole 14-byte records")
    records = np.frombuffer(data, dtype=SPIKE_DTYPE)
    bad = np.flatnonzero(records["magic"] != SPIKE_MAGIC)
    if bad.size:
        raise ProtocolError(
            f"spike record {bad[0]} starts with 0x{int(records['magic'][bad[0]]):08x}, "
            f"not the magic number 0x{SPIKE_MAGIC:08x}: stream out of step"
        )
    return records


def encode_spikes(names: Sequence[str], timestamps: np.ndarray, ids: np.ndarray) -> bytes:
    records = np.zeros(len(names), dtype=SPIKE_DTYPE)
    records["magic"] = SPIKE_MAGIC
    records["name"] = [n.encode("ascii")[:5] for n in names]
    records["timestamp"] = np.asarray(timestamps, dtype=np.int64) & 0xFFFFFFFF
    records["id"] = ids
    return records.tobytes()


# -- stimulation words ---------------------------------------------------------------------------


def stim_word(
    steps: int, negative: bool, amp_settle: bool = False, charge_recovery: bool = False
) -> int:
    return (
        (steps & STIM_MAGNITUDE_MASK)
        | (STIM_NEGATIVE_BIT if negative else 0)
        | (STIM_AMP_SETTLE_BIT if amp_settle else 0)
        | (STIM_CHARGE_RECOVERY_BIT if charge_recovery else 0)
    )


def stim_onsets(
    words: np.ndarray, first_sample: int, lead_negative: np.ndarray, previous_on: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pulse onsets in STIM words (n_frames x n_channels): (channel column, device sample).

    A pulse starts where the magnitude rises from 0 with the polarity of the leading phase
    (`lead_negative[col]`: True for NegativeFirst). The second phase after an interphase gap
    rises with the opposite polarity, and the phases of a triphasic pulse follow each other
    without a gap, so neither counts as a new pulse. `previous_on[col]` (the last frame of
    the previous block was inside a phase) carries over between blocks and is updated in
    place."""
    empty = np.zeros(0, np.int64)
    if words.shape[0] == 0:
        return empty, empty
    on = (words & STIM_MAGNITUDE_MASK) != 0
    if not on.any():
        previous_on[:] = False
        return empty, empty
    before = np.empty_like(on)
    before[0] = previous_on
    before[1:] = on[:-1]
    negative = (words & STIM_NEGATIVE_BIT) != 0
    rows, cols = np.nonzero(on & ~before & (negative == lead_negative[None, :]))
    previous_on[:] = on[-1]
    order = np.lexsort((cols, rows))
    return cols[order].astype(np.int64), rows[order].astype(np.int64) + first_sample
