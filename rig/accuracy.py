"""Accuracy of a simulated session against the world's ground truth (summary `accuracy`).

Only simulated rigs have ground truth; the pipeline never reads it. Computed once, after
the session (issue 3, item 6):

- roi_recall, roi_precision: detected ROIs matched one-to-one to the true footprints of the
  in-focus cells by IoU >= 0.5 (analysis.accuracy.match_rois). The true footprints are
  placed where the reference image shows them: the world's brain displacement averaged over
  the reference period (image content moves by +d).
- motion_rms_px: estimated shifts against the true displacement averaged over each frame's
  scan time, in pixels, after removing the constant offset (the reference has its own origin).
- spike_corr: median over matched ROIs of the correlation between the deconvolved spikes and
  the true spikes of the matched cell, both smoothed with a 100 ms Gaussian; the online spike
  estimate of frame t is reported `spike_lag_frames` frames later and is moved back.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from analysis.accuracy import match_rois, motion_rms_error, spike_correlation
from analysis.rois import RoiSet


def true_footprints(
    ground_truth: Any,
    frame_shape: tuple[int, int],
    pixel_size_um: tuple[float, float],
    offset_um: tuple[float, float] = (0.0, 0.0),
) -> tuple[RoiSet, np.ndarray]:
    """In-focus cells' footprints as frame ROIs; returns (rois, cell index of each ROI)."""
    h, w = frame_shape
    py, px = pixel_size_um
    gw = ground_truth.grid_shape[1]
    res = ground_truth.grid_resolution_um
    labels = np.zeros(frame_shape, np.int32)
    cells = []
    for cell in ground_truth.in_focus_cells:
        idx = ground_truth.footprints[int(cell)]
        iy, ix = np.divmod(idx, gw)
        x_um = ground_truth.grid_x0_um + (ix + 0.5) * res + offset_um[0]
        y_um = ground_truth.grid_y0_um + (iy + 0.5) * res + offset_um[1]
        col = np.floor(x_um / px + w / 2).astype(np.int64)
        row = np.floor(y_um / py + h / 2).astype(np.int64)
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        if np.count_nonzero(inside) < 4:
            continue
        cells.append(int(cell))
        labels[row[inside], col[inside]] = len(cells)
    present = np.unique(labels[labels > 0])
    keep = np.zeros(len(cells) + 1, np.int32)
    keep[present] = np.arange(1, present.size + 1)
    cell_of_roi = np.array(cells, np.int64)[present - 1] if present.size else np.zeros(0, np.int64)
    return RoiSet.from_label_image(keep[labels]), cell_of_roi


def mean_displacement_um(ground_truth: Any, t0_s: float, t1_s: float) -> tuple[float, float]:
    t, d = ground_truth.motion_times_s, ground_truth.motion_um
    if t.size == 0:
        return (0.0, 0.0)
    sel = (t >= t0_s) & (t < t1_s)
    if not sel.any():
        sel = np.argmin(np.abs(t - t0_s)) == np.arange(t.size)
    return (float(d[sel, 0].mean()), float(d[sel, 1].mean()))


def session_accuracy(
    ground_truth: Any,
    *,
    rois: RoiSet | None,
    frame_shape: tuple[int, int],
    pixel_size_um: tuple[float, float],
    frame_times_s: np.ndarray,
    frame_rate_hz: float,
    roi_start_frame: int | None,
    reference_frames: int,
    shifts_px: np.ndarray | None,
    spikes: np.ndarray | None,
    spike_lag_frames: int,
    reference_end_frame: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "roi_recall": None,
        "roi_precision": None,
        "motion_rms_px": None,
        "spike_corr": None,
        "n_true_cells": None,
        "n_matched": None,
    }
    period = 1.0 / frame_rate_hz
    start = roi_start_frame or 0
    # the reference period ends where the pipeline says (ROIs may start later: detection on a
    # worker thread, a reference z-stack); older sessions: where the ROIs start
    ref_end = start if reference_end_frame is None else reference_end_frame
    ref_t0 = frame_times_s[max(0, ref_end - reference_frames)] if len(frame_times_s) else 0.0
    ref_t1 = frame_times_s[ref_end] + period if len(frame_times_s) > ref_end else ref_t0
    offset = mean_displacement_um(ground_truth, ref_t0, ref_t1)
    truth, cell_of_roi = true_footprints(ground_truth, frame_shape, pixel_size_um, offset)
    out["n_true_cells"] = truth.n_rois
    match = None
    if rois is not None and rois.n_rois and truth.n_rois:
        match = match_rois(rois, truth)
        out["roi_recall"] = _num(match.recall)
        out["roi_precision"] = _num(match.precision)
        out["n_matched"] = int(match.pairs.shape[0])
    t = ground_truth.motion_times_s
    if shifts_px is not None and t.size and len(frame_times_s):
        py, px = pixel_size_um
        true = np.full((len(frame_times_s), 2), np.nan)
        for i, t0 in enumerate(frame_times_s):
            dx, dy = mean_displacement_um(ground_truth, t0, t0 + period)
            true[i] = (dy / py, dx / px)
        sel = np.arange(len(frame_times_s)) >= start
        out["motion_rms_px"] = _num(motion_rms_error(shifts_px[sel], true[sel]))
    if match is not None and spikes is not None and match.pairs.size:
        cells, times = ground_truth.spikes
        frames = np.arange(start, spikes.shape[0] - spike_lag_frames)
        mid_times = frame_times_s[frames] + period / 2
        corr = []
        for det, tru in match.pairs:
            inferred = spikes[frames + spike_lag_frames, det]
            true_times = times[cells == cell_of_roi[tru]]
            # a spike first seen in frame t happened, on average, half a frame before its
            # mid-scan time (between the two frames' mid-times)
            corr.append(
                spike_correlation(inferred, mid_times, true_times, inferred_offset_s=-period / 2)
            )
        corr = np.asarray(corr, float)
        if np.isfinite(corr).any():
            out["spike_corr"] = float(np.nanmedian(corr))
    return out


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
