"""The lens driver against the simulated lens (optotune_sim://): the same code a lab runs,
with faults injected under the transport."""

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import serial
import serial.tools.list_ports

import simulators.optotune  # noqa: F401  (registers optotune_sim://)
from drivers.errors import DeviceNotFound, DeviceTimeout, LimitError, ProtocolError
from drivers.optotune import LensMode, OptotuneLens, resolve_port
from drivers.optotune.errors import IncompleteReplyError, ReplyCrcError
from simulators.optotune import LensFaults, LensModel, ManualClock, SimulatedLens

FAST = "optotune_sim://?wire_delay=0"


class Linear:
    """z = -10 um/dpt x P over -5 .. 5 dpt."""

    z_range_um = (-50.0, 50.0)

    def z_um(self, p):
        return -10.0 * p

    def focal_power_dpt(self, z):
        return -z / 10.0


@pytest.fixture
def sim():
    return SimulatedLens(clock=ManualClock(), faults=LensFaults(wire_delay=False))


def test_open_reads_what_the_simulated_board_reports():
    sim = SimulatedLens(
        max_current_ma=290.0,
        firmware_type="B",
        lens_serial="EL160401",
        lower_limit_ma=-100.0,
        upper_limit_ma=200.0,
        faults=LensFaults(wire_delay=False),
    )
    with OptotuneLens(sim.url) as lens:
        assert lens.max_current_ma == 290.0
        assert lens.firmware_type == "B"
        assert lens.lens_serial == "EL160401"
        lower, upper = lens.software_current_limits_ma
        assert lower == pytest.approx(-100.0, abs=290 / 4095)
        assert upper == pytest.approx(200.0, abs=290 / 4095)
        with pytest.raises(LimitError):
            lens.set_current_ma(250.0)  # under the hardware maximum, over the software limit


def test_current_mode_round_trip_through_the_simulator(sim):
    with OptotuneLens(sim.url) as lens:
        lens.set_current_ma(100.0)
        code = round(100.0 / 292.84 * 4095)
        assert lens.current_ma() == pytest.approx(code * 292.84 / 4095)
        assert sim.current_code == code


def test_focal_power_mode_holds_the_set_power(sim):
    with OptotuneLens(sim.url) as lens:
        r = lens.set_mode("focal power")
        assert r.min_dpt < 0 < r.max_dpt and r.error_code == 0
        lens.set_focal_power_dpt(3.25)
        assert lens.focal_power_dpt() == pytest.approx(3.25)
        sim.clock.advance(0.1)  # settled (15 ms)
        assert sim.focal_power_dpt_at(sim.clock.now_s()) == pytest.approx(3.25, abs=0.01)
        # the driver board drives the current that gives 3.25 dpt at the sensor's temperature
        m = sim.model
        expected_ma = (
            3.25
            - m.focal_power_at_zero_ma_dpt
            - m.drift_dpt_per_k * (25.0 - m.reference_temperature_c)
        ) / m.dpt_per_ma
        assert lens.current_ma() == pytest.approx(expected_ma, abs=292.84 / 4095)


def test_move_to_um_drives_the_lens_to_the_calibrated_focal_power(sim):
    with OptotuneLens(sim.url, Linear()) as lens:
        lens.move_to_um(-30.0)  # 3 dpt
        assert lens.mode is LensMode.FOCAL_POWER
        sim.clock.advance(0.1)
        assert sim.focal_power_dpt_at(sim.clock.now_s()) == pytest.approx(3.0, abs=0.01)
    assert sim.mode is LensMode.CURRENT and sim.current_code == 0  # safe state on close


def test_signal_generator_mode(sim):
    with OptotuneLens(sim.url) as lens:
        lens.start_signal("triangular", -50.0, 50.0, 5.0)
        assert lens.read_mode() is LensMode.TRIANGULAR
        assert sim.signal_millihertz == 5000
        assert sim.signal_upper_code == round(50 / 292.84 * 4095)


def test_readings_for_the_session_events(sim):
    with OptotuneLens(sim.url) as lens:
        readings = lens.readings()
    assert set(readings) == {"mode", "current_ma", "focal_power_dpt", "temperature_c"}
    assert readings["temperature_c"] == sim.model.ambient_c


def test_commands_from_several_threads_do_not_interleave_on_the_wire():
    errors = []
    with OptotuneLens(FAST) as lens:

        def worker():
            try:
                for _ in range(100):
                    lens.temperature_c()
                    lens.current_ma()
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


# -- faults -------------------------------------------------------------------------------------
def test_a_lens_that_never_answers_times_out_at_open():
    with pytest.raises(DeviceTimeout, match="did not answer handshake"):
        OptotuneLens("optotune_sim://?stop_after=0", timeout_s=0.05).open()


def test_a_lens_that_stops_answering_mid_run_gives_device_timeout(sim):
    lens = OptotuneLens(sim.url, timeout_s=0.05).open()
    lens.temperature_c()
    sim.faults.stop_after = sim.frames_received
    with pytest.raises(DeviceTimeout, match="did not answer get temperature"):
        lens.temperature_c()
    with pytest.raises(DeviceTimeout):
        lens.close()  # safe() cannot reach the lens either: said, not swallowed
    assert not lens.is_open


def test_a_corrupted_reply_crc_gives_protocol_error_and_the_next_command_works(sim):
    with OptotuneLens(sim.url, timeout_s=0.05) as lens:
        sim.faults.corrupt_crc_at = {sim.frames_received + 1}
        with pytest.raises(ReplyCrcError) as info:
            lens.temperature_c()
        assert isinstance(info.value, ProtocolError)
        assert lens.temperature_c() == 25.0


def test_corrupt_crc_from_the_url():
    # frame 2 is the firmware type query (frame 1 is the handshake, which has no CRC)
    with pytest.raises(ProtocolError, match="firmware type"):
        OptotuneLens("optotune_sim://?wire_delay=0&corrupt_crc=2").open()


def test_dropped_bytes_give_an_incomplete_reply(sim):
    with OptotuneLens(sim.url, timeout_s=0.05) as lens:
        sim.faults.drop_bytes_at = {sim.frames_received + 1}
        with pytest.raises(IncompleteReplyError):
            lens.temperature_c()


def test_slow_replies_time_out_and_are_discarded_when_they_arrive_late(sim):
    with OptotuneLens(sim.url, timeout_s=0.1) as lens:
        sim.faults.reply_delay_s = 0.15  # later than the timeout, sooner than two
        with pytest.raises(DeviceTimeout):
            lens.temperature_c()
        sim.faults.reply_delay_s = 0.0
        assert lens.temperature_c() == 25.0  # the late reply was not taken for this one
        assert lens.current_ma() == 0.0


# -- ports ----------------------------------------------------------------------------------------
def fake_ports(*descriptions):
    return [
        SimpleNamespace(device=f"/dev/ttyACM{i}", description=d, manufacturer=None, product=None)
        for i, d in enumerate(descriptions)
    ]


def test_a_port_is_found_by_its_description(monkeypatch):
    monkeypatch.setattr(
        serial.tools.list_ports, "comports", lambda: fake_ports("USB Serial", "Optotune LD")
    )
    assert resolve_port("optotune") == "/dev/ttyACM1"
    assert resolve_port("optotune_sim://") == "optotune_sim://"


def test_an_unknown_port_lists_the_ports_found_and_the_simulator(monkeypatch):
    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: fake_ports("USB Serial"))
    with pytest.raises(DeviceNotFound) as info:
        OptotuneLens("Optotune").open()
    message = str(info.value)
    assert "/dev/ttyACM0 (USB Serial)" in message and "optotune_sim://" in message


def test_two_matching_ports_are_ambiguous(monkeypatch):
    monkeypatch.setattr(
        serial.tools.list_ports, "comports", lambda: fake_ports("Optotune LD", "Optotune LD")
    )
    with pytest.raises(DeviceNotFound, match="2 serial ports match"):
        resolve_port("Optotune")


def test_the_simulator_scheme_needs_the_simulator_package(monkeypatch):
    monkeypatch.setattr(serial, "protocol_handler_packages", ["serial.urlhandler"])
    with pytest.raises(DeviceNotFound, match="simulators.optotune"):
        OptotuneLens("optotune_sim://").open()


def test_bad_simulator_options_are_named():
    with pytest.raises(DeviceNotFound, match="unknown option.*bogus.*allowed"):
        OptotuneLens("optotune_sim://?bogus=1").open()


def test_focal_power_follows_temperature_in_current_mode_but_not_in_focal_power_mode():
    """Drift at constant current vs the firmware's compensation (hardware.md section 1)."""
    model = LensModel(warming_k=10.0, warming_time_constant_s=100.0, sensor_time_constant_s=5.0)
    for mode, limit in (("current", None), ("focal power", 0.05)):
        clock = ManualClock()
        sim = SimulatedLens(model, clock, faults=LensFaults(wire_delay=False))
        with OptotuneLens(sim.url) as lens:
            lens.set_mode(mode)
            clock.set(1.0)
            start = sim.focal_power_dpt_at(1.0)
            clock.set(1000.0)  # the lens warmed by almost 10 K
            change = sim.focal_power_dpt_at(1000.0) - start
            warming = sim.lens_temperature_c_at(1000.0) - sim.lens_temperature_c_at(1.0)
        if limit is None:
            assert change == pytest.approx(model.drift_dpt_per_k * warming, rel=1e-6)
        else:
            assert abs(change) < limit < model.drift_dpt_per_k * warming
    assert np.isfinite(change)
