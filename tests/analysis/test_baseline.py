"""Running-percentile and maximin baselines: exact percentiles, causality, lag, edges."""

import math
import warnings

import numpy as np
import pytest

from analysis.baseline import (
    RunningPercentile,
    causal_baseline,
    centered_baseline,
    maximin_baseline,
)
from analysis.heap_window import MEDIAN, HeapWindows


def _float32_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Fluorescence-like values, exactly representable in float32 (the windows' storage),
    rounded to create ties."""
    return np.round(100 + 10 * rng.normal(size=shape), 1).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("q", [0.0, 8.0, 50.0, 91.3, 100.0])
def test_online_percentile_equals_numpy_over_every_trailing_window(q):
    rng = np.random.default_rng(10)
    n_rois, n_frames, window_frames = 4, 300, 37
    F = _float32_values(rng, (n_rois, n_frames))
    running = RunningPercentile(n_rois, window_frames, q)
    out = np.empty(n_rois)
    for t in range(n_frames):
        running.update(F[:, t], out)
        window = F[:, max(0, t - window_frames + 1) : t + 1]  # partial at the start
        np.testing.assert_allclose(out, np.percentile(window, q, axis=1), rtol=1e-13, atol=0)


def test_heap_windows_median_and_nan_handling_match_numpy_nan_functions():
    rng = np.random.default_rng(11)
    n_rois, n_frames, window_frames = 3, 200, 20
    values = _float32_values(rng, (n_rois, n_frames))
    values[rng.random(values.shape) < 0.2] = np.nan
    values[1, 50:80] = np.nan  # a whole window of NaN
    median_windows = HeapWindows(n_rois, window_frames, MEDIAN)
    p25_windows = HeapWindows(n_rois, window_frames, 25.0)
    median, p25 = np.empty(n_rois), np.empty(n_rois)
    for t in range(n_frames):
        median_windows.push(values[:, t])
        p25_windows.push(values[:, t])
        block = values[:, max(0, t - window_frames + 1) : t + 1]
        median_windows.value(median)
        p25_windows.value(p25)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN window -> NaN
            np.testing.assert_allclose(median, np.nanmedian(block, axis=1), rtol=1e-13)
            np.testing.assert_allclose(p25, np.nanpercentile(block, 25, axis=1), rtol=1e-13)
        # the window covers the last W frames in time, NaN included; the heaps hold its
        # finite values
        np.testing.assert_array_equal(median_windows.window(0), block[0])
        for r in range(n_rois):
            finite = np.sort(block[r][~np.isnan(block[r])])
            np.testing.assert_array_equal(median_windows.sorted_finite(r), finite)
    np.testing.assert_array_equal(median_windows.nan_count, np.isnan(values).sum(axis=1))


def test_batch_causal_baseline_equals_the_online_class_exactly():
    rng = np.random.default_rng(12)
    F = _float32_values(rng, (5, 500))
    F[2, 100:130] = np.nan
    running = RunningPercentile(5, 60, 8.0)
    online = np.empty_like(F)
    for t in range(F.shape[1]):
        running.update(F[:, t], online[:, t])
    np.testing.assert_array_equal(causal_baseline(F, 60, 8.0), online)
    np.testing.assert_array_equal(causal_baseline(F[3], 60, 8.0), online[3])


def test_trailing_low_percentile_follows_a_step_down_after_q_percent_of_the_window():
    # W values, k of them at the new (lower) level b: the q-th percentile sits at sorted
    # position (W - 1) q / 100 = 7.92 for W = 100, q = 8, so it is still a with k <= 7 new
    # values, interpolated at k = 8 and equal to b from k = 9 on: a lag of ~q/100 * W frames.
    window_frames, q, a, b, step = 100, 8.0, 100.0, 60.0, 300
    F = np.where(np.arange(600) < step, a, b)
    baseline = causal_baseline(F, window_frames, q)
    k = np.arange(1, 20)  # number of new values in the window at frame step + k - 1
    response = baseline[step + k - 1]
    assert np.all(response[k <= 7] == a)
    assert a > response[k == 8][0] > b
    assert np.all(response[k >= 9] == b)
    assert 9 == pytest.approx(q / 100 * window_frames, abs=1.5)


def test_trailing_low_percentile_follows_a_step_up_only_after_most_of_the_window():
    # rising: the old, low values stay at the bottom until fewer than ~q/100 * W are left,
    # i.e. after ~(1 - q/100) * W = 92 frames (a at k <= 91, b from k = 93)
    window_frames, q, a, b, step = 100, 8.0, 60.0, 100.0, 300
    F = np.where(np.arange(600) < step, a, b)
    baseline = causal_baseline(F, window_frames, q)
    k = np.arange(1, 120)
    response = baseline[step + k - 1]
    assert np.all(response[k <= 91] == a)
    assert np.all(response[k >= 93] == b)


def test_centered_baseline_is_the_causal_one_shifted_earlier_by_half_a_window():
    rng = np.random.default_rng(13)
    n_frames, window_frames, q = 400, 51, 8.0
    F = _float32_values(rng, (3, n_frames))
    causal = causal_baseline(F, window_frames, q)
    centered = centered_baseline(F, window_frames, q)
    lead = window_frames - 1 - window_frames // 2
    np.testing.assert_array_equal(centered[:, : n_frames - lead], causal[:, lead:])
    # by definition: the percentile of the centred window, clipped at both ends
    for t in (0, 10, 200, n_frames - 5, n_frames - 1):
        window = F[:, max(0, t - window_frames // 2) : t + lead + 1]
        np.testing.assert_allclose(centered[:, t], np.percentile(window, q, axis=1), rtol=1e-13)


def test_centered_baseline_responds_to_a_step_before_it_happens():
    window_frames, q, step = 100, 8.0, 300
    F = np.where(np.arange(600) < step, 100.0, 60.0)
    causal = causal_baseline(F, window_frames, q)
    centered = centered_baseline(F, window_frames, q)
    first_causal = int(np.argmax(causal == 60.0))
    first_centered = int(np.argmax(centered == 60.0))
    assert first_causal > step  # causal: only after the step
    assert first_centered < step  # non-causal: anticipates it
    assert first_causal - first_centered == window_frames - 1 - window_frames // 2


def _maximin_reference(trace: np.ndarray, window_frames: int, sigma_frames: float) -> np.ndarray:
    """suite2p's recipe written out directly: Gaussian filter (truncate 4 sigma, mirrored
    edges), then a centred running min and a centred running max (windows clipped)."""
    radius = int(4 * sigma_frames + 0.5)
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (x / sigma_frames) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(trace, radius, mode="symmetric")
    smooth = np.array([np.dot(padded[t : t + 2 * radius + 1], kernel) for t in range(trace.size)])
    left, right = window_frames // 2, window_frames - 1 - window_frames // 2
    n = trace.size
    low = np.array([smooth[max(0, t - left) : min(n, t + right + 1)].min() for t in range(n)])
    return np.array([low[max(0, t - left) : min(n, t + right + 1)].max() for t in range(n)])


def test_maximin_matches_a_direct_transcription_of_the_suite2p_recipe():
    rng = np.random.default_rng(14)
    F = 100 + 5 * rng.normal(size=(2, 700))
    for window_frames, sigma_frames in ((60, 3.0), (61, 10.0)):
        expected = np.array([_maximin_reference(f, window_frames, sigma_frames) for f in F])
        result = maximin_baseline(F, window_frames, sigma_frames)
        np.testing.assert_allclose(result, expected, rtol=1e-12)


def test_maximin_ignores_sparse_positive_transients_and_tracks_slow_drift():
    rng = np.random.default_rng(15)
    n_frames, rate_hz = 6000, 30.0
    t_s = np.arange(n_frames) / rate_hz
    true_baseline = 100 + 10 * np.sin(2 * math.pi * t_s / 600)  # slow drift (10-minute period)
    spikes = rng.random(n_frames) < 0.003  # 0.1 Hz
    calcium = np.zeros(n_frames)
    for t in range(1, n_frames):
        calcium[t] = calcium[t - 1] * math.exp(-1 / (0.5 * rate_hz)) + spikes[t]
    F = true_baseline * (1 + calcium) + 0.5 * rng.normal(size=n_frames)
    baseline = maximin_baseline(F, int(10 * rate_hz), 10.0)
    inner = slice(300, n_frames - 300)
    # within 2 % of F0, although transients reach +100 %
    assert np.max(np.abs(baseline[inner] - true_baseline[inner])) < 2.0
    np.testing.assert_allclose(maximin_baseline(np.full(50, 7.0), 20, 2.0), 7.0)


def test_bad_arguments_raise_value_errors_naming_the_parameter():
    with pytest.raises(ValueError, match="window_frames"):
        RunningPercentile(3, 0)
    with pytest.raises(ValueError, match="percentile"):
        RunningPercentile(3, 10, 120.0)
    with pytest.raises(ValueError, match="n_rois"):
        RunningPercentile(0, 10)
    running = RunningPercentile(3, 10)
    with pytest.raises(ValueError, match="out"):
        running.update(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="percentile"):
        causal_baseline(np.zeros(10), 5, -1.0)
    with pytest.raises(ValueError, match="sigma_frames"):
        maximin_baseline(np.zeros(10), 5, -1.0)
    with pytest.raises(ValueError, match="NaN"):
        maximin_baseline(np.array([1.0, np.nan, 2.0]), 5, 1.0)
