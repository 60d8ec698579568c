"""Greedy pairing of the most correlated variables (science.md section 4, step 3).

Definition: among the variables still available, take the pair (i, j) with the largest Pearson
correlation, remove both, repeat until floor(n/2) pairs exist. With odd n the one variable left
over is dropped (for this and all later levels).

Tie rule (deterministic, documented in docs/ANALYSIS_RG.md): among equal correlations the pair
with the smallest first index i wins, then the smallest second index j (i < j). This is the
pair numpy's ``argmax`` finds first in the full symmetric matrix (row-major order), so a
straightforward implementation that repeatedly takes ``argmax`` of the masked matrix makes the
same choices.

Constant variables (zero variance, e.g. always silent) have no defined correlation; they are
treated as correlation 0 with every other variable (science.md: "treat as 0 and say so").

Algorithm (design.md, "Greedy pairing"): every row keeps its best available partner (largest
correlation, ties -> smallest index) in a max-heap keyed by (correlation, -row). The heap top
is checked lazily: if the row was taken it is discarded, if only its partner was taken the row
is rescanned and pushed again. Row maxima can only fall as variables are removed, so the first
valid top is the global maximum, and among equal maxima it has the smallest row index - whose
best partner is then the smallest j > i with that value: exactly the tie rule. The heap never
holds more than n entries. Cost: one pass over the matrix plus one row scan per stale top,
amortised O(n^2) instead of sorting n^2 / 2 correlations.

Correlations are computed on the fly from a covariance-like matrix, so no n x n correlation
matrix is stored:

    r_ij = (s_ij * scale - mean_i * mean_j) * (inv_sd_i * inv_sd_j)

(the product of the inverse SDs is formed first so r_ij == r_ji bit for bit). Level 0 passes
the raw second-moment matrix sum_t (x - shift)(x - shift)^T with scale = 1/T and the means of
x - shift; coarser levels pass their covariance with scale = 1 and zero means.
"""

from __future__ import annotations

import numba
import numpy as np

#: a variance at or below this fraction of its reference (see ``inverse_sd``) counts as zero
ZERO_VARIANCE_RTOL = 1e-12


@numba.njit(cache=True, nogil=True, inline="always")
def _before(v1: float, r1: int, v2: float, r2: int) -> bool:
    """Heap order: larger correlation first, then smaller row index."""
    return v1 > v2 or (v1 == v2 and r1 < r2)


@numba.njit(cache=True, nogil=True)
def _heap_push(
    values: np.ndarray, rows: np.ndarray, partners: np.ndarray, size: int, v: float, r: int, p: int
) -> int:
    k = size
    values[k] = v
    rows[k] = r
    partners[k] = p
    while k > 0:
        parent = (k - 1) >> 1
        if _before(values[k], rows[k], values[parent], rows[parent]):
            values[k], values[parent] = values[parent], values[k]
            rows[k], rows[parent] = rows[parent], rows[k]
            partners[k], partners[parent] = partners[parent], partners[k]
            k = parent
        else:
            break
    return size + 1


@numba.njit(cache=True, nogil=True)
def _heap_pop(values: np.ndarray, rows: np.ndarray, partners: np.ndarray, size: int) -> int:
    """Remove the top (caller has read it); return the new size."""
    size -= 1
    values[0] = values[size]
    rows[0] = rows[size]
    partners[0] = partners[size]
    k = 0
    while True:
        left = 2 * k + 1
        if left >= size:
            break
        best = left
        right = left + 1
        if right < size and _before(values[right], rows[right], values[left], rows[left]):
            best = right
        if _before(values[best], rows[best], values[k], rows[k]):
            values[k], values[best] = values[best], values[k]
            rows[k], rows[best] = rows[best], rows[k]
            partners[k], partners[best] = partners[best], partners[k]
            k = best
        else:
            break
    return size


@numba.njit(cache=True, nogil=True)
def _best_partner(
    s: np.ndarray,
    scale: float,
    mean: np.ndarray,
    inv_sd: np.ndarray,
    available: np.ndarray,
    i: int,
    n: int,
) -> tuple[float, int]:
    """Largest correlation of row i with an available j != i (ties -> smallest j)."""
    best_value = -np.inf
    best_j = -1
    mi = mean[i]
    si = inv_sd[i]
    row = s[i]
    for j in range(n):
        if j == i or not available[j]:
            continue
        r = (row[j] * scale - mi * mean[j]) * (si * inv_sd[j])
        if r > best_value:
            best_value = r
            best_j = j
    return best_value, best_j


@numba.njit(cache=True, nogil=True)
def greedy_pairs_kernel(
    s: np.ndarray,
    scale: float,
    mean: np.ndarray,
    inv_sd: np.ndarray,
    n: int,
    pairs: np.ndarray,
    pair_correlations: np.ndarray,
) -> int:
    """Pair the first n variables; write pairs (i < j) in the order chosen; return the
    leftover index (-1 if n is even). pairs: (>= n // 2, 2) int64; pair_correlations likewise.
    """
    available = np.ones(n, dtype=np.bool_)
    heap_values = np.empty(max(n, 1), dtype=np.float64)
    heap_rows = np.empty(max(n, 1), dtype=np.int64)
    heap_partners = np.empty(max(n, 1), dtype=np.int64)
    size = 0
    if n >= 2:
        for i in range(n):
            v, j = _best_partner(s, scale, mean, inv_sd, available, i, n)
            size = _heap_push(heap_values, heap_rows, heap_partners, size, v, i, j)
    n_pairs = 0
    while n_pairs < n // 2:
        v = heap_values[0]
        i = heap_rows[0]
        j = heap_partners[0]
        size = _heap_pop(heap_values, heap_rows, heap_partners, size)
        if not available[i] or j < 0:
            continue
        if not available[j]:
            v, j = _best_partner(s, scale, mean, inv_sd, available, i, n)
            size = _heap_push(heap_values, heap_rows, heap_partners, size, v, i, j)
            continue
        available[i] = False
        available[j] = False
        pairs[n_pairs, 0] = min(i, j)
        pairs[n_pairs, 1] = max(i, j)
        pair_correlations[n_pairs] = v
        n_pairs += 1
    leftover = -1
    for i in range(n):
        if available[i]:
            leftover = i
    return leftover


def inverse_sd(variance: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """1 / sqrt(variance), and 0 where the variance is zero: at or below ZERO_VARIANCE_RTOL
    times ``reference`` (a second moment of the same variable, so rounding residue of a
    constant variable counts as zero). Zero inverse SD makes every correlation of that
    variable exactly 0 (the constant-variable rule)."""
    variance = np.asarray(variance, dtype=np.float64)
    zero = variance <= ZERO_VARIANCE_RTOL * np.asarray(reference, dtype=np.float64)
    out = np.zeros_like(variance)
    np.divide(1.0, np.sqrt(np.where(zero, 1.0, variance)), out=out, where=~zero)
    return out


def greedy_pairs(
    covariance: np.ndarray, *, constant: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy pairing from a full symmetric covariance (or correlation) matrix.

    Returns (pairs (n // 2, 2) int64 with i < j in the order chosen, their correlations,
    leftover index or -1). ``constant`` marks variables to treat as zero-variance; by default
    a variance <= ZERO_VARIANCE_RTOL * max(|diagonal|) counts as zero.
    """
    s = np.ascontiguousarray(covariance, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"covariance must be a square matrix, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("covariance contains NaN or inf; pairing needs finite values")
    n = s.shape[0]
    diag = np.diag(s).copy()
    if constant is None:
        reference = np.full(n, np.max(np.abs(diag)) if n else 0.0)
        inv = inverse_sd(diag, reference)
    else:
        inv = inverse_sd(np.where(constant, 0.0, diag), np.zeros(n))
    pairs = np.empty((n // 2, 2), dtype=np.int64)
    corr = np.empty(n // 2, dtype=np.float64)
    leftover = greedy_pairs_kernel(s, 1.0, np.zeros(n), inv, n, pairs, corr)
    return pairs, corr, int(leftover)
