"""NI-DAQmx back end: the scan recipe of hardware.md section 2, checked against a small fake
of the nidaqmx API that records every call (this machine has nidaqmx but no NI driver).

The fake uses the real nidaqmx constants and error classes (they need no driver); it models
one NI fact only where a test depends on it: a sample clock is the 100 MHz timebase divided
by an integer, so the driver coerces other rates.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import nidaqmx.constants as ni_constants
import nidaqmx.errors as ni_errors
import numpy as np
import pytest

from drivers.daq.contract import PulseTaskConfig, ScanTaskConfig
from drivers.daq.nidaqmx_backend import NIDAQ
from drivers.errors import DeviceError, DeviceNotFound, DeviceTimeout, LimitError

TIMEBASE_HZ = 100e6
INVALID_TASK = -200088


# -- a small recording fake of the nidaqmx API ----------------------------------------------
class FakeTask:
    def __init__(self, ni: FakeNI) -> None:
        ni.tasks.append(self)
        self.ni = ni
        self.name = f"task{len(ni.tasks)}"
        self.closed = False
        self.running = False
        self.channels: list[tuple[str, dict]] = []
        self.clock: dict | None = None
        self.start_trigger_source: str | None = None
        self.ai_channels = SimpleNamespace(add_ai_voltage_chan=self._add_ai)
        self.ao_channels = SimpleNamespace(add_ao_voltage_chan=self._add_ao)
        self.timing = SimpleNamespace(cfg_samp_clk_timing=self._cfg_clock, samp_clk_rate=None,
                                      samp_clk_timebase_rate=TIMEBASE_HZ)
        self.triggers = SimpleNamespace(start_trigger=SimpleNamespace(
            cfg_dig_edge_start_trig=self._cfg_trigger))
        self.in_stream = SimpleNamespace(task=self, input_buf_size=None)
        self.out_stream = SimpleNamespace(task=self, output_buf_size=None, regen_mode=None)

    def _alive(self) -> None:
        if self.closed:
            raise ni_errors.DaqError("Task specified is invalid or does not exist.", INVALID_TASK)

    def _add_ai(self, physical_channel, terminal_config, min_val, max_val):
        self._alive()
        self.channels.append((physical_channel, {"terminal_config": terminal_config,
                                                 "min_val": min_val, "max_val": max_val}))
        chan = SimpleNamespace(ai_rng_high=max_val, ai_resolution=16.0)
        if self.ni.ai_scaling_coeff is not None:
            chan.ai_dev_scaling_coeff = self.ni.ai_scaling_coeff
        return chan

    def _add_ao(self, physical_channel, min_val, max_val):
        self._alive()
        self.channels.append((physical_channel, {"min_val": min_val, "max_val": max_val}))

    def _cfg_clock(self, rate, sample_mode, samps_per_chan, source="", active_edge=None):
        self._alive()
        self.clock = {"rate": rate, "sample_mode": sample_mode, "samps_per_chan": samps_per_chan}
        self.timing.samp_clk_rate = TIMEBASE_HZ / round(TIMEBASE_HZ / rate)

    def _cfg_trigger(self, trigger_source, trigger_edge=None):
        self._alive()
        self.start_trigger_source = trigger_source

    @property
    def channel_names(self) -> list[str]:
        return [name for name, _ in self.channels]

    def start(self):
        self._alive()
        self.running = True
        self.ni.log.append(("start", self))

    def stop(self):
        self._alive()
        self.running = False
        self.ni.log.append(("stop", self))

    def close(self):
        self.closed = True
        self.ni.log.append(("close", self))

    def is_task_done(self):
        self._alive()
        return True

    def wait_until_done(self, timeout):
        self._alive()


class FakeReader:
    def __init__(self, in_stream) -> None:
        self.task = in_stream.task
        self.verify_array_shape = True

    def read_int16(self, data, number_of_samples_per_channel, timeout):
        self.task._alive()
        ni = self.task.ni
        ni.log.append(("read", self.task, data, number_of_samples_per_channel))
        if ni.read_error_code is not None:
            raise ni_errors.DaqReadError("fake NI failure", ni.read_error_code, 0)
        data[...] = 7
        return number_of_samples_per_channel


class FakeWriter:
    def __init__(self, out_stream, auto_start) -> None:
        self.task = out_stream.task
        self.auto_start = auto_start

    def write_many_sample(self, data, timeout):
        self.task._alive()
        self.task.ni.log.append(("write", self.task, data.copy()))
        return data.shape[1]

    def write_one_sample(self, data, timeout):
        self.task._alive()
        self.task.ni.log.append(("write", self.task, np.asarray(data).reshape(-1, 1).copy()))


class FakeNI:
    """Stands in for the nidaqmx module: Task, system, stream readers/writers, real enums."""

    def __init__(self, devices=(("Dev1", "PCIe-6363"), ("Dev2", "PCIe-6738"))) -> None:
        self.log: list[tuple] = []
        self.tasks: list[FakeTask] = []
        self.read_error_code: int | None = None
        self.ai_scaling_coeff: list[float] | None = None
        self.constants = ni_constants
        self.errors = ni_errors
        found = [SimpleNamespace(name=n, product_type=p) for n, p in devices]
        self.system = SimpleNamespace(System=SimpleNamespace(
            local=lambda: SimpleNamespace(devices=found)))
        self.stream_readers = SimpleNamespace(AnalogUnscaledReader=FakeReader)
        self.stream_writers = SimpleNamespace(AnalogMultiChannelWriter=FakeWriter)

    def Task(self) -> FakeTask:
        return FakeTask(self)

    def task_with(self, channel: str) -> FakeTask:
        """The newest task holding `channel`."""
        return [t for t in self.tasks if channel in t.channel_names][-1]

    def writes_to(self, task: FakeTask) -> list[np.ndarray]:
        return [e[2] for e in self.log if e[0] == "write" and e[1] is task]


# -- fixtures -------------------------------------------------------------------------------
SCAN = ScanTaskConfig(ao_channels=("ao0", "ao1"), ai_channels=("ai0", "ai1"), ao_rate_hz=250e3,
                      ai_oversample=4, ao_samples_per_frame=1000, ao_range_v=10.0,
                      ai_range_v=1.0)
PULSES = PulseTaskConfig(channels=("Dev2/ao0",), rate_hz=10e3, range_v=5.0)


@pytest.fixture
def ni() -> FakeNI:
    return FakeNI()


@pytest.fixture
def daq(ni: FakeNI):
    dev = NIDAQ("Dev1", ai_terminal="RSE", park_v=(0.5, -0.5), _nidaqmx=ni).open()
    yield dev
    dev.close()


def frame(volts: float = 1.0) -> np.ndarray:
    ramp = np.linspace(-volts, volts, SCAN.ao_samples_per_frame)
    return np.vstack([ramp, ramp[::-1]])


def started(daq: NIDAQ) -> NIDAQ:
    daq.configure_scan(SCAN)
    daq.write_ao(frame())
    daq.start_scan()
    return daq


# -- opening --------------------------------------------------------------------------------
def test_open_without_ni_driver_points_to_the_simulated_rig():
    """The real situation here: nidaqmx imports, but the NI-DAQmx runtime is absent."""
    dev = NIDAQ("Dev1")
    try:
        dev.open()
    except DeviceNotFound as exc:
        message = str(exc)
    else:
        dev.close()
        pytest.skip("an NI device named Dev1 is installed on this machine")
    assert "--rig sim" in message
    assert "Dev1" in message
    assert not dev.is_open


@pytest.mark.parametrize("error", [ni_errors.DaqNotFoundError("no runtime"),
                                   ni_errors.DaqNotSupportedError("not on this OS"),
                                   OSError("libnidaqmx.so: cannot open shared object")])
def test_missing_ni_runtime_is_device_not_found(ni: FakeNI, error: Exception):
    def local():
        raise error

    ni.system.System.local = local
    with pytest.raises(DeviceNotFound, match="driver.*not installed.*--rig sim"):
        NIDAQ("Dev1", _nidaqmx=ni).open()


def test_unknown_device_name_lists_the_devices_present(ni: FakeNI):
    with pytest.raises(DeviceNotFound) as info:
        NIDAQ("Dev7", _nidaqmx=ni).open()
    assert "Dev7" in str(info.value)
    assert "Dev1" in str(info.value) and "Dev2" in str(info.value)


def test_bad_constructor_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="ai_terminal"):
        NIDAQ("Dev1", ai_terminal="differential")
    with pytest.raises(ValueError, match="timeout_s"):
        NIDAQ("Dev1", timeout_s=0.0)


# -- the scan recipe ------------------------------------------------------------------------
def test_scan_tasks_share_one_start_trigger_and_one_timebase(daq: NIDAQ, ni: FakeNI):
    daq.configure_scan(SCAN)
    ao, ai = ni.task_with("Dev1/ao0"), ni.task_with("Dev1/ai0")
    assert ao is not ai
    assert ao.channel_names == ["Dev1/ao0", "Dev1/ao1"]
    assert ai.channel_names == ["Dev1/ai0", "Dev1/ai1"]
    # AI (slave) starts on the AO (master) start trigger; the master is started by software
    assert ai.start_trigger_source == "/Dev1/ao/StartTrigger"
    assert ao.start_trigger_source is None
    # both continuous on the board's own clock (same timebase), AI at exactly k x AO
    continuous = ni_constants.AcquisitionType.CONTINUOUS
    assert ao.clock["sample_mode"] == ai.clock["sample_mode"] == continuous
    assert ao.clock["rate"] == 250e3
    assert ai.clock["rate"] == 4 * 250e3
    # ranges and wiring as configured
    assert all(kw["min_val"] == -10.0 and kw["max_val"] == 10.0 for _, kw in ao.channels)
    assert all(kw["min_val"] == -1.0 and kw["max_val"] == 1.0
               and kw["terminal_config"] == ni_constants.TerminalConfiguration.RSE
               for _, kw in ai.channels)


def test_ao_is_non_regenerating_and_buffers_are_whole_frames(daq: NIDAQ, ni: FakeNI):
    daq.configure_scan(SCAN)
    ao, ai = ni.task_with("Dev1/ao0"), ni.task_with("Dev1/ai0")
    assert ao.out_stream.regen_mode == ni_constants.RegenerationMode.DONT_ALLOW_REGENERATION
    ao_frames, ao_rest = divmod(ao.out_stream.output_buf_size, SCAN.ao_samples_per_frame)
    assert ao_rest == 0 and 2 <= ao_frames <= 3
    ai_frames, ai_rest = divmod(ai.in_stream.input_buf_size, SCAN.ai_samples_per_frame)
    assert ai_rest == 0 and ai_frames >= 4


def test_ai_is_armed_before_ao_starts_and_ao_has_data_first(daq: NIDAQ, ni: FakeNI):
    started(daq)
    ao, ai = ni.task_with("Dev1/ao0"), ni.task_with("Dev1/ai0")
    events = [(e[0], e[1]) for e in ni.log]
    assert events.index(("start", ai)) < events.index(("start", ao))
    assert events.index(("write", ao)) < events.index(("start", ao))


def test_start_without_a_written_frame_is_refused(daq: NIDAQ, ni: FakeNI):
    daq.configure_scan(SCAN)
    with pytest.raises(DeviceError, match="write_ao"):
        daq.start_scan()
    assert not any(e[0] == "start" for e in ni.log)


def test_rate_the_timebase_cannot_divide_is_refused(daq: NIDAQ, ni: FakeNI):
    """100 MHz / (4 x 300 kHz) = 83.3 is not an integer: AI would not be exactly 4 x AO."""
    bad = ScanTaskConfig(ao_channels=("ao0", "ao1"), ai_channels=("ai0",), ao_rate_hz=300e3,
                         ai_oversample=4, ao_samples_per_frame=100)
    with pytest.raises(LimitError, match="ao_rate_hz"):
        daq.configure_scan(bad)
    assert all(t.closed for t in ni.tasks)


# -- reading and writing --------------------------------------------------------------------
def test_read_ai_fills_the_callers_array_and_counts_samples_from_the_trigger(daq, ni):
    started(daq)
    out = np.zeros((2, SCAN.ai_samples_per_frame), dtype=np.int16)
    first = daq.read_ai(out)
    second = daq.read_ai(out)
    reads = [e for e in ni.log if e[0] == "read"]
    assert all(e[2] is out for e in reads)  # no copy: the driver writes into our buffer
    assert [e[3] for e in reads] == [SCAN.ai_samples_per_frame] * 2
    assert (first, second) == (0, SCAN.ai_samples_per_frame)
    assert np.all(out == 7)  # what the fake driver wrote is what the caller sees


def test_read_ai_rejects_a_buffer_of_the_wrong_type(daq: NIDAQ):
    started(daq)
    with pytest.raises(ValueError, match="int16"):
        daq.read_ai(np.zeros((2, 100), dtype=np.float64))
    with pytest.raises(ValueError, match=r"\(2, n\)"):
        daq.read_ai(np.zeros((3, 100), dtype=np.int16))


@pytest.mark.parametrize("bad_volts", [10.5, -10.5, np.nan])
def test_write_ao_refuses_out_of_range_volts_before_writing(daq: NIDAQ, ni: FakeNI, bad_volts):
    daq.configure_scan(SCAN)
    waveform = frame()
    waveform[1, 17] = bad_volts
    with pytest.raises(LimitError, match="ao1") as info:
        daq.write_ao(waveform)
    if np.isfinite(bad_volts):
        assert "10.5" in str(info.value)
    assert ni.writes_to(ni.task_with("Dev1/ao0")) == []


def test_write_ao_refuses_a_partial_frame(daq: NIDAQ, ni: FakeNI):
    daq.configure_scan(SCAN)
    with pytest.raises(ValueError, match="ao_samples_per_frame"):
        daq.write_ao(frame()[:, :500])
    assert ni.writes_to(ni.task_with("Dev1/ao0")) == []


@pytest.mark.parametrize("code, error_type, words", [
    (-200284, DeviceTimeout, "timeout"),
    (-200279, DeviceError, "lost"),
    (-200077, DeviceError, "fake NI failure"),
])
def test_ni_read_errors_map_to_the_device_error_tree(daq, ni, code, error_type, words):
    started(daq)
    ni.read_error_code = code
    with pytest.raises(error_type, match=words) as info:
        daq.read_ai(np.zeros((2, 10), dtype=np.int16))
    if error_type is DeviceError:
        assert not isinstance(info.value, DeviceTimeout)


def test_volts_per_count_follows_range_and_resolution(daq: NIDAQ, ni: FakeNI):
    daq.configure_scan(SCAN)
    assert daq.ai_volts_per_count == pytest.approx(1.0 / 2**15)  # +-1 V over 16 bits
    ni.ai_scaling_coeff = [1e-4, 3.1e-5, 0.0, 0.0]  # calibrated polynomial wins
    daq.configure_scan(SCAN)
    assert daq.ai_volts_per_count == pytest.approx(3.1e-5)


# -- pulses, safe state, close ----------------------------------------------------------------
def test_pulse_is_a_finite_waveform_started_after_it_is_written(daq: NIDAQ, ni: FakeNI):
    daq.configure_pulses(PULSES)
    pulse = ni.task_with("Dev2/ao0")
    assert np.all(ni.writes_to(pulse)[-1] == 0.0)  # configured outputs sit at 0 V
    waveform = np.array([[0.0, 4.0, 4.0, 4.0, 0.0]])
    daq.write_pulses(waveform)
    assert pulse.clock["sample_mode"] == ni_constants.AcquisitionType.FINITE
    assert pulse.clock["samps_per_chan"] == 5 and pulse.clock["rate"] == 10e3
    assert np.array_equal(ni.writes_to(pulse)[-1], waveform)
    assert ni.log[-1] == ("start", pulse)
    with pytest.raises(LimitError, match="Dev2/ao0"):
        daq.write_pulses(np.array([[0.0, 6.0, 0.0]]))
    assert len(ni.writes_to(pulse)) == 2


def test_pulse_onset_is_samples_read_over_rate_plus_host_time_since(daq: NIDAQ):
    daq.configure_pulses(PULSES)
    assert np.isnan(daq.write_pulses(np.zeros((1, 3))))  # no scan clock yet
    started(daq)
    out = np.zeros((2, 4000), dtype=np.int16)
    t_read_start = time.perf_counter()
    daq.read_ai(out)
    t_read_end = time.perf_counter()
    time.sleep(0.01)
    t_before = time.perf_counter()
    onset_s = daq.write_pulses(np.array([[0.0, 1.0, 0.0]]))
    t_after = time.perf_counter()
    samples_s = 4000 / SCAN.ai_rate_hz
    assert samples_s + (t_before - t_read_end) <= onset_s <= samples_s + (t_after - t_read_start)


def test_safe_zeroes_pulses_stops_the_scan_and_parks_the_galvos(daq: NIDAQ, ni: FakeNI):
    started(daq)
    daq.configure_pulses(PULSES)
    daq.write_pulses(np.array([[0.0, 4.0, 4.0]]))
    scan_ao, scan_ai = ni.task_with("Dev1/ao0"), ni.task_with("Dev1/ai0")
    pulse = ni.task_with("Dev2/ao0")
    daq.safe()
    assert np.all(ni.writes_to(pulse)[-1] == 0.0)
    assert scan_ao.closed and scan_ai.closed and not scan_ao.running and not scan_ai.running
    park_task = ni.task_with("Dev1/ao0")
    assert park_task is not scan_ao and park_task.closed
    assert np.array_equal(ni.writes_to(park_task)[-1].ravel(), [0.5, -0.5])


def test_safe_does_not_raise_for_tasks_already_closed(daq: NIDAQ, ni: FakeNI):
    started(daq)
    daq.configure_pulses(PULSES)
    for task in ni.tasks:
        task.close()
    daq.safe()


def test_close_clears_every_task_and_is_idempotent(daq: NIDAQ, ni: FakeNI):
    started(daq)
    daq.configure_pulses(PULSES)
    daq.close()
    daq.close()
    assert not daq.is_open
    assert all(t.closed for t in ni.tasks)


def test_snapshot_records_board_clock_and_regeneration(daq: NIDAQ):
    started(daq)
    snap = json.loads(json.dumps(daq.snapshot()))
    assert snap["device"] == "Dev1" and snap["product_type"] == "PCIe-6363"
    assert snap["scan"]["ao_rate_hz"] == 250e3 and snap["scan"]["ai_rate_hz"] == 1e6
    assert snap["scan"]["ao_regeneration"] == "DONT_ALLOW_REGENERATION"
    assert snap["scan"]["ai_channels"] == ["ai0", "ai1"]
