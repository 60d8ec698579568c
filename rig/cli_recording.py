"""Subcommands for recordings (registered by rig/cli.py):

    rig recover DIR [--force] [--no-report]
        finish a session whose process died: session.h5, summary.json, report.html
    rig export-nwb DIR --out FILE.nwb [--no-frames] [--no-validate]
        the session as an NWB file (checked with pynwb's validator before it is kept)
    rig replay SOURCE [--protocol P] [--speed max|realtime] [--out DIR] [--frame-rate HZ]
                      [--rig sim|FILE.toml] [--set KEY=VALUE ...] [--no-report]
        a session folder, an NWB file, a TIFF stack or suite2p output through the loop,
        pipeline and protocol, with simulated devices in place of the rig

Long work shows a progress bar on stderr and ends with a summary on stdout. Bad input (a
truncated or corrupt file, wrong dimensions or dtype, no frame rate) exits with status 2 and
a message naming the file and the field.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO


class ProgressBar:
    """`label [#####.....] 52%  1040/2000  12.3 s` on one line of stderr.

    On a terminal the line is redrawn at most every `min_interval_s`; otherwise (logs, CI) a
    line is printed at every 10 %, so the output stays short. Safe to call from any thread."""

    def __init__(
        self, label: str, stream: TextIO | None = None, min_interval_s: float = 0.1, width: int = 30
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval_s = min_interval_s
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0 = time.monotonic()
        self._last_draw = -1.0
        self._last_decile = -1
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        fraction = done / total if total > 0 else 1.0
        if self.tty:
            if done < total and now - self._last_draw < self.min_interval_s:
                return
            self._last_draw = now
            self.stream.write("\r" + self._text(done, total, fraction, now))
        else:
            decile = int(fraction * 10)
            if decile == self._last_decile:
                return
            self._last_decile = decile
            self.stream.write(self._text(done, total, fraction, now) + "\n")
        self.stream.flush()
        self._drawn = True

    def _text(self, done: int, total: int, fraction: float, now: float) -> str:
        filled = int(round(fraction * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        return (
            f"{self.label} [{bar}] {fraction * 100:3.0f}%  {done}/{total}  {now - self._t0:.1f} s"
        )

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def register(subparsers: Any) -> None:
    recover = subparsers.add_parser(
        "recover", help="finish a session whose process died (session.h5, summary, report)"
    )
    recover.add_argument("session", help="session folder")
    recover.add_argument(
        "--force", action="store_true", help="rebuild even if session.h5 and summary.json exist"
    )
    recover.add_argument("--no-report", action="store_true", help="skip report.html")
    recover.set_defaults(handler=_recover)

    export = subparsers.add_parser("export-nwb", help="write a session as an NWB file")
    export.add_argument("session", help="session folder")
    export.add_argument("--out", required=True, help="the .nwb file to write (must not exist)")
    export.add_argument("--no-frames", action="store_true", help="leave the raw frames out")
    export.add_argument(
        "--no-validate", action="store_true", help="skip pynwb's validator (faster)"
    )
    export.set_defaults(handler=_export_nwb)

    replay = subparsers.add_parser(
        "replay", help="run a recording through the loop with simulated devices"
    )
    replay.add_argument(
        "source", help="session folder, .nwb file, .tif/.tiff stack or suite2p folder"
    )
    replay.add_argument(
        "--protocol", default=None, help="protocol file or name (default: playback, no stimuli)"
    )
    replay.add_argument("--speed", choices=("max", "realtime"), default="max")
    replay.add_argument("--out", default=None, help="session folder (must not exist)")
    replay.add_argument(
        "--frame-rate",
        type=float,
        default=None,
        metavar="HZ",
        help="frame rate of a TIFF without one in its metadata (or to override suite2p's fs)",
    )
    replay.add_argument("--rig", default="sim", help="rig file for sources without a config")
    replay.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a rig key or a protocol parameter (protocol.NAME=VALUE); repeatable",
    )
    replay.add_argument("--no-report", action="store_true", help="skip report.html")
    replay.set_defaults(handler=_replay)


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from rig.nwb_export import NwbExportError
    from rig.session import SessionStreamError
    from simulators.replay import ReplaySourceError

    return (NwbExportError, SessionStreamError, ReplaySourceError)


def _recover(args: argparse.Namespace) -> int:
    from rig.cli import _summary_text
    from rig.recover import recover_session

    bar = ProgressBar("assembling session.h5")
    try:
        result = recover_session(
            args.session, force=args.force, write_report=not args.no_report, progress=bar
        )
    except _bad_input_errors() as e:
        print(f"rig: error: {e}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    for action in result.actions:
        print(f"recover   {action}")
    s = result.summary
    if result.needed:
        rec = s.get("recovered", {})
        print(
            f"recovered {rec.get('frames_committed')} frames up to the last flush; rows after "
            f"it: {_nonzero(rec.get('rows_after_last_commit'))}; torn bytes: "
            f"{_nonzero(rec.get('torn_bytes'))}; ROIs {rec.get('rois')}"
        )
    try:
        print(_summary_text(result.folder, s))
    except (KeyError, TypeError):  # an older or partial summary: show what it has
        print(f"session   {result.folder}\nstatus    {s.get('status')}  frames {s.get('frames')}")
    return 0


def _nonzero(counts: Any) -> str:
    if not isinstance(counts, dict):
        return "none"
    shown = [f"{k} {v}" for k, v in counts.items() if v]
    return ", ".join(shown) if shown else "none"


def _export_nwb(args: argparse.Namespace) -> int:
    from rig.nwb_export import export_nwb

    bar = ProgressBar("writing frames")
    try:
        result = export_nwb(
            args.session,
            args.out,
            include_frames=not args.no_frames,
            validate=not args.no_validate,
            progress=bar,
        )
    except _bad_input_errors() as e:
        print(f"rig: error: {e}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    print(
        f"wrote     {result.path} ({result.bytes / 1e6:.1f} MB) in {result.seconds:.1f} s"
        + ("" if args.no_validate else ", passes pynwb's validator")
    )
    print(
        f"contents  {result.frames} frames"
        + (" with raw frames" if result.wrote_frames else " (no raw frames)")
        + f", {result.n_rois} ROIs, {result.stimuli} stimuli"
    )
    return 0


def _replay(args: argparse.Namespace) -> int:
    from rig.cli import _summary_text
    from rig.replay import replay

    bar = ProgressBar("replaying")
    try:
        result = replay(
            args.source,
            protocol=args.protocol,
            speed=args.speed,
            out=args.out,
            overrides=args.overrides,
            frame_rate_hz=args.frame_rate,
            rig=args.rig,
            write_report=not args.no_report,
            progress=bar,
        )
    except _bad_input_errors() as e:
        print(f"rig: error: {e}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    s = result.summary
    print(f"replayed  {args.source}")
    print(_summary_text(result.session_dir, s))
    return 0 if s["status"] == "completed" else 1
