"""Line phase of a bidirectional resonant scan, estimated from the image itself.

Why forward and backward lines disagree. The resonant mirror runs x = -A cos(2 pi f (t - phi))
after each line-clock edge; pixels are read assuming a line phase phi_used. If the mirror
really lags by phi = phi_used + e, a forward-line pixel labelled x shows the specimen at
x - v(x) e and a backward-line pixel at x + v(x) e (v = |dx/dt|): the two half-images are
displaced by 2 v(x) e, a comb that is widest at the centre of the line, where the mirror is
fastest. In the mirror's phase angle u = asin(x / A) (equivalently, in time) the displacement
is uniform: forward lines equal backward lines shifted by 2 omega e (omega = 2 pi f), so the
measured displacement is twice the phase error (hardware.md section 2).

Both estimators therefore first resample every line from its equal-width pixels onto a grid
uniform in u (pixel k's centre is at u_k = asin(c_k), c_k its centre in units of A), then
compare forward rows (even rows: the scan starts each frame with a forward line) with the
mean of the two backward rows around them (same y):

- "search": brute force over shifts s (coarse steps of one centre pixel, then 1/20 pixel
  around the best) minimising the mean |F(u) - B(u - s)| over the overlap, refined by a
  parabola through the three lowest points;
- "correlation": phase correlation of forward against backward rows (cross-power spectrum
  normalised to unit magnitude, summed over rows, inverted with 16x zero-padding, parabolic
  peak), with the rows Hann-windowed.

The phase error is e = s / (2 omega); expressed in centre pixels (the pixel size at the
line centre, 2 Fs / N radians of u) it is omega e N / (2 Fs).

Phase depends on the mirror amplitude (zoom) and temperature: `LinePhaseTable` keeps one
value per zoom and interpolates linearly in amplitude (1 / zoom); `LinePhaseTracker`
re-estimates it online, slowly, from the mean of many frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METHODS = ("search", "correlation")

#: quality below which an estimate is not trusted (featureless or too noisy data). Measured
#: on Poisson noise without structure: search quality ~0.01, correlation peak/RMS 2-4.3 (the
#: largest of a few hundred correlation values); a structured field gives 0.3-0.9 and 7-13.
MIN_QUALITY = {"search": 0.1, "correlation": 6.0}


@dataclass(frozen=True)
class LinePhaseEstimate:
    """The residual phase error of the frames given (add it to the line phase in use).

    error_s: e = (true phase) - (phase used), seconds.
    error_centre_px: the same in centre pixels (half the forward-backward displacement).
    quality: how distinct the optimum is (search: 1 - min cost / median cost; correlation:
        peak height / RMS of the correlation surface); small values mean featureless data.
    """

    error_s: float
    error_centre_px: float
    quality: float
    method: str

    @property
    def error_us(self) -> float:
        return self.error_s * 1e6


def pixel_angles(pixels: int, fill_fraction: float) -> np.ndarray:
    """u_k = asin(c_k): the mirror phase angle (radians from the line centre) at the centre
    of each equal-width pixel, c_k = (k + 1/2) 2 Fs / N - Fs."""
    centres = (np.arange(pixels) + 0.5) * (2.0 * fill_fraction / pixels) - fill_fraction
    return np.arcsin(centres)


def centre_pixel_angle(pixels: int, fill_fraction: float) -> float:
    """Width of a centre pixel in phase angle: 2 Fs / N radians."""
    return 2.0 * fill_fraction / pixels


def _forward_backward(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean frame -> (forward rows, backward rows at the same y), float64."""
    data = np.asarray(frames, dtype=np.float64)
    if data.ndim == 3:
        data = data.mean(axis=0)
    if data.ndim != 2 or data.shape[0] < 4 or data.shape[1] < 8:
        raise ValueError(
            f"frames must be (lines, pixels) or (frames, lines, pixels) with at least 4 lines "
            f"and 8 pixels, got shape {np.shape(frames)}"
        )
    forward = data[2::2]  # rows 2, 4, ...: each has a backward row above and below
    n = min(forward.shape[0], (data.shape[0] - 2) // 2)
    forward = forward[:n]
    backward = 0.5 * (data[1 : 2 * n : 2] + data[3 : 2 * n + 2 : 2])
    return forward, backward


def _to_uniform_angle(rows: np.ndarray, angles: np.ndarray, grid: np.ndarray) -> np.ndarray:
    out = np.empty((rows.shape[0], grid.shape[0]))
    for i in range(rows.shape[0]):
        out[i] = np.interp(grid, angles, rows[i])
    return out


class _FourierShifter:
    """rows(u - s) for any real s (grid steps) by a phase ramp on the rows' spectra.

    Band-limited (sinc) interpolation: unlike linear interpolation it does not smooth the
    shifted rows more at half steps than at whole ones, which would pull a minimum search
    towards whole steps. The shift is circular; callers compare only columns further than
    |s| from the ends.
    """

    def __init__(self, rows: np.ndarray) -> None:
        self.n = rows.shape[1]
        self.spectra = np.fft.rfft(rows, axis=1)
        self.k = np.fft.rfftfreq(self.n) * 2.0 * np.pi  # radians per grid step

    def shifted(self, shift_steps: float) -> np.ndarray:
        ramp = np.exp(-1j * self.k * shift_steps)
        return np.fft.irfft(self.spectra * ramp, self.n, axis=1)


def _search(
    forward: np.ndarray, backward: np.ndarray, max_steps: float, step: float
) -> tuple[float, float]:
    """Shift (grid steps) minimising mean |F(u) - B(u - s)|, and its quality."""

    # the same columns for every shift (a changing overlap would bias the mean)
    margin = math.ceil(max_steps) + 2
    if forward.shape[1] <= 2 * margin + 4:
        raise ValueError(
            f"max_error_px is too large for {forward.shape[1]} pixels per line: lower it"
        )
    core = slice(margin, forward.shape[1] - margin)
    shifter = _FourierShifter(backward)

    def cost(s: float) -> float:
        return float(np.abs(forward[:, core] - shifter.shifted(s)[:, core]).mean())

    coarse = np.arange(-math.floor(max_steps), math.floor(max_steps) + 1, 1.0)
    coarse_cost = np.array([cost(s) for s in coarse])
    best = coarse[int(np.argmin(coarse_cost))]
    fine = best + np.arange(-1.0, 1.0 + step / 2, step)
    fine_cost = np.array([cost(s) for s in fine])
    i = int(np.argmin(fine_cost))
    shift = float(fine[i])
    # least-squares parabola through the costs within half a coarse step of the minimum:
    # steadier than three points on a cost curve roughened by noise
    near = np.abs(fine - shift) <= 0.5
    if near.sum() >= 5:
        a2, a1, _ = np.polyfit(fine[near] - shift, fine_cost[near], 2)
        if a2 > 0:
            shift += float(np.clip(-a1 / (2.0 * a2), -0.5, 0.5))
    median = float(np.median(coarse_cost))
    quality = 1.0 - float(fine_cost[i]) / median if median > 0 else 0.0
    return shift, quality


def _correlation(
    forward: np.ndarray, backward: np.ndarray, max_steps: float, upsample: int = 16
) -> tuple[float, float]:
    """Phase correlation: shift (grid steps) of forward relative to backward, and quality."""
    n = forward.shape[1]
    window = np.hanning(n)
    f = (forward - forward.mean(axis=1, keepdims=True)) * window
    b = (backward - backward.mean(axis=1, keepdims=True)) * window
    f_hat = np.fft.rfft(f, axis=1)
    b_hat = np.fft.rfft(b, axis=1)
    cross = (f_hat * np.conj(b_hat)).sum(axis=0)
    power = (np.abs(f_hat) ** 2).sum(axis=0) * (np.abs(b_hat) ** 2).sum(axis=0)
    magnitude = np.abs(cross)
    coherence2 = np.where(power > 0, magnitude**2 / np.maximum(power, 1e-300), 0.0)
    # phase transform, weighted by gamma^2 / (1 - gamma^2) (Hannan-Thomson / Knapp-Carter
    # maximum-likelihood weighting): frequencies where forward and backward rows agree count,
    # noise-dominated ones do not
    weight = coherence2 / np.maximum(1.0 - coherence2, 1e-6)
    cross = np.where(magnitude > 0, cross / np.maximum(magnitude, 1e-300), 0.0) * weight
    cross[0] = 0.0
    m = n * upsample
    surface = np.fft.irfft(cross, m)
    lags = np.fft.fftfreq(m, d=1.0 / n)  # in grid steps
    allowed = np.abs(lags) <= max_steps
    i = int(np.argmax(np.where(allowed, surface, -np.inf)))
    shift = float(lags[i])
    y0, y1, y2 = surface[i - 1], surface[i], surface[(i + 1) % m]
    denom = y0 - 2.0 * y1 + y2
    if denom < 0:
        shift += 0.5 * (y0 - y2) / denom / upsample
    rms = float(np.sqrt(np.mean(surface**2)))
    quality = float(y1) / rms if rms > 0 else 0.0
    return shift, quality


def estimate_line_phase_error(
    frames: np.ndarray,
    fill_fraction: float,
    resonant_hz: float,
    method: str = "correlation",
    max_error_px: float = 8.0,
) -> LinePhaseEstimate:
    """Residual line-phase error of bidirectional frames (see the module doc).

    frames: (lines, pixels) or (n, lines, pixels), row 0 a forward line, all taken with one
    line phase; several frames are averaged first. max_error_px: the largest |error| looked
    for, in centre pixels.
    """
    if method not in METHODS:
        raise ValueError(f"method = {method!r} must be one of {METHODS}")
    if not (0.0 < fill_fraction < 1.0):
        raise ValueError(f"fill_fraction = {fill_fraction!r} must be inside (0, 1)")
    if not (resonant_hz > 0 and math.isfinite(resonant_hz)):
        raise ValueError(f"resonant_hz = {resonant_hz!r} must be a positive frequency")
    if not max_error_px > 0:
        raise ValueError(f"max_error_px = {max_error_px!r} must be positive")
    forward, backward = _forward_backward(frames)
    pixels = forward.shape[1]
    angles = pixel_angles(pixels, fill_fraction)
    grid = np.linspace(angles[0], angles[-1], pixels)
    step_rad = grid[1] - grid[0]
    centre_rad = centre_pixel_angle(pixels, fill_fraction)
    f_u = _to_uniform_angle(forward, angles, grid)
    b_u = _to_uniform_angle(backward, angles, grid)
    max_steps = 2.0 * max_error_px * centre_rad / step_rad  # displacement is twice the error
    if method == "search":
        shift_steps, quality = _search(f_u, b_u, max_steps, step=0.05 * centre_rad / step_rad)
    else:
        shift_steps, quality = _correlation(f_u, b_u, max_steps)
    shift_rad = shift_steps * step_rad
    omega = 2.0 * math.pi * resonant_hz
    error_s = shift_rad / (2.0 * omega)
    return LinePhaseEstimate(
        error_s=error_s,
        error_centre_px=shift_rad / (2.0 * centre_rad),
        quality=quality,
        method=method,
    )


@dataclass(frozen=True)
class LinePhaseTable:
    """Calibrated line phase per zoom, interpolated linearly in mirror amplitude (1 / zoom).

    Outside the calibrated zooms the nearest end value holds (no extrapolation).
    """

    zooms: tuple[float, ...] = ()
    phases_us: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.zooms) != len(self.phases_us):
            raise ValueError(
                f"zooms ({len(self.zooms)}) and phases_us ({len(self.phases_us)}) must have the "
                "same length"
            )
        for z in self.zooms:
            if not (math.isfinite(z) and z > 0):
                raise ValueError(f"zoom {z!r} in the line-phase table must be positive")
        if len(set(self.zooms)) != len(self.zooms):
            raise ValueError(f"zooms {self.zooms} contain a duplicate")
        for p in self.phases_us:
            if not math.isfinite(p):
                raise ValueError(f"line phase {p!r} us in the table must be finite")
        order = sorted(range(len(self.zooms)), key=lambda i: self.zooms[i])
        object.__setattr__(self, "zooms", tuple(float(self.zooms[i]) for i in order))
        object.__setattr__(self, "phases_us", tuple(float(self.phases_us[i]) for i in order))

    def phase_us_at(self, zoom: float) -> float:
        if not self.zooms:
            raise ValueError("the line-phase table is empty: calibrate at least one zoom")
        if not (math.isfinite(zoom) and zoom > 0):
            raise ValueError(f"zoom = {zoom!r} must be positive")
        amplitude = 1.0 / np.asarray(self.zooms)  # decreasing
        return float(np.interp(1.0 / zoom, amplitude[::-1], np.asarray(self.phases_us)[::-1]))

    def with_measurement(self, zoom: float, phase_us: float) -> LinePhaseTable:
        """A table with this zoom's phase set (replacing an earlier value at the same zoom)."""
        pairs = dict(zip(self.zooms, self.phases_us))
        pairs[float(zoom)] = float(phase_us)
        return LinePhaseTable(tuple(pairs), tuple(pairs.values()))

    def to_dict(self) -> dict[str, list[float]]:
        return {"zooms": list(self.zooms), "phases_us": list(self.phases_us)}

    @classmethod
    def from_dict(cls, d: dict) -> LinePhaseTable:
        try:
            return cls(tuple(d["zooms"]), tuple(d["phases_us"]))
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"a line-phase table needs 'zooms' and 'phases_us' lists, got {d!r}"
            ) from e


class LinePhaseTracker:
    """Slow online line-phase tracking for a running bidirectional scan.

    Frames are averaged in blocks of `every_frames` (shot noise averages out, the phase
    hardly moves in a block); after each block the residual error is estimated and, if the
    estimate is trustworthy (quality >= min_quality, by default MIN_QUALITY of the method:
    the field has structure), the phase
    moves by gain x error, at most max_step_us: a first-order loop with a time constant of
    about every_frames / gain frames, which follows thermal drift and ignores single noisy
    estimates. `update` returns the new phase when it changed, else None.
    """

    def __init__(
        self,
        frame_shape: tuple[int, int],
        fill_fraction: float,
        resonant_hz: float,
        line_phase_us: float,
        *,
        every_frames: int = 30,
        gain: float = 0.5,
        max_step_us: float = 0.05,
        min_quality: float | None = None,
        method: str = "correlation",
    ) -> None:
        if every_frames < 1:
            raise ValueError(f"every_frames = {every_frames} must be >= 1")
        if not (0.0 < gain <= 1.0):
            raise ValueError(f"gain = {gain!r} must be in (0, 1]")
        if not max_step_us > 0:
            raise ValueError(f"max_step_us = {max_step_us!r} must be positive")
        if method not in METHODS:
            raise ValueError(f"method = {method!r} must be one of {METHODS}")
        self.fill_fraction = fill_fraction
        self.resonant_hz = resonant_hz
        self.line_phase_us = float(line_phase_us)
        self.every_frames = every_frames
        self.gain = gain
        self.max_step_us = max_step_us
        self.min_quality = MIN_QUALITY[method] if min_quality is None else min_quality
        self.method = method
        self._sum = np.zeros(frame_shape)
        self._count = 0
        self.last_estimate: LinePhaseEstimate | None = None

    def update(self, frame: np.ndarray, resonant_hz: float | None = None) -> float | None:
        """Add a frame taken with the current phase; every `every_frames` frames, maybe move
        the phase (returned)."""
        if resonant_hz is not None:
            self.resonant_hz = resonant_hz
        self._sum += frame
        self._count += 1
        if self._count < self.every_frames:
            return None
        mean = self._sum / self._count
        self._sum[:] = 0.0
        self._count = 0
        estimate = estimate_line_phase_error(
            mean, self.fill_fraction, self.resonant_hz, method=self.method
        )
        self.last_estimate = estimate
        if estimate.quality < self.min_quality:
            return None
        step = float(np.clip(self.gain * estimate.error_us, -self.max_step_us, self.max_step_us))
        self.line_phase_us += step
        return self.line_phase_us
