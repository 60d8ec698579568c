"""The simulated Optotune lens, byte for byte through pyserial, and its physics.

Bytes are pinned from the reference (hardware.md section 1); CRCs in expectations come from a
bitwise CRC-16/ARC written from its definition. Physics checks use the lens clock (virtual
time), never wall-clock timing.
"""

import math
import struct

import numpy as np
import pytest
import serial

import simulators.optotune
from simulators.optotune import LensFaults, LensModel, ManualClock, SimulatedLens
from simulators.optotune.protocol_optotune_sim import Serial as SimSerial


def spec_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def frame(body: bytes) -> bytes:
    return body + struct.pack("<H", spec_crc(body))


def reply(payload: bytes) -> bytes:
    return frame(payload) + b"\r\n"


@pytest.fixture
def sim():
    return SimulatedLens(clock=ManualClock(), faults=LensFaults(wire_delay=False))


@pytest.fixture
def port(sim):
    p = serial.serial_for_url(sim.url, baudrate=115200, timeout=0.05)
    yield p
    p.close()


def ask(port, data: bytes) -> bytes:
    """Write, then take everything the lens answered (no wire delay: replies are immediate)."""
    port.write(data)
    return port.read(port.in_waiting)


# -- the URL handler -----------------------------------------------------------------------------
def test_importing_the_package_registers_the_url_scheme():
    assert "simulators.optotune" in serial.protocol_handler_packages
    p = serial.serial_for_url("optotune_sim://", timeout=0.05)
    try:
        assert isinstance(p, SimSerial) and isinstance(p, serial.SerialBase)
    finally:
        p.close()
    assert simulators.optotune.lens_for_url  # the package exposes the URL parser


def test_url_options_configure_a_fresh_lens():
    p = serial.serial_for_url(
        "optotune_sim://?max_current_ma=290&firmware_type=B&drift_dpt_per_k=0.04&wire_delay=0",
        timeout=0.05,
    )
    try:
        assert p.lens.max_current_ma == 290.0 and p.lens.firmware_type == "B"
        assert p.lens.model.drift_dpt_per_k == 0.04 and not p.lens.faults.wire_delay
    finally:
        p.close()


def test_bad_url_options_are_named_with_the_allowed_ones(sim):
    with pytest.raises(serial.SerialException, match="bogus.*allowed: .*corrupt_crc"):
        serial.serial_for_url("optotune_sim://?bogus=1")
    with pytest.raises(serial.SerialException, match="no simulated lens is named 'nolens'"):
        serial.serial_for_url("optotune_sim://nolens")
    with pytest.raises(serial.SerialException, match="only faults"):
        serial.serial_for_url(sim.url + "?max_current_ma=100")


# -- bytes ---------------------------------------------------------------------------------------
def test_handshake(port):
    assert ask(port, b"Start") == b"Ready\r\n"


def test_get_current_reply_is_echo_payload_crc_crlf(port, sim):
    assert ask(port, bytes.fromhex("41 72 00 00 B4 27")) == reply(b"A\x00\x00")
    port.write(frame(b"Aw\x03\xe8"))  # 1000
    assert ask(port, bytes.fromhex("41 72 00 00 B4 27")) == reply(b"A\x03\xe8")


def test_set_current_gets_no_reply(port, sim):
    port.write(frame(b"Aw\x01\x00"))
    assert port.read(16) == b""
    assert sim.current_code == 256


def test_a_corrupted_frame_gets_N(port, sim):
    bad = bytearray(bytes.fromhex("41 72 00 00 B4 27"))
    bad[-1] ^= 0x01
    assert ask(port, bytes(bad)) == b"N\r\n"
    bad_write = bytearray(frame(b"Aw\x01\x00"))
    bad_write[2] ^= 0x10  # payload corrupted in transit
    assert ask(port, bytes(bad_write)) == b"N\r\n"
    assert sim.current_code == 0  # not applied


def test_bytes_that_begin_no_command_get_N(port):
    assert ask(port, b"Zq\x00\x00\x00\x00") == b"N\r\n"
    assert ask(port, bytes.fromhex("41 72 00 00 B4 27")) == reply(b"A\x00\x00")  # in step again


def test_a_frame_in_pieces_is_one_command(port):
    port.write(b"A")
    assert port.read(8) == b""
    assert ask(port, bytes.fromhex("72 00 00 B4 27")) == reply(b"A\x00\x00")


def test_identity_and_calibration_queries(port):
    assert ask(port, frame(b"CrMA\x00\x00")) == reply(b"CMA\x72\x64")  # 29284 = 292.84 mA
    assert ask(port, frame(b"CrUA\x00\x00")) == reply(b"CUA" + struct.pack(">h", 4095))
    assert ask(port, frame(b"CrLA\x00\x00")) == reply(b"CLA" + struct.pack(">h", -4095))
    assert ask(port, frame(b"H")) == reply(b"HA")
    assert ask(port, frame(b"F")) == reply(b"F\x01")
    assert ask(port, frame(b"X")) == reply(b"XEL103001")
    assert ask(port, frame(b"V")) == reply(b"V\x01\x09\x00\x02\x00\x00")
    assert ask(port, frame(b"V\x00")) == reply(b"V\x01\x09\x00\x02\x00\x00")
    assert ask(port, frame(b"IR" + bytes(8))) == reply(b"IRLD4SIM01")
    assert ask(port, frame(b"TCA")) == reply(b"TCA\x01\x90")  # 25 degC = 400 / 16 at power-on


def test_software_limit_writes_echo_the_stored_value(port, sim):
    assert ask(port, frame(b"CwUA\x07\xd0")) == reply(b"CUA\x07\xd0")  # 2000
    assert ask(port, frame(b"CwLA\x80\x00")) == reply(b"CLA" + struct.pack(">h", -4095))
    port.write(frame(b"Aw\x0f\xff"))  # 4095 > upper limit: clamped
    assert ask(port, bytes.fromhex("41 72 00 00 B4 27")) == reply(b"A\x07\xd0")


def test_mode_state_machine(port, sim):
    mode = frame(b"MMA")
    assert ask(port, mode) == reply(b"MMA\x01")
    fp = ask(port, frame(b"MwCA"))
    assert fp[:3] == b"MCA" and len(fp) == 12 and fp == reply(fp[:8])
    assert ask(port, mode) == reply(b"MMA\x05")
    port.write(frame(b"Aw\x03\xe8"))  # current in focal power mode: ignored, silently
    assert port.read(8) == b""
    assert "ignored: Aw in focal power mode" in sim.log[-1].note
    port.write(frame(b"PwDA" + struct.pack(">h", 1400) + b"\x00\x00"))  # 2 dpt on firmware A
    assert port.read(8) == b""
    assert ask(port, frame(b"PrDA\x00\x00\x00\x00")) == reply(b"PD" + struct.pack(">h", 1400))
    for letter, number in ((b"S", 2), (b"T", 3), (b"Q", 4), (b"A", 6), (b"D", 1)):
        assert ask(port, frame(b"Mw" + letter + b"A")) == reply(b"M" + letter + b"A")
        assert ask(port, mode) == reply(b"MMA" + bytes([number]))
    port.write(frame(b"PwDA" + struct.pack(">h", 1400) + b"\x00\x00"))
    assert "ignored: PwDA in current mode" in sim.log[-1].note


def test_handshake_resets_the_current_to_zero(port, sim):
    port.write(frame(b"Aw\x01\x00"))
    assert ask(port, b"Start") == b"Ready\r\n"
    assert ask(port, bytes.fromhex("41 72 00 00 B4 27")) == reply(b"A\x00\x00")


def test_reported_focal_power_range_follows_current_and_temperature_limits(port, sim):
    """max at the upper current and lower temperature, min at the lower current and upper
    temperature (the range focal power mode can hold over the whole temperature range)."""
    m = sim.model
    raw = ask(port, frame(b"PwTA" + struct.pack(">hh", 45 * 16, 15 * 16)))
    err, max_raw, min_raw = struct.unpack(">Bhh", raw[2:7])
    imax = 292.84
    top = m.focal_power_at_zero_ma_dpt + m.dpt_per_ma * imax + m.drift_dpt_per_k * (15 - 30)
    bottom = m.focal_power_at_zero_ma_dpt - m.dpt_per_ma * imax + m.drift_dpt_per_k * (45 - 30)
    assert err == 0
    assert max_raw / 200 - 5 == pytest.approx(top, abs=0.005) and max_raw / 200 - 5 <= top
    assert min_raw / 200 - 5 == pytest.approx(bottom, abs=0.005) and min_raw / 200 - 5 >= bottom


# -- faults ----------------------------------------------------------------------------------------
def test_fault_stop_answering_after_n_commands():
    p = serial.serial_for_url("optotune_sim://?wire_delay=0&stop_after=2", timeout=0.02)
    try:
        assert ask(p, b"Start") == b"Ready\r\n"
        assert ask(p, frame(b"H")) == reply(b"HA")
        assert ask(p, frame(b"H")) == b""
        assert ask(p, b"Start") == b""
    finally:
        p.close()


def test_fault_corrupt_reply_crc_changes_only_the_crc():
    p = serial.serial_for_url("optotune_sim://?wire_delay=0&corrupt_crc=2", timeout=0.02)
    try:
        good = ask(p, frame(b"TCA"))
        bad = ask(p, frame(b"TCA"))
    finally:
        p.close()
    assert good == reply(b"TCA\x01\x90")
    assert bad[:5] == good[:5] and bad[-2:] == b"\r\n" and bad[5:7] != good[5:7]


def test_fault_dropped_bytes():
    p = serial.serial_for_url(
        "optotune_sim://?wire_delay=0&drop_bytes=1&drop_count=3", timeout=0.02
    )
    try:
        assert ask(p, frame(b"TCA")) == reply(b"TCA\x01\x90")[3:]
    finally:
        p.close()


def test_fault_slow_replies_are_not_there_before_their_time():
    p = serial.serial_for_url("optotune_sim://?wire_delay=0&reply_delay_ms=300", timeout=0.01)
    try:
        p.write(frame(b"TCA"))
        assert p.read(9) == b""  # not within 10 ms
        p.timeout = 2.0
        assert p.read(9) == reply(b"TCA\x01\x90")  # but it does come
    finally:
        p.close()


# -- lens dynamics -----------------------------------------------------------------------------
def step_trace(model=None, step_dpt=2.0, span_s=0.1, dt_s=1e-5):
    clock = ManualClock()
    lens = SimulatedLens(model, clock, faults=LensFaults(wire_delay=False))
    p = serial.serial_for_url(lens.url, timeout=0.02)
    try:
        assert ask(p, frame(b"MwCA"))[:3] == b"MCA"
        p.write(frame(b"PwDA" + struct.pack(">h", 1000) + b"\x00\x00"))  # 0 dpt
        clock.set(1.0)
        p.write(frame(b"PwDA" + struct.pack(">h", round((step_dpt + 5) * 200)) + b"\x00\x00"))
    finally:
        p.close()
    t = np.arange(-0.01, span_s, dt_s)
    return lens, t, lens.focal_power_trace_dpt(1.0 + t)


def test_step_response_rings_at_the_resonance_and_settles_within_15_ms():
    lens, t, fp = step_trace()
    final = fp[-1]
    after = t >= 0
    error = fp[after] - final
    crossings = t[after][np.nonzero(np.diff(np.sign(error)))[0]]
    half_periods = np.diff(crossings[:8])
    assert 1 / (2 * half_periods.mean()) == pytest.approx(150.0, rel=0.01)
    assert np.all(np.abs(error[t[after] >= 0.015]) <= 0.02 * 2.0)  # 2 % band after 15 ms
    assert np.max(np.abs(error[(t[after] > 0.002) & (t[after] < 0.010)])) > 0.02 * 2.0
    # before the step only the slow warming moves it (about 4e-4 dpt/s here)
    assert np.all(fp[t < 0] == pytest.approx(fp[0], abs=1e-5))


def test_step_response_obeys_the_second_order_equation():
    """m'' + 2 sigma m' + omega_n^2 (m - target) = 0 after a command (finite differences;
    a lens that does not warm, so the target is exactly the set focal power)."""
    lens, t, fp = step_trace(LensModel(warming_k=0.0), dt_s=1e-6, span_s=0.02)
    m = lens.model
    dt = t[1] - t[0]
    d1 = np.gradient(fp, dt)
    d2 = np.gradient(d1, dt)
    lhs = d2 + 2 * m.decay_rate_per_s * d1 + m.natural_angular_hz**2 * (fp - 2.0)
    sel = (t > 1e-4) & (t < 0.02 - 1e-4)
    assert np.max(np.abs(lhs[sel])) < 1e-4 * m.natural_angular_hz**2 * 2.0
    assert m.damping_ratio == pytest.approx(m.decay_rate_per_s / m.natural_angular_hz)


def test_focal_power_is_continuous_across_commands():
    """A membrane has mass: a command changes its acceleration, not its position."""
    lens, _, _ = step_trace()
    around = lens.focal_power_trace_dpt(np.array([1.0 - 1e-7, 1.0, 1.0 + 1e-7]))
    assert np.max(np.abs(np.diff(around))) < 1e-6


def test_history_can_be_read_after_later_commands(sim, port):
    port.write(frame(b"Aw\x03\xe8"))
    sim.clock.set(0.5)
    before = sim.focal_power_dpt_at(0.4)
    port.write(frame(b"Aw\x00\x00"))
    sim.clock.set(1.0)
    assert sim.focal_power_dpt_at(0.4) == before
    k = sim.model.dpt_per_ma
    lens_c = sim.lens_temperature_c_at(0.4)
    assert before == pytest.approx(
        sim.model.focal_power_at_zero_ma_dpt
        + k * 1000 * 292.84 / 4095
        + sim.model.drift_dpt_per_k * (lens_c - 30.0),
        abs=1e-9,
    )


def test_sine_drive_far_below_resonance_passes_unchanged(sim, port):
    port.write(frame(b"PwUA" + struct.pack(">h", 1000) + b"\x00\x00"))
    port.write(frame(b"PwLA" + struct.pack(">h", -1000) + b"\x00\x00"))
    port.write(frame(b"PwFA" + struct.pack(">I", 1000)))  # 1 Hz
    assert ask(port, frame(b"MwSA")) == reply(b"MSA")
    t = np.linspace(0.0, 1.0, 2001)
    fp = sim.focal_power_trace_dpt(t)
    amplitude = (fp.max() - fp.min()) / 2
    expected = sim.model.dpt_per_ma * 1000 * 292.84 / 4095 * abs(sim.model.transfer(1.0))
    assert amplitude == pytest.approx(expected, rel=1e-3)
    assert abs(sim.model.transfer(1.0)) == pytest.approx(1.0, abs=1e-4)


def test_rectangular_drive_alternates_the_current(sim, port):
    port.write(frame(b"PwUA" + struct.pack(">h", 500) + b"\x00\x00"))
    port.write(frame(b"PwLA" + struct.pack(">h", -500) + b"\x00\x00"))
    port.write(frame(b"PwFA" + struct.pack(">I", 10_000)))  # 10 Hz
    ask(port, frame(b"MwQA"))
    assert sim.current_ma_at(0.025) == pytest.approx(500 * 292.84 / 4095)
    assert sim.current_ma_at(0.075) == pytest.approx(-500 * 292.84 / 4095)


# -- temperature -------------------------------------------------------------------------------
def test_drift_reproduces_the_published_calibration():
    """EL-10-30: 0 mA gives 0.41 dpt at 30 C and 0.95 dpt at 45 C (0.036 dpt/K)."""
    model = LensModel(ambient_c=30.0, warming_k=15.0, warming_time_constant_s=10.0)
    clock = ManualClock()
    lens = SimulatedLens(model, clock)
    assert lens.focal_power_dpt_at(0.0) == pytest.approx(0.41)
    assert lens.focal_power_dpt_at(1000.0) == pytest.approx(0.95, abs=1e-6)


def test_the_sensor_lags_the_warming_lens_in_sixteenths_of_a_degree():
    model = LensModel(warming_k=10.0, warming_time_constant_s=600.0, sensor_time_constant_s=60.0)
    lens = SimulatedLens(model, ManualClock())
    for t in (30.0, 120.0, 600.0):
        reading = lens.sensor_reading_c_at(t)
        assert reading < lens.lens_temperature_c_at(t)
        assert (reading / 0.0625) == pytest.approx(round(reading / 0.0625))
    # sensor = lens through a first-order lag: tau_s T_s' = T_lens - T_s
    t, h = 300.0, 1e-3
    ts = model.sensor_temperature_c(np.array([t - h, t, t + h]))
    assert model.sensor_time_constant_s * (ts[2] - ts[0]) / (2 * h) == pytest.approx(
        float(model.lens_temperature_c(t)) - ts[1], rel=1e-5
    )
    assert math.isclose(float(model.lens_temperature_c(0.0)), model.ambient_c)


def test_clock_does_not_go_back():
    clock = ManualClock(1.0)
    with pytest.raises(ValueError, match="does not go back"):
        clock.set(0.5)
