"""`rig` command line.

    rig run PROTOCOL [--rig sim|FILE.toml] [--duration S] [--speed max|realtime] [--seed N]
                     [--out DIR] [--set KEY=VALUE ...]
    rig config show [--rig sim|FILE.toml] [--set KEY=VALUE ...]
    rig protocols                      list protocols and their parameters
    rig report DIR                     (re)write a session's report.html
    rig bench NAME [--json FILE]       benchmarks (see docs/PERFORMANCE.md)

Bad input (unknown protocol, bad parameter, unknown config key, out-of-range setting, a
missing NI driver) exits with status 2 and a one-paragraph message saying what to fix.
"""

from __future__ import annotations

import os

# One BLAS thread: the loop's per-frame matrix products are small, and waking BLAS threads on
# a 2-core machine costs milliseconds (measured in rig bench rg). Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from drivers.errors import DeviceError
from rig.config import ConfigError


def _add_rig_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rig", default="sim", help="embedded rig name (sim) or a rig TOML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a rig key (scanner.pixels_per_line=256) or a protocol "
        "parameter (protocol.NAME=VALUE); repeatable",
    )


#: modules that add subcommands: each defines register(subparsers), whose parsers call
#: set_defaults(handler=function) with function(args) -> exit status
EXTENSIONS: tuple[str, ...] = (
    "rig.cli_sweep",
    "rig.cli_analyze",
    "rig.cli_lens",
    "rig.cli_gui",
    "rig.cli_recording",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rig", description="closed-loop two-photon experiments")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a protocol and write a session folder")
    run.add_argument("protocol", help="protocol file or name in protocols/")
    _add_rig_args(run)
    run.add_argument(
        "--duration", type=float, default=60.0, help="seconds of acquisition (device clock)"
    )
    run.add_argument("--speed", choices=("max", "realtime"), default="max")
    run.add_argument("--seed", type=int, default=None, help="seed of the simulated world")
    run.add_argument("--out", default=None, help="session folder (must not exist)")
    run.add_argument("--no-report", action="store_true", help="skip report.html")

    config = sub.add_parser("config", help="show the rig configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="every key with its value and unit")
    _add_rig_args(show)

    sub.add_parser("protocols", help="list protocols and their parameters")

    report = sub.add_parser("report", help="write report.html of a session folder")
    report.add_argument("session")

    bench = sub.add_parser("bench", help="run a benchmark")
    bench.add_argument("name", help="benchmark name (core)")
    bench.add_argument("--json", default=None, help="write the figures as a flat JSON object")
    bench.add_argument("--quick", action="store_true", help="shorter runs (for tests)")
    for module in EXTENSIONS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ConfigError, DeviceError, FileExistsError, FileNotFoundError) as e:
        print(f"rig: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "handler", None) is not None:
        return int(args.handler(args))
    if args.command == "run":
        return _run(args)
    if args.command == "config":
        return _config_show(args)
    if args.command == "protocols":
        return _protocols()
    if args.command == "report":
        from rig.report import write_report

        try:
            print(write_report(args.session))
        except ValueError as e:
            raise ConfigError(str(e)) from e
        return 0
    if args.command == "bench":
        from rig.bench import run_benchmark

        figures = run_benchmark(args.name, quick=args.quick)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(figures, f, indent=2)
        return 0
    raise AssertionError(args.command)


def _run(args: argparse.Namespace) -> int:
    from rig.run import run_experiment

    result = run_experiment(
        args.protocol,
        args.rig,
        duration_s=args.duration,
        speed=args.speed,
        seed=args.seed,
        out=args.out,
        overrides=args.overrides,
        write_report=not args.no_report,
    )
    s = result.summary
    print(_summary_text(result.session_dir, s))
    return 0 if s["status"] == "completed" else 1


def _summary_text(folder: Any, s: dict[str, Any]) -> str:
    lat = s["latency_ms"]
    noise = s["noise_level"]

    def f(x: Any, fmt: str = ".2f") -> str:
        return "n/a" if x is None else format(x, fmt)

    lines = [
        f"session   {folder}",
        f"status    {s['status']}"
        + (f"  ({s['error']})" if s.get("error") else "")
        + (f"  stop: {s['stop_reason']}" if s.get("stop_reason") else ""),
        f"frames    {s['frames']} at {s['frame_rate_hz']:.2f} Hz ({s['duration_s']:.1f} s), "
        f"dropped {s['frames_dropped']}, wall time {s['wall_time_s']:.1f} s",
        f"ROIs      {s['n_rois']}, noise level median {f(noise['median'])} "
        f"(p10 {f(noise['p10'])}, p90 {f(noise['p90'])}) %/sqrt(s)",
        f"latency   p50 {f(lat['p50'], '.3f')} ms, p99 {f(lat['p99'], '.3f')} ms, "
        f"max {f(lat['max'], '.3f')} ms",
        f"stimuli   {s['stimuli']}",
        f"protocol  {s['protocol']['name']}: {_short_metrics(s['protocol']['metrics'])}",
        f"report    {folder}/report.html"
        if (Path(folder) / "report.html").is_file()
        else f"report    not written (rig report {folder} writes it)",
    ]
    return "\n".join(lines)


def _short_metrics(metrics: dict[str, Any]) -> str:
    """Scalars and short lists as they are; long lists as their length (all in summary.json)."""
    parts = []
    for key, value in metrics.items():
        if isinstance(value, list) and (len(value) > 8 or any(isinstance(v, list) for v in value)):
            value = f"<{len(value)} values>"
        elif isinstance(value, float):
            value = round(value, 3)
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def _config_show(args: argparse.Namespace) -> int:
    from rig.config import describe, load_rig_config, split_overrides

    rig_overrides, _ = split_overrides(args.overrides)
    config = load_rig_config(args.rig, rig_overrides)
    rows = describe(config)
    width = max(len(r[0]) for r in rows)
    vwidth = min(40, max(len(r[1]) for r in rows))
    print(f"# rig {config['rig.name']} ({config.source})")
    for key, value, unit, help_text in rows:
        line = f"{key:<{width}}  {value:<{vwidth}}  {unit:<8}"
        if help_text:
            line += f"  # {help_text}"
        print(line.rstrip())
    return 0


def _protocols() -> int:
    from rig.protocol import available_protocols, load_protocol_class

    for name in available_protocols():
        cls = load_protocol_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name}: {doc[0] if doc else ''}")
        for p in cls.describe():
            print(f"    {p['name']} = {p['default']!r}  {p['range']}  {p['help']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
