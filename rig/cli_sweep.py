"""`rig sweep`: a protocol over many seeds and conditions, with paired tests (rig/sweep.py)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("sweep", help="run a protocol over seeds and conditions, compare them")
    p.add_argument("protocol")
    p.add_argument("--seeds", default="1-10", help="e.g. 1-10 or 1,3,5")
    p.add_argument(
        "--condition",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="a condition; {other} in a value is the session of condition other",
    )
    p.add_argument("--metric", action="append", default=[], help="protocol metric to compare")
    p.add_argument(
        "--curve",
        action="append",
        default=[],
        help="per-trial list metric to follow across trials (e.g. reaction_times_s)",
    )
    p.add_argument(
        "--curve-bin", type=int, default=10, help="trials per bin of a --curve (default 10)"
    )
    p.add_argument("--rig", default="sim")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--speed", choices=("max", "realtime"), default="max")
    p.add_argument("--out", required=True, help="sweep folder (must not exist)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from rig.sweep import parse_condition, parse_seeds, run_sweep

    sweep = run_sweep(
        args.protocol,
        parse_seeds(args.seeds),
        [parse_condition(c) for c in args.condition],
        args.metric,
        rig=args.rig,
        duration_s=args.duration,
        out=args.out,
        speed=args.speed,
        overrides=args.overrides,
        curves=args.curve,
        curve_bin=args.curve_bin,
    )
    for metric, pairs in sweep["comparisons"].items():
        for pair, r in pairs.items():
            if "error" in r:
                print(f"{metric:<24} {pair:<28} {r['error']}")
            else:
                print(
                    f"{metric:<24} {pair:<28} mean diff {r['mean_difference']:+.4g}  "
                    f"{r['n_positive']}+/{r['n_negative']}-  p = {r['p_sign_flip']:.3g} "
                    f"(sign flip), {r['p_wilcoxon']:.3g} (Wilcoxon)"
                )
    print(f"sweep     {args.out}/sweep.html")
    failed = [r for r in sweep["runs"] if r["status"] != "completed"]
    return 1 if failed else 0
