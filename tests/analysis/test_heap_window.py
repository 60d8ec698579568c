"""Two-heap sliding windows: every frame's order statistic equals numpy's on the same window."""

import math
import warnings

import numpy as np
import pytest

from analysis.heap_window import (
    MEDIAN,
    HeapWindows,
    finish_frame,
    low_size,
    push_roi,
)


def _stream(rng: np.random.Generator, n_rois: int, n_frames: int) -> np.ndarray:
    """float32 values rounded to 0.1 (many ties), with scattered NaN and a NaN run longer
    than the windows in ROI 1."""
    values = np.round(rng.normal(size=(n_rois, n_frames)), 1).astype(np.float32)
    values[rng.random(values.shape) < 0.15] = np.nan
    values[1, 60:130] = np.nan
    return values


def _numpy_statistic(block: np.ndarray, statistic) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN window -> NaN
        if statistic == MEDIAN:
            return np.nanmedian(block, axis=1)
        return np.nanpercentile(block, statistic, axis=1)


def _sorted_reference(finite_sorted: np.ndarray, statistic) -> float:
    """numpy's linear percentile / median written out on sorted finite values (for windows
    with +/-inf, where numpy's interpolation gives NaN next to an infinite value)."""
    a = finite_sorted.astype(np.float64)
    n = a.size
    if n == 0:
        return math.nan
    with np.errstate(invalid="ignore"):  # inf - inf = NaN, as in IEEE arithmetic
        if statistic == MEDIAN:
            return a[n // 2] if n % 2 else (a[n // 2 - 1] + a[n // 2]) / 2.0
        virtual_index = (n - 1) * (statistic / 100.0)
        if virtual_index >= n - 1 or virtual_index <= 0.0:
            return a[n - 1] if virtual_index > 0 else a[0]
        below = math.floor(virtual_index)
        gamma = virtual_index - below
        difference = a[below + 1] - a[below]
        if gamma >= 0.5:
            return a[below + 1] - difference * (1.0 - gamma)
        return a[below] + difference * gamma


@pytest.mark.parametrize("statistic", [0.0, 8.0, 50.0, 100.0, 91.3, MEDIAN])
@pytest.mark.parametrize("window_frames", [1, 2, 7, 40])
def test_every_frame_equals_numpy_on_the_float32_window(statistic, window_frames):
    rng = np.random.default_rng(window_frames)
    n_rois, n_frames = 3, 260
    values = _stream(rng, n_rois, n_frames)
    windows = HeapWindows(n_rois, window_frames, statistic)
    out = np.empty(n_rois)
    for t in range(n_frames):  # includes the warm-up before the window is full
        windows.push(values[:, t])
        windows.value(out)
        block = values[:, max(0, t - window_frames + 1) : t + 1].astype(np.float64)
        np.testing.assert_allclose(
            out, _numpy_statistic(block, statistic), rtol=1e-13, atol=0, equal_nan=True
        )
        np.testing.assert_array_equal(windows.window(2), block[2])
    np.testing.assert_array_equal(windows.nan_count, np.isnan(values).sum(axis=1))


@pytest.mark.parametrize("statistic", [0.0, 8.0, 50.0, 100.0, MEDIAN])
def test_infinite_values_are_ordered_like_numbers(statistic):
    rng = np.random.default_rng(3)
    n_rois, n_frames, window_frames = 2, 300, 9
    values = _stream(rng, n_rois, n_frames)
    values[rng.random(values.shape) < 0.1] = np.inf
    values[rng.random(values.shape) < 0.1] = -np.inf
    windows = HeapWindows(n_rois, window_frames, statistic)
    out = np.empty(n_rois)
    for t in range(n_frames):
        windows.push(values[:, t])
        windows.value(out)
        for r in range(n_rois):
            block = values[r, max(0, t - window_frames + 1) : t + 1]
            finite_sorted = np.sort(block[~np.isnan(block)])
            np.testing.assert_array_equal(windows.sorted_finite(r), finite_sorted)
            expected = _sorted_reference(finite_sorted, statistic)
            assert out[r] == expected or (math.isnan(out[r]) and math.isnan(expected))


def _check_heap_invariants(windows: HeapWindows) -> None:
    """Heap order in both heaps, every low value <= every high value, k(n) values in the low
    heap, and the slot <-> column maps inverse to each other and to the ring contents."""
    state = windows.state
    base = state.low_capacity
    q = state.q
    for r in range(windows.n_rois):
        n_low, n_high = int(state.n_low[r]), int(state.n_high[r])
        assert n_low == low_size(n_low + n_high, q)
        for start, size in ((0, n_low), (base, n_high)):
            keys = state.heap_values[r, start : start + size]  # min-heaps (low: negated)
            children = np.arange(1, size)
            assert np.all(keys[(children - 1) // 2] <= keys[children])
            slots = state.heap_slots[r, start : start + size]
            np.testing.assert_array_equal(state.heap_column[r, slots], start + np.arange(size))
            sign = -1 if start == 0 else 1
            np.testing.assert_array_equal(state.ring[r, slots], sign * keys)
        if n_low and n_high:
            assert -state.heap_values[r, 0] <= state.heap_values[r, base]
        ring = windows.window(r)
        assert n_low + n_high == np.count_nonzero(~np.isnan(ring))


@pytest.mark.parametrize("statistic", [8.0, MEDIAN])
def test_heap_invariants_hold_after_many_pushes(statistic):
    rng = np.random.default_rng(4)
    n_rois, window_frames = 4, 150
    windows = HeapWindows(n_rois, window_frames, statistic)
    values = _stream(rng, n_rois, 2000)
    values[3, 500:900] = np.linspace(5, -5, 400)  # a monotonic stretch: long sifts
    for t in range(values.shape[1]):
        windows.push(values[:, t])
        if t % 97 == 0 or t == values.shape[1] - 1:
            _check_heap_invariants(windows)


def test_reset_forgets_everything():
    rng = np.random.default_rng(5)
    values = _stream(rng, 3, 120)
    windows = HeapWindows(3, 30, 8.0)
    for t in range(100):
        windows.push(values[:, t])
    windows.reset()
    assert windows.count == 0
    np.testing.assert_array_equal(windows.nan_count, 0)
    np.testing.assert_array_equal(windows.n_finite, 0)
    out = np.empty(3)
    np.testing.assert_array_equal(np.isnan(windows.value(out)), True)
    fresh = HeapWindows(3, 30, 8.0)
    expected = np.empty(3)
    for t in range(100, 120):  # after the reset: as if the stream started here
        windows.push(values[:, t])
        fresh.push(values[:, t])
        np.testing.assert_array_equal(windows.value(out), fresh.value(expected))
    _check_heap_invariants(windows)


def test_per_roi_kernel_returns_the_statistic_and_matches_the_class():
    rng = np.random.default_rng(6)
    values = _stream(rng, 3, 80)
    by_class = HeapWindows(3, 11, MEDIAN)
    by_kernel = HeapWindows(3, 11, MEDIAN)
    out = np.empty(3)
    for t in range(values.shape[1]):
        by_class.push(values[:, t])
        returned = [push_roi(by_kernel.state, r, values[r, t]) for r in (2, 0, 1)]  # any order
        finish_frame(by_kernel.state)
        np.testing.assert_array_equal(np.array(returned)[[1, 2, 0]], by_class.value(out))


def test_float64_input_is_rounded_to_float32_like_the_stored_window():
    windows = HeapWindows(1, 3, MEDIAN)
    for value in (0.1, 0.2, 0.3):
        windows.push(np.array([value]))
    out = np.empty(1)
    assert windows.value(out)[0] == np.float64(np.float32(0.2))


def test_bad_arguments_raise_value_errors_naming_the_parameter():
    with pytest.raises(ValueError, match="n_rois"):
        HeapWindows(0, 10, 8.0)
    with pytest.raises(ValueError, match="window_frames"):
        HeapWindows(2, 0, 8.0)
    with pytest.raises(ValueError, match="statistic"):
        HeapWindows(2, 10, 101.0)
    with pytest.raises(ValueError, match="statistic"):
        HeapWindows(2, 10, "mean")
    windows = HeapWindows(2, 10, 8.0)
    with pytest.raises(ValueError, match="values"):
        windows.push(np.zeros(3))
    with pytest.raises(ValueError, match="out"):
        windows.value(np.zeros(1))
