"""dF/F = (F - F0) / F0 with F0 a running low percentile of F, online (causal) and offline.

F0 is the CaImAn-style running 8th percentile (see analysis.baseline for the lag of a trailing
window). The online class is causal: F0 at frame t uses the last ``baseline_window_s`` of F up
to and including frame t; during the first window the partial window is used.

F0 <= 0 would make dF/F meaningless (negative or infinite). Instead of dividing by zero, F0 is
floored at ``min_baseline`` (a small positive value in units of F, default 1e-6) and every
frame where the floor applies is counted per ROI in ``nonpositive_baseline_count``; a rig
should show that count, because it means F is offset-subtracted or the ROI is dark. A NaN F
gives a NaN dF/F for that frame and is left out of the baseline window.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from analysis.baseline import causal_baseline, centered_baseline, update_running_percentile
from analysis.heap_window import HeapWindows, WindowState, check_percentile, check_row

DEFAULT_MIN_BASELINE = 1e-6


def baseline_window_frames(frame_rate_hz: float, baseline_window_s: float) -> int:
    """Window length in frames for a window in seconds (rounded, at least 1 frame)."""
    frame_rate_hz = float(frame_rate_hz)
    baseline_window_s = float(baseline_window_s)
    if not (math.isfinite(frame_rate_hz) and frame_rate_hz > 0.0):
        raise ValueError(f"frame_rate_hz must be a finite number > 0, got {frame_rate_hz!r}")
    if not (math.isfinite(baseline_window_s) and baseline_window_s > 0.0):
        raise ValueError(
            f"baseline_window_s must be a finite number > 0, got {baseline_window_s!r}"
        )
    return max(1, round(baseline_window_s * frame_rate_hz))


def _check_min_baseline(min_baseline: float) -> float:
    min_baseline = float(min_baseline)
    if not (math.isfinite(min_baseline) and min_baseline > 0.0):
        raise ValueError(f"min_baseline must be a finite number > 0, got {min_baseline!r}")
    return min_baseline


@numba.njit(cache=True, nogil=True)
def _floored_dff(f: float, f0: float, min_baseline: float) -> tuple[float, bool]:
    """(F - F0) / max(F0, min_baseline) and whether the floor applied (NaN F0 is not floored)."""
    floored = f0 < min_baseline
    if floored:
        f0 = min_baseline
    return (np.float64(f) - f0) / f0, floored


@numba.njit(cache=True, nogil=True)
def _dff_from_baseline(
    F_row: np.ndarray,
    baseline: np.ndarray,
    min_baseline: float,
    nonpositive_baseline_count: np.ndarray,
    out_dff_row: np.ndarray,
) -> None:
    """One frame: out[r] = dF/F of ROI r, counting the ROIs whose F0 was floored."""
    for r in range(F_row.shape[0]):
        dff, floored = _floored_dff(F_row[r], baseline[r], min_baseline)
        if floored:
            nonpositive_baseline_count[r] += 1
        out_dff_row[r] = dff


@numba.njit(cache=True, nogil=True)
def _dff_from_baseline_rows(
    traces: np.ndarray,
    baseline: np.ndarray,
    min_baseline: float,
    nonpositive_baseline_count: np.ndarray,
    out: np.ndarray,
) -> None:
    """Whole traces (n_rois, T): the same arithmetic as the online update, element by element."""
    n_rois, n_frames = traces.shape
    for r in range(n_rois):
        for t in range(n_frames):
            dff, floored = _floored_dff(traces[r, t], baseline[r, t], min_baseline)
            if floored:
                nonpositive_baseline_count[r] += 1
            out[r, t] = dff


@numba.njit(cache=True, nogil=True)
def _update_dff(
    F_row: np.ndarray,
    state: WindowState,
    baseline: np.ndarray,
    min_baseline: float,
    nonpositive_baseline_count: np.ndarray,
    out_dff_row: np.ndarray,
) -> None:
    """One frame: push F into the baseline windows (F0 into baseline), then dF/F into out."""
    update_running_percentile(F_row, state, baseline)
    _dff_from_baseline(F_row, baseline, min_baseline, nonpositive_baseline_count, out_dff_row)


class OnlineDff:
    """Causal dF/F of every ROI, one frame at a time, without allocation.

    ``update(F_row, out_dff_row)``: F_row shape (n_rois,) (any float dtype), out_dff_row
    float32 (n_rois,). ``baseline`` (float64, (n_rois,)) holds the current F0 before flooring.
    F0 is kept by a two-heap window per ROI (analysis.heap_window): O(log W) per ROI and frame.
    """

    def __init__(
        self,
        n_rois: int,
        frame_rate_hz: float,
        baseline_window_s: float = 60.0,
        percentile: float = 8.0,
        min_baseline: float = DEFAULT_MIN_BASELINE,
    ) -> None:
        self.frame_rate_hz = float(frame_rate_hz)
        self.window_frames = baseline_window_frames(frame_rate_hz, baseline_window_s)
        self.baseline_window_s = float(baseline_window_s)
        self.percentile = check_percentile("percentile", percentile)
        self.min_baseline = _check_min_baseline(min_baseline)
        self.window = HeapWindows(n_rois, self.window_frames, self.percentile)
        self.n_rois = self.window.n_rois
        self.baseline = np.full(self.n_rois, np.nan, dtype=np.float64)
        self.nonpositive_baseline_count = np.zeros(self.n_rois, dtype=np.int64)

    def reset(self) -> None:
        self.window.reset()
        self.baseline[:] = np.nan
        self.nonpositive_baseline_count[:] = 0

    def update(self, F_row: np.ndarray, out_dff_row: np.ndarray) -> np.ndarray:
        """Add one frame of F; write its dF/F into out_dff_row; return out_dff_row."""
        check_row("F_row", F_row, self.n_rois)
        check_row("out_dff_row", out_dff_row, self.n_rois)
        _update_dff(
            F_row,
            self.window.state,
            self.baseline,
            self.min_baseline,
            self.nonpositive_baseline_count,
            out_dff_row,
        )
        return out_dff_row


def dff_offline(
    F: np.ndarray,
    frame_rate_hz: float,
    baseline_window_s: float,
    percentile: float,
    centered: bool,
    min_baseline: float = DEFAULT_MIN_BASELINE,
) -> np.ndarray:
    """dF/F of whole traces F (shape (T,) or (n_rois, T)), float32, F's shape.

    centered=False: the causal trailing-window baseline, identical to ``OnlineDff`` fed the
    same frames. centered=True: the non-causal centred window (better offline: no lag).
    F0 is floored at min_baseline as in ``OnlineDff``.
    """
    window_frames = baseline_window_frames(frame_rate_hz, baseline_window_s)
    q = check_percentile("percentile", percentile)
    min_baseline = _check_min_baseline(min_baseline)
    traces = np.asarray(F, dtype=np.float64)
    if traces.ndim not in (1, 2):
        raise ValueError(f"F must have shape (T,) or (n_rois, T), got shape {traces.shape}")
    traces_2d = np.ascontiguousarray(traces.reshape(-1, traces.shape[-1]))
    if centered:
        baseline = centered_baseline(traces_2d, window_frames, q)
    else:
        baseline = causal_baseline(traces_2d, window_frames, q)
    out = np.empty(traces_2d.shape, dtype=np.float32)
    counts = np.zeros(traces_2d.shape[0], dtype=np.int64)
    _dff_from_baseline_rows(traces_2d, baseline, min_baseline, counts, out)
    return out.reshape(traces.shape)
