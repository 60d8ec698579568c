"""Standardized noise level of dF/F traces (CASCADE definition), batch and online.

    nu = 100 * median_t |dF/F(t+1) - dF/F(t)| / sqrt(frame_rate_hz)

(Rupprecht et al., Nat. Neurosci. 2021, "CASCADE"; the reference implementation takes a
nanmedian over time per neuron.) dF/F is fractional (0.1 = 10 %); the factor 100 gives the
conventional units, % per sqrt(s). About 1 is excellent (Allen Brain Observatory), 2-4 decent,
above 5-8 poor. The median of frame-to-frame differences is insensitive to the slow calcium
transients, so it measures the fast (shot) noise; activity still inflates it somewhat.

White-noise oracle: if dF/F is white Gaussian noise of SD sigma, each difference is
N(0, 2 sigma^2), the median of its absolute value is sqrt(2) * 0.6745 * sigma (0.6745 is the
median of |N(0, 1)|), hence

    nu = 100 * sqrt(2) * 0.6745 * sigma / sqrt(rate) = 95.4 * sigma / sqrt(rate).

At a fixed per-frame sigma, nu therefore scales as 1 / sqrt(rate); with an honest photon budget
the per-frame sigma itself grows as sqrt(rate), so nu does not depend on the frame rate.
"""

from __future__ import annotations

import math
import warnings

import numba
import numpy as np

from analysis.heap_window import MEDIAN, HeapWindows, WindowState, check_row, finish_frame, push_roi

PERCENT = 100.0  # fractional dF/F -> % (the CASCADE convention)
WHITE_NOISE_FACTOR = 100.0 * math.sqrt(2.0) * 0.6744897501960817  # = 95.39: nu * sqrt(rate) / sigma


def _check_frame_rate(frame_rate_hz: float) -> float:
    frame_rate_hz = float(frame_rate_hz)
    if not (math.isfinite(frame_rate_hz) and frame_rate_hz > 0.0):
        raise ValueError(f"frame_rate_hz must be a finite number > 0, got {frame_rate_hz!r}")
    return frame_rate_hz


def noise_level(dff: np.ndarray, frame_rate_hz: float) -> np.ndarray | float:
    """CASCADE noise level of fractional dF/F traces, in % per sqrt(s).

    dff: shape (n_rois, T) (one ROI per row) or (T,). Returns shape (n_rois,) float64, or a
    float for a single trace. NaN frames are ignored (nanmedian over the differences); a trace
    without two consecutive finite frames gives NaN.
    """
    frame_rate_hz = _check_frame_rate(frame_rate_hz)
    traces = np.asarray(dff, dtype=np.float64)
    if traces.ndim not in (1, 2):
        raise ValueError(f"dff must have shape (T,) or (n_rois, T), got shape {traces.shape}")
    if traces.shape[-1] < 2:
        raise ValueError(
            f"dff needs at least 2 frames along its last axis (time), got {traces.shape[-1]}"
        )
    differences = np.abs(np.diff(traces, axis=-1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN, documented
        median_difference = np.nanmedian(differences, axis=-1)
    nu = PERCENT * median_difference / math.sqrt(frame_rate_hz)
    if traces.ndim == 1:
        return float(nu)
    return nu


@numba.njit(cache=True, nogil=True)
def _update_noise(
    dff_row: np.ndarray,
    previous: np.ndarray,
    state: WindowState,
    frames_seen: np.ndarray,
    scale: float,
    values: np.ndarray,
) -> None:
    """One frame: push |dff - previous| into each ROI's median window (``HeapWindows.state``),
    write scale * median into values."""
    if frames_seen[0] == 0:
        for r in range(dff_row.shape[0]):
            previous[r] = dff_row[r]
            values[r] = np.nan
        frames_seen[0] = 1
        return
    for r in range(dff_row.shape[0]):
        current = np.float64(dff_row[r])
        difference = abs(current - previous[r])  # NaN if either frame is NaN
        previous[r] = current
        values[r] = scale * push_roi(state, r, difference)
    finish_frame(state)
    frames_seen[0] += 1


@numba.njit(cache=True, nogil=True)
def _finite_median(values: np.ndarray, scratch: np.ndarray) -> float:
    """Median of the finite entries of values, sorting in the preallocated scratch."""
    n = 0
    for v in values:
        if not math.isnan(v):
            scratch[n] = v
            n += 1
    if n == 0:
        return np.nan
    part = scratch[:n]
    part.sort()
    middle = n // 2
    if n % 2 == 1:
        return part[middle]
    return (part[middle - 1] + part[middle]) / 2.0


class OnlineNoiseLevel:
    """Running CASCADE noise level of every ROI over the last ``window_frames`` differences.

    ``update(dff_row)`` takes one frame of fractional dF/F (float32, shape (n_rois,)). After it,
    ``values[r]`` (float32) equals ``noise_level`` of ROI r over its last window_frames + 1
    frames (i.e. the last window_frames differences), NaN before 2 frames. The median is kept
    by two heaps per ROI (analysis.heap_window): O(log W) per ROI and frame, no allocation.
    NaN frames are handled as in the batch function (differences touching them are ignored).
    """

    def __init__(self, n_rois: int, window_frames: int, frame_rate_hz: float) -> None:
        self.frame_rate_hz = _check_frame_rate(frame_rate_hz)
        self.window = HeapWindows(n_rois, window_frames, MEDIAN)
        self.n_rois = self.window.n_rois
        self.window_frames = self.window.window_frames
        self.values = np.full(self.n_rois, np.nan, dtype=np.float32)
        self._previous = np.full(self.n_rois, np.nan, dtype=np.float64)
        self._frames_seen = np.zeros(1, dtype=np.int64)
        self._scale = PERCENT / math.sqrt(self.frame_rate_hz)
        self._scratch = np.empty(self.n_rois, dtype=np.float64)

    @property
    def frames_seen(self) -> int:
        return int(self._frames_seen[0])

    def reset(self) -> None:
        self.window.reset()
        self.values[:] = np.nan
        self._frames_seen[0] = 0

    def update(self, dff_row: np.ndarray) -> np.ndarray:
        """Add one frame of dF/F; return ``values`` (updated in place)."""
        check_row("dff_row", dff_row, self.n_rois)
        _update_noise(
            dff_row,
            self._previous,
            self.window.state,
            self._frames_seen,
            self._scale,
            self.values,
        )
        return self.values

    def population(self) -> float:
        """Median noise level over the ROIs that have one (NaN if none), in % per sqrt(s)."""
        return float(_finite_median(self.values, self._scratch))
