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
) -> dict[str, Any]:
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
        ax.plot(range(len(names)), np.nanmean(table, axis=1), "-s", color="C3", lw=2, label="mean")
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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
