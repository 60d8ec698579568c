"""`rig recover DIR`: finish a session whose process died (SIGKILL, power cut, a crash).

A running session's durable record is its append-only streams and events.jsonl
(rig/session.py). When the process dies, session.h5, summary.json and the report are missing.
Recovery rebuilds them from what was committed:

1. session.h5 from the streams, up to the last commit (frames, traces, timing; the ROI set and
   mean image saved when they became known; the stimuli from events.jsonl);
2. the session-wide noise level from dF/F, as at the end of a normal run (CASCADE, all
   recorded frames with ROIs);
3. summary.json with status "aborted", the last error in events.jsonl (or "the process ended
   without closing the session"), counts, latencies from the timing stream, the protocol and
   configuration from events.jsonl, and a `recovered` block saying what was rebuilt and what
   was discarded (rows after the last commit, torn bytes);
4. report.html; and a `session recovered` event appended to events.jsonl.

Nothing recorded is deleted or rewritten: streams stay as they are (torn tails included) and
session.h5's raw frames point at the committed part of streams/frames.i2. A complete session
(readable session.h5 and summary.json) is left alone unless `force=True`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from analysis.noise import noise_level as batch_noise_level
from rig.session import (
    SessionStreams,
    append_event,
    assemble_session_h5,
    read_events,
    write_summary,
)

log = logging.getLogger(__name__)

CRASH_ERROR = (
    "the recording process ended without closing the session (killed or crashed); "
    "recovered by `rig recover` up to the last flush"
)


@dataclass
class RecoveryResult:
    folder: Path
    summary: dict[str, Any]
    needed: bool
    actions: list[str] = field(default_factory=list)


def recover_session(
    session_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    write_report: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> RecoveryResult:
    """Rebuild session.h5, summary.json and the report of a session from its streams.

    Raises FileNotFoundError if the folder does not exist and SessionStreamError (a
    ValueError naming the file and field) if its streams are unreadable."""
    folder = Path(session_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"session folder {folder} does not exist")
    from rig.spike_loop import is_spike_session, recover_spike_session

    if is_spike_session(folder):  # an MEA session: spike streams (rig/spike_loop.py)
        return recover_spike_session(folder, force=force, write_report=write_report)
    streams = SessionStreams(folder)
    events, unreadable = read_events(folder / "events.jsonl")
    existing = _read_existing_summary(folder / "summary.json")
    h5_ok = _readable_h5(folder / "session.h5")
    if h5_ok and existing is not None and not force:
        return RecoveryResult(
            folder,
            existing,
            needed=False,
            actions=["session.h5 and summary.json are complete: nothing to recover"],
        )
    actions: list[str] = []
    leftover = folder / "session.h5.tmp"
    if leftover.exists():
        leftover.unlink()
        actions.append("removed session.h5.tmp left by an interrupted finish")

    config = _last(events, "config").get("config", {}) if _last(events, "config") else {}
    rois, roi_start_frame = streams.rois()
    rois_how = "saved when detected" if rois is not None else "none recorded"
    if rois is None and streams.n_rois:
        rois, rois_how = _rois_from_config_file(config, streams)
    if rois is not None and rois.n_rois != streams.n_rois:
        actions.append(
            f"ROI set with {rois.n_rois} ROIs does not match the {streams.n_rois} trace columns: "
            "ROI shapes dropped"
        )
        rois, rois_how = None, "inconsistent with the traces, dropped"
    mean_image = streams.mean_image()
    noise = _session_noise_level(streams)
    stimuli = [e for e in events if e.get("type") == "stimulus"]
    start = _session_start(events)
    status = "aborted"
    header = streams.header
    attrs = {
        "pixel_size_um": header.get("pixel_size_um") or _pixel_size_from_config(config),
        "roi_start_frame": roi_start_frame
        if roi_start_frame is not None
        else streams.roi_start_row,
        "dff_baseline_window_s": header.get("dff_baseline_window_s")
        or _get(config, "dff", "baseline_window_s"),
        "dff_percentile": header.get("dff_percentile") or _get(config, "dff", "percentile"),
        "seed": start.get("seed"),
        "status": status,
    }
    if not h5_ok or force:
        assemble_session_h5(
            folder,
            rois=rois,
            mean_image=mean_image,
            noise_level=noise,
            stimuli=stimuli,
            attrs=attrs,
            progress=progress,
        )
        actions.append(f"assembled session.h5 from {streams.frames} committed frames")
    recovered = {
        "at_unix_s": time.time(),
        "frames_committed": streams.frames,
        "rows_after_last_commit": streams.uncommitted,
        "torn_bytes": streams.torn_bytes,
        "rois": rois_how,
        "mean_image": (
            "saved when computed"
            if mean_image is not None
            else "mean of the first recorded frames"
            if "frames" in streams.streams and streams.frames
            else "none recorded"
        ),
        "unreadable_event_lines": unreadable,
    }
    if existing is not None:
        summary = dict(existing)
        summary["recovered"] = recovered
        actions.append("kept the existing summary.json, added `recovered`")
    else:
        summary = _summary_from_streams(streams, events, config, start, noise, recovered)
        actions.append("wrote summary.json from the streams and events.jsonl")
    return finish_recovery(folder, summary, actions, streams.frames, write_report)


def finish_recovery(
    folder: Path, summary: dict[str, Any], actions: list[str], frames: int, write_report: bool
) -> RecoveryResult:
    """The last steps of every recovery (frame or spike session): summary.json, the
    `recovered` event (`frames`: frames or spike blocks committed), then the report; a report
    that fails is noted in the summary, never lost data."""
    write_summary(folder, summary)
    append_event(
        folder / "events.jsonl",
        {
            "type": "session",
            "event": "recovered",
            "frames": frames,
            "actions": actions,
            "wall_clock": time.time(),
        },
    )
    if write_report:
        try:
            from rig.report import write_report as _write_report

            _write_report(folder)
            actions.append("wrote report.html")
        except Exception as exc:  # noqa: BLE001 - the data are safe; say what failed
            summary["report_error"] = f"{type(exc).__name__}: {exc}"
            write_summary(folder, summary)
            log.exception("report failed")
    return RecoveryResult(folder, summary, needed=True, actions=actions)


# ---------------------------------------------------------------------------------------------


def _readable_h5(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return "timestamps" in f and "dff" in f
    except (OSError, ValueError):
        return False


def _read_existing_summary(path: Path) -> dict[str, Any] | None:
    import json

    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) and "status" in value else None


def _last(events: list[dict[str, Any]], kind: str, **match: Any) -> dict[str, Any]:
    for event in reversed(events):
        if event.get("type") == kind and all(event.get(k) == v for k, v in match.items()):
            return event
    return {}


def _session_start(events: list[dict[str, Any]]) -> dict[str, Any]:
    for event in events:
        if event.get("type") == "session" and event.get("event") == "start":
            return event
    return {}


def _get(config: dict[str, Any], section: str, key: str) -> Any:
    value = config.get(section)
    return value.get(key) if isinstance(value, dict) else None


def _pixel_size_from_config(config: dict[str, Any]) -> list[float] | None:
    """(y, x) um per pixel of a galvo raster: field / zoom / pixels (docs/DEVICES.md)."""
    fov = _get(config, "scanner", "fov_um")
    zoom = _get(config, "scanner", "zoom")
    lines = _get(config, "scanner", "lines")
    pixels = _get(config, "scanner", "pixels_per_line")
    if not (isinstance(fov, list) and len(fov) == 2 and zoom and lines and pixels):
        return None
    return [fov[1] / zoom / lines, fov[0] / zoom / pixels]


def _rois_from_config_file(config: dict[str, Any], streams: SessionStreams) -> tuple[Any, str]:
    """Without a saved ROI set, the ROI file named by rois.source (if any) is the ROI set."""
    source = _get(config, "rois", "source")
    if not source or source == "detect":
        return None, "detected but not saved before the crash (shapes unknown)"
    from analysis.rois import load_roi_file

    try:
        return load_roi_file(source, streams.frame_shape), f"loaded again from {source}"
    except (OSError, ValueError) as e:
        return None, f"rois.source {source} not readable: {e}"


def _session_noise_level(streams: SessionStreams) -> np.ndarray | None:
    """The CASCADE noise level over every recorded frame with ROIs (as rig/run.py does at the
    end of a normal session; frames before the ROIs are NaN and do not count)."""
    start = streams.roi_start_row
    if not streams.n_rois or start is None or streams.frames - start < 2:
        return None
    rows = streams.roi_rows("dff", start, streams.frames)
    return np.asarray(
        batch_noise_level(rows.T.astype(np.float64), streams.frame_rate_hz), np.float32
    )


def recovered_context(
    start: dict[str, Any], config: Any, events: list[dict[str, Any]], recovered: dict[str, Any]
) -> dict[str, Any]:
    """The summary keys a recovered session of either kind takes from its start event and
    events.jsonl: the protocol (no metrics: the protocol did not finish), the rig config, the
    devices' snapshots, and what recovery found (`recovered`)."""
    return {
        "protocol": {
            "name": start.get("protocol"),
            "file": None,
            "parameters": start.get("parameters", {}),
            "metrics": {},
        },
        "config": config,
        "devices": _last(events, "device", event="opened").get("snapshots", {}),
        "recovered": recovered,
    }


def _percentiles(values: np.ndarray) -> dict[str, Any]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"p50": None, "p99": None, "max": None, "count": 0}
    return {
        "p50": float(np.percentile(v, 50)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
        "count": int(v.size),
    }


def _summary_from_streams(
    streams: SessionStreams,
    events: list[dict[str, Any]],
    config: dict[str, Any],
    start: dict[str, Any],
    noise: np.ndarray | None,
    recovered: dict[str, Any],
) -> dict[str, Any]:
    """summary.json (docs/SESSION_FORMAT.md) from what the streams and events recorded. Values
    only the running loop knew (processing time per stage, protocol metrics) are null."""
    from rig.pipeline import STAGES

    n = streams.frames
    timing = streams.timing()
    complete, done, stim = timing[:, 1], timing[:, 2], timing[:, 3]
    errors = [e for e in events if e.get("type") == "error"]
    error = str(errors[-1].get("error")) if errors else CRASH_ERROR
    host_times = [e["host_time_s"] for e in events if isinstance(e.get("host_time_s"), float)]
    wall = (max(host_times) - start["host_time_s"]) if host_times and start else None
    finite_noise = noise[np.isfinite(noise)] if noise is not None else np.zeros(0)
    stop = _last(events, "session", event="stop requested")
    rate = streams.frame_rate_hz
    return {
        "status": "aborted",
        "error": error,
        "stop_reason": stop.get("reason"),
        "seed": start.get("seed") if _get(config, "daq", "backend") == "sim" else None,
        "rig": _get(config, "rig", "name"),
        "rig_source": start.get("rig"),
        "speed": start.get("speed"),
        "frames": n,
        "frames_acquired": None,
        "frames_dropped": sum(1 for e in events if e.get("type") == "drop"),
        "frame_rate_hz": rate,
        "duration_s": n / rate,
        "wall_time_s": wall,
        "n_rois": streams.n_rois,
        "roi_start_frame": streams.roi_start_row,
        "latency_ms": {
            k: v for k, v in _percentiles((done - complete) * 1e3).items() if k != "count"
        },
        "stimulus_latency_ms": _percentiles((stim - complete) * 1e3),
        "processing_ms": {"median": None, "p99": None},
        "stage_ms_median": {name: None for name in STAGES},
        "stimuli": sum(1 for e in events if e.get("type") == "stimulus"),
        "noise_level": (
            {
                "median": float(np.median(finite_noise)),
                "p10": float(np.percentile(finite_noise, 10)),
                "p90": float(np.percentile(finite_noise, 90)),
            }
            if finite_noise.size
            else {"median": None, "p10": None, "p90": None}
        ),
        **recovered_context(start, config, events, recovered),
    }
