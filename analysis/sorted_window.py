"""Per-ROI sliding windows kept sorted, for running percentiles and medians in real time.

Each ROI owns a window of its last ``window_frames`` values, stored twice:

- ``ring``: the raw values in arrival order (a ring buffer whose write position ``head`` is
  shared by all ROIs, because every ROI receives exactly one value per frame);
- ``sorted_values``: the finite values of the same window in ascending order, packed at the
  front of the row (``n_finite`` of them).

A new frame replaces the oldest value of every row. The old value is found in the sorted row
by binary search, the new value's place likewise, and only the elements between the two
places move by one slot: O(distance) memory moves (at most W, about W/3 on average for
values drawn from a stationary distribution), no allocation.

NaN handling (explicit, never silent corruption): a NaN is stored in the ring, so the window
always covers exactly the last W frames in time, but it is never put into the sorted part.
Queries therefore ignore NaN like ``np.nanpercentile`` / ``np.nanmedian``; a window holding no
finite value returns NaN. ``nan_count`` counts, per ROI, the NaN values received. +/-inf are
kept and ordered like numbers; a percentile interpolating next to one follows IEEE arithmetic
(at an exact rank, e.g. q = 0, the value itself is returned where numpy gives NaN).

Values are stored as float32 (``WINDOW_DTYPE``): a float64 input is rounded to float32 on
entry, so results equal numpy's on the float32-rounded values. Percentiles use numpy's
default ("linear") definition: with the n finite values sorted as a[0] <= ... <= a[n-1], the
virtual index is i = (n - 1) * q / 100 and the result interpolates linearly between
a[floor(i)] and a[floor(i) + 1] (in float64, written as numpy writes it, so results agree with
``np.percentile`` to the last bit or nearly so).

Note for maintainers: numba's on-disk cache (cache=True) of a kernel in another module that
inlines these functions is not invalidated when this file changes; delete the ``*.nbi`` /
``*.nbc`` files in ``analysis/__pycache__`` after editing it.
"""

from __future__ import annotations

import math

import numba
import numpy as np

# Window values are stored as float32: the loop's fluorescence and dF/F are float32 already,
# and half the bytes per window halves the memory traffic of the shifts (for 500 ROIs x 1800
# frames the state of one window set is 7 MB, which stays in the L3 cache). Percentiles are
# interpolated in float64 from the stored values.
WINDOW_DTYPE = np.float32

# Indices into the shared position array (kept in an array so numba kernels can update it).
_COUNT = 0  # number of frames currently in the window (<= W)
_HEAD = 1  # ring slot the next frame is written to


@numba.njit(cache=True, nogil=True)
def _bisect_left(row: np.ndarray, value: float, lo: int, hi: int) -> int:
    """First index in row[lo:hi] whose element is >= value (row sorted ascending)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if row[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True)
def _bisect_right(row: np.ndarray, value: float, lo: int, hi: int) -> int:
    """First index in row[lo:hi] whose element is > value (row sorted ascending)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if value < row[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


@numba.njit(cache=True, nogil=True)
def _shift_left(row: np.ndarray, start: int, stop: int) -> None:
    """row[start:stop] = row[start + 1:stop + 1], elementwise from the left (overlap-safe).

    Written on views indexed from 0 so that LLVM can prove the indices non-negative and
    vectorise the copy (3x faster than indexing row directly with computed indices)."""
    destination = row[start:stop]
    source = row[start + 1 : stop + 1]
    for m in range(stop - start):
        destination[m] = source[m]


@numba.njit(cache=True, nogil=True)
def _shift_right(row: np.ndarray, start: int, stop: int) -> None:
    """row[start + 1:stop + 1] = row[start:stop], elementwise from the right (overlap-safe)."""
    destination = row[start + 1 : stop + 1]
    source = row[start:stop]
    for m in range(stop - start - 1, -1, -1):
        destination[m] = source[m]


@numba.njit(cache=True, nogil=True)
def sorted_insert(row: np.ndarray, n: int, value: float) -> int:
    """Insert a finite value into the sorted row[:n]; return the new length n + 1."""
    position = _bisect_right(row, value, 0, n)
    _shift_right(row, position, n)
    row[position] = value
    return n + 1


@numba.njit(cache=True, nogil=True)
def sorted_remove(row: np.ndarray, n: int, value: float) -> int:
    """Remove one element equal to value from the sorted row[:n]; return n - 1."""
    position = _bisect_left(row, value, 0, n)
    _shift_left(row, position, n - 1)
    return n - 1


@numba.njit(cache=True, nogil=True)
def sorted_replace(row: np.ndarray, n: int, old: float, new: float) -> None:
    """Replace one element equal to old in the sorted row[:n] by new, keeping the order.

    Only the elements strictly between old's and new's positions move, by one slot.
    """
    i = _bisect_left(row, old, 0, n)
    if new > old:
        # elements row[i+1 .. j] are < new: move them one slot left, new goes to j
        j = _bisect_left(row, new, i + 1, n) - 1
        _shift_left(row, i, j)
        row[j] = new
    elif new < old:
        # elements row[j .. i-1] are > new: move them one slot right, new goes to j
        j = _bisect_right(row, new, 0, i)
        _shift_right(row, j, i)
        row[j] = new
    else:
        row[i] = new


@numba.njit(cache=True, nogil=True)
def sorted_percentile(row: np.ndarray, n: int, q: float) -> float:
    """numpy's default (linear) percentile q in [0, 100] of the sorted row[:n]; NaN if n == 0."""
    if n == 0:
        return np.nan
    virtual_index = (n - 1) * (q / 100.0)
    if virtual_index >= n - 1:
        return np.float64(row[n - 1])
    if virtual_index <= 0.0:
        return np.float64(row[0])
    below = math.floor(virtual_index)
    gamma = virtual_index - below
    a = np.float64(row[below])
    b = np.float64(row[below + 1])
    difference = b - a
    # numpy's _lerp: interpolate from the nearer end for accuracy
    if gamma >= 0.5:
        return b - difference * (1.0 - gamma)
    return a + difference * gamma


@numba.njit(cache=True, nogil=True)
def sorted_median(row: np.ndarray, n: int) -> float:
    """Median of the sorted row[:n] (mean of the two middle values if n is even); NaN if n == 0."""
    if n == 0:
        return np.nan
    middle = n // 2
    if n % 2 == 1:
        return np.float64(row[middle])
    return (np.float64(row[middle - 1]) + np.float64(row[middle])) / 2.0


@numba.njit(cache=True, nogil=True)
def push_value(
    sorted_row: np.ndarray, n_finite: int, old: float, window_was_full: bool, new: float
) -> int:
    """Update one ROI's sorted row for a frame where ``new`` enters and, if the window was full,
    ``old`` (the value leaving the ring) leaves. NaN values are never in the sorted row.

    Returns the new number of finite values.
    """
    old_in_sorted = window_was_full and not math.isnan(old)
    new_is_finite = not math.isnan(new)
    if old_in_sorted and new_is_finite:
        sorted_replace(sorted_row, n_finite, old, new)
        return n_finite
    if old_in_sorted:
        return sorted_remove(sorted_row, n_finite, old)
    if new_is_finite:
        return sorted_insert(sorted_row, n_finite, new)
    return n_finite


@numba.njit(cache=True, nogil=True)
def push_frame(
    sorted_values: np.ndarray,
    ring: np.ndarray,
    n_finite: np.ndarray,
    nan_count: np.ndarray,
    position: np.ndarray,
    values: np.ndarray,
) -> None:
    """Push one value per ROI (values[r] into window r); the oldest value leaves full windows."""
    n_rois, window_frames = ring.shape
    count = position[_COUNT]
    head = position[_HEAD]
    window_was_full = count == window_frames
    for r in range(n_rois):
        new = np.float32(values[r])
        old = ring[r, head]
        ring[r, head] = new
        if math.isnan(new):
            nan_count[r] += 1
        n_finite[r] = push_value(sorted_values[r], n_finite[r], old, window_was_full, new)
    position[_HEAD] = head + 1 if head + 1 < window_frames else 0
    if not window_was_full:
        position[_COUNT] = count + 1


@numba.njit(cache=True, nogil=True)
def percentile_all(
    sorted_values: np.ndarray, n_finite: np.ndarray, q: float, out: np.ndarray
) -> None:
    """out[r] = percentile q of window r (NaN for a window without finite values)."""
    for r in range(sorted_values.shape[0]):
        out[r] = sorted_percentile(sorted_values[r], n_finite[r], q)


@numba.njit(cache=True, nogil=True)
def median_all(sorted_values: np.ndarray, n_finite: np.ndarray, out: np.ndarray) -> None:
    """out[r] = median of window r (NaN for a window without finite values)."""
    for r in range(sorted_values.shape[0]):
        out[r] = sorted_median(sorted_values[r], n_finite[r])


class SortedWindows:
    """Trailing windows of the last ``window_frames`` values of ``n_rois`` signals, kept sorted.

    All state is preallocated here; ``push`` and the queries allocate nothing. Other modules'
    numba kernels may call the module-level kernels on the public arrays directly to fuse the
    push and the query into one pass over the ROIs.
    """

    def __init__(self, n_rois: int, window_frames: int) -> None:
        n_rois = check_positive_int("n_rois", n_rois)
        window_frames = check_positive_int("window_frames", window_frames)
        self.n_rois = n_rois
        self.window_frames = window_frames
        self.sorted_values = np.zeros((n_rois, window_frames), dtype=WINDOW_DTYPE)
        self.ring = np.zeros((n_rois, window_frames), dtype=WINDOW_DTYPE)
        self.n_finite = np.zeros(n_rois, dtype=np.int64)
        self.nan_count = np.zeros(n_rois, dtype=np.int64)
        self.position = np.zeros(2, dtype=np.int64)

    @property
    def count(self) -> int:
        """Number of frames currently in the window (reaches window_frames and stays there)."""
        return int(self.position[_COUNT])

    def reset(self) -> None:
        """Forget all values (start of a new recording)."""
        self.n_finite[:] = 0
        self.nan_count[:] = 0
        self.position[:] = 0

    def push(self, values: np.ndarray) -> None:
        """Add one value per ROI (shape (n_rois,)); the oldest value leaves a full window."""
        check_row("values", values, self.n_rois)
        push_frame(
            self.sorted_values, self.ring, self.n_finite, self.nan_count, self.position, values
        )

    def percentile(self, q: float, out: np.ndarray) -> np.ndarray:
        """Write numpy's linear percentile q (0-100) of every window into out; return out."""
        q = check_percentile("q", q)
        check_row("out", out, self.n_rois)
        percentile_all(self.sorted_values, self.n_finite, q, out)
        return out

    def median(self, out: np.ndarray) -> np.ndarray:
        """Write the exact median of every window into out; return out."""
        check_row("out", out, self.n_rois)
        median_all(self.sorted_values, self.n_finite, out)
        return out

    def window(self, roi: int) -> np.ndarray:
        """Copy of one ROI's window in arrival order, oldest first (NaN included); for tests."""
        count = self.count
        head = int(self.position[_HEAD])
        if count < self.window_frames:
            return self.ring[roi, :count].copy()
        return np.concatenate((self.ring[roi, head:], self.ring[roi, :head]))


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
