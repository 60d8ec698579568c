"""Batch coarse-graining analysis of a recording: tree, observables, exponents, error bars and
the shuffle control (science.md section 4; Meshulam et al., PRL 123, 178103, 2019).

``analyze(activity)`` with activity (N neurons, T frames):

1. checks the input (finite, 2-D, enough neurons for the levels) and handles rows that cannot
   be coarse-grained: constant rows (including all-zero ones) and rows whose nonzero values do
   not average to a positive number (``constant_rows``: "error" raises naming them, "drop"
   removes and reports them, "keep" keeps constant rows with correlation 0);
2. builds the tree and measures the observables on all frames, fits beta, alpha, mu, z;
3. refits on ``n_quarters`` random contiguous quarters: the error of each exponent is the SD of
   those refits (the value is the fit on the whole recording, which has the least finite-size
   bias; the quarters' mean is reported next to it);
4. repeats 2-3 on the circular-shift control (``shuffled``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from analysis.rg.controls import circular_shift_control, random_quarters
from analysis.rg.fits import Exponents, FitRanges, attach_errors, fit_exponents
from analysis.rg.observables import HIST_BINS, HIST_MAX, SPECTRUM_SIZES, Observables, measure
from analysis.rg.statistics import pairing_statistics
from analysis.rg.tree import CoarseGrainingTree, NormalizationError, build_tree, check_levels

Progress = Callable[[float, str], None]
DEFAULT_LEVELS = 8
CONSTANT_ROW_POLICIES = ("error", "drop", "keep")


@dataclass(frozen=True)
class RGOptions:
    levels: int | None = None  # default min(8, floor(log2 N))
    n_quarters: int = 8
    shuffle: bool = True
    seed: int = 0
    max_lag_frames: int | None = None
    spectrum_sizes: tuple[int, ...] = SPECTRUM_SIZES
    fit_ranges: FitRanges = FitRanges()
    constant_rows: str = "error"
    hist_max: float = HIST_MAX
    hist_bins: int = HIST_BINS


@dataclass
class RGAnalysis:
    observables: Observables
    exponents: Exponents
    tree: CoarseGrainingTree
    n_neurons: int
    n_frames: int
    kept_rows: np.ndarray
    dropped_rows: dict[str, list[int]] = field(default_factory=dict)
    quarters: list[tuple[int, int]] = field(default_factory=list)
    quarter_failures: list[str] = field(default_factory=list)
    shuffled: RGAnalysis | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self, frame_rate_hz: float | None = None) -> dict[str, Any]:
        return analysis_to_dict(self, frame_rate_hz)


def check_activity(activity: Any) -> np.ndarray:
    """(N, T) finite numbers as float64, with N >= 2 and T >= 2; clear errors otherwise."""
    x = np.asarray(activity)
    if x.ndim != 2:
        raise ValueError(f"activity must be 2-D (neurons x frames), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"activity must be numeric, got dtype {x.dtype}")
    x = np.asarray(x, dtype=np.float64)
    n, t = x.shape
    if n < 2:
        raise ValueError(f"activity needs at least 2 neurons (rows), got {n}")
    if t < 2:
        raise ValueError(f"activity needs at least 2 frames (columns), got {t}")
    bad = ~np.isfinite(x)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"activity contains {int(bad.sum())} NaN/inf values (first at neuron {i}, frame {j});"
            " remove those frames or neurons before the analysis"
        )
    return x


def classify_rows(x: np.ndarray) -> dict[str, np.ndarray]:
    """Indices of rows that cannot be coarse-grained as they are."""
    nonzero = np.count_nonzero(x, axis=1)
    all_zero = nonzero == 0
    constant = (x.max(axis=1) == x.min(axis=1)) & ~all_zero
    bad_mean = (nonzero > 0) & ~(x.sum(axis=1) > 0) & ~constant
    return {
        "all_zero": np.flatnonzero(all_zero),
        "constant": np.flatnonzero(constant),
        "nonpositive_mean": np.flatnonzero(bad_mean),
    }


def _describe(kind: str, idx: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:8]) + (", ..." if idx.size > 8 else "")
    text = {
        "all_zero": "all-zero (never active)",
        "constant": "constant",
        "nonpositive_mean": "with nonzero values averaging <= 0 (cannot be normalized)",
    }[kind]
    return f"{idx.size} {text} row(s): {shown}"


def select_rows(x: np.ndarray, policy: str) -> tuple[np.ndarray, dict[str, list[int]], list[str]]:
    if policy not in CONSTANT_ROW_POLICIES:
        raise ValueError(f"constant_rows must be one of {CONSTANT_ROW_POLICIES}, got {policy!r}")
    kinds = classify_rows(x)
    problems = {k: v for k, v in kinds.items() if v.size}
    notes: list[str] = []
    keep = np.ones(x.shape[0], dtype=bool)
    if not problems:
        return np.arange(x.shape[0]), {}, notes
    if policy == "error" or (policy == "keep" and "nonpositive_mean" in problems):
        shown = {k: v for k, v in problems.items() if policy == "error" or k == "nonpositive_mean"}
        raise ValueError(
            "; ".join(_describe(k, v) for k, v in shown.items())
            + ". Correlation is undefined for constant rows and the normalization (mean of "
            "nonzero values = 1) needs positive activity: drop them (constant_rows='drop', "
            "rig analyze --constant-rows drop)"
            + (
                " or keep constant ones with correlation 0 (constant_rows='keep')"
                if "nonpositive_mean" not in shown
                else ""
            )
        )
    dropped: dict[str, list[int]] = {}
    for kind, idx in problems.items():
        if policy == "drop":
            keep[idx] = False
            dropped[kind] = [int(i) for i in idx]
            notes.append("dropped " + _describe(kind, idx))
        else:
            notes.append("kept " + _describe(kind, idx) + " (correlation 0 with all others)")
    return np.flatnonzero(keep), dropped, notes


def default_levels(n_neurons: int) -> int:
    return max(1, min(DEFAULT_LEVELS, int(math.floor(math.log2(max(n_neurons, 2))))))


def analyze_once(
    x: np.ndarray, levels: int, options: RGOptions = RGOptions()
) -> tuple[CoarseGrainingTree, Observables, Exponents]:
    """Tree, observables and fits of one array (no error bars, no control)."""
    stats = pairing_statistics(x)
    tree = build_tree(stats, levels)
    obs = measure(
        x,
        tree,
        spectra_stats=stats,
        spectrum_sizes=options.spectrum_sizes,
        max_lag_frames=options.max_lag_frames,
        hist_max=options.hist_max,
        hist_bins=options.hist_bins,
    )
    return tree, obs, fit_exponents(obs, options.fit_ranges)


def _with_errors(
    x: np.ndarray,
    levels: int,
    options: RGOptions,
    rng: np.random.Generator,
    progress: Progress,
    label: str,
    span: tuple[float, float],
) -> tuple[CoarseGrainingTree, Observables, Exponents, list[tuple[int, int]], list[str]]:
    lo, hi = span
    steps = 1 + options.n_quarters
    progress(lo, f"{label}: whole recording")
    tree, obs, exps = analyze_once(x, levels, options)
    segments = random_quarters(x.shape[1], options.n_quarters, rng) if options.n_quarters else []
    refits: list[Exponents] = []
    failures: list[str] = []
    for q, (a, b) in enumerate(segments):
        progress(lo + (hi - lo) * (q + 1) / steps, f"{label}: quarter {q + 1}/{len(segments)}")
        try:
            refits.append(analyze_once(x[:, a:b], levels, options)[2])
        except (NormalizationError, ValueError) as e:
            failures.append(f"frames {a}..{b}: {e}")
    attach_errors(exps, refits)
    return tree, obs, exps, segments, failures


def analyze(
    activity: Any,
    options: RGOptions = RGOptions(),
    progress: Progress | None = None,
) -> RGAnalysis:
    """The whole batch analysis of an (N neurons, T frames) array; see the module docstring."""
    report = progress or (lambda fraction, message: None)
    x = check_activity(activity)
    kept, dropped, notes = select_rows(x, options.constant_rows)
    x = x[kept]
    n, t = x.shape
    levels = default_levels(n) if options.levels is None else options.levels
    levels = check_levels(n, levels)
    if options.n_quarters < 0 or options.n_quarters == 1:
        raise ValueError(f"n_quarters must be 0 or >= 2, got {options.n_quarters}")
    rng_quarters, rng_shuffle, rng_shuffle_quarters = np.random.default_rng(options.seed).spawn(3)
    if np.any(x < 0):
        notes.append(
            "the activity has negative values; the normalization and P0 of the paper assume "
            "nonnegative activity with exact zeros (deconvolved traces)"
        )
    span = (0.0, 0.5) if options.shuffle else (0.0, 1.0)
    tree, obs, exps, segments, failures = _with_errors(
        x, levels, options, rng_quarters, report, "data", span
    )
    result = RGAnalysis(obs, exps, tree, n, t, kept, dropped, segments, failures, None, notes)
    if options.shuffle:
        shuffled = circular_shift_control(x, rng_shuffle)
        s_tree, s_obs, s_exps, s_segments, s_failures = _with_errors(
            shuffled, levels, options, rng_shuffle_quarters, report, "shuffled", (0.5, 1.0)
        )
        result.shuffled = RGAnalysis(
            s_obs, s_exps, s_tree, n, t, kept, dropped, s_segments, s_failures
        )
    report(1.0, "done")
    return result


# ---------------------------------------------------------------------------------------------
# JSON


def _num(v: Any) -> Any:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _nums(values: Any) -> list:
    return [_num(v) for v in np.asarray(values, dtype=float).ravel()]


def analysis_to_dict(result: RGAnalysis, frame_rate_hz: float | None = None) -> dict[str, Any]:
    obs = result.observables
    out: dict[str, Any] = {}
    for name, fit in result.exponents.items():
        out[name] = _num(fit.value)
        out[f"{name}_err"] = _num(fit.err)
    out.update(
        {
            "cluster_sizes": [int(k) for k in obs.cluster_sizes],
            "n_clusters": [int(v) for v in obs.n_clusters],
            "p0": _nums(obs.p0),
            "m2": _nums(obs.m2),
            "tau_c_frames": _nums(obs.tau_c_frames),
            "n_neurons": result.n_neurons,
            "n_frames": result.n_frames,
            "levels": result.tree.levels,
        }
    )
    if frame_rate_hz:
        out["frame_rate_hz"] = float(frame_rate_hz)
        out["tau_c_s"] = _nums(obs.tau_c_frames / frame_rate_hz)
    out["fits"] = {name: fit.as_dict() for name, fit in result.exponents.items()}
    for name, fit in result.exponents.items():
        values = fit.quarter_values
        out["fits"][name]["quarters_mean"] = _num(np.mean(values)) if values else None
    out["invalid"] = {
        name: fit.reason or fit.err_reason
        for name, fit in result.exponents.items()
        if not fit.valid or fit.err is None
    }
    out["counts"] = {
        "silent_samples": [int(v) for v in obs.n_silent],
        "nonzero_samples": [int(v) for v in obs.q_n_nonzero],
        "samples": [int(c) * obs.n_frames for c in obs.n_clusters],
    }
    out["q"] = {
        "mean": _nums(obs.q_mean),
        "variance": _nums(obs.q_variance),
        "skewness": _nums(obs.q_skewness),
        "excess_kurtosis": _nums(obs.q_excess_kurtosis),
        "edges": _nums(obs.q_edges),
        "density": [_nums(row) for row in obs.q_density],
        "overflow_fraction": _nums(obs.q_overflow),
    }
    out["c_k"] = {
        "lags_frames": [int(v) for v in obs.lags_frames],
        "values": [_nums(row) for row in obs.c_k],
        "tau_c_reason": obs.tau_c_reason,
    }
    out["spectra"] = {
        str(k): {
            "n_clusters": s.n_clusters,
            "eigenvalues": _nums(s.eigenvalues),
            "eigenvalues_sd": _nums(s.eigenvalues_sd),
            "valid": s.valid,
            "reason": s.reason,
        }
        for k, s in obs.spectra.items()
    }
    out["quarters"] = [list(q) for q in result.quarters]
    out["quarter_failures"] = result.quarter_failures
    out["dropped_rows"] = result.dropped_rows
    out["notes"] = result.notes
    out["tree"] = {
        "pairs": [p.tolist() for p in result.tree.pairs],
        "leftovers": list(result.tree.leftovers),
        "kept_rows": [int(i) for i in result.kept_rows],
    }
    if result.shuffled is not None:
        shuffled = analysis_to_dict(result.shuffled, frame_rate_hz)
        shuffled.pop("tree", None)
        out["shuffled"] = shuffled
    return out
