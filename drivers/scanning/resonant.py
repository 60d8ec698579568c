"""Resonant-galvo scanner: the Scanner role on a digitizer and the resonant timing I/O.

The resonant mirror sweeps x at its own frequency f; its controller's line clock (one edge
per period) triggers a digitizer record per period and is counted to make the frame clock;
the slow galvo plays a finite waveform (a linear ramp over the imaged lines, a cosine
flyback) restarted by every frame-clock pulse (drivers/daq/resonant_contract.py).

    frame = lines + flyback lines; bidirectional: two lines (forward, backward) per period,
            unidirectional: one line (forward) per period
    flyback lines = ceil(flyback_ms * line rate), then rounded up to whole periods
    frame rate = f * lines per period / (lines + flyback lines)

ScanImage golden case (hardware.md section 2): 7925.52 Hz, bidirectional, 512 lines, 1 ms
flyback -> 16 flyback lines, 528 lines of 63.09 us = 33.31 ms -> 30.02 Hz.

Frequency, measured, not assumed: f is measured from the line clock when the scanner opens
and again at every start (after the mirror has settled: two consecutive measurements agree);
the frame rate, the pixel map and the slow-galvo ramp follow the measured value. During
acquisition the period of every line is read from the counter with every frame: the frame's
device time is the sum of the periods before it (the line clock is the device clock), and
the pixel map is rebuilt when the mirror drifts far enough to move the last pixel edge by a
quarter sample. A frequency outside the tolerance around `resonant_hz` stops the run with
DeviceError; a line clock that does not arrive raises DeviceTimeout (from open/start, or from
read_frame, which then leaves the caller's frame untouched so the frames so far are kept).

Zoom: the imaged field is fov_um / zoom; the mirror amplitude (centre to turnaround) is
field_x / (2 Fs), commanded as amplitude / resonant_um_per_volt on the controller's
amplitude input. A zoom that needs more than max_amplitude_v is refused (LimitError).

Line phase: how far the mirror lags the line-clock edge (plus every constant delay of the
signal chain); set per zoom from a calibration (analysis/line_phase.py) and changeable
between frames with `set_line_phase_us` (online tracking).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from drivers.daq.resonant_contract import (
    Digitizer,
    DigitizerConfig,
    ResonantIOConfig,
    ResonantScanIO,
)
from drivers.errors import DeviceError, DeviceStateError, LimitError
from drivers.roles import FrameInfo, Scanner
from drivers.scanning.sinusoidal import (
    LineMap,
    bin_frame,
    build_line_map,
    temporal_fill_fraction,
)

#: time a digitizer needs between the end of a record and the next trigger
DIGITIZER_REARM_S = 1e-6
#: time a retriggerable finite AO needs between the end of its waveform and the next trigger
SLOW_GALVO_REARM_S = 20e-6
#: the slow-galvo waveform is this much shorter than the measured frame, so that a mirror
#: running this much faster still lets it finish before the next frame clock
SLOW_GALVO_DRIFT_MARGIN = 1e-3
#: the slow galvo's ramp starts this many galvo lags before the first line's pixels and ends
#: this many after the last: margin for a galvo that is not exactly the first-order model
RUN_UP_LAGS = 1.0
RUN_OUT_LAGS = 1.0
#: rebuild the pixel map when drift would move the last pixel edge by this many samples
REMAP_SAMPLES = 0.25


@dataclass(frozen=True)
class ResonantScanSettings:
    """Settings of a resonant-galvo raster (units in the names).

    resonant_hz: the mirror's nominal frequency (datasheet or last measurement); the
        measured frequency must lie within +-resonant_tolerance (fraction) of it.
    fov_um: (x, y) imaged field at zoom 1 (x along the resonant mirror).
    fill_fraction: spatial fill fraction Fs, the part of the mirror's +-amplitude imaged;
        the temporal fill fraction is Ft = (2/pi) asin(Fs).
    flyback_ms: time the slow galvo gets to return (rounded up to whole lines).
    sample_rate_hz: digitizer sample rate.
    line_phase_us: delay of the mirror behind the line-clock edge.
    resonant_um_per_volt: mirror amplitude (centre to turnaround, um in the specimen) per
        volt on the controller's amplitude input; max_amplitude_v: that input's maximum.
    galvo_um_per_volt / max_galvo_volts: slow (y) galvo calibration and limit.
    galvo_rate_hz: slow-galvo AO sample rate; galvo_lag_us: the slow galvo's lag (first-order
        time constant) behind its command: the waveform leads the beam by it, and starts
        early enough for the galvo to settle onto its ramp before the first line.
    park_um: slow-galvo park position (y).
    measure_periods: line-clock periods averaged per frequency measurement.
    settle_timeout_s: longest wait for the mirror to settle after it is switched on.
    """

    resonant_hz: float = 7910.0
    resonant_tolerance: float = 0.01
    fov_um: tuple[float, float] = (500.0, 500.0)
    zoom: float = 1.0
    fill_fraction: float = 0.9
    pixels_per_line: int = 512
    lines: int = 512
    bidirectional: bool = True
    flyback_ms: float = 1.0
    sample_rate_hz: float = 100e6
    line_phase_us: float = 0.0
    resonant_um_per_volt: float = 62.5
    max_amplitude_v: float = 5.0
    galvo_um_per_volt: float = 50.0
    max_galvo_volts: float = 10.0
    galvo_rate_hz: float = 200e3
    galvo_lag_us: float = 100.0
    park_um: float = 0.0
    measure_periods: int = 1000
    settle_timeout_s: float = 5.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ResonantRaster:
    """A validated resonant raster for one mirror frequency (nominal or measured)."""

    settings: ResonantScanSettings
    resonant_hz: float
    lines_per_period: int
    flyback_lines: int  # including the rounding to whole periods
    periods_per_frame: int
    samples_per_record: int
    amplitude_um: float
    amplitude_v: float
    field_um: tuple[float, float]
    line_map: LineMap
    slow_galvo_samples: int
    slow_galvo_lead_periods: int  # the galvo's frame clock leads the imaged frame by these
    slow_galvo_ramp_s: tuple[float, float]  # beam ramp start, end (from the frame clock)
    slow_galvo_first_centre_s: float  # centre of the first line's pixels (from the clock)

    @property
    def total_lines(self) -> int:
        return self.settings.lines + self.flyback_lines

    @property
    def line_rate_hz(self) -> float:
        return self.resonant_hz * self.lines_per_period

    @property
    def frame_rate_hz(self) -> float:
        return self.line_rate_hz / self.total_lines

    @property
    def pixel_size_um(self) -> tuple[float, float]:
        s = self.settings
        return (self.field_um[1] / s.lines, self.field_um[0] / s.pixels_per_line)

    @property
    def temporal_fill_fraction(self) -> float:
        return temporal_fill_fraction(self.settings.fill_fraction)

    @property
    def frequency_range_hz(self) -> tuple[float, float]:
        s = self.settings
        return (
            s.resonant_hz * (1 - s.resonant_tolerance),
            s.resonant_hz * (1 + s.resonant_tolerance),
        )


def plan_resonant(s: ResonantScanSettings, resonant_hz: float | None = None) -> ResonantRaster:
    """Validate settings for a mirror at `resonant_hz` (default: the nominal frequency).

    Every impossible setting raises LimitError naming it, its value and what would work.
    """
    f = s.resonant_hz if resonant_hz is None else float(resonant_hz)
    if not (s.resonant_hz > 0 and math.isfinite(s.resonant_hz)):
        raise LimitError(f"resonant_hz = {s.resonant_hz!r} must be a positive frequency")
    if not (0.0 < s.resonant_tolerance < 0.2):
        raise LimitError(f"resonant_tolerance = {s.resonant_tolerance:g} must be in (0, 0.2)")
    if not (0.0 < s.fill_fraction < 1.0):
        raise LimitError(
            f"fill_fraction = {s.fill_fraction:g} (spatial) must be inside (0, 1): at 1 the "
            "pixels would reach the turnarounds, where the mirror stops"
        )
    if s.pixels_per_line < 2 or s.lines < 1:
        raise LimitError(
            f"pixels_per_line = {s.pixels_per_line} and lines = {s.lines}: need at least 2 "
            "pixels per line and 1 line"
        )
    if not s.zoom > 0:
        raise LimitError(f"zoom = {s.zoom:g} must be positive")
    if not min(s.fov_um) > 0:
        raise LimitError(f"fov_um = {s.fov_um} must be positive in x and y")
    if not s.sample_rate_hz > 0:
        raise LimitError(f"sample_rate_hz = {s.sample_rate_hz:g} must be positive")
    if not (0.0 <= s.flyback_ms <= 1000.0):
        raise LimitError(f"flyback_ms = {s.flyback_ms:g} must be in [0, 1000] ms")
    if s.resonant_um_per_volt <= 0 or s.galvo_um_per_volt <= 0:
        raise LimitError(
            f"resonant_um_per_volt = {s.resonant_um_per_volt:g} and galvo_um_per_volt = "
            f"{s.galvo_um_per_volt:g} must be positive"
        )
    if s.measure_periods < 10:
        raise LimitError(f"measure_periods = {s.measure_periods} must be at least 10")
    f_lo, f_hi = (
        s.resonant_hz * (1 - s.resonant_tolerance),
        s.resonant_hz * (1 + s.resonant_tolerance),
    )
    if not (f_lo <= f <= f_hi):
        raise DeviceError(
            f"the mirror runs at {f:.2f} Hz, outside resonant_hz = {s.resonant_hz:g} Hz "
            f"+-{s.resonant_tolerance:.1%}: set resonant_hz to the scanner's frequency"
        )

    field = (s.fov_um[0] / s.zoom, s.fov_um[1] / s.zoom)
    amplitude_um = field[0] / (2.0 * s.fill_fraction)
    amplitude_v = amplitude_um / s.resonant_um_per_volt
    if amplitude_v > s.max_amplitude_v:
        min_zoom = s.zoom * amplitude_v / s.max_amplitude_v
        raise LimitError(
            f"zoom = {s.zoom:g} is beyond the scan range: a {field[0]:g} um field at "
            f"fill_fraction {s.fill_fraction:g} needs a resonant amplitude of {amplitude_v:.2f} V "
            f"but max_amplitude_v = {s.max_amplitude_v:g} V; use zoom >= {min_zoom:.3f}"
        )
    galvo_v = field[1] / 2.0 / s.galvo_um_per_volt
    if galvo_v > s.max_galvo_volts:
        raise LimitError(
            f"zoom = {s.zoom:g} is beyond the slow galvo's range: a {field[1]:g} um field needs "
            f"+-{galvo_v:.2f} V but max_galvo_volts = {s.max_galvo_volts:g} V; use zoom >= "
            f"{s.zoom * galvo_v / s.max_galvo_volts:.3f}"
        )
    if abs(s.park_um) / s.galvo_um_per_volt > s.max_galvo_volts:
        raise LimitError(
            f"park_um = {s.park_um:g} um needs {s.park_um / s.galvo_um_per_volt:.2f} V, beyond "
            f"max_galvo_volts = {s.max_galvo_volts:g} V"
        )

    per_period = 2 if s.bidirectional else 1
    flyback = max(1, math.ceil(s.flyback_ms * 1e-3 * f * per_period - 1e-9))
    total = s.lines + flyback
    if total % per_period:
        flyback += 1  # a bidirectional frame is a whole number of mirror periods
        total += 1
    periods = total // per_period

    # the record runs from the edge to just before the next edge of the fastest mirror
    samples_per_record = int(math.floor((1.0 / f_hi - DIGITIZER_REARM_S) * s.sample_rate_hz))
    phase_s = s.line_phase_us * 1e-6
    # the map follows the mirror within the tolerance: every pixel must keep a sample at the
    # fastest mirror, and the last pixel must stay inside the record at the slowest
    build_line_map(
        s.pixels_per_line, s.fill_fraction, f_hi, s.sample_rate_hz, phase_s, s.bidirectional
    )
    line_map = build_line_map(
        s.pixels_per_line, s.fill_fraction, f, s.sample_rate_hz, phase_s, s.bidirectional
    )
    slowest = build_line_map(
        s.pixels_per_line, s.fill_fraction, f_lo, s.sample_rate_hz, phase_s, s.bidirectional
    )
    if slowest.end_sample > samples_per_record:
        ft = temporal_fill_fraction(s.fill_fraction)
        end_fraction = (3.0 + ft) / 4.0 if s.bidirectional else (1.0 + ft) / 4.0
        room_us = ((1.0 / f_hi - DIGITIZER_REARM_S) - end_fraction / f_lo) * 1e6
        raise LimitError(
            f"line_phase_us = {s.line_phase_us:g} us does not fit in a record: with "
            f"fill_fraction {s.fill_fraction:g} and resonant_tolerance "
            f"{s.resonant_tolerance:g} the phase must be at most {room_us:.2f} us; lower the "
            "fill fraction or the tolerance, or delay the digitizer trigger"
        )

    # slow galvo (see slow_galvo_waveform): the waveform starts `lead` periods before the
    # frame, so the galvo runs up onto its ramp and the waveform's end falls in the flyback
    frame_s = periods / f
    waveform_s = frame_s * (1.0 - SLOW_GALVO_DRIFT_MARGIN) - SLOW_GALVO_REARM_S
    galvo_samples = int(math.floor(waveform_s * s.galvo_rate_hz))
    if galvo_samples < 2 * total:
        raise LimitError(
            f"galvo_rate_hz = {s.galvo_rate_hz:g} Hz gives {galvo_samples} slow-galvo samples "
            f"for {total} lines; use at least {2 * total / waveform_s:.0f} Hz"
        )
    lag_s = s.galvo_lag_us * 1e-6
    if not 0.0 <= lag_s < frame_s:
        raise LimitError(f"galvo_lag_us = {s.galvo_lag_us:g} must be in [0, one frame)")
    line_s = 1.0 / (f * per_period)
    # galvo time (from the frame clock): the first line's pixels are centred at first_centre_s
    # and span +-half_window (Ft / (4 f)); the ramp starts after the frame clock
    half_window_s = temporal_fill_fraction(s.fill_fraction) * 0.25 / f
    run_up_s = RUN_UP_LAGS * lag_s + half_window_s
    lead = max(0, math.ceil((run_up_s - phase_s - 0.25 / f) * f - 1e-9))
    first_centre_s = lead / f + phase_s + 0.25 / f
    ramp_start_s = first_centre_s - run_up_s
    ramp_end_s = first_centre_s + (s.lines - 1) * line_s + half_window_s + RUN_OUT_LAGS * lag_s
    return_s = waveform_s - ramp_end_s
    if return_s < max(lag_s, 2.0 * line_s):
        needed_ms = s.flyback_ms + (max(lag_s, 2.0 * line_s) - return_s) * 1e3
        raise LimitError(
            f"flyback_ms = {s.flyback_ms:g} is too short for a slow galvo with galvo_lag_us = "
            f"{s.galvo_lag_us:g}: its ramp needs {RUN_UP_LAGS:g} lag(s) before the first "
            f"line, {RUN_OUT_LAGS:g} after the last and at least one to return; use "
            f"flyback_ms >= {needed_ms:.3f}"
        )
    return ResonantRaster(
        settings=s,
        resonant_hz=f,
        lines_per_period=per_period,
        flyback_lines=flyback,
        periods_per_frame=periods,
        samples_per_record=samples_per_record,
        amplitude_um=amplitude_um,
        amplitude_v=amplitude_v,
        field_um=field,
        line_map=line_map,
        slow_galvo_samples=galvo_samples,
        slow_galvo_lead_periods=lead,
        slow_galvo_ramp_s=(ramp_start_s, ramp_end_s),
        slow_galvo_first_centre_s=first_centre_s,
    )


def slow_galvo_waveform(r: ResonantRaster) -> np.ndarray:
    """Slow-galvo volts for one frame, played from its frame-clock edge at galvo_rate_hz.

    Galvo time g runs from the frame-clock edge, `lead` periods before the frame's first
    line. The beam's y, p(g), is a linear ramp through the centres of the imaged lines at the
    times their pixels are read (line l's window is centred at lead / f + phase + 1/(4f) +
    l / line rate), starting RUN_UP_LAGS galvo lags before the first line's pixels and
    ending RUN_OUT_LAGS after the last (margin for a galvo that is not exactly first-order);
    then a raised cosine returns it to the ramp's start by the end of the waveform, where it
    stays until the next ramp (the output holds its last value until the next frame clock).

    The command inverts the galvo model (first order, time constant galvo_lag_us, driven by
    a zero-order-held output): holding c_i for one sample of length dt moves the beam from
    y_i to y_i+1 = c_i + (y_i - c_i) d with d = exp(-dt / lag), so c_i = (p(g_i+1) - d p(g_i))
    / (1 - d) puts the beam exactly on p at every sample boundary. On a ramp this is the
    familiar lead by one lag; on the return it is what keeps the return from ringing into
    the next frame. Without a lag, each sample aims at the middle of its hold.
    """
    s = r.settings
    line_s = 1.0 / r.line_rate_hz
    lag_s = s.galvo_lag_us * 1e-6
    pitch_um = r.field_um[1] / s.lines
    y_first = -r.field_um[1] / 2.0 + pitch_um / 2.0
    frame_s = r.periods_per_frame / r.resonant_hz
    first_centre_s = r.slow_galvo_first_centre_s
    ramp_start_s, ramp_end_s = r.slow_galvo_ramp_s
    waveform_end_s = r.slow_galvo_samples / s.galvo_rate_hz
    slope = pitch_um / line_s
    y_start = y_first + (ramp_start_s - first_centre_s) * slope
    y_end = y_first + (ramp_end_s - first_centre_s) * slope

    def beam_y(t_s: np.ndarray) -> np.ndarray:
        t = np.mod(t_s, frame_s)
        back = np.clip((t - ramp_end_s) / (waveform_end_s - ramp_end_s), 0.0, 1.0)
        flyback = y_end + (y_start - y_end) * 0.5 * (1.0 - np.cos(np.pi * back))
        ramp = y_first + (t - first_centre_s) * slope
        on_ramp = (t >= ramp_start_s) & (t <= ramp_end_s)
        return np.where(on_ramp, ramp, np.where(t > ramp_end_s, flyback, y_start))

    dt = 1.0 / s.galvo_rate_hz
    edges = np.arange(r.slow_galvo_samples + 1) * dt
    if lag_s > 0:
        d = math.exp(-dt / lag_s)
        p = beam_y(edges)
        command_um = (p[1:] - d * p[:-1]) / (1.0 - d)
    else:
        command_um = beam_y(edges[:-1] + 0.5 * dt)
    volts = command_um / s.galvo_um_per_volt
    peak = float(np.abs(volts).max())
    if peak > s.max_galvo_volts:
        raise LimitError(
            f"the slow-galvo command reaches {peak:.2f} V (field plus the lead its lag needs "
            f"on the flyback), beyond max_galvo_volts = {s.max_galvo_volts:g} V: increase zoom "
            "or flyback_ms, or shrink fov_um"
        )
    return volts


class ResonantGalvoScanner(Scanner):
    """Resonant x, galvo y; one PMT channel per digitizer channel (see the module doc).

    Settings are validated at construction with the nominal frequency (LimitError before any
    device is touched). The scanner opens and closes its digitizer and I/O board.
    """

    def __init__(
        self,
        digitizer: Digitizer,
        io: ResonantScanIO,
        settings: ResonantScanSettings,
        *,
        pmt_channels: tuple[str, ...] = ("ai0",),
        ai_range_v: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(name or "resonant-galvo scanner")
        self.digitizer = digitizer
        self.io = io
        self._raster = plan_resonant(settings)
        self.pmt_channels = tuple(pmt_channels)
        if not self.pmt_channels:
            raise LimitError("pmt_channels is empty: give at least one digitizer channel")
        self.ai_range_v = ai_range_v
        r = self._raster
        self._raw = np.zeros(
            (len(self.pmt_channels), r.periods_per_frame, r.samples_per_record), np.int16
        )
        self._periods_s = np.zeros(r.periods_per_frame)
        self._map_lock = threading.Lock()
        self._line_map: LineMap = r.line_map
        self._line_phase_us = settings.line_phase_us
        self._line_phase_log: list[dict[str, float]] = []
        self._running = False
        self._frame_index = 0
        self._elapsed_s = 0.0
        self._amplitude_on = False
        self._measured_hz: float | None = None
        self._tracked_hz: float | None = None
        self._tracked_range_hz: list[float] = []

    # -- Scanner role ----------------------------------------------------------------------
    @property
    def settings(self) -> ResonantScanSettings:
        return self._raster.settings

    @property
    def raster(self) -> ResonantRaster:
        return self._raster

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.settings.lines, self.settings.pixels_per_line)

    @property
    def n_channels(self) -> int:
        return len(self.pmt_channels)

    @property
    def frame_rate_hz(self) -> float:
        """From the frequency measured at the last open/start (nominal before that)."""
        return self._raster.frame_rate_hz

    @property
    def pixel_size_um(self) -> tuple[float, float]:
        return self._raster.pixel_size_um

    @property
    def measured_resonant_hz(self) -> float | None:
        """The mirror frequency measured before the acquisition (None before open)."""
        return self._measured_hz

    @property
    def tracked_resonant_hz(self) -> float | None:
        """The mirror frequency over the last frame read (None before the first frame)."""
        return self._tracked_hz

    @property
    def line_phase_us(self) -> float:
        return self._line_phase_us

    @property
    def line_map(self) -> LineMap:
        return self._line_map

    def start(self) -> None:
        self.require_open()
        if self._running:
            raise DeviceStateError(f"{self.name} is already scanning")
        self._switch_on_and_measure()
        r = self._raster
        s = r.settings
        self.io.configure_scan(
            ResonantIOConfig(
                periods_per_frame=r.periods_per_frame,
                slow_galvo_rate_hz=s.galvo_rate_hz,
                slow_galvo_samples=r.slow_galvo_samples,
                slow_galvo_range_v=s.max_galvo_volts,
                slow_galvo_lead_periods=r.slow_galvo_lead_periods,
                min_line_clock_hz=r.frequency_range_hz[0],
                max_line_clock_hz=r.frequency_range_hz[1],
            )
        )
        self.io.write_slow_galvo(slow_galvo_waveform(r))
        self.digitizer.configure(
            DigitizerConfig(
                channels=self.pmt_channels,
                sample_rate_hz=s.sample_rate_hz,
                samples_per_record=r.samples_per_record,
                records_per_read=r.periods_per_frame,
                range_v=self.ai_range_v,
                skip_records=r.slow_galvo_lead_periods,
            )
        )
        actual = self.digitizer.sample_rate_hz
        if not math.isclose(actual, s.sample_rate_hz, rel_tol=1e-9):
            raise LimitError(
                f"sample_rate_hz = {s.sample_rate_hz:g} Hz is not available on "
                f"{self.digitizer.name}: it runs at {actual:g} Hz; set that rate"
            )
        self._frame_index = 0
        self._elapsed_s = 0.0
        self._tracked_hz = None
        self._tracked_range_hz = []
        self.io.start_scan()
        try:
            self.digitizer.start()
        except BaseException:
            self.io.stop_scan()
            raise
        self._running = True

    def read_frame(self, out: np.ndarray) -> FrameInfo:
        """Acquire the next frame into `out` (int16, (lines, pixels) or (channels, lines,
        pixels)). Raises DeviceTimeout if the line clock stopped (out is left untouched) and
        DeviceError if the mirror drifted outside the frequency tolerance."""
        if not self._running:
            raise DeviceStateError(f"{self.name} is not scanning: call start() first")
        self.digitizer.read_records(self._raw)
        self.io.read_line_periods(self._periods_s)
        frame_s = float(self._periods_s.sum())
        f = self._raster.periods_per_frame / frame_s
        self._follow_frequency(f)
        line_map = self._line_map
        planes = out.reshape((self.n_channels,) + self.frame_shape)
        for c in range(self.n_channels):
            bin_frame(self._raw[c], line_map, planes[c])
        info = FrameInfo(
            index=self._frame_index,
            device_time_s=self._elapsed_s,
            host_time_s=time.monotonic(),
        )
        self._elapsed_s += frame_s
        self._frame_index += 1
        return info

    def stop(self) -> None:
        """Stop acquiring and park the slow galvo (idempotent); the mirror keeps running."""
        if self._running:
            self._running = False
            try:
                self.digitizer.stop()
            finally:
                self.io.stop_scan()
        if self.io.is_open:
            self.io.park_slow_galvo(self.settings.park_um / self.settings.galvo_um_per_volt)

    def set_line_phase_us(self, line_phase_us: float) -> None:
        """Use a new line phase from the next frame on (thread-safe; LimitError if the pixels
        would leave the record)."""
        if not math.isfinite(line_phase_us):
            raise LimitError(f"line_phase_us = {line_phase_us!r} must be finite")
        with self._map_lock:
            settings = replace(self._raster.settings, line_phase_us=float(line_phase_us))
            raster = plan_resonant(settings, self._raster.resonant_hz)  # validates the phase
            self._raster = raster
            self._line_phase_us = float(line_phase_us)
            self._line_map = self._map_for(self._line_map.resonant_hz)
            self._line_phase_log.append(
                {"frame": float(self._frame_index), "line_phase_us": float(line_phase_us)}
            )

    def with_settings(self, **changes: Any) -> ResonantScanSettings:
        """Settings with changes applied and validated (raises LimitError if impossible)."""
        new = replace(self.settings, **changes)
        plan_resonant(new)
        return new

    # -- frequency -------------------------------------------------------------------------
    def _switch_on_and_measure(self) -> None:
        """Mirror on (if off), wait until two measurements agree, re-plan for the measured f."""
        s = self.settings
        if not self._amplitude_on:
            self.io.set_amplitude_v(self._raster.amplitude_v)
            self._amplitude_on = True
        previous = self.io.measure_line_clock_hz(s.measure_periods)
        deadline = time.monotonic() + s.settle_timeout_s
        while True:
            f = self.io.measure_line_clock_hz(s.measure_periods)
            # settled: the change over one measurement is below what the pixel map resolves
            if abs(f - previous) <= 1e-5 * f:
                break
            if time.monotonic() > deadline:
                raise DeviceError(
                    f"the resonant mirror did not settle within settle_timeout_s = "
                    f"{s.settle_timeout_s:g} s (line clock {previous:.3f} -> {f:.3f} Hz)"
                )
            previous = f
        with self._map_lock:
            self._raster = plan_resonant(self._raster.settings, f)
            self._line_map = self._raster.line_map
        self._measured_hz = f

    def _follow_frequency(self, f: float) -> None:
        lo, hi = self._raster.frequency_range_hz
        fastest = self._raster.resonant_hz * (1.0 + SLOW_GALVO_DRIFT_MARGIN)
        if f > fastest:
            raise DeviceError(
                f"the resonant mirror sped up to {f:.2f} Hz, more than "
                f"{SLOW_GALVO_DRIFT_MARGIN:.1%} above the {self._raster.resonant_hz:.2f} Hz "
                "measured at start: the slow galvo's waveform would overrun its next trigger; "
                "the run stops (restart to re-measure)"
            )
        if not (lo <= f <= hi):
            raise DeviceError(
                f"the resonant mirror drifted to {f:.2f} Hz, outside resonant_hz = "
                f"{self.settings.resonant_hz:g} Hz +-{self.settings.resonant_tolerance:.1%}; "
                "the run stops (check the scanner's temperature and amplitude)"
            )
        self._tracked_hz = f
        if self._tracked_range_hz:
            self._tracked_range_hz[0] = min(self._tracked_range_hz[0], f)
            self._tracked_range_hz[1] = max(self._tracked_range_hz[1], f)
        else:
            self._tracked_range_hz = [f, f]
        current = self._line_map
        end_s = current.end_sample / current.sample_rate_hz
        shift = end_s * abs(current.resonant_hz / f - 1.0) * current.sample_rate_hz
        if shift >= REMAP_SAMPLES:
            with self._map_lock:
                self._line_map = self._map_for(f)

    def _map_for(self, resonant_hz: float) -> LineMap:
        s = self._raster.settings
        return build_line_map(
            s.pixels_per_line,
            s.fill_fraction,
            resonant_hz,
            s.sample_rate_hz,
            self._line_phase_us * 1e-6,
            s.bidirectional,
        )

    # -- Device hooks ----------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self.io.open()
            self.digitizer.open()
            self._switch_on_and_measure()
        except BaseException as exc:
            for step in (self._safe, self._close):
                try:
                    step()
                except Exception as cleanup:  # noqa: BLE001 - the original error leads
                    exc.add_note(f"cleaning up after a failed open also failed: {cleanup}")
            raise

    def _close(self) -> None:
        try:
            self.digitizer.close()
        finally:
            self.io.close()

    def _safe(self) -> None:
        """Stop acquiring, park the slow galvo, stop the mirror (amplitude 0 V)."""
        failures: list[BaseException] = []
        for step in (self.stop, self._mirror_off):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - every step is attempted
                failures.append(exc)
        if failures:
            raise DeviceError(f"{self.name}: safe state not fully reached: {failures[0]}") from (
                failures[0]
            )

    def _mirror_off(self) -> None:
        if self.io.is_open:
            self.io.set_amplitude_v(0.0)
        self._amplitude_on = False

    def _snapshot(self) -> dict[str, Any]:
        r = self._raster
        counts = r.line_map.samples_per_pixel()
        return {
            "settings": self.settings.to_dict(),
            "measured_resonant_hz": self._measured_hz,
            "tracked_resonant_hz": self._tracked_hz,
            "tracked_resonant_range_hz": list(self._tracked_range_hz),
            "frame_rate_hz": r.frame_rate_hz,
            "line_rate_hz": r.line_rate_hz,
            "flyback_lines": r.flyback_lines,
            "periods_per_frame": r.periods_per_frame,
            "temporal_fill_fraction": r.temporal_fill_fraction,
            "samples_per_pixel_centre_edge": [int(counts.min()), int(counts.max())],
            "samples_per_record": r.samples_per_record,
            "slow_galvo_lead_periods": r.slow_galvo_lead_periods,
            "slow_galvo_samples": r.slow_galvo_samples,
            "amplitude_um": r.amplitude_um,
            "amplitude_v": r.amplitude_v,
            "field_um": list(r.field_um),
            "pixel_size_um": list(r.pixel_size_um),
            "line_phase_us": self._line_phase_us,
            "line_phase_changes": list(self._line_phase_log),
            "pmt_channels": list(self.pmt_channels),
            "digitizer": self.digitizer.name,
            "io": self.io.name,
        }
