"""The lens driver's bytes, pinned in both directions (pymeasure's expected_protocol idea).

`serial.serial_for_url` is replaced by a fake transport that holds a script of
(bytes the driver must write, bytes the lens answers). Every write is compared byte for byte
with the script; a write that is not in the script fails the test, so "nothing was sent" is
checked by giving no further exchanges. Expected frames are written from the reference:
opcode + big-endian payload + CRC-16/ARC low byte first (`spec_frame`, a bitwise CRC written
from its definition), replies the same plus CRLF.
"""

import struct

import pytest
import serial

from drivers.errors import DeviceStateError, DeviceTimeout, LimitError, ProtocolError
from drivers.optotune import OptotuneLens
from drivers.optotune.errors import (
    LensRefusedError,
    ModeMismatchError,
    ReplyCrcError,
    UnexpectedReplyError,
)

MAX_MA = 292.84


def spec_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def spec_frame(body: bytes) -> bytes:
    return body + struct.pack("<H", spec_crc(body))


def spec_reply(payload: bytes) -> bytes:
    return spec_frame(payload) + b"\r\n"


class ExpectedProtocol:
    """A serial transport that checks each write against a script and answers from it."""

    port = "expected://lens"

    def __init__(self, exchanges: list[tuple[bytes, bytes]]) -> None:
        self.exchanges = list(exchanges)
        self.rx = bytearray()
        self.timeout = 0.05
        self.closed = False
        self.open_kwargs: dict = {}

    def add(self, *exchanges: tuple[bytes, bytes]) -> None:
        self.exchanges.extend(exchanges)

    def write(self, data: bytes) -> int:
        assert self.exchanges, f"the driver wrote {bytes(data).hex(' ')}, but nothing was expected"
        expected, reply = self.exchanges.pop(0)
        assert bytes(data) == expected, (
            f"wrote {bytes(data).hex(' ')}, expected {expected.hex(' ')}"
        )
        self.rx += reply
        return len(data)

    def read(self, n: int = 1) -> bytes:
        out = bytes(self.rx[:n])
        del self.rx[:n]
        return out

    @property
    def in_waiting(self) -> int:
        return len(self.rx)

    def close(self) -> None:
        self.closed = True

    def assert_done(self) -> None:
        assert not self.exchanges, f"{len(self.exchanges)} expected exchanges never happened"


def open_sequence(
    mode: int = 1, upper_code: int = 4095, lower_code: int = -4095, firmware_type: bytes = b"A"
) -> list[tuple[bytes, bytes]]:
    return [
        (b"Start", b"Ready\r\n"),
        (spec_frame(b"H"), spec_reply(b"H" + firmware_type)),
        (spec_frame(b"V"), spec_reply(b"V" + struct.pack(">BBHH", 1, 9, 2, 0))),
        (spec_frame(b"X"), spec_reply(b"XEL103001")),
        (spec_frame(b"CrMA\x00\x00"), spec_reply(b"CMA" + struct.pack(">h", 29284))),
        (spec_frame(b"CrUA\x00\x00"), spec_reply(b"CUA" + struct.pack(">h", upper_code))),
        (spec_frame(b"CrLA\x00\x00"), spec_reply(b"CLA" + struct.pack(">h", lower_code))),
        (spec_frame(b"MMA"), spec_reply(b"MMA" + bytes([mode]))),
    ]


def focal_power_mode(max_raw: int = 3000, min_raw: int = -1000) -> tuple[bytes, bytes]:
    return (spec_frame(b"MwCA"), spec_reply(b"MCA\x00" + struct.pack(">hh", max_raw, min_raw)))


@pytest.fixture
def fake(monkeypatch):
    transport = ExpectedProtocol(open_sequence())

    def serial_for_url(url, **kwargs):
        assert url == ExpectedProtocol.port
        transport.open_kwargs = kwargs
        return transport

    monkeypatch.setattr(serial, "serial_for_url", serial_for_url)
    return transport


def test_open_reads_identity_and_limits_instead_of_guessing(fake):
    lens = OptotuneLens(ExpectedProtocol.port).open()
    fake.assert_done()
    assert fake.open_kwargs["baudrate"] == 115200
    assert lens.firmware_type == "A"
    assert str(lens.firmware_version) == "1.9.2.0"
    assert lens.lens_serial == "EL103001"
    assert lens.max_current_ma == MAX_MA  # 29284 x 10 uA
    assert lens.software_current_limits_ma == pytest.approx((-MAX_MA, MAX_MA))
    assert lens.mode.label == "current"
    assert lens.focal_power_range_dpt is None  # only MwCA / PwTA report it


def test_open_in_focal_power_mode_asks_for_the_range(fake):
    fake.exchanges = open_sequence(mode=5) + [focal_power_mode(3000, -1000)]
    lens = OptotuneLens(ExpectedProtocol.port).open()
    fake.assert_done()
    assert lens.focal_power_range_dpt == pytest.approx((3000 / 200 - 5, -1000 / 200 - 5)[::-1])


def test_get_current_bytes_and_scaling(fake):
    lens = OptotuneLens(ExpectedProtocol.port).open()
    fake.add((bytes.fromhex("41 72 00 00 B4 27"), spec_reply(b"A\x08\x00")))
    assert lens.current_ma() == pytest.approx(2048 * MAX_MA / 4095)
    fake.assert_done()


@pytest.mark.parametrize("full_scale", [4095, 4096])
def test_set_current_is_a_silent_write_scaled_by_the_configured_full_scale(fake, full_scale):
    lens = OptotuneLens(ExpectedProtocol.port, full_scale_code=full_scale).open()
    code = round(100.0 / MAX_MA * full_scale)
    fake.add((spec_frame(b"Aw" + struct.pack(">h", code)), b""))
    lens.set_current_ma(100.0)
    fake.assert_done()
    assert fake.rx == b""


def test_negative_current_is_a_signed_code(fake):
    lens = OptotuneLens(ExpectedProtocol.port).open()
    fake.add((spec_frame(b"Aw\xfc\x18"), b""))  # -1000
    lens.set_current_ma(-1000 * MAX_MA / 4095)
    fake.assert_done()


def test_focal_power_mode_then_set_focal_power_firmware_a(fake):
    lens = OptotuneLens(ExpectedProtocol.port).open()
    fake.add(
        focal_power_mode(3000, -1000),  # range 10 .. -10 dpt on firmware 'A'
        (spec_frame(b"PwDA" + struct.pack(">h", 1300) + b"\x00\x00"), b""),
    )
    assert lens.set_mode("focal power").max_dpt == pytest.approx(10.0)
    lens.set_focal_power_dpt(1.5)  # (1.5 + 5) * 200 = 1300
    fake.assert_done()
    fake.add((spec_frame(b"PrDA\x00\x00\x00\x00"), spec_reply(b"PD" + struct.pack(">h", 1300))))
    assert lens.focal_power_dpt() == pytest.approx(1.5)


def test_other_firmware_types_encode_focal_power_without_offset(fake):
    fake.exchanges = open_sequence(firmware_type=b"B")
    lens = OptotuneLens(ExpectedProtocol.port).open()
    fake.add(
        focal_power_mode(2000, -2000),
        (spec_frame(b"PwDA" + struct.pack(">h", -300) + b"\x00\x00"), b""),
    )
    assert lens.set_mode("focal power").min_dpt == pytest.approx(-10.0)
    lens.set_focal_power_dpt(-1.5)
    fake.assert_done()


def test_temperature_and_temperature_limits(fake):
    lens = OptotuneLens(ExpectedProtocol.port).open()
    fake.add(
        (spec_frame(b"TCA"), spec_reply(b"TCA\x01\xa2")),  # 418 / 16
        (
            spec_frame(b"PwTA" + struct.pack(">hh", 40 * 16, 20 * 16)),
            spec_reply(b"PT\x00" + struct.pack(">hh", 3900, -1700)),
        ),
    )
    assert lens.temperature_c() == pytest.approx(418 / 16)
    r = lens.set_temperature_limits_c(20.0, 40.0)
    assert (r.min_dpt, r.max_dpt, r.error_code) == pytest.approx((-13.5, 14.5, 0))
    fake.assert_done()


def test_version_query_is_configurable(fake):
    fake.exchanges = open_sequence()
    fake.exchanges[2] = (spec_frame(b"V\x00"), fake.exchanges[2][1])
    OptotuneLens(ExpectedProtocol.port, version_query=b"V\x00").open()
    fake.assert_done()


def test_safe_puts_the_lens_at_rest_in_current_mode(fake):
    fake.exchanges = open_sequence(mode=5) + [focal_power_mode()]
    lens = OptotuneLens(ExpectedProtocol.port).open()
    fake.add(
        (spec_frame(b"MwDA"), spec_reply(b"MDA")),
        (spec_frame(b"Aw\x00\x00"), b""),
        (bytes.fromhex("41 72 00 00 B4 27"), spec_reply(b"A\x00\x00")),
    )
    lens.close()
    fake.assert_done()
    assert fake.closed


def test_move_to_um_enters_focal_power_mode_and_sets_the_calibrated_power(fake):
    class Linear:  # z = -10 um per dpt over -5 .. 5 dpt
        z_range_um = (-50.0, 50.0)

        def z_um(self, p):
            return -10.0 * p

        def focal_power_dpt(self, z):
            return -z / 10.0

    lens = OptotuneLens(ExpectedProtocol.port, Linear()).open()
    fake.add(
        focal_power_mode(3000, -1000),
        (spec_frame(b"PwDA" + struct.pack(">h", 1400) + b"\x00\x00"), b""),
    )
    lens.move_to_um(-20.0)
    fake.assert_done()
    assert lens.position_um() == -20.0


# -- errors ------------------------------------------------------------------------------------
def test_a_refusal_is_a_lens_refused_error(fake):
    lens = OptotuneLens(ExpectedProtocol.port).open()
    fake.add((spec_frame(b"TCA"), b"N\r\n"))
    with pytest.raises(LensRefusedError, match="bad CRC"):
        lens.temperature_c()


def test_a_reply_with_a_wrong_crc_is_a_reply_crc_error(fake):
    lens = OptotuneLens(ExpectedProtocol.port).open()
    reply = bytearray(spec_reply(b"TCA\x01\x90"))
    reply[-3] ^= 0x40  # high CRC byte
    fake.add((spec_frame(b"TCA"), bytes(reply)))
    with pytest.raises(ReplyCrcError):
        lens.temperature_c()


def test_bytes_that_are_not_the_reply_are_unexpected(fake):
    lens = OptotuneLens(ExpectedProtocol.port).open()
    fake.add((spec_frame(b"TCA"), spec_reply(b"XYZ\x01\x90")))
    with pytest.raises(UnexpectedReplyError):
        lens.temperature_c()


def test_no_answer_is_a_timeout(fake):
    lens = OptotuneLens(ExpectedProtocol.port).open()
    fake.add((spec_frame(b"TCA"), b""))
    with pytest.raises(DeviceTimeout, match="did not answer get temperature"):
        lens.temperature_c()


def test_a_refused_silent_write_is_reported_before_the_next_command_is_sent(fake):
    lens = OptotuneLens(ExpectedProtocol.port).open()
    fake.add((spec_frame(b"Aw\x00\x64"), b"N\r\n"))  # the lens refused it
    lens.set_current_ma(100 * MAX_MA / 4095)
    with pytest.raises(LensRefusedError, match="set current"):
        lens.temperature_c()  # TCA is not in the script: it must not be written


def test_late_bytes_after_an_error_are_discarded_then_the_lens_works_again(fake):
    lens = OptotuneLens(ExpectedProtocol.port).open()
    fake.add((spec_frame(b"TCA"), b"TC"))  # a reply that stops short
    with pytest.raises(ProtocolError):
        lens.temperature_c()
    fake.rx += b"A\x01\x90xx\r\n"  # the rest arrives late (the fake's read does not wait)
    fake.add((spec_frame(b"TCA"), spec_reply(b"TCA\x01\x90")))
    assert lens.temperature_c() == 25.0


# -- refused before any byte ---------------------------------------------------------------------
def test_limits_and_modes_are_checked_before_any_byte(fake):
    fake.exchanges = open_sequence(upper_code=2000, lower_code=0) + [focal_power_mode(3000, 1000)]
    lens = OptotuneLens(ExpectedProtocol.port).open()
    lens.set_mode("focal power")
    fake.assert_done()
    # nothing more is scripted: any write fails the test
    with pytest.raises(ModeMismatchError) as info:
        lens.set_current_ma(10.0)  # current in focal power mode
    assert isinstance(info.value, LimitError) and isinstance(info.value, DeviceStateError)
    assert "current mode" in str(info.value)
    with pytest.raises(LimitError, match=r"focal_power_dpt = 12 dpt .* \[0, 10\]"):
        lens.set_focal_power_dpt(12.0)  # range 0 .. 10 dpt
    fake.add((spec_frame(b"MwDA"), spec_reply(b"MDA")))
    lens.set_mode("current")
    fake.assert_done()
    with pytest.raises(LimitError, match="hardware maximum 292.84 mA"):
        lens.set_current_ma(300.0)  # above CrMA
    with pytest.raises(LimitError, match="software limits 0"):
        lens.set_current_ma(150.0)  # above CrUA = 2000 codes = 143 mA
    with pytest.raises(LimitError, match="software limits"):
        lens.set_current_ma(-5.0)  # below CrLA = 0
    with pytest.raises(ModeMismatchError, match="focal power mode"):
        lens.set_focal_power_dpt(1.0)
    with pytest.raises(LimitError, match="lower_c"):
        lens.set_temperature_limits_c(40.0, 20.0)
    with pytest.raises(LimitError, match="frequency_hz"):
        lens.start_signal("sinusoidal", 0.0, 100.0, 0.0)
    with pytest.raises(LimitError, match="position"):
        lens.set_mode("position")
    with pytest.raises(LimitError, match="full_scale_code"):
        OptotuneLens(ExpectedProtocol.port, full_scale_code=4000)


def test_move_outside_the_calibration_is_refused_before_any_byte(fake):
    class Linear:
        z_range_um = (-50.0, 50.0)

        def z_um(self, p):
            return -10.0 * p

        def focal_power_dpt(self, z):
            return -z / 10.0

    lens = OptotuneLens(ExpectedProtocol.port, Linear()).open()
    with pytest.raises(LimitError, match=r"z = 60 um is outside the calibrated range"):
        lens.move_to_um(60.0)
    with pytest.raises(DeviceStateError, match="calibration"):
        OptotuneLens(ExpectedProtocol.port).move_to_um(0.0)
