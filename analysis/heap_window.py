"""Per-ROI sliding windows with one running order statistic, O(log W) per value (two heaps).

Each ROI owns a window of its last ``window_frames`` (W) values. One order statistic of every
window is kept up to date, fixed when the windows are made:

- a percentile q in [0, 100], numpy's default ("linear") definition: with the n finite values
  of the window sorted as a[0] <= ... <= a[n-1], the virtual index is i = (n - 1) * q / 100 and
  the result interpolates between a[floor(i)] and a[floor(i) + 1] (in float64, written as
  numpy writes its lerp, so results agree with ``np.nanpercentile`` to the last bit or nearly);
- or the median (``MEDIAN``): a[(n - 1) / 2] for odd n, the mean of the two middle values for
  even n, like ``np.nanmedian``.

Layout (all preallocated; pushing and querying allocate nothing):

- ``ring`` (float32, (n_rois, W)): the raw values in arrival order, NaN included. The write
  position ``head`` is shared by all ROIs, because every ROI receives one value per frame;
  ``position = [count, head]`` (count = frames in the window, reaches W and stays there).
- two binary heaps per ROI in one row of ``heap_values`` (float32) and ``heap_slots``: the
  "low" heap in columns [0, low_capacity) holds the k(n) lowest finite values, the "high" heap
  in columns [low_capacity, heap width) holds the other n - k(n), with
  k(n) = min(n, floor((n - 1) q / 100) + 1) (q = 50 for the median). So the top of the low
  heap (its maximum) is a[floor(i)] and the top of the high heap (its minimum) is
  a[floor(i) + 1]: the statistic is read from the two tops. Both heaps are min-heaps in memory;
  the low heap stores the negated values (exact in floating point), so one sift routine
  serves both. ``heap_slots`` holds, for each heap entry, the ring slot its value came from.
- ``heap_column`` (index dtype, (n_rois, W)): for ring slot s, the column of heap_values that
  holds its value, or -1 if the value is NaN. This is what makes removing the value that
  leaves the window O(log W) instead of a search.
- ``n_low``, ``n_high`` (int64, (n_rois,)): heap sizes; n_low + n_high = finite values in the
  window. ``nan_count`` (int64, (n_rois,)): NaN values received per ROI.

Cost per ROI and frame: when the entering value can take the leaving value's place in the
same heap (most frames for a stationary signal), one sift from that place: O(log W) worst,
O(1) expected for random data. Otherwise at most one more element moves between the two heaps
(a sift from a top: O(log W)). Memory per ROI: W * (4 + 4 + 2 * index bytes) bytes (ring,
heap values, heap slots, heap columns): 14.4 kB for W = 1800 with int16 indices.

NaN handling (explicit, never silent corruption): a NaN is stored in the ring, so the window
always covers exactly the last W frames in time, but never in the heaps. Queries therefore
ignore NaN like ``np.nanpercentile`` / ``np.nanmedian``; a window holding no finite value gives
NaN. +/-inf are kept and ordered like numbers; a percentile interpolating next to one follows
IEEE arithmetic (at an exact rank, e.g. q = 0, the value itself is returned where numpy gives
NaN). The sign of a zero is not kept by the low heap (-0.0 may come back as 0.0).

Values are stored as float32 (``WINDOW_DTYPE``): a float64 input is rounded to float32 on
entry, so results equal numpy's on the float32-rounded values.

Use from other numba kernels: ``HeapWindows.state`` is a named tuple of the arrays and
settings; per frame, call ``push_roi(state, r, value)`` for every ROI r (it returns the new
statistic of window r; ``push_value`` does not compute it) and then ``finish_frame(state)``
once.

Note for maintainers: numba's on-disk cache (cache=True) of a kernel in another module that
inlines these functions is not invalidated when this file changes; delete the ``*.nbi`` /
``*.nbc`` files in ``analysis/__pycache__`` after editing it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

# Window values are stored as float32: the loop's fluorescence and dF/F are float32 already,
# and fewer bytes per window mean fewer cache misses. Statistics are computed in float64.
WINDOW_DTYPE = np.float32

#: ``statistic`` argument of HeapWindows for the median (any number in [0, 100] is a percentile)
MEDIAN = "median"

# Indices into the shared position array (an array so numba kernels can update it).
_COUNT = 0  # number of frames currently in the window (<= W)
_HEAD = 1  # ring slot the next frame is written to


class WindowState(NamedTuple):
    """All arrays and settings of one set of heap windows (see the module docstring)."""

    ring: np.ndarray  # float32 (n_rois, W): values in arrival order, NaN included
    heap_values: np.ndarray  # float32 (n_rois, width): low heap (negated), then high heap
    heap_slots: np.ndarray  # index dtype (n_rois, width): ring slot of each heap entry
    heap_column: np.ndarray  # index dtype (n_rois, W): heap column of each ring slot, -1: NaN
    n_low: np.ndarray  # int64 (n_rois,): size of the low heap
    n_high: np.ndarray  # int64 (n_rois,): size of the high heap
    nan_count: np.ndarray  # int64 (n_rois,): NaN values received
    position: np.ndarray  # int64 (2,): [count, head]
    q: float  # percentile in [0, 100] that splits the heaps (50 for the median)
    median: bool  # True: the statistic is the median, else numpy's percentile q
    low_capacity: int  # first column of the high heap


# Small helpers are inlined into their callers at numba's IR level (inline="always"): as
# separate compiled functions they cost more in call overhead than the heap work itself
# (measured: 1.7x slower for 1,500 ROIs).
_helper = numba.njit(cache=True, nogil=True, inline="always")


@numba.njit(cache=True, nogil=True)
def low_size(n: int, q: float) -> int:
    """k(n): how many of n finite values the low heap holds for percentile q (0 if n == 0)."""
    if n == 0:
        return 0
    below = int(math.floor((n - 1) * (q / 100.0)))  # the same expression as the query's
    return min(n, below + 1)


@_helper
def _sift_up(values, slots, column, base, hole, key, slot) -> None:
    """Put (key, slot) into the min-heap at values[base:] starting at index hole, moving
    larger parents down until the heap order holds; keep column[] in step."""
    while hole > 0:
        parent = (hole - 1) >> 1
        parent_key = values[base + parent]
        if parent_key <= key:
            break
        moved = slots[base + parent]
        values[base + hole] = parent_key
        slots[base + hole] = moved
        column[moved] = base + hole
        hole = parent
    values[base + hole] = key
    slots[base + hole] = slot
    column[slot] = base + hole


@_helper
def _sift_down(values, slots, column, base, size, hole, key, slot) -> None:
    """Put (key, slot) into the min-heap values[base:base + size] starting at index hole,
    moving smaller children up until the heap order holds; keep column[] in step."""
    while True:
        child = 2 * hole + 1
        if child >= size:
            break
        child_key = values[base + child]
        right = child + 1
        if right < size:
            right_key = values[base + right]
            if right_key < child_key:
                child = right
                child_key = right_key
        if key <= child_key:
            break
        moved = slots[base + child]
        values[base + hole] = child_key
        slots[base + hole] = moved
        column[moved] = base + hole
        hole = child
    values[base + hole] = key
    slots[base + hole] = slot
    column[slot] = base + hole


@_helper
def _place(values, slots, column, base, size, hole, key, slot) -> None:
    """Fill the hole at index hole of a heap of size entries (hole included) with (key, slot).

    The rest of the heap is in order, so the new key moves either up or down, never both."""
    if hole > 0 and values[base + ((hole - 1) >> 1)] > key:
        _sift_up(values, slots, column, base, hole, key, slot)
    else:
        _sift_down(values, slots, column, base, size, hole, key, slot)


@_helper
def _remove(values, slots, column, base, size, hole) -> None:
    """Remove the entry at index hole from a heap of size entries (the caller shrinks size)."""
    last = size - 1
    if hole != last:
        _place(values, slots, column, base, last, hole, values[base + last], slots[base + last])


@_helper
def _low_to_high(values, slots, column, n_low, n_high, low_capacity) -> None:
    """Move the largest value of the low heap to the high heap (sizes updated by the caller)."""
    key = values[0]
    slot = slots[0]
    _remove(values, slots, column, 0, n_low, 0)
    _sift_up(values, slots, column, low_capacity, n_high, -key, slot)


@_helper
def _high_to_low(values, slots, column, n_low, n_high, low_capacity) -> None:
    """Move the smallest value of the high heap to the low heap (sizes updated by the caller)."""
    key = values[low_capacity]
    slot = slots[low_capacity]
    _remove(values, slots, column, low_capacity, n_high, 0)
    _sift_up(values, slots, column, 0, n_low, -key, slot)


@_helper
def _update_heaps(state: WindowState, r: int, new, slot: int, window_was_full: bool) -> None:
    """Window r: the value in ring slot ``slot`` (if the window was full) leaves the heaps and
    ``new`` (float32, already written to the ring) enters them unless it is NaN."""
    values = state.heap_values[r]
    slots = state.heap_slots[r]
    column = state.heap_column[r]
    low_capacity = state.low_capacity
    n_low = state.n_low[r]
    n_high = state.n_high[r]
    new_is_finite = not math.isnan(new)
    old_column = column[slot] if window_was_full else -1  # -1: nothing finite leaves

    if old_column >= 0 and new_is_finite:
        # Same number of finite values, so the heap sizes stay; new takes old's place.
        if old_column < low_capacity:  # old is in the low heap
            if n_high == 0 or new <= values[low_capacity]:
                _place(values, slots, column, 0, n_low, old_column, -new, slot)
            else:  # new belongs above: the high heap's minimum moves down into old's place
                top_key = values[low_capacity]
                top_slot = slots[low_capacity]
                _place(values, slots, column, 0, n_low, old_column, -top_key, top_slot)
                _sift_down(values, slots, column, low_capacity, n_high, 0, new, slot)
        else:  # old is in the high heap
            hole = old_column - low_capacity
            if n_low == 0 or new >= -values[0]:
                _place(values, slots, column, low_capacity, n_high, hole, new, slot)
            else:  # new belongs below: the low heap's maximum moves up into old's place
                top_key = values[0]
                top_slot = slots[0]
                _place(values, slots, column, low_capacity, n_high, hole, -top_key, top_slot)
                _sift_down(values, slots, column, 0, n_low, 0, -new, slot)
        return

    if old_column >= 0:  # a finite value leaves, a NaN enters
        if old_column < low_capacity:
            _remove(values, slots, column, 0, n_low, old_column)
            n_low -= 1
        else:
            _remove(values, slots, column, low_capacity, n_high, old_column - low_capacity)
            n_high -= 1
    if new_is_finite:  # nothing finite leaves, a finite value enters
        # Sizes after this frame: target in the low heap, the rest in the high heap. A heap
        # already at its final size does not grow (it could overflow its columns): its top
        # moves to the other heap instead.
        target = low_size(n_low + n_high + 1, state.q)
        if n_low > 0 and new <= -values[0]:  # new belongs in the low heap
            if n_low < target:
                _sift_up(values, slots, column, 0, n_low, -new, slot)
                n_low += 1
            else:  # the low heap's maximum moves up, new takes its place
                top_key = values[0]
                top_slot = slots[0]
                _sift_down(values, slots, column, 0, n_low, 0, -new, slot)
                _sift_up(values, slots, column, low_capacity, n_high, -top_key, top_slot)
                n_high += 1
        elif n_high < n_low + n_high + 1 - target:  # new belongs in the high heap, which grows
            _sift_up(values, slots, column, low_capacity, n_high, new, slot)
            n_high += 1
        elif n_high == 0 or new <= values[low_capacity]:  # new is the next low value
            _sift_up(values, slots, column, 0, n_low, -new, slot)
            n_low += 1
        else:  # the high heap's minimum moves down, new takes its place
            top_key = values[low_capacity]
            top_slot = slots[low_capacity]
            _sift_down(values, slots, column, low_capacity, n_high, 0, new, slot)
            _sift_up(values, slots, column, 0, n_low, -top_key, top_slot)
            n_low += 1
    else:
        column[slot] = -1
    # rebalance so that the low heap holds k(n) values (after a removal; never overflows)
    target = low_size(n_low + n_high, state.q)
    while n_low > target:
        _low_to_high(values, slots, column, n_low, n_high, low_capacity)
        n_low -= 1
        n_high += 1
    while n_low < target:
        _high_to_low(values, slots, column, n_low, n_high, low_capacity)
        n_low += 1
        n_high -= 1
    state.n_low[r] = n_low
    state.n_high[r] = n_high


@numba.njit(cache=True, nogil=True)
def statistic_roi(state: WindowState, r: int) -> float:
    """The order statistic (percentile q or median) of window r; NaN if it has no finite value."""
    n_low = state.n_low[r]
    n = n_low + state.n_high[r]
    if n == 0:
        return np.nan
    values = state.heap_values[r]
    below_value = -np.float64(values[0])  # a[k(n) - 1], the low heap's maximum
    if state.median:
        if n % 2 == 1:
            return below_value
        return (below_value + np.float64(values[state.low_capacity])) / 2.0
    virtual_index = (n - 1) * (state.q / 100.0)
    if virtual_index >= n - 1 or virtual_index <= 0.0:
        return below_value  # a[n - 1] or a[0]: the low heap holds n values or 1 value
    gamma = virtual_index - math.floor(virtual_index)
    a = below_value
    b = np.float64(values[state.low_capacity])  # a[floor(i) + 1], the high heap's minimum
    difference = b - a
    # numpy's _lerp: interpolate from the nearer end for accuracy
    if gamma >= 0.5:
        return b - difference * (1.0 - gamma)
    return a + difference * gamma


@numba.njit(cache=True, nogil=True)
def push_value(state: WindowState, r: int, value: float) -> None:
    """Push this frame's value into window r (call it for every ROI, then ``finish_frame``)."""
    head = state.position[_HEAD]
    window_was_full = state.position[_COUNT] == state.ring.shape[1]
    new = np.float32(value)
    state.ring[r, head] = new
    if math.isnan(new):
        state.nan_count[r] += 1
    _update_heaps(state, r, new, head, window_was_full)


@numba.njit(cache=True, nogil=True)
def push_roi(state: WindowState, r: int, value: float) -> float:
    """Push this frame's value into window r; return the window's new order statistic.

    Call it once for every ROI of a frame (any order), then ``finish_frame(state)``."""
    push_value(state, r, value)
    return statistic_roi(state, r)


@numba.njit(cache=True, nogil=True)
def finish_frame(state: WindowState) -> None:
    """Advance the shared ring position after every ROI got its value for this frame."""
    window_frames = state.ring.shape[1]
    head = state.position[_HEAD]
    state.position[_HEAD] = head + 1 if head + 1 < window_frames else 0
    if state.position[_COUNT] < window_frames:
        state.position[_COUNT] += 1


@numba.njit(cache=True, nogil=True)
def push_frame(state: WindowState, values: np.ndarray) -> None:
    """Push values[r] into window r for every ROI and advance the ring position."""
    for r in range(state.ring.shape[0]):
        push_value(state, r, values[r])
    finish_frame(state)


@numba.njit(cache=True, nogil=True)
def statistic_all(state: WindowState, out: np.ndarray) -> None:
    """out[r] = the order statistic of window r, for every ROI."""
    for r in range(state.ring.shape[0]):
        out[r] = statistic_roi(state, r)


def index_dtype(window_frames: int) -> type:
    """Smallest signed integer type for ring slots and heap columns (and -1)."""
    return np.int16 if window_frames <= np.iinfo(np.int16).max else np.int32


class HeapWindows:
    """Trailing windows of the last ``window_frames`` values of ``n_rois`` signals, each with
    one running order statistic: ``statistic`` = a percentile q in [0, 100] (numpy's linear
    definition) or ``MEDIAN``.

    ``push(values)`` adds one frame; ``value(out)`` writes the statistic of every window.
    All state is preallocated here; push and value allocate nothing. Other numba kernels can
    use ``state`` with ``push_roi`` / ``finish_frame`` to fuse the push into their own loop.
    """

    def __init__(self, n_rois: int, window_frames: int, statistic: float | str) -> None:
        n_rois = check_positive_int("n_rois", n_rois)
        window_frames = check_positive_int("window_frames", window_frames)
        if isinstance(statistic, str):
            if statistic != MEDIAN:
                raise ValueError(f"statistic must be a percentile or {MEDIAN!r}, got {statistic!r}")
            q, median = 50.0, True
        else:
            q, median = check_percentile("statistic", statistic), False
        self.n_rois = n_rois
        self.window_frames = window_frames
        self.statistic = MEDIAN if median else q
        # The low heap never holds more than k(W) values (k grows with n). The high heap holds
        # n - k(n), at most W - k(W) except for q within rounding of 100; take the maximum.
        low_capacity = low_size(window_frames, q)
        n = np.arange(1, window_frames + 1)
        k = np.minimum(n, np.floor((n - 1) * (q / 100.0)).astype(np.int64) + 1)  # as low_size
        high_capacity = int(np.max(n - k))
        width = low_capacity + high_capacity
        index = index_dtype(max(width, window_frames))
        self.state = WindowState(
            ring=np.zeros((n_rois, window_frames), dtype=WINDOW_DTYPE),
            heap_values=np.zeros((n_rois, width), dtype=WINDOW_DTYPE),
            heap_slots=np.zeros((n_rois, width), dtype=index),
            heap_column=np.full((n_rois, window_frames), -1, dtype=index),
            n_low=np.zeros(n_rois, dtype=np.int64),
            n_high=np.zeros(n_rois, dtype=np.int64),
            nan_count=np.zeros(n_rois, dtype=np.int64),
            position=np.zeros(2, dtype=np.int64),
            q=q,
            median=median,
            low_capacity=low_capacity,
        )

    @property
    def count(self) -> int:
        """Number of frames currently in the window (reaches window_frames and stays there)."""
        return int(self.state.position[_COUNT])

    @property
    def nan_count(self) -> np.ndarray:
        """NaN values received per ROI since the last reset (int64, (n_rois,))."""
        return self.state.nan_count

    @property
    def n_finite(self) -> np.ndarray:
        """Number of finite values in each window (new array, (n_rois,))."""
        return self.state.n_low + self.state.n_high

    def reset(self) -> None:
        """Forget all values (start of a new recording)."""
        self.state.n_low[:] = 0
        self.state.n_high[:] = 0
        self.state.nan_count[:] = 0
        self.state.position[:] = 0

    def push(self, values: np.ndarray) -> None:
        """Add one value per ROI (shape (n_rois,)); the oldest value leaves a full window."""
        check_row("values", values, self.n_rois)
        push_frame(self.state, values)

    def value(self, out: np.ndarray) -> np.ndarray:
        """Write the order statistic of every window into out (shape (n_rois,)); return out."""
        check_row("out", out, self.n_rois)
        statistic_all(self.state, out)
        return out

    def window(self, roi: int) -> np.ndarray:
        """Copy of one ROI's window in arrival order, oldest first (NaN included); for tests."""
        ring = self.state.ring
        count = self.count
        head = int(self.state.position[_HEAD])
        if count < self.window_frames:
            return ring[roi, :count].copy()
        return np.concatenate((ring[roi, head:], ring[roi, :head]))

    def sorted_finite(self, roi: int) -> np.ndarray:
        """The finite values of one ROI's window in ascending order, read from the two heaps
        (low heap, then high heap); for tests and debugging."""
        state = self.state
        low = -state.heap_values[roi, : state.n_low[roi]]
        start = state.low_capacity
        high = state.heap_values[roi, start : start + state.n_high[roi]]
        return np.concatenate((np.sort(low), np.sort(high)))


def check_positive_int(name: str, value: int) -> int:
    """Validate a count (ROIs, frames) and return it as int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_percentile(name: str, q: float) -> float:
    """Validate a percentile in [0, 100] and return it as float."""
    q = float(q)
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"{name} must be a percentile in [0, 100], got {q!r}")
    return q


def check_row(name: str, row: np.ndarray, n_rois: int) -> None:
    """Check that a per-frame array is a 1-D numpy array with one entry per ROI."""
    if not isinstance(row, np.ndarray) or row.shape != (n_rois,):
        shape = getattr(row, "shape", type(row).__name__)
        raise ValueError(f"{name} must be a numpy array of shape ({n_rois},), got {shape}")
