"""The Optotune Lens Driver 4 codec against the protocol facts of hardware.md section 1.

CRCs in expectations come from `spec_crc`, a bit-by-bit CRC-16/ARC written from its definition
(reflected polynomial 0xA001, init 0, no final XOR), independent of the driver's table."""

import struct

import numpy as np
import pytest

from drivers.errors import ProtocolError
from drivers.optotune import codec, crc16
from drivers.optotune.errors import (
    IncompleteReplyError,
    LensRefusedError,
    ReplyCrcError,
    UnexpectedReplyError,
)


def spec_crc(data: bytes) -> int:
    crc = 0x0000
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def spec_reply(payload: bytes) -> bytes:
    return payload + struct.pack("<H", spec_crc(payload)) + b"\r\n"


def test_crc_check_values_of_the_reference():
    assert crc16(b"123456789") == 0xBB3D  # the standard CRC-16/ARC check value
    assert crc16(b"Start") == 0xA5EA


def test_crc_is_arc_not_modbus():
    # CRC-16/MODBUS (init 0xFFFF) of the check string is 0x4B37; the lens uses init 0
    assert crc16(b"123456789") != 0x4B37


def test_crc_equals_the_bitwise_definition_on_random_frames():
    rng = np.random.default_rng(5)
    for n in (0, 1, 2, 7, 64, 255):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc16(data) == spec_crc(data)


def test_get_current_frame_on_the_wire():
    assert codec.get_current().frame == bytes.fromhex("41 72 00 00 B4 27")


def test_command_crc_goes_low_byte_first():
    frame = codec.get_temperature().frame
    assert frame[:3] == b"TCA"
    assert frame[3] == spec_crc(b"TCA") & 0xFF and frame[4] == spec_crc(b"TCA") >> 8


@pytest.mark.parametrize(
    "request_, body",
    [
        (codec.get_max_current(), b"CrMA\x00\x00"),
        (codec.get_current_limit("upper"), b"CrUA\x00\x00"),
        (codec.get_current_limit("lower"), b"CrLA\x00\x00"),
        (codec.set_mode(codec.LensMode.CURRENT), b"MwDA"),
        (codec.set_mode(codec.LensMode.SINUSOIDAL), b"MwSA"),
        (codec.set_mode(codec.LensMode.TRIANGULAR), b"MwTA"),
        (codec.set_mode(codec.LensMode.RECTANGULAR), b"MwQA"),
        (codec.set_mode(codec.LensMode.ANALOG), b"MwAA"),
        (codec.set_mode(codec.LensMode.FOCAL_POWER), b"MwCA"),
        (codec.get_mode(), b"MMA"),
        (codec.get_focal_power(), b"PrDA\x00\x00\x00\x00"),
        (codec.get_firmware_type(), b"H"),
        (codec.get_firmware_branch(), b"F"),
        (codec.get_lens_serial(), b"X"),
        (codec.get_firmware_version(), b"V"),
        (codec.get_firmware_version(b"V\x00"), b"V\x00"),
        (codec.get_device_id(), b"IR" + bytes(8)),
    ],
)
def test_query_frames_are_opcode_payload_and_crc(request_, body):
    assert request_.frame == body + struct.pack("<H", spec_crc(body))
    assert request_.reply is not None


def test_write_frames_pack_big_endian_payloads():
    assert codec.set_current(-2).frame[:4] == b"Aw\xff\xfe"
    assert codec.set_current_limit("upper", 1000).frame[:6] == b"CwUA\x03\xe8"
    assert codec.set_focal_power(1300).frame[:8] == b"PwDA\x05\x14\x00\x00"
    assert codec.set_temperature_limits(640, 320).frame[:8] == b"PwTA\x02\x80\x01\x40"
    assert codec.set_signal_current("lower", -100).frame[:8] == b"PwLA\xff\x9c\x00\x00"
    assert codec.set_signal_frequency(12_500).frame[:8] == b"PwFA\x00\x00\x30\xd4"


def test_silent_writes_have_no_reply():
    for request_ in (
        codec.set_current(0),
        codec.set_focal_power(0),
        codec.set_signal_current("upper", 0),
        codec.set_signal_frequency(1000),
    ):
        assert request_.reply is None


@pytest.mark.parametrize(
    "request_, size",
    [
        (codec.get_current(), 1 + 2 + 4),  # A + int16
        (codec.get_max_current(), 3 + 2 + 4),  # 3 echo bytes + int16
        (codec.set_mode(codec.LensMode.FOCAL_POWER), 3 + 1 + 2 + 2 + 4),  # MCA err max min
        (codec.get_focal_power(), 2 + 2 + 4),  # 2 echo bytes + int16
        (codec.set_temperature_limits(0, 0), 2 + 1 + 2 + 2 + 4),
        (codec.get_firmware_version(), 1 + 6 + 4),  # V + u8 u8 u16 u16
        (codec.get_device_id(), 2 + 8 + 4),
    ],
)
def test_reply_sizes_follow_the_command_table(request_, size):
    assert request_.reply.size == size


def test_parse_reply_returns_the_big_endian_values():
    assert codec.parse_reply(codec.get_current(), spec_reply(b"A\x08\x00")) == (2048,)
    version = codec.parse_reply(
        codec.get_firmware_version(), spec_reply(b"V\x01\x09\x00\x02\x01\x00")
    )
    assert version == (1, 9, 2, 256)
    err, max_raw, min_raw = codec.parse_reply(
        codec.set_mode(codec.LensMode.FOCAL_POWER), spec_reply(b"MCA\x00\x0b\xb8\xfc\x18")
    )
    assert (err, max_raw, min_raw) == (0, 3000, -1000)


def test_refusal_bad_crc_wrong_echo_and_short_reply_are_typed_protocol_errors():
    good = spec_reply(b"A\x08\x00")
    bad_crc = good[:3] + bytes([good[3] ^ 0x01]) + good[4:]
    cases = [
        (b"N\r\n", LensRefusedError),
        (bad_crc, ReplyCrcError),
        (spec_reply(b"B\x08\x00"), UnexpectedReplyError),
        (good[:-2] + b"\n\r", UnexpectedReplyError),
        (good[:4], IncompleteReplyError),
    ]
    for raw, error in cases:
        with pytest.raises(error) as info:
            codec.parse_reply(codec.get_current(), raw)
        assert isinstance(info.value, ProtocolError)
        assert "get current" in str(info.value)


def test_current_scaling_uses_the_full_scale_code():
    # I = code * Imax / 4095 (manual) ; some drivers use 4096
    assert codec.current_code(292.84, 292.84) == 4095
    assert codec.current_code(292.84, 292.84, 4096) == 4096
    assert codec.current_code(100.0, 292.84) == round(100 / 292.84 * 4095)
    assert codec.current_ma(2048, 292.84) == pytest.approx(2048 * 292.84 / 4095)


def test_focal_power_encoding_depends_on_firmware_type():
    assert codec.focal_power_raw(0.0, "A") == 1000  # (0 + 5) * 200
    assert codec.focal_power_raw(1.5, "A") == 1300
    assert codec.focal_power_raw(1.5, "B") == 300  # 1.5 * 200
    assert codec.focal_power_dpt(1300, "A") == pytest.approx(1.5)
    assert codec.focal_power_dpt(-2000, "B") == pytest.approx(-10.0)


def test_temperature_is_a_count_of_sixteenths_of_a_degree():
    assert codec.temperature_c(400) == 25.0
    assert codec.temperature_raw(40.0) == 640


def test_out_of_field_values_are_refused_by_the_frame_builders():
    with pytest.raises(ValueError, match="16-bit"):
        codec.set_current(40000)
    with pytest.raises(ValueError, match="position"):
        codec.set_mode(codec.LensMode.POSITION)
    with pytest.raises(ValueError, match="upper"):
        codec.get_current_limit("middle")
