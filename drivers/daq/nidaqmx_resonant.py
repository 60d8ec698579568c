"""NI-DAQmx back ends of the resonant contract (drivers/daq/resonant_contract.py).

`NIResonantIO` (one X-series board) and `NIDigitizer` (NI AI as the PMT digitizer).

Signal routing, and why
-----------------------
The resonant controller's sync output (one TTL edge per mirror period) is wired to a PFI
line (`line_clock_terminal`) and used three times on the board:

1. Digitizer (NIDigitizer): an AI task, finite (`samples_per_record` samples), started by
   the line clock and retriggerable (`start_trigger.retriggerable = True`, X-series): every
   edge acquires one record; records land back to back in the buffer and are read with
   `AnalogUnscaledReader.read_int16` straight into the scanner's (channels, records, samples)
   array. X-series AI tops out around 1-2 MS/s: a fast digitizer (AlazarTech etc.) implements
   `Digitizer` the same way for video-rate resolution.
2. Line periods (counter `line_counter`): CI period measurement in timebase ticks (100 MHz),
   implicit timing, continuous: one value per mirror period. Ticks are integers, so the
   periods of a frame sum to its true duration within one tick (10 ns), without drift.
3. Frame clock (counter `frame_counter`): CO pulse train timed by the line clock itself
   (`add_co_pulse_chan_ticks(source_terminal=line clock)`): high 2 ticks, low
   periods_per_frame - 2, initial delay FRAME_CLOCK_DELAY_PERIODS ticks; its output
   (`/DevX/CtrNInternalOutput`) retriggers the slow galvo's finite AO
   (`start_trigger.retriggerable = True`, regeneration of the one-frame buffer).

Alignment (the contract's promise: record 0, period 0 and the slow-galvo waveform's start
belong to one edge). The mirror never stops, so software cannot start tasks "between" two
edges. The period counter and the frame clock are therefore armed by the digitizer's first
trigger (`arm_start_trigger` on `arm_trigger_terminal`, by default `/DevX/ai/StartTrigger`;
for a fast digitizer, the PFI its trigger output is wired to): both count line-clock edges
from the digitizer's first record. A counter's initial delay is at least 2 ticks, so the
first frame-clock pulse comes FRAME_CLOCK_DELAY_PERIODS edges after the first record, and
frame 0 starts `slow_galvo_lead_periods` edges after that pulse (the contract): the
digitizer drops FRAME_CLOCK_DELAY_PERIODS + skip_records records and the period reader
FRAME_CLOCK_DELAY_PERIODS + slow_galvo_lead_periods periods, once. (To verify on a new board
with beads: an off-by-one here shows as the image shifted by one line pair in y, and as
device times one period off, nothing else.)

Without the NI-DAQmx runtime, `open()` raises DeviceNotFound pointing to `--rig sim`.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np

from drivers.daq.nidaqmx_backend import (
    NI_SAMPLES_NO_LONGER_AVAILABLE,
    NI_SAMPLES_NOT_YET_AVAILABLE,
    SIM_HINT,
    _import_nidaqmx,
)
from drivers.daq.resonant_contract import (
    Digitizer,
    DigitizerConfig,
    ResonantIOConfig,
    ResonantScanIO,
)
from drivers.errors import (
    DeviceError,
    DeviceNotFound,
    DeviceStateError,
    DeviceTimeout,
    LimitError,
)

#: the frame clock's initial delay (NI counters need at least 2 ticks): records dropped
FRAME_CLOCK_DELAY_PERIODS = 2
#: frame-clock pulse width, in line-clock periods
FRAME_CLOCK_HIGH_PERIODS = 2
#: counter timebase for period measurement (X-series)
TIMEBASE_HZ = 100e6
#: input buffers hold at least this many seconds
BUFFER_S = 2.0

_TERMINALS = ("DIFF", "RSE", "NRSE")


def _open_nidaqmx(name: str, device: str, nx: Any) -> tuple[Any, str]:
    """The nidaqmx module and the device's product type, or DeviceNotFound saying why."""
    try:
        nx = nx if nx is not None else _import_nidaqmx()
    except (ImportError, OSError) as exc:
        raise DeviceNotFound(
            f"{name}: the nidaqmx Python package could not be loaded ({exc}). {SIM_HINT}"
        ) from exc
    try:
        found = [(str(d.name), str(d.product_type)) for d in nx.system.System.local().devices]
    except (nx.errors.DaqNotFoundError, nx.errors.DaqNotSupportedError, OSError) as exc:
        raise DeviceNotFound(
            f"{name}: the NI-DAQmx driver (runtime) is not installed, or no device named "
            f"{device!r} exists ({type(exc).__name__}: {exc}). {SIM_HINT}"
        ) from exc
    if device not in dict(found):
        listing = ", ".join(f"{n} ({p})" for n, p in found) or "none"
        raise DeviceNotFound(
            f"{name}: no NI-DAQmx device named {device!r}; devices found: {listing}. {SIM_HINT}"
        )
    return nx, dict(found)[device]


def _translate(exc: Exception, name: str, action: str, what_stopped: str) -> DeviceError:
    code = getattr(exc, "error_code", None)
    if code == NI_SAMPLES_NOT_YET_AVAILABLE:
        return DeviceTimeout(f"{name}: timeout {action}: {what_stopped} ({exc})")
    if code == NI_SAMPLES_NO_LONGER_AVAILABLE:
        return DeviceError(
            f"{name}: {action}: samples were lost (buffer overflow; the host read too late) ({exc})"
        )
    return DeviceError(f"{name}: {action} failed: {exc}")


def _close_quietly(tasks: list[Any]) -> list[BaseException]:
    failures: list[BaseException] = []
    for task in tasks:
        if task is None:
            continue
        for step in (task.stop, task.close):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - collected for the caller
                failures.append(exc)
    return failures


class NIResonantIO(ResonantScanIO):
    """Amplitude command, line-clock counter, frame clock and slow galvo on one NI board.

    device: NI device name ("Dev1"). line_clock_terminal: PFI with the controller's sync.
    line_counter / frame_counter: the two counters (period measurement, frame clock).
    amplitude_channel / amplitude_range_v: the controller's amplitude input (0 .. range V).
    slow_galvo_channel: AO of the slow galvo; park_v: where `safe()` parks it.
    arm_trigger_terminal: the digitizer's first-trigger signal (module doc); None ->
        "/{device}/ai/StartTrigger" (NIDigitizer on the same board).
    min_line_clock_hz / max_line_clock_hz: measurement range before a scan is configured.
    _nidaqmx: the nidaqmx module (a seam for tests); None imports the real one at open().
    """

    def __init__(
        self,
        device: str = "Dev1",
        *,
        line_clock_terminal: str = "PFI0",
        line_counter: str = "ctr0",
        frame_counter: str = "ctr1",
        amplitude_channel: str = "ao0",
        amplitude_range_v: float = 5.0,
        slow_galvo_channel: str = "ao1",
        park_v: float = 0.0,
        arm_trigger_terminal: str | None = None,
        min_line_clock_hz: float = 1000.0,
        max_line_clock_hz: float = 30000.0,
        timeout_s: float = 2.0,
        name: str | None = None,
        _nidaqmx: Any = None,
    ) -> None:
        super().__init__(name=name or f"NIResonantIO({device})")
        if not isinstance(device, str) or not device or "/" in device:
            raise ValueError(f"device = {device!r} must be an NI device name such as 'Dev1'")
        if not (0 < min_line_clock_hz < max_line_clock_hz):
            raise ValueError(
                f"min_line_clock_hz = {min_line_clock_hz!r} and max_line_clock_hz = "
                f"{max_line_clock_hz!r} must satisfy 0 < min < max"
            )
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s = {timeout_s!r} must be a positive number of seconds")
        self.device = device
        self.line_clock_terminal = self._terminal(line_clock_terminal)
        self.line_counter = self._physical(line_counter)
        self.frame_counter = self._physical(frame_counter)
        self.amplitude_channel = self._physical(amplitude_channel)
        self.amplitude_range_v = float(amplitude_range_v)
        self.slow_galvo_channel = self._physical(slow_galvo_channel)
        self.park_v = float(park_v)
        self.arm_trigger_terminal = arm_trigger_terminal or f"/{device}/ai/StartTrigger"
        self.min_line_clock_hz = float(min_line_clock_hz)
        self.max_line_clock_hz = float(max_line_clock_hz)
        self.timeout_s = float(timeout_s)
        self._nx: Any = _nidaqmx
        self._product_type: str | None = None
        self._reset()

    def _reset(self) -> None:
        self.config: ResonantIOConfig | None = None
        self._period_task: Any = None
        self._frame_task: Any = None
        self._galvo_task: Any = None
        self._period_reader: Any = None
        self._galvo_writer: Any = None
        self._galvo_written = False
        self._running = False
        self._periods_read = 0
        self._to_drop = 0
        self._drop = np.zeros(FRAME_CLOCK_DELAY_PERIODS)

    def _physical(self, channel: str) -> str:
        return channel if "/" in channel else f"{self.device}/{channel}"

    def _terminal(self, terminal: str) -> str:
        return terminal if terminal.startswith("/") else f"/{self.device}/{terminal}"

    @property
    def frame_clock_terminal(self) -> str:
        counter = self.frame_counter.split("/")[-1]
        return f"/{self.device}/{counter[0].upper()}{counter[1:]}InternalOutput"

    # -- lifecycle -------------------------------------------------------------------------
    def _open(self) -> None:
        self._nx, self._product_type = _open_nidaqmx(self.name, self.device, self._nx)
        self._reset()

    def _close(self) -> None:
        self.stop_scan()

    def _safe(self) -> None:
        """Scan tasks stopped, mirror stopped (0 V amplitude), slow galvo parked."""
        failures: list[BaseException] = []
        for step in (
            self.stop_scan,
            lambda: self.set_amplitude_v(0.0),
            lambda: self._write_static(self.slow_galvo_channel, self.park_v, 10.0),
        ):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - every step is attempted
                failures.append(exc)
        if failures:
            raise DeviceError(f"{self.name}: safe state not fully reached: {failures[0]}") from (
                failures[0]
            )

    def _snapshot(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "product_type": self._product_type,
            "line_clock_terminal": self.line_clock_terminal,
            "line_counter": self.line_counter,
            "frame_counter": self.frame_counter,
            "frame_clock_terminal": self.frame_clock_terminal,
            "arm_trigger_terminal": self.arm_trigger_terminal,
            "amplitude_channel": self.amplitude_channel,
            "slow_galvo_channel": self.slow_galvo_channel,
            "frame_clock_delay_periods": FRAME_CLOCK_DELAY_PERIODS,
            "config": None if self.config is None else asdict(self.config),
        }

    # -- amplitude and measurement ---------------------------------------------------------
    def set_amplitude_v(self, volts: float) -> None:
        self.require_open()
        if not (math.isfinite(volts) and 0.0 <= volts <= self.amplitude_range_v):
            raise LimitError(
                f"resonant amplitude = {volts!r} V is outside the controller's input range "
                f"[0, {self.amplitude_range_v:g}] V"
            )
        self._write_static(self.amplitude_channel, float(volts), self.amplitude_range_v)

    def _write_static(self, channel: str, volts: float, range_v: float) -> None:
        nx = self._nx
        task = None
        try:
            task = nx.Task()
            task.ao_channels.add_ao_voltage_chan(channel, min_val=-range_v, max_val=range_v)
            writer = nx.stream_writers.AnalogMultiChannelWriter(task.out_stream, auto_start=True)
            writer.write_one_sample(np.array([volts]), timeout=self.timeout_s)
        except nx.errors.DaqError as exc:
            raise DeviceError(
                f"{self.name}: writing {volts:g} V to {channel} failed: {exc}"
            ) from exc
        finally:
            if task is not None:
                task.close()

    def _period_channel(self, task: Any, lo_hz: float, hi_hz: float) -> None:
        c = self._nx.constants
        chan = task.ci_channels.add_ci_period_chan(
            self.line_counter,
            min_val=TIMEBASE_HZ / hi_hz,
            max_val=TIMEBASE_HZ / lo_hz,
            units=c.TimeUnits.TICKS,
            edge=c.Edge.RISING,
            meas_method=c.CounterFrequencyMethod.LOW_FREQUENCY_1_COUNTER,
        )
        chan.ci_period_term = self.line_clock_terminal
        chan.ci_ctr_timebase_src = f"/{self.device}/100MHzTimebase"

    def measure_line_clock_hz(self, periods: int) -> float:
        """Finite period measurement of periods + 1 cycles (the first, which may start
        before the counter was armed, is dropped); mean frequency from the tick sum."""
        self.require_open()
        if periods < 1:
            raise LimitError(f"periods = {periods} must be at least 1")
        if self._running:
            raise DeviceStateError(f"{self.name}: a scan is running; measure before starting")
        nx = self._nx
        c = nx.constants
        buf = np.zeros(periods + 1)
        task = None
        try:
            task = nx.Task()
            self._period_channel(task, self.min_line_clock_hz, self.max_line_clock_hz)
            task.timing.cfg_implicit_timing(
                sample_mode=c.AcquisitionType.FINITE, samps_per_chan=periods + 1
            )
            reader = nx.stream_readers.CounterReader(task.in_stream)
            task.start()
            reader.read_many_sample_double(
                buf,
                number_of_samples_per_channel=periods + 1,
                timeout=(periods + 1) / self.min_line_clock_hz + self.timeout_s,
            )
        except nx.errors.DaqError as exc:
            raise _translate(
                exc,
                self.name,
                f"measuring the line clock on {self.line_clock_terminal}",
                "no line-clock edges arrived: is the resonant controller on and its sync wired?",
            ) from exc
        finally:
            if task is not None:
                task.close()
        ticks = float(buf[1:].sum())
        if not ticks > 0:
            raise DeviceTimeout(
                f"{self.name}: the line clock on {self.line_clock_terminal} gave no periods"
            )
        return periods * TIMEBASE_HZ / ticks

    # -- scanning --------------------------------------------------------------------------
    def configure_scan(self, config: ResonantIOConfig) -> None:
        self.require_open()
        if self._running:
            raise DeviceStateError(f"{self.name}: a scan is running; stop_scan() first")
        if config.periods_per_frame <= FRAME_CLOCK_HIGH_PERIODS:
            raise LimitError(
                f"periods_per_frame = {config.periods_per_frame} must exceed the frame clock's "
                f"pulse width of {FRAME_CLOCK_HIGH_PERIODS} periods"
            )
        if config.slow_galvo_samples < 2 or not config.slow_galvo_rate_hz > 0:
            raise LimitError(
                f"slow_galvo_samples = {config.slow_galvo_samples} and slow_galvo_rate_hz = "
                f"{config.slow_galvo_rate_hz!r} must be >= 2 and > 0"
            )
        self.stop_scan()
        nx = self._nx
        c = nx.constants
        tasks: list[Any] = []
        try:
            period_task = nx.Task()
            tasks.append(period_task)
            self._period_channel(period_task, config.min_line_clock_hz, config.max_line_clock_hz)
            buffer = int(BUFFER_S * config.max_line_clock_hz)
            period_task.timing.cfg_implicit_timing(
                sample_mode=c.AcquisitionType.CONTINUOUS, samps_per_chan=buffer
            )
            self._arm_on_first_record(period_task)
            period_reader = nx.stream_readers.CounterReader(period_task.in_stream)

            frame_task = nx.Task()
            tasks.append(frame_task)
            frame_task.co_channels.add_co_pulse_chan_ticks(
                self.frame_counter,
                self.line_clock_terminal,
                idle_state=c.Level.LOW,
                initial_delay=FRAME_CLOCK_DELAY_PERIODS,
                low_ticks=config.periods_per_frame - FRAME_CLOCK_HIGH_PERIODS,
                high_ticks=FRAME_CLOCK_HIGH_PERIODS,
            )
            frame_task.timing.cfg_implicit_timing(sample_mode=c.AcquisitionType.CONTINUOUS)
            self._arm_on_first_record(frame_task)

            galvo_task = nx.Task()
            tasks.append(galvo_task)
            range_v = config.slow_galvo_range_v
            galvo_task.ao_channels.add_ao_voltage_chan(
                self.slow_galvo_channel, min_val=-range_v, max_val=range_v
            )
            galvo_task.timing.cfg_samp_clk_timing(
                config.slow_galvo_rate_hz,
                sample_mode=c.AcquisitionType.FINITE,
                samps_per_chan=config.slow_galvo_samples,
            )
            trigger = galvo_task.triggers.start_trigger
            trigger.cfg_dig_edge_start_trig(self.frame_clock_terminal, trigger_edge=c.Edge.RISING)
            trigger.retriggerable = True
            actual = float(galvo_task.timing.samp_clk_rate)
            if not math.isclose(actual, config.slow_galvo_rate_hz, rel_tol=1e-9):
                raise LimitError(
                    f"slow_galvo_rate_hz = {config.slow_galvo_rate_hz:g} is not reachable on "
                    f"{self.device} (it would run at {actual:g} Hz): choose a rate that divides "
                    f"the {TIMEBASE_HZ:g} Hz timebase, e.g. {actual:g} Hz"
                )
            galvo_writer = nx.stream_writers.AnalogMultiChannelWriter(
                galvo_task.out_stream, auto_start=False
            )
        except BaseException as exc:
            for failure in _close_quietly(tasks):
                exc.add_note(f"closing a half-configured task also failed: {failure}")
            if isinstance(exc, nx.errors.DaqError):
                raise DeviceError(
                    f"{self.name}: configuring the resonant scan failed: {exc}"
                ) from exc
            raise
        self.config = config
        self._period_task, self._frame_task, self._galvo_task = period_task, frame_task, galvo_task
        self._period_reader, self._galvo_writer = period_reader, galvo_writer
        self._galvo_written = False

    def _arm_on_first_record(self, task: Any) -> None:
        c = self._nx.constants
        arm = task.triggers.arm_start_trigger
        arm.trig_type = c.TriggerType.DIGITAL_EDGE
        arm.dig_edge_src = self.arm_trigger_terminal
        arm.dig_edge_edge = c.Edge.RISING

    def write_slow_galvo(self, waveform_v: np.ndarray) -> None:
        config = self._require_config()
        w = np.ascontiguousarray(waveform_v, dtype=np.float64)
        if w.shape != (config.slow_galvo_samples,):
            raise ValueError(
                f"waveform_v has shape {w.shape}; expected ({config.slow_galvo_samples},)"
            )
        peak = float(np.max(np.abs(w)))
        if not peak <= config.slow_galvo_range_v:  # also NaN
            raise LimitError(
                f"slow galvo {self.slow_galvo_channel}: waveform reaches {peak:g} V, outside "
                f"+-{config.slow_galvo_range_v:g} V"
            )
        try:
            self._galvo_writer.write_many_sample(w.reshape(1, -1), timeout=self.timeout_s)
        except self._nx.errors.DaqError as exc:
            raise DeviceError(
                f"{self.name}: writing the slow-galvo waveform failed: {exc}"
            ) from exc
        self._galvo_written = True

    def start_scan(self) -> None:
        self._require_config()
        if self._running:
            raise DeviceStateError(f"{self.name}: the scan is already running")
        if not self._galvo_written:
            raise DeviceStateError(f"{self.name}: write_slow_galvo() before start_scan()")
        started: list[Any] = []
        try:
            # the AO waits for the frame clock; both counters wait for the digitizer's first
            # trigger (arm start): nothing moves until the digitizer starts
            for task in (self._galvo_task, self._period_task, self._frame_task):
                task.start()
                started.append(task)
        except self._nx.errors.DaqError as exc:
            for task in started:
                try:
                    task.stop()
                except self._nx.errors.DaqError as stop_exc:
                    exc.add_note(f"stopping a started task also failed: {stop_exc}")
            raise DeviceError(f"{self.name}: starting the resonant scan failed: {exc}") from exc
        self._periods_read = 0
        self._to_drop = FRAME_CLOCK_DELAY_PERIODS + self.config.slow_galvo_lead_periods
        self._drop = np.zeros(self._to_drop)  # once per start
        self._running = True

    def read_line_periods(self, out: np.ndarray) -> int:
        if not self._running or self._period_reader is None:
            raise DeviceStateError(f"{self.name}: the scan is not running; start_scan() first")
        if not (
            isinstance(out, np.ndarray)
            and out.dtype == np.float64
            and out.ndim == 1
            and out.flags.c_contiguous
        ):
            raise ValueError("out must be a contiguous float64 array of shape (n,)")
        n = out.shape[0]
        timeout = (n + self._to_drop) / self.config.min_line_clock_hz + self.timeout_s
        try:
            if self._to_drop:
                self._period_reader.read_many_sample_double(
                    self._drop, number_of_samples_per_channel=self._to_drop, timeout=timeout
                )
                self._to_drop = 0
            self._period_reader.read_many_sample_double(
                out, number_of_samples_per_channel=n, timeout=timeout
            )
        except self._nx.errors.DaqError as exc:
            raise _translate(
                exc,
                self.name,
                f"reading {n} line-clock periods",
                "the resonant controller's line clock stopped",
            ) from exc
        out *= 1.0 / TIMEBASE_HZ
        first = self._periods_read
        self._periods_read += n
        return first

    def stop_scan(self) -> None:
        self._running = False
        tasks = [self._frame_task, self._galvo_task, self._period_task]
        self._frame_task = self._galvo_task = self._period_task = None
        self._period_reader = self._galvo_writer = None
        failures = _close_quietly(tasks)
        if failures:
            raise DeviceError(
                f"{self.name}: stopping the scan tasks failed: {failures[0]}"
            ) from failures[0]

    def park_slow_galvo(self, volts: float) -> None:
        self.require_open()
        range_v = self.config.slow_galvo_range_v if self.config else 10.0
        if not (math.isfinite(volts) and abs(volts) <= range_v):
            raise LimitError(f"slow galvo park = {volts!r} V is outside +-{range_v:g} V")
        self.stop_scan()
        self._write_static(self.slow_galvo_channel, float(volts), range_v)

    def _require_config(self) -> ResonantIOConfig:
        self.require_open()
        if self.config is None or self._galvo_task is None:
            raise DeviceStateError(f"{self.name}: configure_scan() first")
        return self.config


class NIDigitizer(Digitizer):
    """NI AI as the PMT digitizer: retriggerable finite records on the line clock.

    trigger_terminal: PFI with the line clock; skip_records: records before frame 0 (the
    I/O's frame-clock delay, module doc); ai_terminal: "DIFF", "RSE" or "NRSE".
    """

    def __init__(
        self,
        device: str = "Dev1",
        *,
        trigger_terminal: str = "PFI0",
        skip_records: int = FRAME_CLOCK_DELAY_PERIODS,
        ai_terminal: str = "DIFF",
        timeout_s: float = 2.0,
        name: str | None = None,
        _nidaqmx: Any = None,
    ) -> None:
        super().__init__(name=name or f"NIDigitizer({device})")
        if not isinstance(device, str) or not device or "/" in device:
            raise ValueError(f"device = {device!r} must be an NI device name such as 'Dev1'")
        if ai_terminal not in _TERMINALS:
            raise ValueError(f"ai_terminal = {ai_terminal!r} must be one of {_TERMINALS}")
        if skip_records < 0:
            raise ValueError(f"skip_records = {skip_records} must be >= 0")
        self.device = device
        self.trigger_terminal = (
            trigger_terminal
            if trigger_terminal.startswith("/")
            else f"/{device}/{trigger_terminal}"
        )
        self.skip_records = skip_records
        self.ai_terminal = ai_terminal
        self.timeout_s = float(timeout_s)
        self._nx: Any = _nidaqmx
        self._product_type: str | None = None
        self._reset()

    def _reset(self) -> None:
        self.config: DigitizerConfig | None = None
        self._task: Any = None
        self._reader: Any = None
        self._rate_hz = math.nan
        self._volts_per_count = math.nan
        self._running = False
        self._records_read = 0
        self._to_skip = 0
        self._skip_buf = np.zeros((1, 1), np.int16)

    @property
    def sample_rate_hz(self) -> float:
        return self._rate_hz

    @property
    def volts_per_count(self) -> float:
        return self._volts_per_count

    def _open(self) -> None:
        self._nx, self._product_type = _open_nidaqmx(self.name, self.device, self._nx)
        self._reset()

    def _close(self) -> None:
        self.stop()
        if self._task is not None:
            task, self._task = self._task, None
            task.close()

    def _safe(self) -> None:
        self.stop()

    def _snapshot(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "product_type": self._product_type,
            "trigger_terminal": self.trigger_terminal,
            "skip_records": self.skip_records,
            "ai_terminal": self.ai_terminal,
            "sample_rate_hz": self._rate_hz,
            "config": None if self.config is None else asdict(self.config),
        }

    def configure(self, config: DigitizerConfig) -> None:
        self.require_open()
        if self._running:
            raise DeviceStateError(f"{self.name}: acquiring; stop() first")
        if not config.channels:
            raise ValueError("DigitizerConfig.channels is empty: give at least one AI channel")
        if config.samples_per_record < 2 or config.records_per_read < 1:
            raise ValueError(
                f"samples_per_record = {config.samples_per_record} and records_per_read = "
                f"{config.records_per_read} must be >= 2 and >= 1"
            )
        if self._task is not None:
            self._task.close()
            self._task = None
        nx = self._nx
        c = nx.constants
        spr = config.samples_per_record
        task = None
        try:
            task = nx.Task()
            terminal = getattr(c.TerminalConfiguration, self.ai_terminal)
            first = None
            for ch in config.channels:
                chan = task.ai_channels.add_ai_voltage_chan(
                    ch if "/" in ch else f"{self.device}/{ch}",
                    terminal_config=terminal,
                    min_val=-config.range_v,
                    max_val=config.range_v,
                )
                first = first if first is not None else chan
            task.timing.cfg_samp_clk_timing(
                config.sample_rate_hz, sample_mode=c.AcquisitionType.FINITE, samps_per_chan=spr
            )
            trigger = task.triggers.start_trigger
            trigger.cfg_dig_edge_start_trig(self.trigger_terminal, trigger_edge=c.Edge.RISING)
            trigger.retriggerable = True
            records = max(
                4 * config.records_per_read, math.ceil(BUFFER_S * config.sample_rate_hz / spr)
            )
            task.in_stream.input_buf_size = records * spr
            actual = float(task.timing.samp_clk_rate)
            if not math.isclose(actual, config.sample_rate_hz, rel_tol=1e-9):
                raise LimitError(
                    f"sample_rate_hz = {config.sample_rate_hz:g} is not reachable on "
                    f"{self.device}: the board would sample at {actual:g} Hz; use that rate"
                )
            coeffs: list[float] = []
            try:
                coeffs = [float(v) for v in first.ai_dev_scaling_coeff]
            except (AttributeError, nx.errors.DaqError):
                pass
            volts_per_count = (
                coeffs[1]
                if len(coeffs) >= 2 and coeffs[1] > 0
                else float(first.ai_rng_high) / 2.0 ** (float(first.ai_resolution) - 1)
            )
            reader = nx.stream_readers.AnalogUnscaledReader(task.in_stream)
            reader.verify_array_shape = False
        except BaseException as exc:
            if task is not None:
                task.close()
            if isinstance(exc, nx.errors.DaqError):
                raise DeviceError(f"{self.name}: configuring the digitizer failed: {exc}") from exc
            raise
        self.config = config
        self._task, self._reader = task, reader
        self._rate_hz = actual
        self._volts_per_count = volts_per_count
        skip = self.skip_records + config.skip_records
        self._skip_buf = np.zeros((len(config.channels), max(1, skip) * spr), np.int16)

    def start(self) -> None:
        if self.config is None or self._task is None:
            raise DeviceStateError(f"{self.name}: configure() first")
        if self._running:
            raise DeviceStateError(f"{self.name}: already acquiring")
        try:
            self._task.start()
        except self._nx.errors.DaqError as exc:
            raise DeviceError(f"{self.name}: starting the digitizer failed: {exc}") from exc
        self._records_read = 0
        self._to_skip = self.skip_records + self.config.skip_records
        self._running = True

    def read_records(self, out: np.ndarray) -> int:
        config = self.config
        if not self._running or config is None:
            raise DeviceStateError(f"{self.name}: not acquiring; start() first")
        n_ch, spr = len(config.channels), config.samples_per_record
        if (
            not isinstance(out, np.ndarray)
            or out.dtype != np.int16
            or out.ndim != 3
            or out.shape[0] != n_ch
            or out.shape[2] != spr
            or not out.flags.c_contiguous
        ):
            raise ValueError(
                f"out must be a C-contiguous int16 array of shape ({n_ch}, n, {spr}); got "
                f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}"
            )
        n = out.shape[1]
        flat = out.reshape(n_ch, n * spr)  # records lie back to back in the AI stream
        timeout = (n + self._to_skip) * 2.0 * spr / config.sample_rate_hz + self.timeout_s
        try:
            if self._to_skip:
                self._reader.read_int16(
                    self._skip_buf,
                    number_of_samples_per_channel=self._to_skip * spr,
                    timeout=timeout,
                )
                self._to_skip = 0
            self._reader.read_int16(flat, number_of_samples_per_channel=n * spr, timeout=timeout)
        except self._nx.errors.DaqError as exc:
            raise _translate(
                exc,
                self.name,
                f"reading {n} records",
                f"no line-clock trigger on {self.trigger_terminal}: the line clock stopped",
            ) from exc
        first = self._records_read
        self._records_read += n
        return first

    def stop(self) -> None:
        if self._running:
            self._running = False
            try:
                self._task.stop()
            except self._nx.errors.DaqError as exc:
                raise DeviceError(f"{self.name}: stopping the digitizer failed: {exc}") from exc
