"""`rig bench gui`: what the live window costs the loop, measured in one process and one run.

Two realtime sessions of the same protocol on the same simulated rig with the same seed, one
after the other: first as `rig run` does it (no live view), then driven from the main window
(offscreen Qt, refresh timer 25 Hz, every panel live, ROIs auto-selected). Rig: 256 x 64 px at
~16.6 frames/s (scanner.lines = 64, fov 300 x 75 um), ROIs after 2 s; protocol open_loop_train
on the central cells, a train every second.

    loop_latency_p50_ms_without_gui   frame complete -> processing done, per frame from
    loop_latency_p99_ms_without_gui   session.h5 timing, from the loop's catching up after
    loop_latency_max_ms_without_gui   ROI detection on (steady_latency_ms)
    loop_latency_p50_ms_with_gui
    loop_latency_p99_ms_with_gui
    loop_latency_max_ms_with_gui
    loop_latency_p99_ratio            with / without (same run of the benchmark)
    stimulus_latency_p99_ms_without_gui / _with_gui   frame complete -> stimulus issued
    frames_dropped_without_gui / _with_gui             acquisition frames lost (should be 0)
    gui_refresh_hz                    display refreshes per second achieved during the session
    gui_frames_shown_hz               live image updates per second (the acquisition rate is
                                      the ceiling: each published frame is shown at most once)
    gui_refresh_ms_median / _p99      Python time of one refresh (snapshot + every panel),
                                      without Qt's painting, which happens afterwards
    gui_thread_cpu_fraction           CPU time of the GUI thread / wall time of the session
                                      (refreshes and painting together)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rig.bench import benchmark

RIG = {
    "scanner.lines": 64,
    "scanner.fov_um": [300.0, 75.0],
    "rois.reference_s": 2.0,
}
PROTOCOL = "open_loop_train"
PROTOCOL_VALUES = {
    "target_centre_um": "[0, 0]",
    "target_radius_um": "100",
    "interval_s": "1.0",
    "start_after_s": "0.5",
}
SEED = 1


@benchmark("gui")
def bench_gui(quick: bool) -> dict[str, float]:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from rig.config import load_rig_config
    from rig.protocol import load_protocol_class
    from rig.run import run_experiment

    duration_s = 8.0 if quick else 40.0
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = load_rig_config("sim", {**RIG, "recording.out_dir": str(Path(tmp) / "s")})
        protocol_class = load_protocol_class(PROTOCOL)
        # warm-up: imports, numba caches and the world's first frames, not measured
        run_experiment(
            protocol_class(**PROTOCOL_VALUES),
            config,
            duration_s=1.0,
            speed="max",
            seed=SEED,
            write_report=False,
        )
        plain = run_experiment(
            protocol_class(**PROTOCOL_VALUES),
            config,
            duration_s=duration_s,
            speed="realtime",
            seed=SEED,
            write_report=False,
        )
        _check(plain.summary, "without the GUI")
        with_gui, gui = _run_in_window(config, duration_s)
        _check(with_gui.summary, "with the GUI")
        for label, result in (("without_gui", plain), ("with_gui", with_gui)):
            s = result.summary
            latency = steady_latency_ms(result.session_dir, s["frame_rate_hz"])
            figures[f"loop_latency_p50_ms_{label}"] = float(np.percentile(latency, 50))
            figures[f"loop_latency_p99_ms_{label}"] = float(np.percentile(latency, 99))
            figures[f"loop_latency_max_ms_{label}"] = float(latency.max())
            figures[f"stimulus_latency_p99_ms_{label}"] = _or_nan(s["stimulus_latency_ms"]["p99"])
            figures[f"frames_dropped_{label}"] = float(s["frames_dropped"])
    figures["loop_latency_p99_ratio"] = (
        figures["loop_latency_p99_ms_with_gui"] / figures["loop_latency_p99_ms_without_gui"]
    )
    figures.update(gui)
    return figures


def steady_latency_ms(session_dir: Path, frame_rate_hz: float) -> np.ndarray:
    """Frame complete -> processing done (ms) of every frame once the loop has caught up
    after ROI detection.

    The frame that runs ROI detection takes ~0.1-1 s, the same with or without the window;
    in realtime mode the frames acquired meanwhile wait in the ring and show that wait as
    latency. Counted from the first frame after it that is processed within one frame
    period (the backlog is gone); every later frame counts, stalls included."""
    import h5py

    with h5py.File(Path(session_dir) / "session.h5", "r") as f:
        done = f["timing/processing_done_s"][:]
        complete = f["timing/frame_complete_s"][:]
        start = f.attrs.get("roi_start_frame")
    latency = (done - complete) * 1e3
    first = 0 if start is None or start < 0 else int(start) + 1
    caught_up = np.flatnonzero(latency[first:] < 1e3 / frame_rate_hz)
    if caught_up.size == 0:
        raise RuntimeError(f"{session_dir}: the loop never caught up after ROI detection")
    latency = latency[first + caught_up[0] :]
    return latency[np.isfinite(latency)]


def _run_in_window(config: Any, duration_s: float) -> tuple[Any, dict[str, float]]:
    """The same session started from the main window's runner; the Qt event loop runs until
    the session is closed."""
    from pyqtgraph.Qt import QtCore

    from rig.gui.app import application
    from rig.gui.main_window import MainWindow

    app = application()
    window = MainWindow(
        config,
        protocol=PROTOCOL,
        protocol_values=PROTOCOL_VALUES,
        duration_s=duration_s,
        speed="realtime",
        seed=SEED,
    )
    window.show()
    app.processEvents()
    try:
        waiting = QtCore.QEventLoop()
        check = QtCore.QTimer()
        check.timeout.connect(
            lambda: waiting.quit() if window.controller.state != "running" else None
        )
        refreshes0 = window.refreshes
        shown0 = window.image.frames_shown
        cpu0, wall0 = time.thread_time(), time.monotonic()
        if not window.runner.start():
            raise RuntimeError(f"benchmark could not start: {window.runner.run_error.text()}")
        check.start(20)
        waiting.exec()
        check.stop()
        wall = time.monotonic() - wall0
        cpu = time.thread_time() - cpu0
        if window.controller.result is None:
            raise RuntimeError(f"benchmark run failed: {window.controller.error}")
        result = window.controller.result
        summary = result.summary
        refresh_ms = np.array(window.refresh_ms)
        session_s = summary["wall_time_s"]
        gui = {
            "gui_refresh_hz": (window.refreshes - refreshes0) / wall,
            "gui_frames_shown_hz": (window.image.frames_shown - shown0) / session_s,
            "gui_refresh_ms_median": float(np.median(refresh_ms)),
            "gui_refresh_ms_p99": float(np.percentile(refresh_ms, 99)),
            "gui_thread_cpu_fraction": cpu / wall,
            "frame_rate_hz": summary["frame_rate_hz"],
        }
        return result, gui
    finally:
        window.close()
        window.deleteLater()


def _check(summary: dict[str, Any], what: str) -> None:
    if summary["status"] != "completed":
        raise RuntimeError(f"benchmark run {what} aborted: {summary['error']}")


def _or_nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)
