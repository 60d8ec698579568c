"""Sufficient statistics of a pairing window: what the coarse-graining tree is built from.

Pairing at every level needs only (design.md, "Greedy pairing"):

- the neuron second-moment matrix A = sum_t (x(t) - s)(x(t) - s)^T about a fixed shift s
  (the first frame: a constant neuron then gives exactly zero variance, and the cancellation in
  cov = A / T - m m^T stays small), with m = sum_t (x(t) - s) / T;
- the raw sums sum_t x_i(t) (level-0 normalization: mean of nonzero values = 1);
- which frames each neuron is nonzero in, as bit sets (1 bit per frame): a cluster is silent
  when all its members are zero (for nonnegative activity that is exactly "its sum is zero",
  science.md), so the OR of member bit sets counts its nonzero frames, and the normalization
  of every coarse variable follows from those counts (see tree.py).

Correlations of coarse variables are weighted block sums of the neuron covariance, so one
matrix serves all levels. The batch form computes A with one BLAS product, or, for sparse
activity (deconvolved traces are mostly exact zeros), by adding x_i x_j over the active pairs
of every frame, which costs sum_t a_t^2 / 2 for a_t active neurons instead of N^2 T / 2.
The online form (streaming.py) accumulates the same A block by block.

Only the upper triangle (i <= j) of A is authoritative; ``mirror_upper_to_lower`` copies it
into the lower triangle when full rows are needed (pairing scans rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

#: below this fraction of nonzero products the sparse accumulation beats BLAS on this machine
SPARSE_WORK_FRACTION = 0.02


@dataclass(frozen=True)
class PairingStatistics:
    """Statistics of the frames of one pairing window (all arrays float64 unless noted).

    second_moment: (>= N, >= N) sum_t (x - shift)(x - shift)^T; upper triangle authoritative,
        full rows valid when ``rows_valid`` (lower triangle mirrored).
    shifted_sums: (N,) sum_t (x - shift);  raw_sums: (N,) sum_t x.
    nonzero_bits: (N, words) uint64; bit t of neuron i set when x_i(t) != 0.
    """

    n_frames: int
    second_moment: np.ndarray
    shifted_sums: np.ndarray
    raw_sums: np.ndarray
    nonzero_bits: np.ndarray
    rows_valid: bool = True

    @property
    def n_neurons(self) -> int:
        return int(self.shifted_sums.shape[0])

    @property
    def means(self) -> np.ndarray:
        """Means of x - shift."""
        return self.shifted_sums / self.n_frames

    def variances(self) -> np.ndarray:
        n = self.n_neurons
        diag = np.diagonal(self.second_moment)[:n] / self.n_frames
        return diag - self.means**2

    def second_moments(self) -> np.ndarray:
        """sum_t (x - shift)^2 / T: the reference a variance is compared with (zero test)."""
        return np.diagonal(self.second_moment)[: self.n_neurons] / self.n_frames

    def nonzero_counts(self) -> np.ndarray:
        return popcount_rows(self.nonzero_bits)


def popcount_rows(bits: np.ndarray) -> np.ndarray:
    """Number of set bits in each row of a uint64 bit-set array."""
    return np.bitwise_count(bits).sum(axis=1, dtype=np.int64)


def nonzero_bitsets(activity: np.ndarray) -> np.ndarray:
    """(N, T) activity -> (N, ceil(T / 64)) uint64, bit t of row i = activity[i, t] != 0."""
    n, t = activity.shape
    packed = np.packbits(activity != 0, axis=1, bitorder="little")
    words = (t + 63) // 64
    padded = np.zeros((n, words * 8), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(np.uint64)


@numba.njit(cache=True, nogil=True)
def mirror_upper_to_lower(a: np.ndarray, n: int) -> None:
    """a[j, i] = a[i, j] for i < j < n, in 64 x 64 tiles (cache friendly transpose)."""
    tile = 64
    for i0 in range(0, n, tile):
        i1 = min(i0 + tile, n)
        for j0 in range(i0, n, tile):
            j1 = min(j0 + tile, n)
            for j in range(j0, j1):
                for i in range(i0, min(i1, j)):
                    a[j, i] = a[i, j]


@numba.njit(cache=True, nogil=True)
def _scan_rows(
    activity: np.ndarray, raw_sums: np.ndarray, frame_counts: np.ndarray, bits: np.ndarray
) -> None:
    """One pass over (N, T) activity: raw_sums[i] = sum_t x_i(t) (in increasing t, as a
    stream adds them), frame_counts[t] = active neurons in frame t, bit t of bits[i] set when
    x_i(t) != 0. bits must be zero on entry."""
    n, t_len = activity.shape
    for i in range(n):
        row = activity[i]
        bit_row = bits[i]
        total = 0.0
        for t in range(t_len):
            v = row[t]
            total += v
            if v != 0.0:
                frame_counts[t] += 1
                bit_row[t >> 6] |= np.uint64(1) << np.uint64(t & 63)
        raw_sums[i] = total


#: lowest set bit of a word w: ((w & -w) * _DE_BRUIJN_64) >> 58 is a distinct 6-bit code for each
#: bit position (a de Bruijn sequence); _DE_BRUIJN_INDEX maps the code back to the position
_DE_BRUIJN_64 = np.uint64(0x03F79D71B4CB0A89)
_DE_BRUIJN_INDEX = np.zeros(64, dtype=np.int64)
for _bit in range(64):
    _DE_BRUIJN_INDEX[(((1 << _bit) * 0x03F79D71B4CB0A89) & (2**64 - 1)) >> 58] = _bit


@numba.njit(cache=True, nogil=True)
def _sparse_second_moment(
    activity: np.ndarray,
    bits: np.ndarray,
    frame_counts: np.ndarray,
    de_bruijn_index: np.ndarray,
    out: np.ndarray,
) -> None:
    """out[i, j] += sum_t x_i(t) x_j(t) for i <= j over the nonzero entries only: the nonzero
    samples are found from the bit sets (lowest set bit by a de Bruijn multiplication), so
    only they are read, sorted into per-frame lists, and each frame adds the products of its
    active neurons (sum_t a_t^2 / 2 multiply-adds)."""
    n = activity.shape[0]
    t_len = frame_counts.shape[0]
    counts = np.zeros(t_len + 1, dtype=np.int64)
    for t in range(t_len):
        counts[t + 1] = counts[t] + frame_counts[t]
    fill = counts[:-1].copy()
    index = np.empty(counts[t_len], dtype=np.int64)
    value = np.empty(counts[t_len], dtype=np.float64)
    for i in range(n):  # rows in ascending order -> each frame's list is sorted by neuron
        row = activity[i]
        for w in range(bits.shape[1]):
            word = bits[i, w]
            while word != np.uint64(0):
                lowest = word & (~word + np.uint64(1))
                t = (w << 6) + de_bruijn_index[(lowest * _DE_BRUIJN_64) >> np.uint64(58)]
                index[fill[t]] = i
                value[fill[t]] = row[t]
                fill[t] += 1
                word ^= lowest
    for t in range(t_len):
        start = counts[t]
        stop = counts[t + 1]
        for p in range(start, stop):
            i = index[p]
            vi = value[p]
            row = out[i]
            for q in range(p, stop):
                row[index[q]] += vi * value[q]


def pairing_statistics(activity: np.ndarray) -> PairingStatistics:
    """Statistics of all frames of ``activity`` ((N, T) finite float64), full rows valid.

    One pass over the activity gives the raw sums, the bit sets and the active neurons per
    frame; the second moments then come from the nonzero samples (sparse, deconvolved
    activity) or from one BLAS product (dense activity), whichever does less work."""
    x = np.ascontiguousarray(activity, dtype=np.float64)
    n, t = x.shape
    raw_sums = np.empty(n)
    frame_counts = np.zeros(t, dtype=np.int64)
    bits = np.zeros((n, (t + 63) // 64), dtype=np.uint64)
    _scan_rows(x, raw_sums, frame_counts, bits)
    work_fraction = float(np.sum(frame_counts.astype(np.float64) ** 2) / (float(n) * n * t))
    if work_fraction < SPARSE_WORK_FRACTION:
        second = np.zeros((n, n))
        _sparse_second_moment(x, bits, frame_counts, _DE_BRUIJN_INDEX, second)
        mirror_upper_to_lower(second, n)
        shifted_sums = raw_sums.copy()  # shift 0
    else:
        shift = x[:, 0].copy()
        shifted = x - shift[:, None]
        second = shifted @ shifted.T
        # keep exactly the upper triangle as authoritative and the matrix exactly symmetric
        mirror_upper_to_lower(second, n)
        shifted_sums = shifted.sum(axis=1)
    return PairingStatistics(
        n_frames=t,
        second_moment=second,
        shifted_sums=shifted_sums,
        raw_sums=raw_sums,
        nonzero_bits=bits,
    )


@numba.njit(cache=True, nogil=True)
def gather_covariance(
    second: np.ndarray,
    scale: float,
    mean: np.ndarray,
    weights: np.ndarray,
    members: np.ndarray,
    out: np.ndarray,
) -> None:
    """out[c] = weighted covariance of the neurons members[c] (reading the upper triangle
    only): out[c, p, q] = w_i w_j (A[min, max] * scale - m_i m_j), i = members[c, p]."""
    n_clusters, k = members.shape
    for c in range(n_clusters):
        for p in range(k):
            i = members[c, p]
            for q in range(p, k):
                j = members[c, q]
                a = second[i, j] if i <= j else second[j, i]
                v = weights[i] * weights[j] * (a * scale - mean[i] * mean[j])
                out[c, p, q] = v
                out[c, q, p] = v
