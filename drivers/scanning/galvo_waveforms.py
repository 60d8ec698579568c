"""Galvo-galvo raster geometry: settings, command waveforms and the sample-to-pixel map.

Every frame is `lines + flyback_lines` line periods of `pixels_per_line + turnaround`
AO samples (one AO sample per pixel; the PMT is sampled `ai_oversample` times per AO sample
and a pixel is the mean of those samples).

Galvos lag their command (first-order, tau ~ 50-300 us): in steady state the beam trails a
linear ramp by exactly tau, so the pixel bins are read `line_phase_us` later than the
commanded pixel time (line phase = tau aligns forward and backward lines; hardware.md
section 2). For that delayed read to see the beam on a straight ramp, the command's linear
ramp is extended beyond the imaged pixels: `post` samples after the last pixel (covering the
line phase) and `pre` samples before the first (time for the lag transient of the turnaround
to die out, up to three line phases). Between two ramps a cubic Hermite turnaround joins
position and velocity:

- bidirectional: even lines ramp forward, odd lines backward;
- unidirectional: every line ramps forward and the turnaround is the flyback.

The slow (y) galvo holds each imaged line's y during its ramp and moves to the next line
(raised cosine) during the turnaround; after the last imaged line it glides back to the
first line over the flyback lines.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from drivers.errors import LimitError


@dataclass(frozen=True)
class GalvoScanSettings:
    """Settings of a galvo-galvo raster scan (units in the names).

    fov_um: (x, y) field of view at zoom 1; the imaged field is fov_um / zoom.
    sample_rate_hz: the PMT (AI) sample rate; AO runs at sample_rate_hz / ai_oversample,
        one AO sample per pixel, so the pixel dwell is ai_oversample / sample_rate_hz.
    um_per_volt: galvo calibration (x, y) of the scan path, micrometres per volt.
    max_volts: largest |command| the galvo amplifiers accept.
    max_ao_rate_hz: fastest galvo update the board sustains reliably.
    """

    fov_um: tuple[float, float] = (300.0, 300.0)
    zoom: float = 1.0
    pixels_per_line: int = 256
    lines: int = 256
    sample_rate_hz: float = 2.0e6
    ai_oversample: int = 4
    bidirectional: bool = True
    turnaround_us: float = 400.0
    flyback_lines: int = 2
    line_phase_us: float = 50.0
    park_um: tuple[float, float] = (0.0, 0.0)
    um_per_volt: tuple[float, float] = (30.0, 30.0)
    max_volts: float = 10.0
    max_ao_rate_hz: float = 1.0e6

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GalvoRaster:
    """A validated raster: waveforms and pixel map derived from GalvoScanSettings."""

    settings: GalvoScanSettings
    ao_rate_hz: float
    turnaround_samples: int
    line_samples: int  # AO samples per line period
    total_lines: int  # lines + flyback lines (even for bidirectional scans)
    frame_samples: int  # AO samples per frame
    line_phase_samples: int  # AI samples
    field_um: tuple[float, float]  # (x, y) imaged field
    ramp_pre_samples: int = 0  # linear ramp before the first pixel (AO samples)
    ramp_post_samples: int = 0  # linear ramp after the last pixel (AO samples)

    @property
    def frame_rate_hz(self) -> float:
        return self.ao_rate_hz / self.frame_samples

    @property
    def pixel_size_um(self) -> tuple[float, float]:
        s = self.settings
        return (self.field_um[1] / s.lines, self.field_um[0] / s.pixels_per_line)

    @property
    def pixel_dwell_s(self) -> float:
        return 1.0 / self.ao_rate_hz

    @property
    def line_rate_hz(self) -> float:
        return self.ao_rate_hz / self.line_samples


def plan_raster(s: GalvoScanSettings) -> GalvoRaster:
    """Validate settings and derive the raster; every impossible setting raises LimitError
    naming the setting, its value and what would work."""
    if s.pixels_per_line < 2 or s.lines < 1:
        raise LimitError(
            f"pixels_per_line = {s.pixels_per_line} and lines = {s.lines}: need at "
            "least 2 pixels per line and 1 line"
        )
    if s.ai_oversample < 1 or int(s.ai_oversample) != s.ai_oversample:
        raise LimitError(
            f"ai_oversample = {s.ai_oversample} must be a positive integer (AI samples per pixel)"
        )
    if s.sample_rate_hz <= 0:
        raise LimitError(f"sample_rate_hz = {s.sample_rate_hz:g} must be positive")
    ao_rate = s.sample_rate_hz / s.ai_oversample
    if ao_rate > s.max_ao_rate_hz:
        raise LimitError(
            f"sample_rate_hz / ai_oversample = {ao_rate:g} Hz galvo update rate exceeds "
            f"max_ao_rate_hz = {s.max_ao_rate_hz:g} Hz: raise ai_oversample to at least "
            f"{math.ceil(s.sample_rate_hz / s.max_ao_rate_hz)} or lower sample_rate_hz"
        )
    if s.zoom <= 0:
        raise LimitError(f"zoom = {s.zoom:g} must be positive")
    if min(s.fov_um) <= 0:
        raise LimitError(f"fov_um = {s.fov_um} must be positive in x and y")
    field = (s.fov_um[0] / s.zoom, s.fov_um[1] / s.zoom)
    turnaround = int(round(s.turnaround_us * 1e-6 * ao_rate))
    if turnaround < 2:
        raise LimitError(
            f"turnaround_us = {s.turnaround_us:g} us is shorter than two galvo "
            f"updates at {ao_rate:g} Hz: use at least {2e6 / ao_rate:g} us"
        )
    if s.flyback_lines < 1:
        raise LimitError(
            f"flyback_lines = {s.flyback_lines}: the slow galvo needs at least one "
            "line period to return to the top of the frame"
        )
    phase = int(round(s.line_phase_us * 1e-6 * s.sample_rate_hz))
    if not 0 <= phase <= turnaround * s.ai_oversample:
        raise LimitError(
            f"line_phase_us = {s.line_phase_us:g} must be within [0, turnaround_us = "
            f"{s.turnaround_us:g}] (the pixel map may only be delayed into the turnaround)"
        )
    total_lines = s.lines + s.flyback_lines
    if s.bidirectional and total_lines % 2:
        total_lines += 1  # a bidirectional frame must end where the next one starts
    line_samples = s.pixels_per_line + turnaround
    post = -(-phase // s.ai_oversample)  # ceil: AO samples covering the line phase
    pre = max(0, min(3 * max(post, 1), (turnaround - post) // 2))
    if turnaround - post - pre < 2:
        raise LimitError(
            f"turnaround_us = {s.turnaround_us:g} us leaves no time to reverse the "
            f"galvo after a line phase of {s.line_phase_us:g} us: lengthen "
            "turnaround_us or shorten line_phase_us"
        )
    raster = GalvoRaster(
        settings=s,
        ao_rate_hz=ao_rate,
        turnaround_samples=turnaround,
        line_samples=line_samples,
        total_lines=total_lines,
        frame_samples=line_samples * total_lines,
        line_phase_samples=phase,
        field_um=field,
        ramp_pre_samples=pre,
        ramp_post_samples=post,
    )
    for axis, upv in (("x", s.um_per_volt[0]), ("y", s.um_per_volt[1])):
        if upv <= 0:
            raise LimitError(f"um_per_volt[{axis}] = {upv:g} must be positive")
    waveform = build_waveforms(raster)
    for i, (axis, park_um, upv) in enumerate(
        (("x", s.park_um[0], s.um_per_volt[0]), ("y", s.park_um[1], s.um_per_volt[1]))
    ):
        peak_v = float(np.abs(waveform[i]).max())
        if peak_v > s.max_volts:
            raise LimitError(
                f"the {axis} scan needs +-{peak_v:.2f} V (field {field} um at zoom "
                f"{s.zoom:g}, including turnaround overshoot) but max_volts = {s.max_volts:g} V: "
                f"increase zoom to at least {s.zoom * peak_v / s.max_volts:.3f} or shrink fov_um"
            )
        if abs(park_um) / upv > s.max_volts:
            raise LimitError(
                f"park_um {axis} = {park_um:g} um needs {park_um / upv:.2f} V, beyond "
                f"max_volts = {s.max_volts:g} V"
            )
    return raster


def pixel_centres_um(n: int, field_um: float) -> np.ndarray:
    """Centres of n equal pixels spanning a field centred on 0."""
    return (np.arange(n) + 0.5 - n / 2) * (field_um / n)


def build_waveforms(r: GalvoRaster) -> np.ndarray:
    """Galvo commands for one frame, shape (2, frame_samples): row 0 x volts, row 1 y volts."""
    s = r.settings
    ppl, n_lines, L, N = s.pixels_per_line, r.total_lines, r.line_samples, r.frame_samples
    pre, post = r.ramp_pre_samples, r.ramp_post_samples
    xs = pixel_centres_um(ppl, r.field_um[0])
    step = r.field_um[0] / ppl  # um per AO sample on the ramp
    x = np.empty(N)
    y = np.empty(N)

    def direction(line: int) -> float:
        return 1.0 if (line % 2 == 0 or not s.bidirectional) else -1.0

    def ramp_x(line: int, i: np.ndarray) -> np.ndarray:
        """x on line `line`'s linear ramp at sample offsets i from its first pixel."""
        d = direction(line)
        return (xs[0] if d > 0 else xs[-1]) + d * step * i

    for line in range(n_lines):
        i = np.arange(-pre, ppl + post)
        x[(line * L + i) % N] = ramp_x(line, i)
        # Hermite turnaround from the end of this ramp to the start of the next line's ramp
        a, b = ppl + post - 1, L - pre  # sample offsets from this line's first pixel
        nxt = (line + 1) % n_lines
        p0, m0 = ramp_x(line, np.array([a]))[0], direction(line) * step
        p1, m1 = ramp_x(nxt, np.array([-pre]))[0], direction(nxt) * step
        span = b - a
        u = np.arange(1, span) / span
        h00, h10 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u
        h01, h11 = -2 * u**3 + 3 * u**2, u**3 - u**2
        x[(line * L + a + 1 + np.arange(span - 1)) % N] = (
            h00 * p0 + h10 * span * m0 + h01 * p1 + h11 * span * m1
        )

    ys = pixel_centres_um(s.lines, r.field_um[1])
    for line in range(s.lines):
        i = np.arange(-pre, ppl + post)
        y[(line * L + i) % N] = ys[line]
    for line in range(s.lines - 1):
        a, b = ppl + post - 1, L - pre
        u = np.arange(1, b - a) / (b - a)
        y[line * L + a + 1 + np.arange(b - a - 1)] = ys[line] + (
            ys[line + 1] - ys[line]
        ) * _raised_cosine(u)
    # glide back from the last imaged line to the first over the flyback lines
    glide_start = (s.lines - 1) * L + ppl + post
    glide_end = N - pre  # where line 0's ramp (of the next frame) begins
    u = np.arange(1, glide_end - glide_start + 1) / (glide_end - glide_start + 1)
    y[glide_start:glide_end] = ys[-1] + (ys[0] - ys[-1]) * _raised_cosine(u)
    return np.vstack([x / s.um_per_volt[0], y / s.um_per_volt[1]])


def _raised_cosine(u: np.ndarray | float) -> np.ndarray | float:
    return 0.5 - 0.5 * np.cos(np.pi * np.asarray(u))


def pixel_sample_starts(r: GalvoRaster) -> np.ndarray:
    """First AI sample of every pixel, shape (lines, pixels_per_line), in frame order (left to
    right in the image, whatever the scan direction), including the line phase delay."""
    s = r.settings
    k = s.ai_oversample
    starts = np.empty((s.lines, s.pixels_per_line), dtype=np.int64)
    cols = np.arange(s.pixels_per_line)
    for line in range(s.lines):
        ao0 = line * r.line_samples
        forward = (line % 2 == 0) or not s.bidirectional
        ao_index = ao0 + (cols if forward else s.pixels_per_line - 1 - cols)
        starts[line] = ao_index * k + r.line_phase_samples
    return starts
