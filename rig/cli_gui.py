"""`rig gui`: the live experiment window (rig/gui/, docs/GUI.md).

    rig gui [--rig sim|FILE.toml] [--set KEY=VALUE ...] [--protocol P] [--duration S]
            [--speed realtime|max] [--seed N] [--run-for SECONDS [--screenshot FILE.png]]

Headless (no $DISPLAY) the window can still run for docs and checks: with --run-for, Qt's
offscreen platform is chosen automatically; without it the command says how to proceed
instead of letting Qt abort.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from rig.config import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("gui", help="the live experiment window (image, traces, protocol)")
    p.add_argument("--rig", default="sim", help="embedded rig name (sim) or a rig TOML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a rig key (scanner.lines=64) or set a protocol parameter in the form "
        "(protocol.NAME=VALUE); repeatable",
    )
    p.add_argument("--protocol", default=None, help="protocol chosen in the runner (name or file)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of acquisition")
    p.add_argument("--speed", choices=("realtime", "max"), default="realtime")
    p.add_argument("--seed", type=int, default=None, help="seed of the simulated world")
    p.add_argument(
        "--run-for",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start the protocol at once, stop it after SECONDS of wall time and exit",
    )
    p.add_argument(
        "--screenshot", default=None, metavar="FILE.png", help="with --run-for: save the window"
    )
    p.set_defaults(handler=gui_command)


def gui_command(args: argparse.Namespace) -> int:
    if args.screenshot and args.run_for is None:
        raise ConfigError("--screenshot FILE.png needs --run-for SECONDS (when to take it)")
    if args.run_for is not None and not (args.run_for > 0 and math.isfinite(args.run_for)):
        raise ConfigError(f"--run-for {args.run_for!r} must be a positive number of seconds")
    if not (args.duration > 0 and math.isfinite(args.duration)):
        raise ConfigError(f"--duration {args.duration!r} must be a positive number of seconds")
    _choose_platform(headless_ok=args.run_for is not None)
    from rig.gui.app import launch

    return launch(
        rig=args.rig,
        overrides=args.overrides,
        protocol=args.protocol,
        duration_s=args.duration,
        speed=args.speed,
        seed=args.seed,
        run_for_s=args.run_for,
        screenshot=args.screenshot,
    )


def _choose_platform(headless_ok: bool) -> None:
    """Pick Qt's offscreen platform when there is no display and that is fine; Qt itself
    would abort the process with a cryptic message."""
    if os.environ.get("QT_QPA_PLATFORM") or not sys.platform.startswith("linux"):
        return
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    if headless_ok:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        return
    raise ConfigError(
        "no display ($DISPLAY is not set): run `rig gui` on a desktop session, or headless "
        "with --run-for SECONDS --screenshot FILE.png"
    )
