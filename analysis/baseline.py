"""Fluorescence baselines F0 for dF/F: running percentiles (online and offline) and maximin.

Two families are in use (science.md section 2):

- CaImAn: a running low percentile (8th) of F over a window of ~500 frames.
- suite2p "maximin": Gaussian smoothing (~10 frames), then a running minimum, then a running
  maximum, both over ~60 s.

Offline versions are centred (non-causal: the baseline at frame t also uses frames after t). A
real-time loop only has the past, so ``RunningPercentile`` / ``causal_baseline`` use a
trailing window that ends at (and includes) the current frame.

Lag of a trailing percentile window. Let the window hold W frames and the baseline step from
a to b at frame t0. After k frames at the new level the window holds k values b and W - k
values a, and the percentile q sits at sorted position (W - 1) * q / 100:

- step down (b < a): the k new values are the lowest, so F0 reaches b after about
  q / 100 * W frames (8th percentile, W = 1800: ~144 frames = 4.8 s at 30 Hz);
- step up (b > a): the old values are the lowest, so F0 stays at a until only q / 100 * W of
  them are left, i.e. after about (1 - q / 100) * W frames (~0.92 W for q = 8).

So a low percentile follows drops quickly and rises slowly; a rising baseline is
over-estimated as activity for most of a window. The centred window of the same length has the
same response shifted earlier by W - 1 - W // 2 frames (it responds before the step).

NaN values of F are ignored inside a window (like ``np.nanpercentile``); a window with no
finite value gives NaN.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from analysis.heap_window import (
    HeapWindows,
    WindowState,
    check_percentile,
    check_positive_int,
    check_row,
    finish_frame,
    push_roi,
)


@numba.njit(cache=True, nogil=True)
def update_running_percentile(values: np.ndarray, state: WindowState, out: np.ndarray) -> None:
    """One frame: push values[r] into heap window r (``HeapWindows.state``, made for the
    percentile) and write the window's new percentile into out[r]. O(log W) per ROI."""
    for r in range(values.shape[0]):
        out[r] = push_roi(state, r, values[r])
    finish_frame(state)


class RunningPercentile:
    """Causal running percentile of every ROI over a trailing window of ``window_frames``.

    ``update(values, out)`` adds one frame (values shape (n_rois,)) and writes, for each ROI,
    numpy's linear percentile of its last min(frames seen, window_frames) values, current frame
    included. O(log W) per ROI (two heaps, analysis.heap_window), no allocation per call. See
    the module docstring for the lag after a step.
    """

    def __init__(self, n_rois: int, window_frames: int, percentile: float = 8.0) -> None:
        self.percentile = check_percentile("percentile", percentile)
        self.window = HeapWindows(n_rois, window_frames, self.percentile)
        self.n_rois = self.window.n_rois
        self.window_frames = self.window.window_frames

    def reset(self) -> None:
        self.window.reset()

    def update(self, values: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Add one frame of values; write the running percentile into out; return out."""
        check_row("values", values, self.n_rois)
        check_row("out", out, self.n_rois)
        update_running_percentile(values, self.window.state, out)
        return out


@numba.njit(cache=True, nogil=True)
def _windowed_percentile_rows(
    traces: np.ndarray, state: WindowState, lead_frames: int, out: np.ndarray
) -> None:
    """out[r, t] = percentile of traces[r, t + lead - W + 1 : t + lead + 1] (clipped to the
    data), with state a single-ROI HeapWindows.state for that percentile and W. lead 0 is the
    causal trailing window; frames past the end enter as NaN (ignored), so the last windows
    shrink. Uses the same kernels as the online class, hence the same numbers.
    """
    n_rois, n_frames = traces.shape
    for r in range(n_rois):
        state.n_low[0] = 0  # empty the window for the next trace
        state.n_high[0] = 0
        state.position[:] = 0
        for s in range(n_frames + lead_frames):
            new = traces[r, s] if s < n_frames else np.nan
            value = push_roi(state, 0, new)
            finish_frame(state)
            t = s - lead_frames
            if t >= 0:
                out[r, t] = value


def _as_traces(F: np.ndarray, name: str = "F") -> np.ndarray:
    """F as float64 (n_rois, T); accepts (T,) or (n_rois, T)."""
    traces = np.asarray(F, dtype=np.float64)
    if traces.ndim == 1:
        traces = traces[np.newaxis, :]
    if traces.ndim != 2 or traces.shape[1] < 1:
        raise ValueError(
            f"{name} must have shape (T,) or (n_rois, T) with T >= 1, got {np.shape(F)}"
        )
    return np.ascontiguousarray(traces)


def _shaped_like(result: np.ndarray, F: np.ndarray) -> np.ndarray:
    return result[0] if np.ndim(F) == 1 else result


def causal_baseline(F: np.ndarray, window_frames: int, percentile: float) -> np.ndarray:
    """Trailing-window running percentile of F (shape (T,) or (n_rois, T)), float64.

    Baseline at frame t = percentile of F[t - W + 1 .. t]; the first W - 1 frames use the
    partial window F[0 .. t]. Identical numbers to feeding F frame by frame to
    ``RunningPercentile``.
    """
    window_frames = check_positive_int("window_frames", window_frames)
    q = check_percentile("percentile", percentile)
    traces = _as_traces(F)
    out = np.empty_like(traces)
    _windowed_percentile_rows(traces, HeapWindows(1, window_frames, q).state, 0, out)
    return _shaped_like(out, F)


def centered_baseline(F: np.ndarray, window_frames: int, percentile: float) -> np.ndarray:
    """Offline (non-causal) running percentile over a centred window, float64.

    Baseline at frame t = percentile of F[t - W // 2 .. t + W - 1 - W // 2] clipped to the
    recording (shorter windows at both ends). Equivalently centered[t] = causal[t + W - 1 - W // 2]
    wherever that frame exists: the same response as the causal baseline, earlier by about
    half a window.
    """
    window_frames = check_positive_int("window_frames", window_frames)
    q = check_percentile("percentile", percentile)
    traces = _as_traces(F)
    out = np.empty_like(traces)
    lead_frames = window_frames - 1 - window_frames // 2
    _windowed_percentile_rows(traces, HeapWindows(1, window_frames, q).state, lead_frames, out)
    return _shaped_like(out, F)


def gaussian_smooth(traces: np.ndarray, sigma_frames: float) -> np.ndarray:
    """Gaussian smoothing along the last axis (kernel truncated at 4 sigma, edges reflected
    as in scipy.ndimage.gaussian_filter1d with mode 'reflect'). sigma 0 returns a copy."""
    traces = np.asarray(traces, dtype=np.float64)
    if sigma_frames == 0:
        return traces.copy()
    radius = int(4.0 * sigma_frames + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma_frames) ** 2)
    kernel /= kernel.sum()
    pad = [(0, 0)] * (traces.ndim - 1) + [(radius, radius)]
    padded = np.pad(traces, pad, mode="symmetric")
    smoothed = np.zeros_like(traces)
    n_frames = traces.shape[-1]
    for k, weight in enumerate(kernel):
        smoothed += weight * padded[..., k : k + n_frames]
    return smoothed


@numba.njit(cache=True, nogil=True)
def _running_extreme_rows(
    traces: np.ndarray, left: int, right: int, take_max: bool, out: np.ndarray
) -> None:
    """out[r, t] = min (or max) of traces[r, t - left .. t + right] clipped to the data.

    Monotonic queue of candidate indices: O(T) per row.
    """
    n_rois, n_frames = traces.shape
    queue = np.empty(n_frames, dtype=np.int64)
    for r in range(n_rois):
        first = 0
        last = 0  # queue[first:last] holds indices with monotonic values
        for s in range(n_frames + right):
            if s < n_frames:
                value = traces[r, s]
                while last > first:
                    back = traces[r, queue[last - 1]]
                    if (back <= value) if take_max else (back >= value):
                        last -= 1
                    else:
                        break
                queue[last] = s
                last += 1
            t = s - right
            if t >= 0:
                while queue[first] < t - left:
                    first += 1
                out[r, t] = traces[r, queue[first]]


def maximin_baseline(F: np.ndarray, window_frames: int, sigma_frames: float) -> np.ndarray:
    """suite2p-style offline baseline: Gaussian smoothing (sigma_frames), then a centred running
    minimum, then a centred running maximum, both over window_frames (clipped at the edges).

    The minimum finds the floor under transients; the maximum undoes the minimum's downward
    bias from noise dips. Non-causal and offline; F must be finite. Returns float64, F's shape.
    """
    window_frames = check_positive_int("window_frames", window_frames)
    sigma_frames = float(sigma_frames)
    if not (math.isfinite(sigma_frames) and sigma_frames >= 0.0):
        raise ValueError(f"sigma_frames must be a finite number >= 0, got {sigma_frames!r}")
    traces = _as_traces(F)
    if not np.all(np.isfinite(traces)):
        raise ValueError("F contains NaN or inf; maximin_baseline needs finite traces")
    smoothed = np.ascontiguousarray(gaussian_smooth(traces, sigma_frames))
    left = window_frames // 2
    right = window_frames - 1 - left
    low = np.empty_like(smoothed)
    _running_extreme_rows(smoothed, left, right, False, low)
    out = np.empty_like(smoothed)
    _running_extreme_rows(low, left, right, True, out)
    return _shaped_like(out, F)
