"""Run one protocol over many seeds (cultures, animals) and conditions, then compare.

    rig sweep lsa --seeds 1-10 --duration 300 \
        --condition closed:protocol.contingency=stop_on_output \
        --condition yoked:protocol.contingency=yoked,protocol.yoked_from={closed} \
        --metric weight_in_out_end --metric reaction_time_ratio

A condition is a name and a list of --set assignments. `{other}` in a value is replaced by
the session folder of condition `other` for the same seed, so a yoked control replays the
closed-loop session of its own culture; conditions run in the order given. The sweep folder
holds every session, `sweep.json` (each run's status and metrics, and for every metric and
pair of conditions an exact paired test over the seeds: sign-flip permutation and Wilcoxon
signed-rank) and `sweep.html` with one figure per metric.

A curve (`--curve reaction_times_s`) is a per-trial list metric (one value per trial, null
for a trial without a value) followed across the session: each run's list is kept in
sweep.json, cut into bins of `curve_bin` trials, and each condition's curve across seeds -
every seed's bin median (thin lines) and the mean of those medians over the seeds that reach
the bin (thick) - is one figure in sweep.html, with the per-bin numbers in sweep.json
(`curve_summary`). Seeds run different numbers of trials, so late bins can rest on fewer
seeds: each bin says how many.
"""

from __future__ import annotations

import html
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.paired import paired_test
from rig.config import ConfigError
from rig.run import run_experiment
from rig.session import jsonable


@dataclass(frozen=True)
class Condition:
    name: str
    assignments: tuple[str, ...]


def parse_seeds(text: str) -> list[int]:
    """'1-10', '1,2,5' or '3' -> list of seeds."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                a, b = part.split("-", 1)
                seeds.extend(range(int(a), int(b) + 1))
            else:
                seeds.append(int(part))
    except ValueError as e:
        raise ConfigError(f"--seeds {text!r}: use a range like 1-10 or a list like 1,2,5") from e
    if not seeds:
        raise ConfigError(f"--seeds {text!r} gives no seed")
    return seeds


def parse_condition(text: str) -> Condition:
    """'name:key=value,key=value' (values may contain brackets with commas)."""
    if ":" not in text:
        raise ConfigError(f"--condition {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    name, rest = text.split(":", 1)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        raise ConfigError(f"--condition name {name!r}: use letters, digits, _ and -")
    parts, depth, current = [], 0, ""
    for ch in rest:
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"[": 1, "]": -1}.get(ch, 0)
        current += ch
    if current:
        parts.append(current)
    for p in parts:
        if "=" not in p:
            raise ConfigError(f"--condition {name}: {p!r} is not KEY=VALUE")
    return Condition(name, tuple(parts))


def run_sweep(
    protocol: str,
    seeds: list[int],
    conditions: list[Condition],
    metrics: list[str],
    *,
    rig: str = "sim",
    duration_s: float = 60.0,
    out: str,
    speed: str = "max",
    overrides: list[str] | None = None,
    progress: bool = True,
    curves: list[str] | None = None,
    curve_bin: int = 10,
) -> dict[str, Any]:
    curves = list(curves or [])
    if not (isinstance(curve_bin, int) and curve_bin >= 1):
        raise ConfigError(f"--curve-bin {curve_bin!r} must be a whole number of trials >= 1")
    if not conditions:
        conditions = [Condition("default", ())]
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ConfigError(f"condition names must differ: {names}")
    folder = Path(out)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(
            f"sweep folder {folder} exists and is not empty: choose another --out"
        )
    folder.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    sessions: dict[tuple[str, int], Path] = {}
    total = len(seeds) * len(conditions)
    done = 0
    for seed in seeds:
        for cond in conditions:
            assignments = []
            for a in cond.assignments:
                for other in re.findall(r"\{([^}]+)\}", a):
                    if (other, seed) not in sessions:
                        raise ConfigError(
                            f"condition {cond.name} refers to {{{other}}}, which has "
                            "not run before it: list it earlier"
                        )
                    a = a.replace("{" + other + "}", str(sessions[(other, seed)]))
                assignments.append(a)
            session_dir = folder / f"{cond.name}-seed{seed}"
            result = run_experiment(
                protocol,
                rig,
                duration_s=duration_s,
                speed=speed,
                seed=seed,
                out=str(session_dir),
                overrides=list(overrides or []) + assignments,
            )
            sessions[(cond.name, seed)] = session_dir
            m = result.summary["protocol"]["metrics"]
            runs.append(
                {
                    "condition": cond.name,
                    "seed": seed,
                    "session": str(session_dir),
                    "status": result.summary["status"],
                    "error": result.summary["error"],
                    "metrics": {k: m.get(k) for k in metrics} if metrics else m,
                    "curves": {k: _as_curve(m.get(k)) for k in curves},
                }
            )
            done += 1
            if progress:
                print(
                    f"\r[{'#' * (30 * done // total):<30}] {done}/{total} "
                    f"{cond.name} seed {seed}: {result.summary['status']}",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    if progress:
        print(file=sys.stderr)
    comparisons = compare(runs, names, seeds, metrics)
    sweep = {
        "protocol": protocol,
        "rig": rig,
        "duration_s": duration_s,
        "seeds": seeds,
        "conditions": {c.name: list(c.assignments) for c in conditions},
        "runs": runs,
        "comparisons": comparisons,
        "curve_bin": curve_bin,
        "curve_summary": {
            c: {n: curve_summary(runs, n, seeds, c, curve_bin) for n in names} for c in curves
        },
    }
    (folder / "sweep.json").write_text(json.dumps(jsonable(sweep), indent=2))
    write_sweep_report(folder, sweep, metrics)
    return sweep


def metric_table(
    runs: list[dict[str, Any]], condition: str, seeds: list[int], metric: str
) -> np.ndarray:
    values = np.full(len(seeds), np.nan)
    for r in runs:
        if r["condition"] == condition and r["status"] == "completed":
            v = r["metrics"].get(metric)
            if isinstance(v, (int, float)) and v is not None:
                values[seeds.index(r["seed"])] = float(v)
    return values


def _as_curve(value: Any) -> list[float | None] | None:
    """A per-trial list metric as floats (None for a trial without a value); None if the
    metric is not a list."""
    if not isinstance(value, (list, tuple)):
        return None
    return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
            for v in value]  # fmt: skip


def binned_curve(values: list[float | None], curve_bin: int) -> np.ndarray:
    """Median of each bin of `curve_bin` consecutive trials (NaN where a bin has no value);
    a last, incomplete bin is kept."""
    v = np.array([np.nan if x is None else x for x in values], float)
    n_bins = -(-v.size // curve_bin)
    out = np.full(n_bins, np.nan)
    for b in range(n_bins):
        part = v[b * curve_bin : (b + 1) * curve_bin]
        if np.isfinite(part).any():
            out[b] = np.nanmedian(part)
    return out


def curve_table(
    runs: list[dict[str, Any]], condition: str, seeds: list[int], curve: str, curve_bin: int
) -> np.ndarray:
    """(seeds, bins) bin medians of a curve for one condition, NaN-padded."""
    rows = [np.zeros(0)] * len(seeds)
    for r in runs:
        values = r.get("curves", {}).get(curve)
        if r["condition"] == condition and r["status"] == "completed" and values is not None:
            rows[seeds.index(r["seed"])] = binned_curve(values, curve_bin)
    width = max((row.size for row in rows), default=0)
    table = np.full((len(seeds), width), np.nan)
    for i, row in enumerate(rows):
        table[i, : row.size] = row
    return table


def curve_summary(
    runs: list[dict[str, Any]], condition: str, seeds: list[int], curve: str, curve_bin: int
) -> list[dict[str, Any]]:
    """Per bin: first trial (1-based), seeds with a value, mean and median over seeds."""
    table = curve_table(runs, condition, seeds, curve, curve_bin)
    out = []
    for b in range(table.shape[1]):
        col = table[:, b][np.isfinite(table[:, b])]
        out.append(
            {
                "first_trial": b * curve_bin + 1,
                "seeds": int(col.size),
                "mean": float(col.mean()) if col.size else None,
                "median": float(np.median(col)) if col.size else None,
            }
        )
    return out


def compare(
    runs: list[dict[str, Any]], names: list[str], seeds: list[int], metrics: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in metrics:
        out[metric] = {}
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                va, vb = metric_table(runs, a, seeds, metric), metric_table(runs, b, seeds, metric)
                try:
                    out[metric][f"{a} vs {b}"] = paired_test(va, vb).to_dict()
                except ValueError as e:
                    out[metric][f"{a} vs {b}"] = {"error": str(e)}
    return out


def write_sweep_report(folder: Path, sweep: dict[str, Any], metrics: list[str]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(sweep["conditions"])
    seeds = sweep["seeds"]
    parts = [
        f"<h1>Sweep: {html.escape(sweep['protocol'])}</h1>",
        f"<p>{len(seeds)} seeds x {len(names)} conditions, {sweep['duration_s']:g} s each.</p>",
    ]
    for metric in metrics:
        fig = Figure(figsize=(5, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        table = np.array([metric_table(sweep["runs"], n, seeds, metric) for n in names])
        for j in range(len(seeds)):
            ax.plot(range(len(names)), table[:, j], "-o", color="0.6", lw=0.8, ms=3)
        reached = np.isfinite(table).any(axis=1)
        means = np.full(len(names), np.nan)
        means[reached] = np.nanmean(table[reached], axis=1)  # a condition with no value: gap
        ax.plot(range(len(names)), means, "-s", color="C3", lw=2, label="mean")
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric}: one line per seed")
        ax.legend()
        fig.tight_layout()
        png = f"sweep_{metric}.png"
        fig.savefig(folder / png, dpi=100)
        rows = "".join(
            f"<tr><td>{html.escape(pair)}</td>"
            + "".join(
                f"<td>{html.escape(_fmt(r.get(k)))}</td>"
                for k in (
                    "n",
                    "mean_difference",
                    "n_positive",
                    "n_negative",
                    "p_sign_flip",
                    "p_wilcoxon",
                )
            )
            + "</tr>"
            for pair, r in sweep["comparisons"][metric].items()
        )
        parts.append(
            f"<h2>{html.escape(metric)}</h2><img src='{png}'><table border=1>"
            "<tr><th>pair</th><th>n</th><th>mean difference</th><th>A &gt; B</th>"
            "<th>A &lt; B</th><th>p (sign flip)</th><th>p (Wilcoxon)</th></tr>"
            f"{rows}</table>"
        )
    for curve in sweep.get("curve_summary", {}):
        parts.append(_curve_section(folder, sweep, curve))
    runs = "".join(
        f"<tr><td>{html.escape(r['condition'])}</td><td>{r['seed']}</td>"
        f"<td>{html.escape(r['status'])}</td><td><a href='{Path(r['session']).name}/"
        f"report.html'>{html.escape(Path(r['session']).name)}</a></td></tr>"
        for r in sweep["runs"]
    )
    parts.append(
        "<h2>Runs</h2><table border=1><tr><th>condition</th><th>seed</th>"
        f"<th>status</th><th>session</th></tr>{runs}</table>"
    )
    path = folder / "sweep.html"
    path.write_text("<!doctype html><html><body>" + "".join(parts) + "</body></html>")
    return path


def _curve_section(folder: Path, sweep: dict[str, Any], curve: str) -> str:
    """One figure: per condition, every seed's binned curve and the mean over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(sweep["conditions"])
    seeds = sweep["seeds"]
    k = sweep["curve_bin"]
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for number, name in enumerate(names):
        table = curve_table(sweep["runs"], name, seeds, curve, k)
        if table.size == 0:
            continue
        x = np.arange(table.shape[1]) * k + (k + 1) / 2  # bin centres, in trials
        colour = f"C{number % 10}"
        for row in table:
            ax.plot(x, row, "-", color=colour, lw=0.6, alpha=0.35)
        reached = np.isfinite(table).sum(axis=0)
        mean = np.full(table.shape[1], np.nan)
        mean[reached > 0] = np.nanmean(table[:, reached > 0], axis=0)
        ax.plot(x, mean, "-o", color=colour, lw=2, ms=3, label=f"{name} (mean over seeds)")
    ax.set_xlabel(f"trial (bins of {k})")
    ax.set_ylabel(curve)
    ax.set_title(f"{curve}: one thin line per seed (bin median)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    png = f"sweep_curve_{curve}.png"
    fig.savefig(folder / png, dpi=100)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(
            f"<td>{_fmt(b['mean'])} ({b['seeds']})</td>"
            for b in sweep["curve_summary"][curve][name]
        )
        + "</tr>"
        for name in names
    )
    return (
        f"<h2>{html.escape(curve)} across the session</h2><img src='{png}'>"
        f"<p>Mean over seeds of each seed's median in bins of {k} trials (seeds reaching the "
        f"bin in brackets).</p><table border=1>{rows}</table>"
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
