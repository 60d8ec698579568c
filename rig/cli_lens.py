"""`rig lens PORT info|current MA|focal-power DPT`: check a tunable lens from the bench.

PORT is a serial port (/dev/ttyACM0, COM5), text in a port's USB description ("Optotune"),
or a URL: `optotune_sim://` is the simulated lens. Every command opens the lens (handshake,
identity, limits), does its job, prints what the lens reports and closes it; closing puts the
lens at rest (0 mA), so `current` and `focal-power` check that the lens takes and reports a
setting (`--hold S` keeps it for S seconds before that). Refused values (beyond the current
limits, outside the reported focal power range) exit with status 2 before anything is sent.
"""

from __future__ import annotations

import argparse
import time

import simulators.optotune  # noqa: F401  (registers optotune_sim:// with pyserial)
from drivers.optotune import OptotuneLens


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"--hold {text}: must be >= 0 seconds")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    lens = subparsers.add_parser(
        "lens",
        help="check an Optotune tunable lens (info, set current or focal power)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lens.add_argument("port", help="serial port, description text, or optotune_sim://")
    lens.add_argument("--timeout", type=float, default=0.5, help="reply timeout, s")
    lens.add_argument(
        "--no-handshake", action="store_true", help="skip 'Start' (which also zeroes the current)"
    )
    lens.add_argument(
        "--full-scale",
        type=int,
        default=4095,
        choices=(4095, 4096),
        help="current code at the maximum current (drivers disagree)",
    )
    actions = lens.add_subparsers(dest="lens_command", required=True)
    actions.add_parser("info", help="identity, limits, mode and readings")
    current = actions.add_parser("current", help="DC current mode, set MA milliamps")
    current.add_argument("current_ma", type=float, metavar="MA")
    current.add_argument(
        "--hold",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="keep the setting S seconds before closing",
    )
    power = actions.add_parser("focal-power", help="focal power mode, set DPT dioptres")
    power.add_argument("focal_power_dpt", type=float, metavar="DPT")
    power.add_argument(
        "--hold",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="keep the setting S seconds before closing",
    )
    lens.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    lens = OptotuneLens(
        args.port,
        timeout_s=args.timeout,
        handshake=not args.no_handshake,
        full_scale_code=args.full_scale,
    )
    with lens:
        if args.lens_command == "info":
            _print_info(lens)
        elif args.lens_command == "current":
            lens.set_mode("current")
            lens.set_current_ma(args.current_ma)
            _print_readings(lens, f"set current {args.current_ma:g} mA")
            _hold(args.hold)
        elif args.lens_command == "focal-power":
            lens.set_mode("focal power")
            lens.set_focal_power_dpt(args.focal_power_dpt)
            _print_readings(lens, f"set focal power {args.focal_power_dpt:g} dpt")
            _hold(args.hold)
        else:
            raise AssertionError(args.lens_command)
    return 0


def _row(key: str, value: object) -> None:
    print(f"{key:<22}{value}")


def _print_info(lens: OptotuneLens) -> None:
    _row("port", lens.url)
    _row("firmware type", lens.firmware_type)
    _row("firmware version", lens.firmware_version)
    _row("firmware branch", lens.firmware_branch())
    _row("device id", lens.device_id())
    _row("lens serial", lens.lens_serial)
    _row("max current", f"{lens.max_current_ma:g} mA")
    lower, upper = lens.software_current_limits_ma
    _row("software limits", f"{lower:g} .. {upper:g} mA")
    fp_range = lens.focal_power_range_dpt
    _row(
        "focal power range",
        f"{fp_range[0]:g} .. {fp_range[1]:g} dpt"
        if fp_range
        else "reported in focal power mode (rig lens PORT focal-power DPT)",
    )
    _print_readings(lens)


def _print_readings(lens: OptotuneLens, done: str | None = None) -> None:
    if done:
        _row("done", done)
    readings = lens.readings()
    _row("mode", readings["mode"])
    _row("current", f"{readings['current_ma']:.2f} mA")
    _row("focal power", f"{readings['focal_power_dpt']:.3f} dpt")
    _row("temperature", f"{readings['temperature_c']:.4g} degC")


def _hold(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)
    print("closing: the lens returns to rest (current mode, 0 mA)")
