"""Accuracy of the pipeline against ground truth (e.g. the simulated world's): ROI detection,
motion correction and spike inference. Pure functions, for tests, reports and summaries.

- ROI recall / precision: detected ROIs are matched one-to-one to true footprints (greedily, by
  decreasing intersection over union, IoU = |A & B| / |A | B|), a pair counting when its IoU
  reaches ``min_iou`` (0.5 by default: then no ROI can match two partners, so greedy matching is
  the optimal one-to-one matching). recall = matched true cells / true cells, precision =
  matched detections / detections. Detections that match an "ignore" footprint instead (cells
  that are visible but not counted as truth, e.g. partly out of focus) count neither way. A
  centroid criterion (detected centroid within a distance of the true centre) is offered too.
- Motion: RMS over frames of the Euclidean distance between the estimated and the true shift,
  after removing the constant offset between them (the reference image sits at its own,
  arbitrary position: shifts are relative to it).
- Spikes: Pearson correlation between the inferred spikes and the true spike train, both
  smoothed with the same Gaussian kernel (SD ``smoothing_s``, 100 ms by default) and evaluated
  at the frame times; an inferred spike counts at its frame's time (plus ``inferred_offset_s``),
  a true spike at its own time. The convention is CASCADE's (Rupprecht et al., Nat. Neurosci.
  2021; cascade2p/utils.py: the ground truth is binned at the frame times and smoothed with
  ``gaussian_filter(spikes, sigma=smoothing * frame_rate)``, ``smoothing`` in seconds, 0.2 s by
  default, and models named "..._smoothing100ms" use 0.1 s): "smoothed 100 ms" is a Gaussian of
  SD 100 ms, not a 100 ms box. Here the Gaussians are centred on the exact spike times rather
  than on frame bins (no binning error). Alignment: with frame times = the samples' (mid-scan)
  times, a spike the AR model places at frame k arrived between samples k - 1 and k, so its
  unbiased time is the frame time minus half a frame period (``inferred_offset_s`` = -period / 2;
  worth ~0.015 in correlation at 30 Hz, far more at 4 Hz).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from analysis.rois import RoiSet

DEFAULT_MIN_IOU = 0.5
DEFAULT_SMOOTHING_S = 0.1
GAUSSIAN_REACH_SDS = 5.0  # the kernel is cut at +-5 SD (exp(-12.5) = 4e-6 of the peak)


# --------------------------------------------------------------------------- ROIs


@dataclass(frozen=True)
class RoiMatch:
    """One-to-one matching of detected ROIs to true cells.

    pairs: int (m, 2) of (detected index, true index); iou: float (m,) of each pair.
    ignored: detected indices that matched an ignore footprint (not counted).
    """

    n_detected: int
    n_true: int
    pairs: np.ndarray
    iou: np.ndarray
    ignored: np.ndarray

    @property
    def recall(self) -> float:
        """Matched true cells / true cells (NaN without true cells)."""
        return self.pairs.shape[0] / self.n_true if self.n_true else math.nan

    @property
    def precision(self) -> float:
        """Matched detections / counted detections (NaN without counted detections)."""
        counted = self.n_detected - self.ignored.size
        return self.pairs.shape[0] / counted if counted else math.nan


def _pixel_sets(rois: RoiSet) -> tuple[np.ndarray, np.ndarray]:
    """(pixel, roi) of every ROI pixel, sorted by pixel."""
    roi_of_pixel = np.repeat(np.arange(rois.n_rois), np.diff(rois.offsets))
    order = np.argsort(rois.pixels, kind="stable")
    return rois.pixels[order].astype(np.int64), roi_of_pixel[order]


def overlap_iou(a: RoiSet, b: RoiSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i of a, j of b) that share at least one pixel and their IoU (pixel sets; weights
    are ignored). Returns (i, j, iou) arrays."""
    if a.shape != b.shape:
        raise ValueError(f"ROI sets refer to different frame shapes: {a.shape} and {b.shape}")
    pixels_a, rois_a = _pixel_sets(a)
    pixels_b, rois_b = _pixel_sets(b)
    left = np.searchsorted(pixels_a, pixels_b, side="left")
    right = np.searchsorted(pixels_a, pixels_b, side="right")
    hits = right - left
    if hits.sum() == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    # every (a entry, b entry) with the same pixel
    b_index = np.repeat(np.arange(pixels_b.size), hits)
    starts = np.repeat(left, hits)
    within = np.arange(b_index.size) - np.repeat(np.cumsum(hits) - hits, hits)
    i = rois_a[starts + within]
    j = rois_b[b_index]
    key = i.astype(np.int64) * b.n_rois + j
    unique_keys, intersection = np.unique(key, return_counts=True)
    i, j = unique_keys // b.n_rois, unique_keys % b.n_rois
    area_a = np.diff(a.offsets)[i]
    area_b = np.diff(b.offsets)[j]
    return i, j, intersection / (area_a + area_b - intersection)


def match_rois(
    detected: RoiSet,
    truth: RoiSet,
    min_iou: float = DEFAULT_MIN_IOU,
    ignore: RoiSet | None = None,
) -> RoiMatch:
    """Match detected ROIs to true footprints by IoU (see the module docstring)."""
    min_iou = float(min_iou)
    if not (0.0 < min_iou <= 1.0):
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou!r}")
    i, j, iou = overlap_iou(detected, truth)
    order = np.argsort(-iou, kind="stable")
    used_detected = np.zeros(detected.n_rois, bool)
    used_true = np.zeros(truth.n_rois, bool)
    pairs, pair_iou = [], []
    for k in order:
        if iou[k] < min_iou:
            break
        if not used_detected[i[k]] and not used_true[j[k]]:
            used_detected[i[k]] = used_true[j[k]] = True
            pairs.append((int(i[k]), int(j[k])))
            pair_iou.append(float(iou[k]))
    ignored = np.zeros(0, np.int64)
    if ignore is not None and ignore.n_rois:
        ii, _, iou_ignore = overlap_iou(detected, ignore)
        candidates = np.unique(ii[iou_ignore >= min_iou])
        ignored = candidates[~used_detected[candidates]]
    return RoiMatch(
        n_detected=detected.n_rois,
        n_true=truth.n_rois,
        pairs=np.array(pairs, dtype=np.int64).reshape(-1, 2),
        iou=np.array(pair_iou),
        ignored=ignored,
    )


def match_centroids(
    detected_yx: np.ndarray, true_yx: np.ndarray, max_distance_px: float | np.ndarray
) -> RoiMatch:
    """One-to-one matching of centroids, nearest pairs first: a detected centroid matches a true
    centre closer than ``max_distance_px`` (one number, or one per true cell, e.g. its radius).
    The ``iou`` field of the result holds the pair distances."""
    detected_yx = np.asarray(detected_yx, dtype=np.float64).reshape(-1, 2)
    true_yx = np.asarray(true_yx, dtype=np.float64).reshape(-1, 2)
    limit = np.broadcast_to(np.asarray(max_distance_px, dtype=np.float64), (true_yx.shape[0],))
    if not (np.isfinite(limit).all() and (limit > 0).all()):
        raise ValueError(f"max_distance_px must be finite and > 0, got {max_distance_px!r}")
    distance = np.hypot(*(detected_yx[:, None, :] - true_yx[None, :, :]).transpose(2, 0, 1))
    i, j = np.nonzero(distance < limit[None, :])
    d = distance[i, j]
    used_detected = np.zeros(detected_yx.shape[0], bool)
    used_true = np.zeros(true_yx.shape[0], bool)
    pairs, pair_distance = [], []
    for k in np.argsort(d, kind="stable"):
        if not used_detected[i[k]] and not used_true[j[k]]:
            used_detected[i[k]] = used_true[j[k]] = True
            pairs.append((int(i[k]), int(j[k])))
            pair_distance.append(float(d[k]))
    return RoiMatch(
        n_detected=detected_yx.shape[0],
        n_true=true_yx.shape[0],
        pairs=np.array(pairs, dtype=np.int64).reshape(-1, 2),
        iou=np.array(pair_distance),
        ignored=np.zeros(0, np.int64),
    )


# --------------------------------------------------------------------------- motion


def motion_rms_error(
    estimated_yx: np.ndarray, true_yx: np.ndarray, remove_offset: bool = True
) -> float:
    """RMS (px) of |estimated - true| over frames (Euclidean in y, x), after removing the mean
    difference when ``remove_offset`` (see the module docstring). Frames with a NaN estimate
    (flagged) are left out; NaN if none is left."""
    estimated = np.asarray(estimated_yx, dtype=np.float64)
    true = np.asarray(true_yx, dtype=np.float64)
    if estimated.shape != true.shape or estimated.ndim != 2 or estimated.shape[1] != 2:
        raise ValueError(
            f"estimated_yx and true_yx must both have shape (T, 2), got {estimated.shape} "
            f"and {true.shape}"
        )
    difference = estimated - true
    difference = difference[np.isfinite(difference).all(axis=1)]
    if difference.shape[0] == 0:
        return math.nan
    if remove_offset:
        difference = difference - difference.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(difference**2, axis=1))))


# --------------------------------------------------------------------------- spikes


@numba.njit(cache=True, nogil=True)
def _gaussian_sum(
    event_times: np.ndarray,
    event_weights: np.ndarray,
    query_times: np.ndarray,
    sigma: float,
    reach: float,
    out: np.ndarray,
) -> None:
    """out[q] = sum_k w_k exp(-(t_q - tau_k)^2 / (2 sigma^2)) over events within reach of t_q.
    event_times and query_times sorted ascending."""
    n_events = event_times.shape[0]
    first = 0
    inverse = 1.0 / (2.0 * sigma * sigma)
    for q in range(query_times.shape[0]):
        t = query_times[q]
        while first < n_events and event_times[first] < t - reach:
            first += 1
        total = 0.0
        k = first
        while k < n_events and event_times[k] <= t + reach:
            d = t - event_times[k]
            total += event_weights[k] * math.exp(-d * d * inverse)
            k += 1
        out[q] = total


def smoothed_spike_train(
    spike_times_s: np.ndarray,
    frame_times_s: np.ndarray,
    smoothing_s: float = DEFAULT_SMOOTHING_S,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Sum of Gaussians (SD smoothing_s, unit height) centred on the spikes, at the frame times."""
    times = np.asarray(spike_times_s, dtype=np.float64).ravel()
    w = np.ones_like(times) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    order = np.argsort(times, kind="stable")
    frames = np.ascontiguousarray(frame_times_s, dtype=np.float64)
    out = np.zeros(frames.shape[0])
    _gaussian_sum(
        np.ascontiguousarray(times[order]),
        np.ascontiguousarray(w[order]),
        frames,
        smoothing_s,
        GAUSSIAN_REACH_SDS * smoothing_s,
        out,
    )
    return out


def spike_correlation(
    inferred: np.ndarray,
    frame_times_s: np.ndarray,
    spike_times_s: np.ndarray | list[np.ndarray],
    smoothing_s: float = DEFAULT_SMOOTHING_S,
    inferred_offset_s: float = 0.0,
) -> np.ndarray | float:
    """Pearson correlation of inferred spikes with the true spikes, both Gaussian-smoothed.

    inferred: (T,) or (T, n) spike estimates per frame (NaN frames: no estimate, left out of the
    correlation). frame_times_s: (T,) increasing. spike_times_s: the true spike times (one array,
    or a list of n arrays). inferred_offset_s: added to the frame times to place the inferred
    spikes (see the module docstring; both smoothed series are still evaluated at the frame
    times). Returns a float or (n,) array; NaN where either smoothed series is constant (e.g.
    no spike at all).
    """
    values = np.asarray(inferred, dtype=np.float64)
    single = values.ndim == 1
    if single:
        values = values[:, None]
        spike_times_s = [np.asarray(spike_times_s)]
    frames = np.asarray(frame_times_s, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != frames.shape[0]:
        raise ValueError(
            f"inferred must have shape (T,) or (T, n) with T = len(frame_times_s) = "
            f"{frames.shape[0]}, got {np.shape(inferred)}"
        )
    if frames.size > 1 and not (np.diff(frames) > 0).all():
        raise ValueError("frame_times_s must be strictly increasing")
    if len(spike_times_s) != values.shape[1]:
        raise ValueError(
            f"spike_times_s must hold one array per column of inferred ({values.shape[1]}), "
            f"got {len(spike_times_s)}"
        )
    smoothing_s = float(smoothing_s)
    if not (math.isfinite(smoothing_s) and smoothing_s > 0):
        raise ValueError(f"smoothing_s must be a finite number > 0, got {smoothing_s!r}")
    inferred_offset_s = float(inferred_offset_s)
    if not math.isfinite(inferred_offset_s):
        raise ValueError(f"inferred_offset_s must be a finite number, got {inferred_offset_s!r}")
    result = np.full(values.shape[1], np.nan)
    for n in range(values.shape[1]):
        column = values[:, n]
        valid = np.isfinite(column)
        inferred_rate = smoothed_spike_train(
            frames[valid] + inferred_offset_s, frames, smoothing_s, weights=column[valid]
        )
        true_rate = smoothed_spike_train(spike_times_s[n], frames, smoothing_s)
        a, b = inferred_rate[valid], true_rate[valid]
        if a.size > 1 and a.std() > 0 and b.std() > 0:
            result[n] = float(np.corrcoef(a, b)[0, 1])
    return float(result[0]) if single else result
