"""NI-DAQmx back end of the DAQ contract (`drivers.daq.contract.ScanDAQ`) for one NI board.

Clock recipe (hardware.md section 2), and why this one
------------------------------------------------------
The AO task (galvo x/y) is the master: it runs on the board's own sample clock at
`ao_rate_hz` and is started by software. The AI task (PMT channels) is the slave: it runs on
its own sample clock at `ai_rate_hz = ai_oversample * ao_rate_hz`, is armed first, and starts
on the master's `/DevX/ao/StartTrigger`. Both sample clocks divide the same onboard timebase
(100 MHz on X-series) by integers and both dividers start on the same trigger edge, so

    AI sample j is taken during AO sample j // ai_oversample, for every j, forever:

the two clocks cannot drift apart, because they are one oscillator. What could break this is
the driver coercing a rate the timebase cannot divide exactly; `configure_scan` therefore reads
back both coerced rates and refuses (LimitError, with the nearest exact rate) unless
ai_rate == ai_oversample * ao_rate and ao_rate == the requested rate. A fixed conversion delay
between the two clocks (a few timebase ticks) remains; it is constant and is absorbed by the
scanner's line phase.

Rejected alternatives: clocking AI from `/DevX/ao/SampleClock` only works when
ai_oversample == 1 (AI cannot sample faster than its clock source); clocking AO from
`/DevX/ai/SampleClock` runs AO at the AI rate unless a counter divides the clock by k, which
costs a counter and two more routes for no gain in synchrony.

AO is non-regenerating (`RegenerationMode.DONT_ALLOW_REGENERATION`) with a buffer of
`AO_BUFFER_FRAMES` frames, so the scanner writes one frame ahead at a time and waveforms may
change between frames; a late write is an underflow error, never a silently repeated frame.
The AI buffer is an integer number of frames (at least `AI_BUFFER_MIN_FRAMES` and
`AI_BUFFER_MIN_S` seconds), read with `AnalogUnscaledReader.read_int16` straight into the
caller's preallocated int16 array.

Stimulation pulses run on their own AO task: finite, sample-clocked at the pulse rate,
started by software whenever a pulse is requested (not by the scan clock). Most NI boards
(M- and X-series) have a single AO timing engine per device, so pulse channels on the
scanning board cannot play while a scan runs: put them on a second board (channel names with
a device prefix, e.g. "Dev2/ao0"). NI reports the conflict as a reserved resource, which this
module turns into a DeviceError that says so.

Channel names without a device prefix ("ao0", "ai0") are taken to be on `device`.
"""

from __future__ import annotations

import math
import threading
import time
from types import ModuleType
from typing import Any

import numpy as np

from drivers.daq.contract import PulseTaskConfig, ScanDAQ, ScanTaskConfig
from drivers.errors import (
    DeviceError,
    DeviceNotFound,
    DeviceStateError,
    DeviceTimeout,
    LimitError,
)

#: AO output buffer, in frames: the most the scanner can write ahead.
AO_BUFFER_FRAMES = 3
#: AI input buffer: an integer number of frames, at least this many ...
AI_BUFFER_MIN_FRAMES = 8
#: ... and at least this many seconds of samples, to ride out host hiccups.
AI_BUFFER_MIN_S = 2.0

#: NI-DAQmx error codes this driver reacts to (nidaqmx.error_codes.DAQmxErrors).
NI_SAMPLES_NOT_YET_AVAILABLE = -200284  # read timed out
NI_SAMPLES_NO_LONGER_AVAILABLE = -200279  # AI buffer overflow: samples overwritten
NI_SAMPLES_CAN_NOT_YET_BE_WRITTEN = -200292  # write timed out (buffer full)
NI_AO_UNDERFLOW_CODES = (-200290, -200016, -200621)  # AO ran out of samples to generate
NI_RESOURCE_RESERVED = -50103  # another task holds the channel or timing engine
NI_INVALID_TASK = -200088  # the task was already cleared

SIM_HINT = "To run without NI hardware, use the simulated rig (`--rig sim`)."

_TERMINALS = ("DIFF", "RSE", "NRSE")


def _import_nidaqmx() -> ModuleType:
    """Import nidaqmx and the submodules this driver uses (the package does not import all)."""
    import nidaqmx
    import nidaqmx.constants
    import nidaqmx.errors
    import nidaqmx.stream_readers
    import nidaqmx.stream_writers
    import nidaqmx.system

    return nidaqmx


class NIDAQ(ScanDAQ):
    """One NI-DAQmx board: galvo AO and PMT AI on one clock, plus on-demand pulse outputs.

    device: NI device name as in NI MAX ("Dev1").
    timeout_s: grace period beyond the time requested samples take to acquire or generate;
        a read of n samples waits n / ai_rate_hz + timeout_s before raising DeviceTimeout.
    ai_terminal: PMT input wiring, "DIFF", "RSE" or "NRSE".
    park_v: galvo voltages `safe()` parks at (one per scan AO channel); None = 0 V each.
    _nidaqmx: the nidaqmx module (a seam for tests); None imports the real one at open().
    """

    def __init__(
        self,
        device: str = "Dev1",
        *,
        timeout_s: float = 2.0,
        ai_terminal: str = "DIFF",
        park_v: tuple[float, ...] | None = None,
        name: str | None = None,
        _nidaqmx: Any = None,
    ) -> None:
        super().__init__(name=name or f"NIDAQ({device})")
        if not isinstance(device, str) or not device or "/" in device:
            raise ValueError(f"device = {device!r} must be an NI device name such as 'Dev1'")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s = {timeout_s!r} must be a positive number of seconds")
        if ai_terminal not in _TERMINALS:
            raise ValueError(f"ai_terminal = {ai_terminal!r} must be one of {_TERMINALS}")
        self.device = device
        self.timeout_s = float(timeout_s)
        self.ai_terminal = ai_terminal
        self.park_v = None if park_v is None else tuple(float(v) for v in park_v)
        self._nx: Any = _nidaqmx
        self._product_type: str | None = None
        # pulses are fired from the processing thread while safe() may come from another:
        # the lock makes "zeroed by safe()" final (no pulse started half-way through it)
        self._pulse_lock = threading.RLock()
        self._clear_state()

    def _clear_state(self) -> None:
        # scanning
        self._scan_config: ScanTaskConfig | None = None
        self._ao_task: Any = None
        self._ai_task: Any = None
        self._ao_writer: Any = None
        self._ai_reader: Any = None
        self._scan_running = False
        self._ao_frames_written = 0
        self._ao_rate_actual_hz: float | None = None
        self._ai_rate_actual_hz: float | None = None
        self._ao_buffer_samples = 0
        self._ai_buffer_samples = 0
        self._ai_volts_per_count: float | None = None
        self._ao_max_v = np.empty(0)  # per-channel max/min of a frame, preallocated
        self._ao_min_v = np.empty(0)
        # (AI samples read since the start trigger, time.perf_counter() when that was so),
        # replaced as one tuple so a reader on another thread never sees half an update
        self._read_mark: tuple[int, float] | None = None
        self._ai_samples_read = 0
        # pulses
        self._pulse_config: PulseTaskConfig | None = None
        self._pulse_task: Any = None
        self._pulse_writer: Any = None
        self._pulse_samples_configured = 0
        self._pulse_started = False
        self._pulse_zeros_v = np.zeros((0, 2))
        self._pulse_max_v = np.empty(0)
        self._pulse_min_v = np.empty(0)

    # -- lifecycle hooks -------------------------------------------------------------------
    def _open(self) -> None:
        try:
            nx = self._nx if self._nx is not None else _import_nidaqmx()
        except (ImportError, OSError) as exc:
            raise DeviceNotFound(
                f"{self.name}: the nidaqmx Python package could not be loaded ({exc}). "
                f"Install it (pip install nidaqmx) together with the NI-DAQmx driver. {SIM_HINT}"
            ) from exc
        try:
            system = nx.system.System.local()
            found = [(str(d.name), str(d.product_type)) for d in system.devices]
        except (nx.errors.DaqNotFoundError, nx.errors.DaqNotSupportedError, OSError) as exc:
            raise DeviceNotFound(
                f"{self.name}: the NI-DAQmx driver (runtime) is not installed, or no device named "
                f"{self.device!r} exists; devices found: none ({type(exc).__name__}: {exc}). "
                f"{SIM_HINT}"
            ) from exc
        except nx.errors.DaqError as exc:
            raise self._translate(exc, "listing NI-DAQmx devices") from exc
        names = [n for n, _ in found]
        if self.device not in names:
            listing = ", ".join(f"{n} ({p})" for n, p in found) or "none"
            raise DeviceNotFound(
                f"{self.name}: no NI-DAQmx device named {self.device!r}; devices found: {listing}. "
                f"Use one of those names (see NI MAX). {SIM_HINT}"
            )
        self._product_type = dict(found)[self.device]
        self._nx = nx
        self._clear_state()

    def _close(self) -> None:
        """Clear every task; all are attempted, the first failure is raised after."""
        failures: list[BaseException] = []
        for attr in ("_pulse_task", "_ai_task", "_ao_task"):
            task = getattr(self, attr)
            setattr(self, attr, None)
            if task is None:
                continue
            try:
                task.close()
            except Exception as exc:  # noqa: BLE001 - collected and raised below
                if not self._is_invalid_task(exc):
                    failures.append(exc)
        self._scan_running = False
        self._pulse_started = False
        if failures:
            raise DeviceError(f"{self.name}: closing tasks failed: {failures[0]}") from failures[0]

    def _safe(self) -> None:
        """Light off, scan stopped, galvos parked. Every step is attempted; a task that is
        already closed is not an error; any other failure is raised after all steps.

        Order: stop the pulse task first (stimulation off as early as possible), then the
        scan (on a board with one AO timing engine the zero write below needs it free),
        then drive pulse channels to 0 V (a stopped AO holds its last value) and park.
        """
        failures: list[BaseException] = []

        def attempt(step: Any) -> None:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - collected and raised below
                cause = exc.__cause__ if isinstance(exc, DeviceError) else exc
                if not self._is_invalid_task(cause):
                    failures.append(exc)

        with self._pulse_lock:
            if self._pulse_task is not None:
                attempt(self._pulse_task.stop)
                self._pulse_started = False
            attempt(self.stop_scan)
            if self._pulse_task is not None:
                attempt(self._write_pulse_zeros)
        if self._scan_config is not None:
            attempt(lambda: self.park(self._park_volts(self._scan_config)))
        if failures:
            raise DeviceError(
                f"{self.name}: safe state not fully reached ({len(failures)} step(s) failed): "
                f"{failures[0]}"
            ) from failures[0]

    def _snapshot(self) -> dict[str, Any]:
        scan = self._scan_config
        pulse = self._pulse_config
        return {
            "device": self.device,
            "product_type": self._product_type,
            "ai_terminal": self.ai_terminal,
            "timeout_s": self.timeout_s,
            "park_v": list(self.park_v) if self.park_v is not None else None,
            "clock": "AO master on onboard clock; AI own clock at k x AO rate, "
            f"started by /{self.device}/ao/StartTrigger",
            "scan": None
            if scan is None
            else {
                "ao_channels": list(scan.ao_channels),
                "ai_channels": list(scan.ai_channels),
                "ao_rate_hz": self._ao_rate_actual_hz,
                "ai_rate_hz": self._ai_rate_actual_hz,
                "ai_oversample": scan.ai_oversample,
                "ao_samples_per_frame": scan.ao_samples_per_frame,
                "ao_range_v": scan.ao_range_v,
                "ai_range_v": scan.ai_range_v,
                "ai_volts_per_count": self._ai_volts_per_count,
                "ao_regeneration": "DONT_ALLOW_REGENERATION",
                "ao_buffer_samples": self._ao_buffer_samples,
                "ai_buffer_samples": self._ai_buffer_samples,
            },
            "pulses": None
            if pulse is None
            else {
                "channels": list(pulse.channels),
                "rate_hz": pulse.rate_hz,
                "range_v": pulse.range_v,
                "onset_time": "estimate: AI samples read / ai_rate + host time since that read",
            },
        }

    # -- scanning --------------------------------------------------------------------------
    def configure_scan(self, config: ScanTaskConfig) -> None:
        self.require_open()
        if self._scan_running:
            raise DeviceStateError(f"{self.name}: a scan is running; call stop_scan() first")
        self._check_scan_config(config)
        self._park_volts(config)  # refuse a park_v that does not fit this config, up front
        self._close_scan_tasks()
        nx = self._nx
        c = nx.constants
        ao_phys = [self._physical(ch) for ch in config.ao_channels]
        ai_phys = [self._physical(ch) for ch in config.ai_channels]
        ao_spf = config.ao_samples_per_frame
        ai_spf = config.ai_samples_per_frame
        frame_s = ao_spf / config.ao_rate_hz
        ai_frames = max(AI_BUFFER_MIN_FRAMES, math.ceil(AI_BUFFER_MIN_S / frame_s))
        ao_task = ai_task = None
        try:
            ao_task = nx.Task()
            for ch in ao_phys:
                ao_task.ao_channels.add_ao_voltage_chan(
                    ch, min_val=-config.ao_range_v, max_val=config.ao_range_v
                )
            ao_task.timing.cfg_samp_clk_timing(
                config.ao_rate_hz,
                sample_mode=c.AcquisitionType.CONTINUOUS,
                samps_per_chan=AO_BUFFER_FRAMES * ao_spf,
            )
            ao_task.out_stream.regen_mode = c.RegenerationMode.DONT_ALLOW_REGENERATION
            ao_task.out_stream.output_buf_size = AO_BUFFER_FRAMES * ao_spf

            ai_task = nx.Task()
            terminal = getattr(c.TerminalConfiguration, self.ai_terminal)
            first_ai = None
            for ch in ai_phys:
                chan = ai_task.ai_channels.add_ai_voltage_chan(
                    ch,
                    terminal_config=terminal,
                    min_val=-config.ai_range_v,
                    max_val=config.ai_range_v,
                )
                first_ai = first_ai if first_ai is not None else chan
            ai_task.timing.cfg_samp_clk_timing(
                config.ai_rate_hz,
                sample_mode=c.AcquisitionType.CONTINUOUS,
                samps_per_chan=ai_frames * ai_spf,
            )
            ai_task.in_stream.input_buf_size = ai_frames * ai_spf
            ai_task.triggers.start_trigger.cfg_dig_edge_start_trig(
                f"/{self.device}/ao/StartTrigger"
            )

            self._check_coerced_rates(
                config,
                float(ao_task.timing.samp_clk_rate),
                float(ai_task.timing.samp_clk_rate),
                float(ai_task.timing.samp_clk_timebase_rate),
            )
            volts_per_count = self._read_volts_per_count(first_ai)
            writer = nx.stream_writers.AnalogMultiChannelWriter(
                ao_task.out_stream, auto_start=False
            )
            reader = nx.stream_readers.AnalogUnscaledReader(ai_task.in_stream)
            reader.verify_array_shape = False  # read_ai checks the shape; saves a driver query
        except BaseException as exc:
            for task in (ai_task, ao_task):
                if task is not None:
                    try:
                        task.close()
                    except Exception as cleanup:  # noqa: BLE001 - the original error leads
                        exc.add_note(f"closing a half-configured task also failed: {cleanup}")
            if isinstance(exc, nx.errors.DaqError):
                raise self._translate(exc, "configuring the scan tasks") from exc
            raise
        self._scan_config = config
        self._ao_task, self._ai_task = ao_task, ai_task
        self._ao_writer, self._ai_reader = writer, reader
        self._ao_rate_actual_hz = float(ao_task.timing.samp_clk_rate)
        self._ai_rate_actual_hz = float(ai_task.timing.samp_clk_rate)
        self._ao_buffer_samples = AO_BUFFER_FRAMES * ao_spf
        self._ai_buffer_samples = ai_frames * ai_spf
        self._ai_volts_per_count = volts_per_count
        self._ao_frames_written = 0
        self._ao_max_v = np.empty(len(ao_phys))
        self._ao_min_v = np.empty(len(ao_phys))

    def write_ao(self, waveform_v: np.ndarray) -> None:
        config = self._require_scan()
        expected = (len(config.ao_channels), config.ao_samples_per_frame)
        if not isinstance(waveform_v, np.ndarray) or waveform_v.shape != expected:
            shape = getattr(waveform_v, "shape", type(waveform_v).__name__)
            raise ValueError(
                f"waveform_v has shape {shape}; expected {expected} "
                "(scan AO channels, ao_samples_per_frame)"
            )
        self._check_volts(
            waveform_v,
            config.ao_channels,
            config.ao_range_v,
            self._ao_max_v,
            self._ao_min_v,
            "scan AO",
        )
        data = np.ascontiguousarray(waveform_v, dtype=np.float64)  # no copy if already so
        frame_s = config.ao_samples_per_frame / config.ao_rate_hz
        try:
            self._ao_writer.write_many_sample(data, timeout=frame_s + self.timeout_s)
        except self._nx.errors.DaqError as exc:
            raise self._translate(exc, "writing a galvo AO frame") from exc
        self._ao_frames_written += 1

    def start_scan(self) -> None:
        self._require_scan()
        if self._scan_running:
            raise DeviceStateError(f"{self.name}: the scan is already running")
        if self._ao_frames_written == 0:
            raise DeviceStateError(
                f"{self.name}: write_ao() at least one frame before "
                "start_scan() (non-regenerating AO starts from its buffer)"
            )
        try:
            self._ai_task.start()  # armed: waits for the AO start trigger
            try:
                self._ao_task.start()  # emits /DevX/ao/StartTrigger: both clocks start
            except BaseException:
                self._ai_task.stop()
                raise
        except self._nx.errors.DaqError as exc:
            raise self._translate(exc, "starting the scan") from exc
        self._ai_samples_read = 0
        self._read_mark = (0, time.perf_counter())
        self._scan_running = True

    def read_ai(self, out: np.ndarray) -> int:
        reader = self._ai_reader
        config = self._scan_config
        if not self._scan_running or reader is None or config is None:
            raise DeviceStateError(f"{self.name}: the scan is not running; start_scan() first")
        if (
            not isinstance(out, np.ndarray)
            or out.dtype != np.int16
            or out.ndim != 2
            or out.shape[0] != len(config.ai_channels)
            or out.shape[1] < 1
            or not out.flags.c_contiguous
        ):
            raise ValueError(
                f"out must be a C-contiguous int16 array of shape ({len(config.ai_channels)}, n); "
                f"got {getattr(out, 'dtype', type(out).__name__)} "
                f"{getattr(out, 'shape', '')}"
            )
        n = out.shape[1]
        first = self._ai_samples_read
        try:
            reader.read_int16(
                out, number_of_samples_per_channel=n, timeout=n / config.ai_rate_hz + self.timeout_s
            )
        except self._nx.errors.DaqError as exc:
            raise self._translate(exc, f"reading {n} AI samples") from exc
        self._ai_samples_read = first + n
        self._read_mark = (first + n, time.perf_counter())
        return first

    def stop_scan(self) -> None:
        """Stop AO (the master) then AI, and clear both tasks. Safe to call when idle."""
        self.require_open()
        self._scan_running = False
        self._close_scan_tasks()

    def park(self, volts: tuple[float, ...]) -> None:
        """Stop the scan, then one on-demand write of static volts to the scan AO channels.

        The outputs hold these volts after the short task is cleared.
        """
        self.require_open()
        config = self._scan_config
        if config is None:
            raise DeviceStateError(
                f"{self.name}: configure_scan() first (park needs the galvo AO channels)"
            )
        volts_v = np.asarray(volts, dtype=np.float64).reshape(-1)
        if volts_v.size != len(config.ao_channels):
            raise ValueError(
                f"park volts = {tuple(volts)} must give one value per scan AO "
                f"channel {config.ao_channels}"
            )
        self._check_volts(
            volts_v.reshape(-1, 1),
            config.ao_channels,
            config.ao_range_v,
            np.empty(volts_v.size),
            np.empty(volts_v.size),
            "park",
        )
        self.stop_scan()
        self._write_on_demand(
            [self._physical(ch) for ch in config.ao_channels],
            config.ao_range_v,
            volts_v,
            "parking the galvos",
        )

    def write_static_ao(self, channel: str, volts: float, range_v: float = 10.0) -> None:
        """One on-demand write of a constant voltage (focus piezo, shutter); the output
        holds it after the short task is cleared. Checked against range_v before writing."""
        self.require_open()
        value = np.array([float(volts)])
        self._check_volts(
            value.reshape(1, 1), (channel,), range_v, np.empty(1), np.empty(1), "static"
        )
        self._write_on_demand(
            [self._physical(channel)], range_v, value, f"writing {volts:g} V to {channel}"
        )

    @property
    def ai_volts_per_count(self) -> float:
        """Volts per raw AI code of the configured range.

        Prefers the linear term of the channel's calibrated scaling polynomial
        (`ai_dev_scaling_coeff`, volts = c0 + c1 code + ...); otherwise the nominal
        ai_rng_high / 2**(resolution_bits - 1), e.g. +-1 V at 16 bits = 30.5 uV per code.
        """
        if self._ai_volts_per_count is None:
            raise DeviceStateError(f"{self.name}: configure_scan() first")
        return self._ai_volts_per_count

    # -- stimulation pulses ----------------------------------------------------------------
    def configure_pulses(self, config: PulseTaskConfig) -> None:
        with self._pulse_lock:
            self._configure_pulses(config)

    def _configure_pulses(self, config: PulseTaskConfig) -> None:
        self.require_open()
        if not config.channels:
            raise ValueError("PulseTaskConfig.channels is empty: give at least one AO channel")
        if not (math.isfinite(config.rate_hz) and config.rate_hz > 0):
            raise ValueError(f"PulseTaskConfig.rate_hz = {config.rate_hz!r} must be > 0 Hz")
        if not (math.isfinite(config.range_v) and config.range_v > 0):
            raise ValueError(f"PulseTaskConfig.range_v = {config.range_v!r} must be > 0 V")
        self._close_pulse_task()
        nx = self._nx
        task = None
        try:
            task = nx.Task()
            for ch in config.channels:
                task.ao_channels.add_ao_voltage_chan(
                    self._physical(ch), min_val=-config.range_v, max_val=config.range_v
                )
            writer = nx.stream_writers.AnalogMultiChannelWriter(task.out_stream, auto_start=False)
        except nx.errors.DaqError as exc:
            if task is not None:
                task.close()
            raise self._translate(exc, "configuring the pulse outputs") from exc
        n_ch = len(config.channels)
        self._pulse_config = config
        self._pulse_task, self._pulse_writer = task, writer
        self._pulse_samples_configured = 0
        self._pulse_started = False
        self._pulse_zeros_v = np.zeros((n_ch, 2))
        self._pulse_max_v = np.empty(n_ch)
        self._pulse_min_v = np.empty(n_ch)
        self._write_pulse_zeros()

    def write_pulses(self, waveform_v: np.ndarray) -> float:
        """Play one finite waveform now; return its onset in seconds on the scan clock.

        The onset is an ESTIMATE: NI on-demand (software-started) tasks give no hardware
        timestamp, so onset = (AI samples read so far) / ai_rate_hz + (host time between the
        end of that read and the return of the pulse task's start). Its error is the AI
        backlog not yet read plus the driver's start latency (typically well under 1 ms).
        NaN if no scan has been started.
        """
        with self._pulse_lock:
            return self._write_pulses(waveform_v)

    def _write_pulses(self, waveform_v: np.ndarray) -> float:
        config = self._require_pulses()
        n_ch = len(config.channels)
        if (
            not isinstance(waveform_v, np.ndarray)
            or waveform_v.ndim != 2
            or waveform_v.shape[0] != n_ch
            or waveform_v.shape[1] < 2
        ):
            shape = getattr(waveform_v, "shape", type(waveform_v).__name__)
            raise ValueError(
                f"waveform_v has shape {shape}; expected ({n_ch}, n) with n >= 2 "
                f"(one row per pulse channel {config.channels})"
            )
        self._check_volts(
            waveform_v,
            config.channels,
            config.range_v,
            self._pulse_max_v,
            self._pulse_min_v,
            "pulse",
        )
        task = self._pulse_task
        try:
            if self._pulse_started and not task.is_task_done():
                raise DeviceStateError(
                    f"{self.name}: the previous pulse is still playing; "
                    "wait for it or call zero_pulses()"
                )
            self._play_pulse(np.ascontiguousarray(waveform_v, dtype=np.float64))
        except self._nx.errors.DaqError as exc:
            raise self._translate(exc, "emitting a pulse") from exc
        return self.scan_time_s

    @property
    def scan_time_s(self) -> float:
        """Samples read so far / AI rate, plus the host time elapsed since that read (NI
        on-demand tasks give no hardware timestamp); NaN before the first read."""
        host_now = time.perf_counter()
        mark = self._read_mark
        rate = self._ai_rate_actual_hz
        if mark is None or not rate:
            return math.nan
        samples_read, host_at_read = mark
        return samples_read / rate + (host_now - host_at_read)

    def zero_pulses(self) -> None:
        """Stop any pulse and drive every pulse channel to 0 V (returns once it is at 0 V)."""
        with self._pulse_lock:
            self._require_pulses()
            try:
                self._pulse_task.stop()
            except self._nx.errors.DaqError as exc:
                raise self._translate(exc, "stopping the pulse") from exc
            finally:
                self._pulse_started = False
            self._write_pulse_zeros()

    # -- helpers ---------------------------------------------------------------------------
    def _play_pulse(self, data: np.ndarray) -> None:
        """Finite, sample-clocked generation of `data` (channels, n), started now."""
        config = self._pulse_config
        assert config is not None
        task = self._pulse_task
        n = data.shape[1]
        task.stop()  # a finished finite task must be stopped before it is written again
        self._pulse_started = False
        if n != self._pulse_samples_configured:
            task.timing.cfg_samp_clk_timing(
                config.rate_hz,
                sample_mode=self._nx.constants.AcquisitionType.FINITE,
                samps_per_chan=n,
            )
            self._pulse_samples_configured = n
        self._pulse_writer.write_many_sample(data, timeout=self.timeout_s)
        task.start()
        self._pulse_started = True

    def _write_pulse_zeros(self) -> None:
        """0 V on every pulse channel: a two-sample finite write of zeros, waited for."""
        config = self._pulse_config
        assert config is not None
        try:
            self._play_pulse(self._pulse_zeros_v)
            self._pulse_task.wait_until_done(timeout=2 / config.rate_hz + self.timeout_s)
            self._pulse_task.stop()
            self._pulse_started = False
        except self._nx.errors.DaqError as exc:
            raise self._translate(exc, "driving the pulse outputs to 0 V") from exc

    def _write_on_demand(
        self, channels: list[str], range_v: float, volts_v: np.ndarray, action: str
    ) -> None:
        nx = self._nx
        task = None
        try:
            task = nx.Task()
            for ch in channels:
                task.ao_channels.add_ao_voltage_chan(ch, min_val=-range_v, max_val=range_v)
            writer = nx.stream_writers.AnalogMultiChannelWriter(task.out_stream, auto_start=True)
            writer.write_one_sample(volts_v, timeout=self.timeout_s)
        except nx.errors.DaqError as exc:
            raise self._translate(exc, action) from exc
        finally:
            if task is not None:
                task.close()

    def _close_scan_tasks(self) -> None:
        """Stop AO (master) first, then AI; clear both. Every step attempted."""
        failures: list[BaseException] = []
        for attr in ("_ao_task", "_ai_task"):
            task = getattr(self, attr)
            setattr(self, attr, None)
            if task is None:
                continue
            for step in (task.stop, task.close):
                try:
                    step()
                except Exception as exc:  # noqa: BLE001 - collected and raised below
                    if not self._is_invalid_task(exc):
                        failures.append(exc)
        self._ao_writer = self._ai_reader = None
        self._ao_frames_written = 0
        if failures:
            first = failures[0]
            if isinstance(first, self._nx.errors.DaqError):
                raise self._translate(first, "stopping the scan") from first
            raise first

    def _close_pulse_task(self) -> None:
        task, self._pulse_task = self._pulse_task, None
        self._pulse_writer = None
        self._pulse_started = False
        if task is not None:
            try:
                task.close()
            except self._nx.errors.DaqError as exc:
                if not self._is_invalid_task(exc):
                    raise self._translate(exc, "closing the pulse task") from exc

    def _require_scan(self) -> ScanTaskConfig:
        self.require_open()
        if self._scan_config is None or self._ao_task is None:
            raise DeviceStateError(f"{self.name}: configure_scan() first")
        return self._scan_config

    def _require_pulses(self) -> PulseTaskConfig:
        self.require_open()
        if self._pulse_config is None or self._pulse_task is None:
            raise DeviceStateError(f"{self.name}: configure_pulses() first")
        return self._pulse_config

    def _physical(self, channel: str) -> str:
        return channel if "/" in channel else f"{self.device}/{channel}"

    def _park_volts(self, config: ScanTaskConfig) -> tuple[float, ...]:
        n = len(config.ao_channels)
        if self.park_v is None:
            return (0.0,) * n
        if len(self.park_v) != n:
            raise ValueError(
                f"park_v = {self.park_v} must give one value per scan AO channel "
                f"{config.ao_channels}"
            )
        for ch, v in zip(config.ao_channels, self.park_v):
            if not abs(v) <= config.ao_range_v:
                raise LimitError(
                    f"park_v for {ch} = {v:g} V is outside the AO range "
                    f"[-{config.ao_range_v:g}, {config.ao_range_v:g}] V"
                )
        return self.park_v

    def _check_scan_config(self, config: ScanTaskConfig) -> None:
        if not config.ao_channels or not config.ai_channels:
            raise ValueError(
                "ScanTaskConfig needs at least one AO (galvo) and one AI (PMT) "
                f"channel; got ao={config.ao_channels}, ai={config.ai_channels}"
            )
        for ch in (*config.ao_channels, *config.ai_channels):
            if "/" in ch and ch.split("/")[0] != self.device:
                raise ValueError(
                    f"scan channel {ch!r} is not on {self.device!r}: AO and AI "
                    "must share one board (one timebase, one start trigger)"
                )
        if not (math.isfinite(config.ao_rate_hz) and config.ao_rate_hz > 0):
            raise ValueError(f"ao_rate_hz = {config.ao_rate_hz!r} must be > 0 Hz")
        if not (isinstance(config.ai_oversample, int) and config.ai_oversample >= 1):
            raise ValueError(f"ai_oversample = {config.ai_oversample!r} must be an integer >= 1")
        if not (isinstance(config.ao_samples_per_frame, int) and config.ao_samples_per_frame >= 2):
            raise ValueError(
                f"ao_samples_per_frame = {config.ao_samples_per_frame!r} must be an integer >= 2"
            )
        for label, value in (("ao_range_v", config.ao_range_v), ("ai_range_v", config.ai_range_v)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{label} = {value!r} must be > 0 V")

    def _check_coerced_rates(
        self, config: ScanTaskConfig, ao_actual_hz: float, ai_actual_hz: float, timebase_hz: float
    ) -> None:
        """AI sample j <-> AO sample j // k holds only if the board runs exactly the rates asked.

        The board derives each sample clock as timebase / integer divisor and silently
        coerces other rates, so the requested AI rate must divide the timebase exactly.
        """
        k = config.ai_oversample
        exact = math.isclose(ao_actual_hz, config.ao_rate_hz, rel_tol=1e-9) and math.isclose(
            ai_actual_hz, k * ao_actual_hz, rel_tol=1e-9
        )
        if exact:
            return
        divisor = max(1, round(timebase_hz / (k * config.ao_rate_hz)))
        nearest_hz = timebase_hz / (k * divisor)
        raise LimitError(
            f"ao_rate_hz = {config.ao_rate_hz:g} with ai_oversample = {k} is not reachable "
            f"exactly: the board ran AO at {ao_actual_hz:g} Hz and AI at {ai_actual_hz:g} Hz "
            f"(timebase {timebase_hz:g} Hz / integer). Choose ao_rate_hz so that "
            f"timebase / (ai_oversample * ao_rate_hz) is an integer, e.g. {nearest_hz:g} Hz"
        )

    def _read_volts_per_count(self, chan: Any) -> float:
        try:
            coeffs = [float(c) for c in chan.ai_dev_scaling_coeff]
        except (AttributeError, self._nx.errors.DaqError):
            coeffs = []
        if len(coeffs) >= 2 and coeffs[1] > 0:
            return coeffs[1]
        return float(chan.ai_rng_high) / 2.0 ** (float(chan.ai_resolution) - 1.0)

    @staticmethod
    def _check_volts(
        data: np.ndarray,
        channels: tuple[str, ...],
        range_v: float,
        max_out: np.ndarray,
        min_out: np.ndarray,
        what: str,
    ) -> None:
        """LimitError naming the channel and its largest |V| if any sample is outside
        +-range_v or not finite; reductions into preallocated (n_channels,) arrays."""
        np.max(data, axis=1, out=max_out)
        np.min(data, axis=1, out=min_out)
        for i, ch in enumerate(channels):
            hi, lo = float(max_out[i]), float(min_out[i])
            if not (hi <= range_v and lo >= -range_v):  # also catches NaN
                worst = max(abs(hi), abs(lo)) if math.isfinite(hi + lo) else math.nan
                raise LimitError(
                    f"{what} waveform on channel {ch}: max |V| = {worst:g} V is outside the "
                    f"allowed range [-{range_v:g}, {range_v:g}] V (nothing was written)"
                )

    def _is_invalid_task(self, exc: BaseException | None) -> bool:
        errors = getattr(self._nx, "errors", None)
        return (
            errors is not None
            and isinstance(exc, errors.DaqError)
            and exc.error_code == NI_INVALID_TASK
        )

    def _translate(self, exc: Any, action: str) -> DeviceError:
        """Map an nidaqmx DaqError to this package's error tree, keeping NI's message."""
        code = int(getattr(exc, "error_code", 0))
        where = f"{self.name}: {action}"
        if code == NI_SAMPLES_NOT_YET_AVAILABLE:
            return DeviceTimeout(
                f"{where}: samples did not arrive within the timeout (timeout_s = "
                f"{self.timeout_s:g} s beyond the acquisition time). Is the scan started and "
                f"the AO start trigger reaching AI? [NI-DAQmx {code}]"
            )
        if code == NI_SAMPLES_CAN_NOT_YET_BE_WRITTEN:
            return DeviceTimeout(
                f"{where}: the output buffer stayed full past the timeout "
                f"(is the task started?) [NI-DAQmx {code}]"
            )
        if code == NI_SAMPLES_NO_LONGER_AVAILABLE:
            return DeviceError(
                f"{where}: AI samples were lost (the input buffer overflowed before they were "
                f"read): read every frame, or lower the rate [NI-DAQmx {code}]"
            )
        if code in NI_AO_UNDERFLOW_CODES:
            return DeviceError(
                f"{where}: AO underflow: the next galvo frame was not written in time, so the "
                f"board stopped rather than repeat old samples [NI-DAQmx {code}]"
            )
        if code == NI_RESOURCE_RESERVED:
            return DeviceError(
                f"{where}: the channel or the board's AO timing engine is reserved by another "
                "task (most NI boards allow one hardware-timed AO task per device: put pulse "
                "channels on another device, e.g. 'Dev2/ao0', or stop the scan first). "
                f"NI-DAQmx {code}: {exc}"
            )
        return DeviceError(f"{where} failed: NI-DAQmx {code}: {exc}")
