"""Paired comparisons for experiments run over many seeds or cultures (closed loop vs yoked).

Both tests are exact and assumption-light, so they hold for the small numbers of cultures a
lab runs (n <= 20 here; beyond that the sign-flip test samples 2**16 random sign patterns):

- sign-flip permutation test of the mean paired difference (two-sided): under H0 each
  difference is equally likely positive or negative;
- Wilcoxon signed-rank test (two-sided) by exact enumeration of the rank-sign patterns
  (zero differences dropped, ties given average ranks: Pratt's and the mid-rank conventions).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

EXACT_MAX_N = 20


@dataclass(frozen=True)
class PairedResult:
    n: int
    mean_difference: float
    n_positive: int
    n_negative: int
    p_sign_flip: float
    p_wilcoxon: float

    def to_dict(self) -> dict[str, float]:
        return {
            "n": self.n,
            "mean_difference": self.mean_difference,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "p_sign_flip": self.p_sign_flip,
            "p_wilcoxon": self.p_wilcoxon,
        }


def _sign_patterns(n: int, rng: np.random.Generator) -> np.ndarray:
    if n <= EXACT_MAX_N:
        return np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    return rng.choice((1.0, -1.0), size=(1 << 16, n))


def paired_test(a: np.ndarray, b: np.ndarray, seed: int = 0) -> PairedResult:
    """Compare paired samples a[i] vs b[i] (e.g. closed loop vs yoked, same culture)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be 1-D of equal length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    n = d.size
    if n == 0:
        raise ValueError("no pair with finite values on both sides")
    rng = np.random.default_rng(seed)
    signs = _sign_patterns(n, rng)
    observed = abs(d.mean())
    flipped = np.abs((signs * d).mean(axis=1))
    p_flip = float(np.mean(flipped >= observed - 1e-12))
    nz = d[d != 0]
    if nz.size == 0:
        p_wil = 1.0
    else:
        ranks = _average_ranks(np.abs(nz))
        w_obs = float(ranks[nz > 0].sum())
        expected = ranks.sum() / 2
        s = _sign_patterns(nz.size, rng)
        w_all = ((s > 0) * ranks).sum(axis=1)
        p_wil = float(np.mean(np.abs(w_all - expected) >= abs(w_obs - expected) - 1e-12))
    return PairedResult(
        n=n,
        mean_difference=float(d.mean()),
        n_positive=int((d > 0).sum()),
        n_negative=int((d < 0).sum()),
        p_sign_flip=p_flip,
        p_wilcoxon=p_wil,
    )


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    sorted_x = x[order]
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks
