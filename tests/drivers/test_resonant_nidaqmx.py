"""NI-DAQmx back ends of the resonant contract, checked against a small recording fake of the
nidaqmx API (this machine has nidaqmx but no NI driver), like test_nidaqmx_backend.py.

The fake uses the real nidaqmx constants and error classes; it models two NI facts where a
test depends on them: sample clocks are the 100 MHz timebase divided by an integer (other
rates are coerced), and a counter period measurement in ticks returns integers.
"""

from __future__ import annotations

from types import SimpleNamespace

import nidaqmx.constants as c
import nidaqmx.errors as ni_errors
import numpy as np
import pytest

from drivers.daq.nidaqmx_resonant import FRAME_CLOCK_DELAY_PERIODS, NIDigitizer, NIResonantIO
from drivers.daq.resonant_contract import DigitizerConfig, ResonantIOConfig
from drivers.errors import DeviceNotFound, DeviceTimeout, LimitError

TIMEBASE_HZ = 100e6
TIMEOUT = -200284


class FakeTask:
    def __init__(self, ni: FakeNI) -> None:
        ni.tasks.append(self)
        self.ni = ni
        self.closed = False
        self.running = False
        self.channels: list[tuple[str, str, dict]] = []
        self.clock: dict | None = None
        self.implicit: dict | None = None
        start = SimpleNamespace(cfg_dig_edge_start_trig=self._start_trigger, retriggerable=False,
                                source=None, edge=None)  # fmt: skip
        self.triggers = SimpleNamespace(
            start_trigger=start,
            arm_start_trigger=SimpleNamespace(
                trig_type=None, dig_edge_src=None, dig_edge_edge=None
            ),
        )
        self.timing = SimpleNamespace(cfg_samp_clk_timing=self._clock, samp_clk_rate=None,
                                      cfg_implicit_timing=self._implicit)  # fmt: skip
        self.ai_channels = SimpleNamespace(add_ai_voltage_chan=self._ai)
        self.ao_channels = SimpleNamespace(add_ao_voltage_chan=self._ao)
        self.ci_channels = SimpleNamespace(add_ci_period_chan=self._ci)
        self.co_channels = SimpleNamespace(add_co_pulse_chan_ticks=self._co)
        self.in_stream = SimpleNamespace(task=self, input_buf_size=None)
        self.out_stream = SimpleNamespace(task=self)

    def _start_trigger(self, trigger_source, trigger_edge=None):
        self.triggers.start_trigger.source = trigger_source
        self.triggers.start_trigger.edge = trigger_edge

    def _clock(self, rate, sample_mode, samps_per_chan):
        self.clock = {"rate": rate, "sample_mode": sample_mode, "samps_per_chan": samps_per_chan}
        self.timing.samp_clk_rate = TIMEBASE_HZ / round(TIMEBASE_HZ / rate)

    def _implicit(self, sample_mode, samps_per_chan=1000):
        self.implicit = {"sample_mode": sample_mode, "samps_per_chan": samps_per_chan}

    def _ai(self, physical_channel, terminal_config, min_val, max_val):
        self.channels.append(("ai", physical_channel, {"min_val": min_val, "max_val": max_val}))
        return SimpleNamespace(ai_rng_high=max_val, ai_resolution=16.0)

    def _ao(self, physical_channel, min_val, max_val):
        self.channels.append(("ao", physical_channel, {"min_val": min_val, "max_val": max_val}))

    def _ci(self, counter, min_val, max_val, units, edge, meas_method):
        kw = dict(min_val=min_val, max_val=max_val, units=units, edge=edge, meas_method=meas_method)
        self.channels.append(("ci", counter, kw))
        self.ci = SimpleNamespace(ci_period_term=None, ci_ctr_timebase_src=None)
        return self.ci

    def _co(self, counter, source_terminal, idle_state, initial_delay, low_ticks, high_ticks):
        kw = dict(source=source_terminal, idle_state=idle_state, initial_delay=initial_delay,
                  low_ticks=low_ticks, high_ticks=high_ticks)  # fmt: skip
        self.channels.append(("co", counter, kw))

    @property
    def kinds(self) -> set[str]:
        return {k for k, _, _ in self.channels}

    def start(self):
        self.running = True
        self.ni.log.append(("start", self))

    def stop(self):
        self.running = False

    def close(self):
        self.closed = True


class FakeCounterReader:
    def __init__(self, in_stream) -> None:
        self.task = in_stream.task

    def read_many_sample_double(self, data, number_of_samples_per_channel, timeout):
        ni = self.task.ni
        ni.log.append(("read periods", self.task, number_of_samples_per_channel))
        if ni.read_error_code is not None:
            raise ni_errors.DaqReadError("fake NI failure", ni.read_error_code, 0)
        assert data.shape == (number_of_samples_per_channel,)
        ticks = ni.period_ticks[:number_of_samples_per_channel]
        ni.period_ticks = ni.period_ticks[number_of_samples_per_channel:]
        data[:] = ticks
        return number_of_samples_per_channel


class FakeAIReader:
    def __init__(self, in_stream) -> None:
        self.task = in_stream.task
        self.verify_array_shape = True

    def read_int16(self, data, number_of_samples_per_channel, timeout):
        ni = self.task.ni
        ni.log.append(("read samples", self.task, data, number_of_samples_per_channel))
        if ni.read_error_code is not None:
            raise ni_errors.DaqReadError("fake NI failure", ni.read_error_code, 0)
        data[:, :number_of_samples_per_channel] = ni.next_sample
        ni.next_sample += 1
        return number_of_samples_per_channel


class FakeWriter:
    def __init__(self, out_stream, auto_start) -> None:
        self.task = out_stream.task

    def write_many_sample(self, data, timeout):
        self.task.ni.log.append(("write", self.task, np.array(data, copy=True)))

    def write_one_sample(self, data, timeout):
        self.task.ni.log.append(("write", self.task, np.array(data, copy=True).reshape(-1, 1)))


class FakeNI:
    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.tasks: list[FakeTask] = []
        self.read_error_code: int | None = None
        self.period_ticks = np.full(100000, 12617.0)
        self.next_sample = 1
        self.constants = c
        self.errors = ni_errors
        devices = [SimpleNamespace(name="Dev1", product_type="PCIe-6374")]
        self.system = SimpleNamespace(
            System=SimpleNamespace(local=lambda: SimpleNamespace(devices=devices))
        )
        self.stream_readers = SimpleNamespace(
            CounterReader=FakeCounterReader, AnalogUnscaledReader=FakeAIReader
        )
        self.stream_writers = SimpleNamespace(AnalogMultiChannelWriter=FakeWriter)

    def Task(self) -> FakeTask:  # noqa: N802 - the nidaqmx name
        return FakeTask(self)

    def task_with(self, kind: str) -> FakeTask:
        return [t for t in self.tasks if kind in t.kinds][-1]

    def writes_to(self, task: FakeTask) -> list[np.ndarray]:
        return [e[2] for e in self.log if e[0] == "write" and e[1] is task]


IO_CONFIG = ResonantIOConfig(
    periods_per_frame=264, slow_galvo_rate_hz=200e3, slow_galvo_samples=6000,
    slow_galvo_range_v=10.0, slow_galvo_lead_periods=3,
    min_line_clock_hz=7800.0, max_line_clock_hz=8000.0,
)  # fmt: skip
DIGITIZER_CONFIG = DigitizerConfig(
    channels=("ai0",), sample_rate_hz=2e6, samples_per_record=200, records_per_read=264,
    range_v=1.0, skip_records=3,
)  # fmt: skip


@pytest.fixture
def ni():
    return FakeNI()


@pytest.fixture
def io(ni):
    dev = NIResonantIO("Dev1", park_v=0.5, _nidaqmx=ni).open()
    yield dev
    dev.close()


@pytest.fixture
def digitizer(ni):
    dev = NIDigitizer("Dev1", ai_terminal="RSE", _nidaqmx=ni).open()
    yield dev
    dev.close()


# -- opening --------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [NIResonantIO, NIDigitizer])
def test_without_the_ni_driver_open_points_to_the_simulated_rig(cls):
    dev = cls("Dev1")
    try:
        dev.open()
    except DeviceNotFound as exc:
        assert "--rig sim" in str(exc)
    else:
        dev.close()
        pytest.skip("an NI device named Dev1 is installed on this machine")


# -- the line clock -------------------------------------------------------------------------
def test_line_clock_frequency_is_measured_in_timebase_ticks(io, ni):
    """Finite CI period measurement on the line-clock PFI in 100 MHz ticks; the first
    period (possibly started before the counter armed) is dropped."""
    ni.period_ticks = np.array([555.0] + [12617.0, 12618.0] * 50)
    hz = io.measure_line_clock_hz(100)
    task = ni.task_with("ci")
    _, counter, kw = task.channels[0]
    assert counter == "Dev1/ctr0" and kw["units"] == c.TimeUnits.TICKS
    assert task.ci.ci_period_term == "/Dev1/PFI0"
    assert task.ci.ci_ctr_timebase_src == "/Dev1/100MHzTimebase"
    assert task.implicit == {"sample_mode": c.AcquisitionType.FINITE, "samps_per_chan": 101}
    assert hz == pytest.approx(100 * TIMEBASE_HZ / (50 * 12617.0 + 50 * 12618.0), rel=1e-12)
    assert task.closed


def test_a_line_clock_that_does_not_arrive_is_a_timeout(io, ni):
    ni.read_error_code = TIMEOUT
    with pytest.raises(DeviceTimeout, match="no line-clock edges arrived"):
        io.measure_line_clock_hz(100)
    assert all(t.closed for t in ni.tasks)


def test_amplitude_is_checked_before_anything_is_written(io, ni):
    before = len(ni.tasks)
    for bad in (-0.1, 5.5, float("nan")):
        with pytest.raises(LimitError, match="resonant amplitude"):
            io.set_amplitude_v(bad)
    assert len(ni.tasks) == before
    io.set_amplitude_v(3.2)
    task = ni.tasks[-1]
    assert task.channels[0][1] == "Dev1/ao0" and task.closed
    assert ni.writes_to(task)[-1].ravel().tolist() == [3.2]


# -- the scan recipe ------------------------------------------------------------------------
def test_frame_clock_counts_line_clock_edges_and_retriggers_the_slow_galvo(io, ni):
    io.configure_scan(IO_CONFIG)
    frame = ni.task_with("co")
    _, counter, kw = frame.channels[0]
    assert counter == "Dev1/ctr1" and kw["source"] == "/Dev1/PFI0"  # timed by the line clock
    assert kw["low_ticks"] + kw["high_ticks"] == 264  # one pulse per frame
    assert kw["initial_delay"] == FRAME_CLOCK_DELAY_PERIODS
    galvo = ni.task_with("ao")
    assert galvo.clock == {"rate": 200e3, "sample_mode": c.AcquisitionType.FINITE,
                           "samps_per_chan": 6000}  # fmt: skip
    assert galvo.triggers.start_trigger.source == "/Dev1/Ctr1InternalOutput"
    assert galvo.triggers.start_trigger.retriggerable is True


def test_counters_are_armed_by_the_digitizers_first_trigger(io, ni):
    io.configure_scan(IO_CONFIG)
    for task in (ni.task_with("ci"), ni.task_with("co")):
        arm = task.triggers.arm_start_trigger
        assert arm.trig_type == c.TriggerType.DIGITAL_EDGE
        assert arm.dig_edge_src == "/Dev1/ai/StartTrigger"
    periods = ni.task_with("ci")
    assert periods.implicit["sample_mode"] == c.AcquisitionType.CONTINUOUS


def test_start_needs_a_waveform_and_arms_the_galvo_before_the_frame_clock(io, ni):
    io.configure_scan(IO_CONFIG)
    with pytest.raises(Exception, match="write_slow_galvo"):
        io.start_scan()
    io.write_slow_galvo(np.linspace(-5, 5, 6000))
    io.start_scan()
    started = [e[1] for e in ni.log if e[0] == "start"]
    assert started.index(ni.task_with("ao")) < started.index(ni.task_with("co"))


def test_slow_galvo_waveform_is_checked_before_it_is_written(io, ni):
    io.configure_scan(IO_CONFIG)
    galvo = ni.task_with("ao")
    with pytest.raises(LimitError, match="10.5"):
        io.write_slow_galvo(np.full(6000, 10.5))
    with pytest.raises(ValueError, match="6000"):
        io.write_slow_galvo(np.zeros(100))
    assert ni.writes_to(galvo) == []


def test_line_periods_skip_the_frame_clock_delay_and_the_lead_then_come_in_seconds(io, ni):
    io.configure_scan(IO_CONFIG)
    io.write_slow_galvo(np.zeros(6000))
    io.start_scan()
    skipped = FRAME_CLOCK_DELAY_PERIODS + IO_CONFIG.slow_galvo_lead_periods
    ni.period_ticks = np.concatenate((np.full(skipped, 1.0), np.arange(12600.0, 12610.0)))
    out = np.zeros(10)
    assert io.read_line_periods(out) == 0
    np.testing.assert_array_equal(out, np.arange(12600.0, 12610.0) / TIMEBASE_HZ)
    reads = [e[2] for e in ni.log if e[0] == "read periods"]
    assert reads == [skipped, 10]
    ni.read_error_code = TIMEOUT
    with pytest.raises(DeviceTimeout, match="line clock stopped"):
        io.read_line_periods(out)


def test_safe_stops_the_mirror_and_parks_the_slow_galvo(io, ni):
    io.configure_scan(IO_CONFIG)
    io.write_slow_galvo(np.zeros(6000))
    io.start_scan()
    scan_tasks = [ni.task_with(k) for k in ("ci", "co", "ao")]
    io.safe()
    assert all(t.closed for t in scan_tasks)
    written = {t.channels[0][1]: ni.writes_to(t)[-1].ravel().tolist() for t in ni.tasks[-2:]}
    assert written == {"Dev1/ao0": [0.0], "Dev1/ao1": [0.5]}


# -- the digitizer --------------------------------------------------------------------------
def test_digitizer_takes_one_retriggered_record_per_line_clock_edge(digitizer, ni):
    digitizer.configure(DIGITIZER_CONFIG)
    task = ni.task_with("ai")
    assert task.clock == {"rate": 2e6, "sample_mode": c.AcquisitionType.FINITE,
                          "samps_per_chan": 200}  # fmt: skip
    assert task.triggers.start_trigger.source == "/Dev1/PFI0"
    assert task.triggers.start_trigger.retriggerable is True
    records, rest = divmod(task.in_stream.input_buf_size, 200)
    assert rest == 0 and records >= 4 * 264


def test_digitizer_drops_the_records_before_frame_0_then_reads_into_the_callers_array(
    digitizer, ni
):
    digitizer.configure(DIGITIZER_CONFIG)
    digitizer.start()
    out = np.zeros((1, 264, 200), np.int16)
    assert digitizer.read_records(out) == 0
    assert digitizer.read_records(out) == 264
    reads = [e for e in ni.log if e[0] == "read samples"]
    skipped = FRAME_CLOCK_DELAY_PERIODS + DIGITIZER_CONFIG.skip_records
    assert [e[3] for e in reads] == [skipped * 200, 264 * 200, 264 * 200]
    assert np.shares_memory(reads[1][2], out)  # no copy
    assert np.all(out == 3)  # the last read's data landed in the caller's array


def test_a_sample_rate_the_board_cannot_make_is_refused(digitizer, ni):
    bad = DigitizerConfig(("ai0",), 3e6, 200, 264)  # 100 MHz / 3 MHz is not an integer
    with pytest.raises(LimitError, match="sample_rate_hz = 3e.06"):
        digitizer.configure(bad)
    assert ni.tasks[-1].closed


def test_digitizer_timeout_says_the_line_clock_stopped(digitizer, ni):
    digitizer.configure(DIGITIZER_CONFIG)
    digitizer.start()
    ni.read_error_code = TIMEOUT
    with pytest.raises(DeviceTimeout, match="line clock stopped"):
        digitizer.read_records(np.zeros((1, 264, 200), np.int16))
