"""Start the window (`rig gui`), and its headless use for docs and checks.

    rig gui [--rig sim|FILE.toml] [--set KEY=VALUE ...] [--protocol P] [--duration S]
            [--speed realtime|max] [--seed N] [--run-for SECONDS [--screenshot FILE.png]]

With --run-for the chosen protocol starts at once; after SECONDS of wall time the window is
saved as an image (--screenshot), the run is stopped (devices safe, session closed, report
written) and the program exits with 0 if the session completed, 1 if it aborted, 2 if it
could not start.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from rig.config import ConfigError, load_rig_config, split_overrides
from rig.gui.main_window import MainWindow
from rig.protocol import load_protocol_class


def application() -> QtWidgets.QApplication:
    app = QtWidgets.QApplication.instance()
    return app if app is not None else pg.mkQApp("looprig")


def launch(
    *,
    rig: str = "sim",
    overrides: list[str] | None = None,
    protocol: str | None = None,
    duration_s: float = 60.0,
    speed: str = "realtime",
    seed: int | None = None,
    run_for_s: float | None = None,
    screenshot: str | None = None,
) -> int:
    """Open the main window; returns the exit status. ConfigError for bad settings (before
    any window opens)."""
    rig_overrides, protocol_values = split_overrides(overrides or [])
    config = load_rig_config(rig, rig_overrides)
    if protocol_values and protocol is None:
        raise ConfigError(
            f"--set protocol.{next(iter(protocol_values))}=...: name the protocol with --protocol"
        )
    if protocol is not None:
        cls = load_protocol_class(protocol)
        if run_for_s is not None or protocol_values:
            cls(**protocol_values)  # unknown or bad parameters are refused here, with the reason
    app = application()
    window = MainWindow(
        config,
        protocol=protocol,
        protocol_values=protocol_values,
        duration_s=duration_s,
        speed=speed,
        seed=seed,
    )
    window.show()
    if run_for_s is None:
        app.exec()
        return 0
    try:
        return _run_headless(app, window, run_for_s, screenshot)
    finally:
        window.close()
        window.deleteLater()


def _run_headless(
    app: QtWidgets.QApplication, window: MainWindow, run_for_s: float, screenshot: str | None
) -> int:
    if not window.runner.start():
        print(f"rig gui: error: {window.runner.run_error.text()}", file=sys.stderr)
        return 2
    saved: dict[str, Any] = {}

    def finish() -> None:
        try:
            if screenshot:
                saved["path"] = window.screenshot(screenshot)
        except OSError as e:
            saved["error"] = str(e)
        finally:
            window.stop_and_wait()
            app.quit()

    QtCore.QTimer.singleShot(int(run_for_s * 1000), finish)
    app.exec()
    c = window.controller
    if "error" in saved:
        print(f"rig gui: error: {saved['error']}", file=sys.stderr)
    if c.result is None:
        print(f"rig gui: error: {c.error}", file=sys.stderr)
        return 2
    s = c.result.summary
    paint = np.median(window.refresh_ms) if window.refresh_ms else float("nan")
    lines = [
        f"session   {c.result.session_dir}",
        f"status    {s['status']}"
        + (f"  ({s['error']})" if s.get("error") else "")
        + (f"  stop: {s['stop_reason']}" if s.get("stop_reason") else ""),
        f"frames    {s['frames']} at {s['frame_rate_hz']:.2f} Hz, dropped {s['frames_dropped']}",
        f"stimuli   {s['stimuli']}",
        f"display   {window.refreshes} refreshes in {run_for_s:g} s, median {paint:.1f} ms each",
    ]
    if "path" in saved:
        lines.append(f"screenshot {saved['path']}")
    print("\n".join(lines))
    if "error" in saved:
        return 2
    return 0 if s["status"] == "completed" else 1
