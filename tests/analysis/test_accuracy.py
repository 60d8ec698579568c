"""Accuracy measures against ground truth: ROI matching, motion RMS, spike correlation."""

import math

import numpy as np
import pytest

from analysis.accuracy import (
    match_centroids,
    match_rois,
    motion_rms_error,
    overlap_iou,
    smoothed_spike_train,
    spike_correlation,
)
from analysis.rois import RoiSet

SHAPE = (60, 60)


def _squares(boxes):
    masks = np.zeros((len(boxes), *SHAPE), bool)
    for i, (y, x, h, w) in enumerate(boxes):
        masks[i, y : y + h, x : x + w] = True
    return RoiSet.from_masks(masks)


def test_iou_equals_the_set_definition():
    rng = np.random.default_rng(1)
    a_masks = rng.random((5, *SHAPE)) < 0.05
    b_masks = rng.random((4, *SHAPE)) < 0.05
    i, j, iou = overlap_iou(RoiSet.from_masks(a_masks), RoiSet.from_masks(b_masks))
    expected = {}
    for p in range(5):
        for q in range(4):
            both = (a_masks[p] & b_masks[q]).sum()
            if both:
                expected[(p, q)] = both / (a_masks[p] | b_masks[q]).sum()
    assert dict(zip(zip(i.tolist(), j.tolist()), iou.tolist())) == pytest.approx(expected)


def test_recall_and_precision_count_one_to_one_matches_above_the_iou_threshold():
    truth = _squares([(0, 0, 10, 10), (20, 20, 10, 10), (40, 40, 10, 10), (0, 40, 10, 10)])
    detected = _squares([
        (0, 0, 10, 10),  # exact: IoU 1
        (21, 20, 10, 10),  # IoU 90 / 110 = 0.82
        (22, 20, 10, 10),  # a second detection of the same cell: a false positive
        (40, 45, 10, 10),  # IoU 50 / 150 = 0.33 < 0.5: a miss and a false positive
        (50, 0, 5, 5),  # nothing there
    ])  # fmt: skip
    match = match_rois(detected, truth)
    assert match.pairs.tolist() == [[0, 0], [1, 1]]
    assert match.recall == pytest.approx(2 / 4)
    assert match.precision == pytest.approx(2 / 5)
    assert match_rois(detected, truth, min_iou=0.3).recall == pytest.approx(3 / 4)
    # a detection of a visible cell that does not count as truth is neither hit nor miss
    ignore = _squares([(50, 0, 5, 5)])
    assert match_rois(detected, truth, ignore=ignore).precision == pytest.approx(2 / 4)


def test_centroid_matching_uses_each_cells_radius():
    true_yx = np.array([[10.0, 10.0], [30.0, 30.0]])
    found = np.array([[12.0, 10.0], [30.0, 36.0], [11.0, 11.0]])
    match = match_centroids(found, true_yx, max_distance_px=[3.0, 5.0])
    assert match.pairs.tolist() == [[2, 0]]  # the nearest claims the cell, one-to-one
    assert match.recall == 0.5 and match.precision == pytest.approx(1 / 3)


def test_motion_rms_error_removes_the_reference_offset_and_skips_flagged_frames():
    rng = np.random.default_rng(2)
    truth = rng.uniform(-5, 5, (2000, 2))
    error = rng.normal(0.0, 0.1, (2000, 2))
    estimated = truth + error + np.array([2.0, -1.0])  # the reference sits 2 px off
    estimated[5] = np.nan
    # E|e|^2 = 2 sigma^2 for isotropic Gaussian errors: RMS = sqrt(2) * 0.1
    assert motion_rms_error(estimated, truth) == pytest.approx(math.sqrt(2) * 0.1, rel=0.05)
    assert motion_rms_error(estimated, truth, remove_offset=False) > 2.0
    with pytest.raises(ValueError, match=r"shape \(T, 2\)"):
        motion_rms_error(estimated[:, 0], truth[:, 0])


def test_smoothed_spike_train_is_a_sum_of_unit_gaussians():
    times = np.linspace(0, 2, 201)
    smoothed = smoothed_spike_train(np.array([0.5, 1.2]), times, smoothing_s=0.1)
    expected = np.exp(-0.5 * ((times - 0.5) / 0.1) ** 2) + np.exp(-0.5 * ((times - 1.2) / 0.1) ** 2)
    np.testing.assert_allclose(smoothed, expected, atol=1e-5)


def test_spike_correlation_of_exact_spikes_is_1_and_falls_with_a_timing_error():
    rng = np.random.default_rng(3)
    rate = 30.0
    frame_times = np.arange(6000) / rate
    frames = np.sort(rng.choice(6000, 80, replace=False))
    inferred = np.zeros(6000)
    inferred[frames] = 1.0
    assert spike_correlation(inferred, frame_times, frame_times[frames]) == pytest.approx(1.0)
    # a constant lag of d: two trains of the same Gaussians, overlap exp(-d^2 / (4 sigma^2))
    lag = 0.1
    correlation = spike_correlation(inferred, frame_times, frame_times[frames] + lag)
    assert correlation == pytest.approx(math.exp(-(lag**2) / (4 * 0.1**2)), abs=0.03)
    shuffled = np.sort(rng.uniform(0, 200, 80))
    assert abs(spike_correlation(inferred, frame_times, shuffled)) < 0.2


def test_spike_correlation_per_column_and_degenerate_cases():
    frame_times = np.arange(300) / 30.0
    inferred = np.zeros((300, 2))
    inferred[[30, 150], 0] = 1.0
    inferred[100, 1] = np.nan  # a flagged frame: left out
    result = spike_correlation(inferred, frame_times, [frame_times[[30, 150]], np.array([])])
    assert result[0] == pytest.approx(1.0) and np.isnan(result[1])  # no spike at all: undefined
    with pytest.raises(ValueError, match="one array per column"):
        spike_correlation(inferred, frame_times, [np.array([1.0])])
    with pytest.raises(ValueError, match="strictly increasing"):
        spike_correlation(inferred[:, 0], frame_times[::-1], np.array([1.0]))


def test_inferred_offset_places_inferred_spikes_earlier_and_undoes_a_known_lag():
    # an estimator that reports every spike one half frame late is exactly right again when its
    # spikes are moved back by half a frame (the AR model's interval convention)
    rng = np.random.default_rng(4)
    rate = 30.0
    frame_times = np.arange(3000) / rate
    frames = np.sort(rng.choice(np.arange(1, 3000), 60, replace=False))
    inferred = np.zeros(3000)
    inferred[frames] = 1.0
    true_times = frame_times[frames] - 0.5 / rate
    late = spike_correlation(inferred, frame_times, true_times)
    aligned = spike_correlation(inferred, frame_times, true_times, inferred_offset_s=-0.5 / rate)
    assert aligned == pytest.approx(1.0)
    assert late == pytest.approx(math.exp(-((0.5 / rate) ** 2) / (4 * 0.1**2)), abs=0.01)
    with pytest.raises(ValueError, match="inferred_offset_s must be a finite number"):
        spike_correlation(inferred, frame_times, true_times, inferred_offset_s=math.nan)
