"""The coarse-graining tree: pairings and normalizations of all levels (science.md section 4).

Level 0 holds the N neurons, normalized so the mean of each neuron's nonzero values is 1:

    xhat_i = w_i x_i,   w_i = (nonzero frames of i) / sum_t x_i(t).

Level k + 1 holds the sums of the level-k pairs chosen greedily (pairing.py), renormalized:

    xhat_c = Z_c (xhat_a + xhat_b),   Z_c = nnz_c / (nnz_a + nnz_b),

because a normalized variable sums to its number of nonzero frames (its nonzero values average
1), so sum_t (xhat_a + xhat_b) = nnz_a + nnz_b, and the sum is nonzero exactly when a member is
(nonnegative activity). After k steps there are floor(N / 2^k) clusters of K = 2^k neurons.

Pairing uses Pearson correlation, which ignores a variable's own scale - but not the relative
weights inside a sum, so the normalizations do change the pairings from level 2 on. The
covariance of level k + 1 follows from level k:

    S'_cd = Z_c Z_d (S_aa' + S_ab' + S_ba' + S_bb')     (pairs (a, b) -> c, (a', b') -> d).

A variable with zero variance (constant, e.g. always silent) has correlation 0 with everything
(pairing.py). All-zero neurons keep weight 1 (nothing to scale).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np

from analysis.rg.pairing import ZERO_VARIANCE_RTOL, greedy_pairs_kernel, inverse_sd
from analysis.rg.statistics import PairingStatistics, popcount_rows


class NormalizationError(ValueError):
    """A neuron's nonzero values do not average to a positive number: it cannot be normalized."""


@dataclass(frozen=True)
class CoarseGrainingTree:
    """Result of pairing on one window of frames.

    neuron_weights: (N,) w_i (0 for a neuron that could not be normalized, online only).
    pairs[k]: (n_{k+1}, 2) indices (a < b) into the level-k variables, sorted by a; level-k+1
        variable c is the sum of pair c.
    pair_correlations[k]: their correlations. scales[k]: (n_{k+1},) Z of the level-k+1 variables.
    leftovers[k]: level-k index dropped (odd n_k) or -1. constant[k]: zero-variance flags.
    nonzero_counts[k]: nonzero frames of each level-k variable in the pairing window.
    """

    n_neurons: int
    levels: int
    n_frames: int
    neuron_weights: np.ndarray
    pairs: tuple[np.ndarray, ...]
    pair_correlations: tuple[np.ndarray, ...]
    scales: tuple[np.ndarray, ...]
    leftovers: tuple[int, ...]
    constant: tuple[np.ndarray, ...]
    nonzero_counts: tuple[np.ndarray, ...]
    unnormalizable: np.ndarray

    @property
    def cluster_sizes(self) -> np.ndarray:
        return 2 ** np.arange(self.levels + 1)

    def n_clusters(self, level: int) -> int:
        return self.n_neurons if level == 0 else int(self.pairs[level - 1].shape[0])

    def members(self, level: int) -> np.ndarray:
        """(n_clusters, 2^level) neuron indices of each level cluster (tree order: the members
        of the lower-indexed child first)."""
        members = np.arange(self.n_neurons)[:, None]
        for k in range(level):
            p = self.pairs[k]
            members = np.concatenate([members[p[:, 0]], members[p[:, 1]]], axis=1)
        return members

    def coarse_grain(self, activity: np.ndarray) -> list[np.ndarray]:
        """Normalized variables of every level for frames ``activity`` ((N, T)): a list of
        (n_k, T) float64 arrays, using this tree's pairs and normalizations."""
        return list(self.iter_levels(activity))

    def iter_levels(self, activity: np.ndarray) -> Iterator[np.ndarray]:
        """Like coarse_grain, one level at a time (only two levels in memory)."""
        values = self.neuron_weights[:, None] * np.asarray(activity, dtype=np.float64)
        yield values
        for k in range(self.levels):
            p = self.pairs[k]
            values = self.scales[k][:, None] * (values[p[:, 0]] + values[p[:, 1]])
            yield values

    def flat_layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(level_start (levels + 2,), child_a, child_b, scale) over all variables of all levels
        in one flat index space (level k occupies level_start[k]:level_start[k + 1]); children
        of level-0 entries are -1. Used by the per-frame online kernel."""
        sizes = [self.n_neurons] + [p.shape[0] for p in self.pairs]
        start = np.zeros(len(sizes) + 1, dtype=np.int64)
        start[1:] = np.cumsum(sizes)
        total = int(start[-1])
        child_a = np.full(total, -1, dtype=np.int64)
        child_b = np.full(total, -1, dtype=np.int64)
        scale = np.empty(total)
        scale[: self.n_neurons] = self.neuron_weights
        for k, p in enumerate(self.pairs):
            lo, hi = start[k + 1], start[k + 2]
            child_a[lo:hi] = start[k] + p[:, 0]
            child_b[lo:hi] = start[k] + p[:, 1]
            scale[lo:hi] = self.scales[k]
        return start, child_a, child_b, scale


def check_levels(n_neurons: int, levels: int) -> int:
    """levels must satisfy 1 <= levels and 2^levels <= N (a cluster of 2^levels must exist)."""
    if isinstance(levels, bool) or int(levels) != levels or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    levels = int(levels)
    if n_neurons < 2**levels:
        max_levels = int(np.floor(np.log2(n_neurons))) if n_neurons >= 2 else 0
        raise ValueError(
            f"N = {n_neurons} neurons is smaller than 2^levels = {2**levels} (levels = {levels}); "
            f"use levels <= {max_levels} or record more neurons"
        )
    return levels


def neuron_weights(
    raw_sums: np.ndarray, nonzero: np.ndarray, bad_mean: str = "raise"
) -> tuple[np.ndarray, np.ndarray]:
    """w_i = nnz_i / sum_t x_i (mean of nonzero values -> 1); all-zero neurons get 1.

    A neuron with nonzero values whose sum is <= 0 cannot be normalized: bad_mean="raise"
    raises NormalizationError naming it, "zero" gives it weight 0 (treated as a silent,
    constant variable) and reports it in the returned mask.
    """
    raw_sums = np.asarray(raw_sums, dtype=np.float64)
    nonzero = np.asarray(nonzero)
    bad = (nonzero > 0) & ~(raw_sums > 0)
    if bad.any() and bad_mean == "raise":
        idx = np.flatnonzero(bad)
        i = int(idx[0])
        raise NormalizationError(
            f"{idx.size} neuron(s) have nonzero values whose mean is <= 0 (first: neuron {i}, "
            f"mean of nonzero values {raw_sums[i] / nonzero[i]:.4g}); the normalization (mean of "
            "nonzero values = 1) needs nonnegative activity such as deconvolved traces; drop "
            "these rows or analyze deconvolved activity"
        )
    weights = np.ones_like(raw_sums)
    ok = (nonzero > 0) & (raw_sums > 0)
    weights[ok] = nonzero[ok] / raw_sums[ok]
    weights[bad] = 0.0
    return weights, bad


@numba.njit(cache=True, nogil=True)
def _first_level_covariance(
    second: np.ndarray,
    scale: float,
    mean: np.ndarray,
    weights: np.ndarray,
    pairs: np.ndarray,
    z: np.ndarray,
    out: np.ndarray,
) -> None:
    """Covariance of the level-1 variables from the neuron second moments (full rows)."""
    n = pairs.shape[0]
    for c in range(n):
        a = pairs[c, 0]
        b = pairs[c, 1]
        wa = weights[a]
        wb = weights[b]
        ma = mean[a]
        mb = mean[b]
        row_a = second[a]
        row_b = second[b]
        for d in range(c, n):
            a2 = pairs[d, 0]
            b2 = pairs[d, 1]
            wa2 = weights[a2]
            wb2 = weights[b2]
            s = (
                wa * wa2 * (row_a[a2] * scale - ma * mean[a2])
                + wa * wb2 * (row_a[b2] * scale - ma * mean[b2])
                + wb * wa2 * (row_b[a2] * scale - mb * mean[a2])
                + wb * wb2 * (row_b[b2] * scale - mb * mean[b2])
            )
            v = z[c] * z[d] * s
            out[c, d] = v
            out[d, c] = v


@numba.njit(cache=True, nogil=True)
def _next_level_covariance(
    s: np.ndarray, pairs: np.ndarray, z: np.ndarray, out: np.ndarray
) -> None:
    n = pairs.shape[0]
    for c in range(n):
        a = pairs[c, 0]
        b = pairs[c, 1]
        row_a = s[a]
        row_b = s[b]
        for d in range(c, n):
            a2 = pairs[d, 0]
            b2 = pairs[d, 1]
            v = z[c] * z[d] * (row_a[a2] + row_a[b2] + row_b[a2] + row_b[b2])
            out[c, d] = v
            out[d, c] = v


def _scales(nonzero_children_a: np.ndarray, nonzero_children_b: np.ndarray, nnz: np.ndarray):
    denominator = (nonzero_children_a + nonzero_children_b).astype(np.float64)
    z = np.ones(nnz.shape[0])
    ok = denominator > 0
    z[ok] = nnz[ok] / denominator[ok]
    return z


def _canonical(pairs: np.ndarray, corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order the pairs by their lower index: the next level's variable c is pair c. The
    choice order depends on rounding among equal correlations; this order does not."""
    order = np.argsort(pairs[:, 0], kind="stable")
    return pairs[order], corr[order]


def build_tree(
    stats: PairingStatistics,
    levels: int,
    *,
    bad_mean: str = "raise",
    workspace: tuple[np.ndarray, np.ndarray] | None = None,
) -> CoarseGrainingTree:
    """Pair all levels from the statistics of one pairing window (full rows of
    ``stats.second_moment`` must be valid). ``workspace``: two float64 buffers of at least
    (N/2)^2 and (N/4)^2 elements for the level covariances (the online stage preallocates
    them); None allocates.
    """
    n = stats.n_neurons
    levels = check_levels(n, levels)
    if not stats.rows_valid:
        raise ValueError("pairing needs full rows of the second-moment matrix (mirror first)")
    t = stats.n_frames
    scale = 1.0 / t
    mean = stats.means
    bits = stats.nonzero_bits[:n]
    nnz = popcount_rows(bits)
    weights, unnormalizable = neuron_weights(stats.raw_sums, nnz, bad_mean)
    variance = stats.variances()
    constant = (variance <= ZERO_VARIANCE_RTOL * stats.second_moments()) | unnormalizable
    inv = inverse_sd(np.where(constant, 0.0, variance), np.zeros(n))

    pairs_all: list[np.ndarray] = []
    corr_all: list[np.ndarray] = []
    scales_all: list[np.ndarray] = []
    leftovers: list[int] = []
    constant_all = [constant]
    nnz_all = [nnz]

    pairs = np.empty((n // 2, 2), dtype=np.int64)
    corr = np.empty(n // 2)
    leftovers.append(
        int(greedy_pairs_kernel(stats.second_moment, scale, mean, inv, n, pairs, corr))
    )
    pairs, corr = _canonical(pairs, corr)
    cov_prev: np.ndarray | None = None
    children_var = np.where(constant, 0.0, variance) * weights**2
    for k in range(levels):
        n_next = pairs.shape[0]
        bits_next = bits[pairs[:, 0]] | bits[pairs[:, 1]]
        nnz_next = popcount_rows(bits_next)
        z = _scales(nnz_all[-1][pairs[:, 0]], nnz_all[-1][pairs[:, 1]], nnz_next)
        pairs_all.append(pairs)
        corr_all.append(corr)
        scales_all.append(z)
        nnz_all.append(nnz_next)
        if workspace is None:
            cov = np.empty((n_next, n_next))
        else:
            buf = workspace[k % 2]
            cov = buf[: n_next * n_next].reshape(n_next, n_next)
        if k == 0:
            _first_level_covariance(stats.second_moment, scale, mean, weights, pairs, z, cov)
        else:
            assert cov_prev is not None
            _next_level_covariance(cov_prev, pairs, z, cov)
        var_next = np.diagonal(cov).copy()
        reference = z**2 * (children_var[pairs[:, 0]] + children_var[pairs[:, 1]])
        constant_next = var_next <= ZERO_VARIANCE_RTOL * reference
        constant_all.append(constant_next)
        children_var = np.where(constant_next, 0.0, var_next)
        bits = bits_next
        cov_prev = cov
        if k + 1 < levels:
            inv = inverse_sd(children_var, np.zeros(n_next))
            pairs = np.empty((n_next // 2, 2), dtype=np.int64)
            corr = np.empty(n_next // 2)
            leftover = greedy_pairs_kernel(cov, 1.0, np.zeros(n_next), inv, n_next, pairs, corr)
            leftovers.append(int(leftover))
            pairs, corr = _canonical(pairs, corr)
    return CoarseGrainingTree(
        n_neurons=n,
        levels=levels,
        n_frames=t,
        neuron_weights=weights,
        pairs=tuple(pairs_all),
        pair_correlations=tuple(corr_all),
        scales=tuple(scales_all),
        leftovers=tuple(leftovers),
        constant=tuple(constant_all),
        nonzero_counts=tuple(nnz_all),
        unnormalizable=unnormalizable,
    )
