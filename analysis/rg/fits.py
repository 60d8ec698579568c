"""Scaling exponents: straight-line least squares in log-log coordinates (science.md section 4).

    beta:  P0(K) = exp(-a K^beta)      ->  log(-log P0) = log a + beta log K
    alpha: M2(K) ~ K^alpha             ->  log M2 = const + alpha log K
    z:     tau_c(K) ~ K^z              ->  log tau_c = log tau_1 + z log K
    mu:    lambda = B (K / rank)^mu    ->  log lambda = log B + mu log(K / rank), pooled over
           the spectra of K = 16..128 (the rank / K collapse), ranks 1..K/2 of each.

Default fit ranges (docs/ANALYSIS_RG.md): beta and alpha over all K = 1..2^levels (the paper
fits P0 "across the full range of K"); z over K <= 128 (the paper: tau_c errors at K = 256 are
large); mu over the valid spectra. Points where the quantity is undefined (P0 = 0 or 1, no 1/e
crossing, zero variance, nonpositive eigenvalue) are left out and counted; fewer than 3 points
(mu: 2 spectra) make the fit invalid with the reason. Each Fit records its range and points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from analysis.rg.observables import Observables

MIN_POINTS = 3


@dataclass
class Fit:
    name: str
    value: float | None
    intercept: float | None
    k_range: tuple[int, int]
    n_points: int
    valid: bool
    reason: str = ""
    k_used: list[int] = field(default_factory=list)
    err: float | None = None
    err_reason: str = ""
    quarter_values: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "value": self.value,
            "err": self.err,
            "intercept": self.intercept,
            "fit_k_range": list(self.k_range),
            "k_used": self.k_used,
            "n_points": self.n_points,
            "valid": self.valid,
            "reason": self.reason,
            "err_reason": self.err_reason,
            "quarter_values": self.quarter_values,
        }


@dataclass(frozen=True)
class FitRanges:
    beta_k: tuple[int, int] = (1, 1 << 30)
    alpha_k: tuple[int, int] = (1, 1 << 30)
    z_k: tuple[int, int] = (1, 128)
    mu_k: tuple[int, int] = (16, 128)
    mu_max_rank_fraction: float = 0.5


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def _fit(
    name: str, k: np.ndarray, y: np.ndarray, ok: np.ndarray, k_range: tuple[int, int], why: str
) -> Fit:
    in_range = (k >= k_range[0]) & (k <= k_range[1])
    use = in_range & ok
    used = [int(v) for v in k[use]]
    hi = int(min(k_range[1], k.max())) if k.size else k_range[1]
    rng = (int(k_range[0]), hi)
    if use.sum() < MIN_POINTS:
        left_out = int((in_range & ~ok).sum())
        return Fit(
            name,
            None,
            None,
            rng,
            int(use.sum()),
            False,
            f"{int(use.sum())} usable points in K = {rng[0]}..{rng[1]} (need {MIN_POINTS}); "
            f"{left_out} left out: {why}",
            used,
        )
    slope, intercept = _line(np.log(k[use]), y[use])
    return Fit(name, slope, intercept, rng, int(use.sum()), True, "", used)


def fit_beta(obs: Observables, k_range: tuple[int, int] = FitRanges.beta_k) -> Fit:
    k = obs.cluster_sizes.astype(float)
    p0 = obs.p0
    ok = (p0 > 0) & (p0 < 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(-np.log(np.where(ok, p0, 0.5)))
    why = "P0 = 0 (never silent) or P0 = 1 (always silent)"
    if p0.size and p0[0] == 0:
        why = "the activity has no exact zeros: P0 and beta need activity with exact zeros"
        why += " (e.g. deconvolved)"
    return _fit("beta", k, y, ok, k_range, why)


def fit_alpha(obs: Observables, k_range: tuple[int, int] = FitRanges.alpha_k) -> Fit:
    k = obs.cluster_sizes.astype(float)
    ok = obs.m2 > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(np.where(ok, obs.m2, 1.0))
    return _fit("alpha", k, y, ok, k_range, "zero variance of the raw sums")


def fit_z(obs: Observables, k_range: tuple[int, int] = FitRanges.z_k) -> Fit:
    k = obs.cluster_sizes.astype(float)
    tau = obs.tau_c_frames
    ok = np.isfinite(tau) & (tau > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(np.where(ok, tau, 1.0))
    reasons = sorted({r for r, good in zip(obs.tau_c_reason, ok) if not good and r})
    return _fit("z", k, y, ok, k_range, "; ".join(reasons) or "no 1/e crossing")


def fit_mu(
    obs: Observables,
    k_range: tuple[int, int] = FitRanges.mu_k,
    max_rank_fraction: float = FitRanges.mu_max_rank_fraction,
) -> Fit:
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    used: list[int] = []
    reasons: list[str] = []
    for size, spec in sorted(obs.spectra.items()):
        if not k_range[0] <= size <= k_range[1]:
            continue
        if not spec.valid:
            reasons.append(f"K = {size}: {spec.reason}")
            continue
        rank = np.arange(1, size + 1)
        keep = (rank <= max_rank_fraction * size) & (spec.eigenvalues > 0)
        xs.append(np.log(size / rank[keep]))
        ys.append(np.log(spec.eigenvalues[keep]))
        used.append(size)
    rng = (int(k_range[0]), int(k_range[1]))
    if len(used) < 2:
        why = "; ".join(reasons) or "the tree has no clusters of K = 16..128"
        return Fit(
            "mu", None, None, rng, len(used), False, f"{len(used)} valid spectra: {why}", used
        )
    slope, intercept = _line(np.concatenate(xs), np.concatenate(ys))
    return Fit("mu", slope, intercept, rng, int(sum(x.size for x in xs)), True, "", used)


@dataclass
class Exponents:
    beta: Fit
    alpha: Fit
    mu: Fit
    z: Fit

    def items(self) -> list[tuple[str, Fit]]:
        return [("beta", self.beta), ("alpha", self.alpha), ("mu", self.mu), ("z", self.z)]


def fit_exponents(obs: Observables, ranges: FitRanges = FitRanges()) -> Exponents:
    return Exponents(
        beta=fit_beta(obs, ranges.beta_k),
        alpha=fit_alpha(obs, ranges.alpha_k),
        mu=fit_mu(obs, ranges.mu_k, ranges.mu_max_rank_fraction),
        z=fit_z(obs, ranges.z_k),
    )


def attach_errors(exponents: Exponents, quarters: list[Exponents]) -> None:
    """err = SD (ddof 1) of the refits on the quarters (science.md: random contiguous quarters)."""
    for name, fit in exponents.items():
        values = [float(getattr(q, name).value) for q in quarters if getattr(q, name).valid]
        fit.quarter_values = values
        if len(values) >= 2:
            fit.err = float(np.std(values, ddof=1))
        else:
            fit.err = None
            fit.err_reason = (
                f"only {len(values)} of {len(quarters)} quarter refits valid (need 2)"
                if quarters
                else "no quarter refits"
            )
        if fit.err is not None and not math.isfinite(fit.err):
            fit.err = None
            fit.err_reason = "quarter refits not finite"
