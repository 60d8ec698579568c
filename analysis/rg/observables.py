"""Observables of the coarse-grained variables (science.md section 4; Meshulam et al. 2019).

For every cluster size K = 2^k, k = 0..levels (N_K clusters, T frames):

- P0(K): fraction of (cluster, frame) samples in which the cluster is silent (all members zero).
- Q_K(x): distribution of the nonzero normalized values (mean 1 by construction on the pairing
  window), as a histogram on fixed bins plus its moments (skewness, excess kurtosis: 0 for a
  Gaussian).
- M2(K): variance over time of the raw sums (the input activity summed over the K members,
  no normalization), averaged over clusters; K (1 + (K - 1) c) for equicorrelated unit
  variables, K for independent ones.
- C_K(t): mean over clusters of the autocovariance <dx(t0) dx(t0 + t)> of the normalized
  variables (dx = x - its mean over the T frames, average over the T - t available t0),
  divided by its value at t = 0. tau_c(K): the first lag where C_K falls to 1/e, linearly
  interpolated between the two lags around the crossing; for white data C_K(1) ~ 0 so
  tau_c = (1 - 1/e) / (1 - 0) = 0.632 frames (the interpolation floor), not 0.
- Spectra: for K in (16, 32, 64, 128), eigenvalues of the covariance of the K normalized
  neurons of each cluster (computed on the original neurons), sorted, averaged over clusters;
  only where T >= 10 K (samples must exceed dimensions by > 10x, science.md).

Autocovariances are computed from sums that a stream can also keep (streaming.py): lagged
products P_tau = sum_t x(t) x(t + tau), the total, and the sums of the first and last tau
values, so batch and online give the same numbers:

    sum_{t0 < T - tau} dx(t0) dx(t0 + tau) = P_tau - m (total - last_tau) - m (total - first_tau)
                                             + (T - tau) m^2,    m = total / T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np

from analysis.rg.statistics import PairingStatistics, gather_covariance
from analysis.rg.tree import CoarseGrainingTree

SPECTRUM_SIZES = (16, 32, 64, 128)
SAMPLES_PER_DIMENSION = 10
INV_E = math.exp(-1.0)
HIST_MAX = 10.0
HIST_BINS = 80


@dataclass
class Spectrum:
    """Mean eigenvalue spectrum of the K x K within-cluster covariances (largest first)."""

    cluster_size: int
    n_clusters: int
    n_frames: int
    eigenvalues: np.ndarray  # (K,) mean over clusters, largest first
    eigenvalues_sd: np.ndarray  # (K,) SD over clusters
    valid: bool
    reason: str = ""


@dataclass
class Observables:
    """Per cluster size K (arrays indexed by level k, K = 2^k)."""

    cluster_sizes: np.ndarray
    n_clusters: np.ndarray
    n_frames: int
    p0: np.ndarray
    n_silent: np.ndarray
    m2: np.ndarray
    q_n_nonzero: np.ndarray
    q_mean: np.ndarray
    q_variance: np.ndarray
    q_skewness: np.ndarray
    q_excess_kurtosis: np.ndarray
    q_edges: np.ndarray
    q_density: np.ndarray  # (levels + 1, bins): histogram of nonzero values, integral 1 - overflow
    q_overflow: np.ndarray  # fraction of nonzero values above the last edge
    lags_frames: np.ndarray
    c_k: np.ndarray  # (levels + 1, L + 1), 1 at lag 0; NaN where undefined
    tau_c_frames: np.ndarray  # NaN where no 1/e crossing within the lags
    tau_c_reason: list[str]
    spectra: dict[int, Spectrum] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def levels(self) -> int:
        return int(self.cluster_sizes.shape[0] - 1)


# ---------------------------------------------------------------------------------------------
# kernels shared by batch and online


@numba.njit(cache=True, nogil=True)
def histogram_bin(value: float, hist_max: float, n_bins: int) -> int:
    """Bin of a nonzero value on [0, hist_max) in n_bins; n_bins = overflow; negatives -> 0."""
    if value >= hist_max:
        return n_bins
    b = int(value * (n_bins / hist_max))
    if b < 0:
        return 0
    return min(b, n_bins - 1)


@numba.njit(cache=True, nogil=True)
def forest_postorder(
    start: np.ndarray, child_a: np.ndarray, child_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Visit order, level and slot of every variable of the tree (flat layout, tree.py).

    The variables form a forest: the top-level clusters and the leftovers of odd levels are
    the roots. Post-order (child a's subtree, child b's subtree, then the node) means a node's
    two children are finished just before it; a child goes to slot 0 (child a) or 1 (child b)
    of its level, so two row buffers per level hold everything a node needs."""
    total = start[start.shape[0] - 1]
    n_levels = start.shape[0] - 1
    level = np.empty(total, dtype=np.int64)
    for k in range(n_levels):
        for g in range(start[k], start[k + 1]):
            level[g] = k
    has_parent = np.zeros(total, dtype=np.bool_)
    slot = np.zeros(total, dtype=np.int64)
    for g in range(total):
        if child_a[g] >= 0:
            has_parent[child_a[g]] = True
            has_parent[child_b[g]] = True
            slot[child_b[g]] = 1
    order = np.empty(total, dtype=np.int64)
    expanded = np.zeros(total, dtype=np.bool_)
    stack = np.empty(2 * n_levels + 2, dtype=np.int64)
    n_out = 0
    for root in range(total):
        if has_parent[root]:
            continue
        top = 0
        stack[0] = root
        while top >= 0:
            g = stack[top]
            if child_a[g] < 0 or expanded[g]:
                order[n_out] = g
                n_out += 1
                top -= 1
            else:
                expanded[g] = True
                stack[top + 1] = child_b[g]
                stack[top + 2] = child_a[g]
                top += 2
    return order, level, slot


@numba.njit(cache=True, nogil=True)
def _forest_sums(
    x: np.ndarray,
    order: np.ndarray,
    level: np.ndarray,
    slot: np.ndarray,
    scale: np.ndarray,
    max_lag: int,
    hist_max: float,
    positions: np.ndarray,
    values: np.ndarray,
    raws: np.ndarray,
    lengths: np.ndarray,
    dense: np.ndarray,
    power_sums: np.ndarray,
    hist: np.ndarray,
    silent: np.ndarray,
    raw_moments: np.ndarray,
    totals: np.ndarray,
    lag_products: np.ndarray,
    first_sums: np.ndarray,
    last_sums: np.ndarray,
) -> None:
    """The sums of ``_level_sums`` for every variable of every level, in one pass over x.

    Each variable is held as its *active* frames only (sorted frame indices with the
    normalized value and the raw sum there): outside them every member is zero, so the value
    and the raw sum are exactly 0 and add nothing to any sum. A level-k + 1 variable is the
    merge of its two children's lists, Z (xhat_a + xhat_b) where both are active. Deconvolved
    activity is mostly exact zeros, so this costs the active samples (plus, for the lagged
    products, the active pairs less than max_lag apart) instead of N T per level; the rows
    stay in cache (two buffers per level, post-order). Sums over t are taken in increasing t
    like ``_level_sums`` (skipped terms are exact zeros), so per variable the results are the
    same; the per-level power sums add the variables in tree order instead of index order.
    Caller zeroes power_sums, hist, silent and lag_products."""
    t_len = x.shape[1]
    n_bins = hist.shape[1] - 1
    for idx in range(order.shape[0]):
        g = order[idx]
        k = level[g]
        s = slot[g]
        pos = positions[k, s]
        val = values[k, s]
        raw = raws[k, s]
        m = 0
        if k == 0:
            row = x[g]
            w = scale[g]
            for t in range(t_len):
                r = row[t]
                if r != 0.0:
                    pos[m] = t
                    val[m] = w * r
                    raw[m] = r
                    m += 1
        else:
            # post-order: child a has just been finished in slot 0, child b in slot 1
            pa, va, ra, ma = (
                positions[k - 1, 0],
                values[k - 1, 0],
                raws[k - 1, 0],
                lengths[k - 1, 0],
            )
            pb, vb, rb, mb = (
                positions[k - 1, 1],
                values[k - 1, 1],
                raws[k - 1, 1],
                lengths[k - 1, 1],
            )
            z = scale[g]
            i = 0
            j = 0
            while i < ma or j < mb:
                if j >= mb or (i < ma and pa[i] < pb[j]):
                    pos[m] = pa[i]
                    val[m] = z * va[i]
                    raw[m] = ra[i]
                    i += 1
                elif i >= ma or pb[j] < pa[i]:
                    pos[m] = pb[j]
                    val[m] = z * vb[j]
                    raw[m] = rb[j]
                    j += 1
                else:
                    pos[m] = pa[i]
                    val[m] = z * (va[i] + vb[j])
                    raw[m] = ra[i] + rb[j]
                    i += 1
                    j += 1
                m += 1
        lengths[k, s] = m
        silent[k] += t_len - m
        s_raw = 0.0
        s_raw2 = 0.0
        total = 0.0
        s2 = 0.0
        s3 = 0.0
        s4 = 0.0
        level_hist = hist[k]
        for p in range(m):
            r = raw[p]
            s_raw += r
            s_raw2 += r * r
            v = val[p]
            total += v
            v2 = v * v
            s2 += v2
            s3 += v2 * v
            s4 += v2 * v2
            level_hist[histogram_bin(v, hist_max, n_bins)] += 1
        power_sums[k, 0] += m
        power_sums[k, 1] += total
        power_sums[k, 2] += s2
        power_sums[k, 3] += s3
        power_sums[k, 4] += s4
        raw_moments[g, 0] = s_raw
        raw_moments[g, 1] = s_raw2
        totals[g] = total
        acc = lag_products[g]
        if 8 * m > t_len:  # dense enough: a contiguous row makes the lag loop vectorize
            dense[:t_len] = 0.0
            for p in range(m):
                dense[pos[p]] = val[p]
            for p in range(m):
                v = val[p]
                if v != 0.0:
                    t = pos[p]
                    stop = min(max_lag, t_len - 1 - t)
                    for tau in range(stop + 1):
                        acc[tau] += v * dense[t + tau]
        else:
            for p in range(m):
                v = val[p]
                if v != 0.0:
                    t = pos[p]
                    for q in range(p, m):
                        d = pos[q] - t
                        if d > max_lag:
                            break
                        acc[d] += v * val[q]
        first = first_sums[g]
        last = last_sums[g]
        first[:] = 0.0
        last[:] = 0.0
        for p in range(m):  # first_sums[tau] = sum of the values of frames 0..tau - 1
            t = pos[p]
            if t >= max_lag:
                break
            first[t + 1] = val[p]
        for p in range(m - 1, -1, -1):  # last_sums[tau] = sum of frames T - tau..T - 1
            t = pos[p]
            if t < t_len - max_lag:
                break
            last[t_len - t] = val[p]
        for tau in range(1, max_lag + 1):
            first[tau] = first[tau - 1] + first[tau]
            last[tau] = last[tau - 1] + last[tau]


def autocovariance_from_sums(
    lag_products: np.ndarray,
    totals: np.ndarray,
    first_sums: np.ndarray,
    last_sums: np.ndarray,
    n_frames: int,
) -> np.ndarray:
    """Mean over clusters of the autocovariance at each lag (see module docstring).

    lag_products, first_sums, last_sums: (n, L + 1) with first_sums[:, tau] = sum of the first
    tau values and last_sums[:, tau] = sum of the last tau values; totals (n,). Lags >= T are
    NaN."""
    n, width = lag_products.shape
    taus = np.arange(width)
    m = totals / n_frames
    count = n_frames - taus
    with np.errstate(invalid="ignore", divide="ignore"):
        centered = (
            lag_products
            - m[:, None] * (totals[:, None] - last_sums)
            - m[:, None] * (totals[:, None] - first_sums)
            + count[None, :] * m[:, None] ** 2
        )
        per_lag = centered.mean(axis=0) / count
    per_lag[count <= 0] = np.nan
    return per_lag


def tau_crossing(c: np.ndarray) -> tuple[float, str]:
    """First lag where the normalized C(t) falls to 1/e, linear interpolation between lags."""
    if not np.isfinite(c[0]) or c[0] <= 0:
        return math.nan, "C_K(0) is zero: the clusters are constant"
    for tau in range(1, c.shape[0]):
        if not np.isfinite(c[tau]):
            break
        if c[tau] <= INV_E:
            before = c[tau - 1]
            return (tau - 1) + (before - INV_E) / (before - c[tau]), ""
    return math.nan, f"C_K(t) stays above 1/e up to the largest lag ({c.shape[0] - 1} frames)"


def moments_from_power_sums(s: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, variance, skewness, excess kurtosis) from sums of v^0..v^4."""
    n = s[0]
    if n < 2:
        return math.nan, math.nan, math.nan, math.nan
    mean = s[1] / n
    e2, e3, e4 = s[2] / n, s[3] / n, s[4] / n
    var = e2 - mean**2
    if var <= 0:
        return mean, max(var, 0.0), math.nan, math.nan
    m3 = e3 - 3 * mean * e2 + 2 * mean**3
    m4 = e4 - 4 * mean * e3 + 6 * mean**2 * e2 - 3 * mean**4
    return mean, var, m3 / var**1.5, m4 / var**2 - 3.0


def cluster_spectra(
    stats: PairingStatistics,
    tree: CoarseGrainingTree,
    sizes: tuple[int, ...] = SPECTRUM_SIZES,
) -> dict[int, Spectrum]:
    """Within-cluster covariance spectra for the sizes the tree reaches (upper triangle of the
    second moments is read, so a stream's live matrix can be used)."""
    out: dict[int, Spectrum] = {}
    t = stats.n_frames
    mean = stats.means
    for k_size in sizes:
        level = int(round(math.log2(k_size)))
        if 2**level != k_size:
            raise ValueError(f"spectrum sizes must be powers of 2, got {k_size}")
        if level > tree.levels:
            continue
        members = tree.members(level)
        n_clusters = members.shape[0]
        if t < SAMPLES_PER_DIMENSION * k_size:
            out[k_size] = Spectrum(
                k_size,
                n_clusters,
                t,
                np.full(k_size, np.nan),
                np.full(k_size, np.nan),
                False,
                f"T = {t} frames < {SAMPLES_PER_DIMENSION} x K = {SAMPLES_PER_DIMENSION * k_size}"
                " samples needed for a K x K covariance spectrum",
            )
            continue
        cov = np.empty((n_clusters, k_size, k_size))
        gather_covariance(stats.second_moment, 1.0 / t, mean, tree.neuron_weights, members, cov)
        eig = np.linalg.eigvalsh(cov)[:, ::-1]
        out[k_size] = Spectrum(k_size, n_clusters, t, eig.mean(axis=0), eig.std(axis=0), True, "")
    return out


# ---------------------------------------------------------------------------------------------
# batch measurement on an array of frames


def default_max_lag(n_frames: int) -> int:
    return max(1, min(64, n_frames // 4))


def measure(
    activity: np.ndarray,
    tree: CoarseGrainingTree,
    *,
    spectra_stats: PairingStatistics | None = None,
    spectrum_sizes: tuple[int, ...] = SPECTRUM_SIZES,
    max_lag_frames: int | None = None,
    hist_max: float = HIST_MAX,
    hist_bins: int = HIST_BINS,
    extend_lags: bool = True,
) -> Observables:
    """Observables of the frames ``activity`` ((N, T) finite) coarse-grained with ``tree``.

    max_lag_frames: largest lag of C_K(t) (default min(64, T / 4)); with extend_lags, lags are
    extended (x4, up to T / 4) while some level has no 1/e crossing. Spectra come from
    ``spectra_stats`` (default: none computed).
    """
    x = np.asarray(activity, dtype=np.float64)
    n, t = x.shape
    if n != tree.n_neurons:
        raise ValueError(f"activity has {n} neurons, the tree {tree.n_neurons}")
    levels = tree.levels
    max_lag = default_max_lag(t) if max_lag_frames is None else int(max_lag_frames)
    if max_lag < 1:
        raise ValueError(f"max_lag_frames must be >= 1, got {max_lag}")
    max_lag = min(max_lag, t - 1) if t > 1 else 0

    sizes = tree.cluster_sizes
    n_clusters = np.array([tree.n_clusters(k) for k in range(levels + 1)])
    p0 = np.empty(levels + 1)
    n_silent = np.empty(levels + 1, dtype=np.int64)
    m2 = np.empty(levels + 1)
    power = np.zeros((levels + 1, 5))
    hist = np.zeros((levels + 1, hist_bins + 1), dtype=np.int64)

    start, child_a, child_b, scale = tree.flat_layout()
    order, level_of, slot = forest_postorder(start, child_a, child_b)
    total = int(start[-1])
    x = np.ascontiguousarray(x)
    positions = np.empty((levels + 1, 2, t), dtype=np.int64)
    values = np.empty((levels + 1, 2, t))
    raws = np.empty((levels + 1, 2, t))
    lengths = np.zeros((levels + 1, 2), dtype=np.int64)
    dense = np.empty(t)
    raw_moments = np.empty((total, 2))
    totals = np.empty(total)

    def pass_levels(lag: int, first_pass: bool) -> np.ndarray:
        products = np.zeros((total, lag + 1))
        first = np.empty((total, lag + 1))
        last = np.empty((total, lag + 1))
        scratch_power = power if first_pass else np.zeros_like(power)
        scratch_hist = hist if first_pass else np.zeros_like(hist)
        silent = np.zeros(levels + 1, dtype=np.int64)
        _forest_sums(
            x,
            order,
            level_of,
            slot,
            scale,
            lag,
            hist_max,
            positions,
            values,
            raws,
            lengths,
            dense,
            scratch_power,
            scratch_hist,
            silent,
            raw_moments,
            totals,
            products,
            first,
            last,
        )
        c_raw = np.full((levels + 1, lag + 1), np.nan)
        for k in range(levels + 1):
            sl = slice(start[k], start[k + 1])
            if first_pass:
                n_silent[k] = silent[k]
                p0[k] = silent[k] / (n_clusters[k] * t)
                raw_mean = raw_moments[sl, 0] / t
                m2[k] = float(np.mean(raw_moments[sl, 1] / t - raw_mean**2))
            c_raw[k] = autocovariance_from_sums(products[sl], totals[sl], first[sl], last[sl], t)
        return c_raw

    def normalized(c: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return c / c[:, :1]

    c_k = normalized(pass_levels(max_lag, True))
    taus = [tau_crossing(c_k[k]) for k in range(levels + 1)]

    def missing_crossing() -> bool:
        return any(np.isnan(v) and c_k[k, 0] > 0 for k, (v, _) in enumerate(taus))

    while extend_lags and max_lag < t // 4 and missing_crossing():
        max_lag = min(4 * max_lag, t // 4)
        c_k = normalized(pass_levels(max_lag, False))
        taus = [tau_crossing(c_k[k]) for k in range(levels + 1)]

    moments = np.array([moments_from_power_sums(power[k]) for k in range(levels + 1)])
    edges = np.linspace(0.0, hist_max, hist_bins + 1)
    width = hist_max / hist_bins
    with np.errstate(invalid="ignore", divide="ignore"):
        density = hist[:, :hist_bins] / (power[:, :1] * width)
        overflow = hist[:, hist_bins] / power[:, 0]
    spectra = {} if spectra_stats is None else cluster_spectra(spectra_stats, tree, spectrum_sizes)
    return Observables(
        cluster_sizes=sizes,
        n_clusters=n_clusters,
        n_frames=t,
        p0=p0,
        n_silent=n_silent,
        m2=m2,
        q_n_nonzero=power[:, 0].astype(np.int64),
        q_mean=moments[:, 0],
        q_variance=moments[:, 1],
        q_skewness=moments[:, 2],
        q_excess_kurtosis=moments[:, 3],
        q_edges=edges,
        q_density=density,
        q_overflow=overflow,
        lags_frames=np.arange(max_lag + 1),
        c_k=c_k,
        tau_c_frames=np.array([v for v, _ in taus]),
        tau_c_reason=[r for _, r in taus],
        spectra=spectra,
    )
