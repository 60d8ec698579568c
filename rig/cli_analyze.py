"""`rig analyze PATH... [--frame-rate HZ] [--json FILE] [--out DIR]`: coarse-graining analysis.

Registered by rig/cli.py (EXTENSIONS). Each PATH is a session folder, a .npy or .h5 array
(neurons x frames) or an NWB file (rig/analyze.py). Results go to DIR (default
`<name>-rg` in the current folder; with several PATHs, `DIR/<name>-rg`): rg.json and the
figures. --json FILE also writes the results to FILE (one object, or {"results": [...]} for
several PATHs). Unreadable or unusable input exits with status 2 and a message.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from rig.config import ConfigError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="coarse-graining (renormalization-group) analysis of sessions or arrays",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="session folder, .npy, .h5 or .nwb")
    p.add_argument(
        "--frame-rate",
        type=float,
        default=None,
        metavar="HZ",
        help="frame rate for times in seconds (default: from the file, if known)",
    )
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results here")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for rg.json and figures")
    p.add_argument(
        "--levels",
        type=int,
        default=None,
        help="coarse-graining steps: K = 1..2^levels (default min(8, log2 N))",
    )
    p.add_argument(
        "--quarters",
        type=int,
        default=8,
        help="random contiguous quarters for the error bars (0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the quarters and the shuffle")
    p.add_argument(
        "--constant-rows",
        choices=("drop", "keep", "error"),
        default="drop",
        help="rows that are constant or all zero: drop (reported), keep (correlation 0) or error",
    )
    p.add_argument("--no-shuffle", action="store_true", help="skip the circular-shift control")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from analysis.rg.batch import RGOptions
    from rig.analyze import InputError, analyze_recording, load_recording, summary_line
    from rig.analyze import write_outputs

    if args.frame_rate is not None and not args.frame_rate > 0:
        raise ConfigError(f"--frame-rate must be > 0 Hz, got {args.frame_rate}")
    if args.quarters < 0 or args.quarters == 1:
        raise ConfigError(f"--quarters must be 0 or >= 2, got {args.quarters}")
    options = RGOptions(
        levels=args.levels,
        n_quarters=args.quarters,
        shuffle=not args.no_shuffle,
        seed=args.seed,
        constant_rows=args.constant_rows,
    )
    several = len(args.paths) > 1
    summaries = []
    for path in args.paths:
        try:
            recording = load_recording(path)
            result, summary = analyze_recording(recording, options, args.frame_rate, sys.stderr)
        except (InputError, ValueError) as e:
            raise ConfigError(f"{path}: {e}") from e
        name = pathlib.Path(path.rstrip("/")).stem or "recording"
        if args.out is None:
            out_dir = pathlib.Path(f"{name}-rg")
        else:
            out_dir = pathlib.Path(args.out) / f"{name}-rg" if several else pathlib.Path(args.out)
        written = write_outputs(result, summary, out_dir)
        summaries.append(summary)
        print(f"{path}: {summary_line(summary)}")
        for note in summary["notes"]:
            print(f"  note: {note}")
        for name_, reason in summary["invalid"].items():
            print(f"  {name_}: {reason}")
        print(f"  written: {written[0].parent}")
    if args.json:
        payload = {"results": summaries} if several else summaries[0]
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
    return 0
