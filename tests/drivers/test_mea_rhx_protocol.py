"""Intan RHX protocol bytes (hardware.md section 4): commands, replies, waveform blocks
(magic 0x2ef07a08, 128 frames of int32 timestamp + uint16 words), spike records (14 bytes,
magic 0x3ae2710f) and amplifier scaling uV = 0.195 (x - 32768)."""

import struct

import numpy as np
import pytest

from drivers.errors import DeviceStateError, ProtocolError
from drivers.mea.rhx_protocol import (
    Reply,
    RHXInvalidValue,
    RHXNotNow,
    RHXUnknownCommand,
    WaveformLayout,
    amplifier_uv,
    decode_spikes,
    decode_waveform_blocks,
    encode_commands,
    encode_spikes,
    encode_waveform_blocks,
    error_from_reply,
    parse_replies,
    set_command,
    stim_onsets,
    stim_word,
)


def test_commands_are_ascii_separated_by_semicolons():
    cmds = [
        set_command("A-010.StimEnabled", True),
        "get runmode",
        set_command("A-010.FirstPhaseAmplitudeMicroAmps", 12.5),
    ]
    assert encode_commands(cmds) == (
        b"set A-010.StimEnabled true;get runmode;set A-010.FirstPhaseAmplitudeMicroAmps 12.5;"
    )
    with pytest.raises(ValueError):
        encode_commands(["set a;b"])


def test_concatenated_replies_are_split_and_errors_keep_their_command_number():
    text = (
        "Return: SampleRateHertz 30000Error - Command 2: Unrecognized parameter"
        "Warning: RefractoryPeriodMicroseconds cannot be less than "
        "PostStimAmpSettleMicrosecondsReturn: RunMode Stop"
    )
    replies = parse_replies(text)
    assert replies == [
        Reply("return", "SampleRateHertz 30000"),
        Reply("error", "Unrecognized parameter", 2),
        Reply(
            "warning",
            "RefractoryPeriodMicroseconds cannot be less than PostStimAmpSettleMicroseconds",
        ),
        Reply("return", "RunMode Stop"),
    ]


def test_bare_rhx_error_text_is_an_error():
    # RHX 3.3 sends refusals raised after parsing without the "Error - Command N" prefix
    replies = parse_replies(
        "UploadStimParameters cannot be executed while the board is runningReturn: RunMode Run"
    )
    assert replies[0].kind == "error" and replies[0].command_index is None
    assert replies[1] == Reply("return", "RunMode Run")


@pytest.mark.parametrize(
    "text, cls",
    [
        ("UploadStimParameters cannot be executed while the board is running", RHXNotNow),
        ("Board must be stopped in order to start running", RHXNotNow),
        ("SampleRateHertz cannot be changed once software has started.", RHXNotNow),
        ("Invalid value for Shape command. Acceptable: Biphasic, Triphasic", RHXInvalidValue),
        ("Unrecognized parameter", RHXUnknownCommand),
        ("Set commands require a parameter and a value", RHXUnknownCommand),
    ],
)
def test_error_replies_become_typed_errors(text, cls):
    err = error_from_reply(Reply("error", text, 2), ["get runmode", "execute x"])
    assert isinstance(err, cls) and isinstance(err, ProtocolError)
    assert err.command == "execute x" and err.text == text
    assert text in str(err)
    if cls is RHXNotNow:
        assert isinstance(err, DeviceStateError)


def _block_bytes(first_timestamp: int, words_per_frame: list[list[int]]) -> bytes:
    out = struct.pack("<I", 0x2EF07A08)
    for i, words in enumerate(words_per_frame):
        out += struct.pack("<i", first_timestamp + i) + struct.pack(f"<{len(words)}H", *words)
    return out


def test_waveform_block_layout_and_decoding():
    layout = WaveformLayout.from_enabled({"B-001": ["STIM"], "A-010": ["STIM", "WIDE"]})
    # channel order: port A before B; bands WIDE before STIM
    assert layout.words == (("A-010", "WIDE"), ("A-010", "STIM"), ("B-001", "STIM"))
    assert layout.frame_bytes == 4 + 2 * 3
    assert layout.block_bytes == 4 + 128 * 10
    frames = [[32768 + k, k % 2, 0] for k in range(128)]
    data = _block_bytes(1000, frames) + _block_bytes(1128, frames)
    assert data[:4] == bytes.fromhex("087af02e")  # little-endian magic number
    ts = np.zeros(256, np.int64)
    words = np.zeros((256, 3), np.uint16)
    assert decode_waveform_blocks(data, layout, ts, words) == 256
    np.testing.assert_array_equal(ts, np.arange(1000, 1256))
    assert words[5].tolist() == [32773, 1, 0]
    assert encode_waveform_blocks(ts, words, layout) == data


def test_amplifier_words_in_microvolts():
    assert amplifier_uv(np.array([32768, 33768, 31768])).tolist() == pytest.approx(
        [0.0, 195.0, -195.0]
    )


def test_wrong_magic_or_partial_block_is_a_protocol_error():
    layout = WaveformLayout.from_enabled({"A-000": ["WIDE"]})
    good = _block_bytes(0, [[32768]] * 128)
    bad = struct.pack("<I", 0xDEADBEEF) + good[4:]
    buf_t, buf_w = np.zeros(128, np.int64), np.zeros((128, 1), np.uint16)
    with pytest.raises(ProtocolError, match="0xdeadbeef"):
        decode_waveform_blocks(bad, layout, buf_t, buf_w)
    with pytest.raises(ProtocolError, match="whole number"):
        decode_waveform_blocks(good[:-2], layout, buf_t, buf_w)


def test_spike_records_are_14_bytes():
    raw = struct.pack("<I5sIB", 0x3AE2710F, b"A-010", 123456, 1)
    assert len(raw) == 14
    rec = decode_spikes(raw + struct.pack("<I5sIB", 0x3AE2710F, b"B-031", 7, 3))
    assert rec["name"].tolist() == [b"A-010", b"B-031"]
    assert rec["timestamp"].tolist() == [123456, 7] and rec["id"].tolist() == [1, 3]
    assert encode_spikes(["A-010"], np.array([123456]), np.array([1], np.uint8)) == raw
    with pytest.raises(ProtocolError, match="magic"):
        decode_spikes(struct.pack("<I5sIB", 0x2EF07A08, b"A-010", 1, 1))


def test_stim_word_bits():
    # low byte: magnitude in steps; bit 8: negative phase; bits 14/15: amp settle, recovery
    assert stim_word(10, True) == 0x010A
    assert stim_word(255, False, amp_settle=True, charge_recovery=True) == 0xC0FF


def _pulse_words(phases, n=40, offset=3):
    """STIM words of one channel: phases = [(length, steps, negative) or (length, 0, _)]."""
    w = np.zeros(n, np.uint16)
    i = offset
    for length, steps, negative in phases:
        w[i : i + length] = stim_word(steps, negative) if steps else 0
        i += length
    return w


@pytest.mark.parametrize(
    "phases",
    [
        [(6, 10, True), (6, 10, False)],  # biphasic
        [(6, 10, True), (3, 0, False), (6, 10, False)],  # with an interphase gap
        [(6, 5, True), (6, 10, False), (6, 5, True)],  # triphasic
    ],
)
def test_one_pulse_has_one_onset_whatever_its_shape(phases):
    words = _pulse_words(phases)[:, None]
    cols, onsets = stim_onsets(words, 1000, np.array([True]), np.zeros(1, bool))
    assert onsets.tolist() == [1003] and cols.tolist() == [0]


def test_train_onsets_and_a_pulse_split_across_blocks():
    one = _pulse_words([(6, 10, True), (6, 10, False)], n=20, offset=0)
    train = np.concatenate([one, one, one])[:, None]  # three pulses, 20 samples apart
    prev = np.zeros(1, bool)
    cols, onsets = stim_onsets(train[:25], 0, np.array([True]), prev)
    cols2, onsets2 = stim_onsets(train[25:], 25, np.array([True]), prev)
    assert onsets.tolist() + onsets2.tolist() == [0, 20, 40]
    # a pulse whose first phase spans the block boundary is counted once
    prev = np.zeros(1, bool)
    _, a = stim_onsets(train[:3], 0, np.array([True]), prev)
    _, b = stim_onsets(train[3:20], 3, np.array([True]), prev)
    assert a.tolist() == [0] and b.tolist() == []
