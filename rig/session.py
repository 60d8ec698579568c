"""Session folders: summary.json, session.h5, events.jsonl and the report.

The recorder thread owns all disk access: it drains the ring's `record` queue, copies each
frame's timestamps and per-ROI rows into preallocated chunk buffers, returns the slot to the
free queue, and appends the chunks to session.h5 at least every `flush_s` seconds (then
flushes the file). Events posted from any thread go through a queue and are appended to
events.jsonl and flushed as they are written. See docs/SESSION_FORMAT.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import queue
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rig.ring import FrameRing


def new_session_dir(out: str | None, base_dir: str, protocol_name: str) -> Path:
    """Create the session folder. An explicit `out` must not exist yet (sessions are never
    overwritten); otherwise a new `<base>/<protocol>-<timestamp>` name is chosen."""
    if out:
        path = Path(out)
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(
                f"session folder {path} already exists and is not empty: "
                "sessions are never overwritten; choose another --out"
            )
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(base_dir)
    for i in range(1000):
        path = base / (f"{protocol_name}-{stamp}" + (f"-{i}" if i else ""))
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a new session folder under {base}")


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


class EventLog:
    """events.jsonl: posted from any thread (no disk access there), written by the recorder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._file = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self.stimuli: list[dict[str, Any]] = []

    def post(self, event: dict[str, Any]) -> None:
        if "host_time_s" not in event:
            event["host_time_s"] = time.monotonic()
        self._queue.put(event)

    def drain(self) -> None:
        with self._lock:
            if self._file.closed:
                return
            wrote = False
            while True:
                try:
                    event = self._queue.get_nowait()
                except queue.Empty:
                    break
                if event.get("type") == "stimulus":
                    self.stimuli.append(event)
                self._file.write(json.dumps(jsonable(event)) + "\n")
                wrote = True
            if wrote:
                self._file.flush()

    def close(self) -> None:
        self.drain()
        with self._lock:
            self._file.close()


class SessionRecorder:
    """Writes frames' results to session.h5 in chunks (run by the recorder thread)."""

    def __init__(
        self,
        folder: Path,
        ring: FrameRing,
        frame_rate_hz: float,
        *,
        record_frames: bool,
        flush_s: float = 1.0,
    ) -> None:
        self.folder = folder
        self.ring = ring
        self.record_frames = record_frames
        self.flush_s = flush_s
        self.file = h5py.File(folder / "session.h5", "w")
        self.file.attrs["frame_rate_hz"] = frame_rate_hz
        cap = max(ring.n_slots * 2, int(math.ceil(frame_rate_hz * flush_s)) + ring.n_slots)
        self.cap = cap
        self._timing = np.zeros((cap, 5))  # device t, complete, done, stim, (unused)
        self._n_rois = 0
        self._rows_f: np.ndarray | None = None
        self._rows_d: np.ndarray | None = None
        h, w = ring.frames.shape[1:]
        self._frames = np.zeros((cap, h, w), np.int16) if record_frames else None
        self._pending = 0
        self.frames_written = 0
        self._last_flush = time.monotonic()
        f = self.file
        f.create_dataset("timestamps", (0,), maxshape=(None,), dtype="f8", chunks=(4096,))
        for name in ("frame_complete_s", "processing_done_s", "stimulus_issued_s"):
            f.create_dataset(f"timing/{name}", (0,), maxshape=(None,), dtype="f8", chunks=(4096,))
        if record_frames:
            f.create_dataset(
                "frames", (0, h, w), maxshape=(None, h, w), dtype="i2", chunks=(1, h, w)
            )

    def take(self, slot: int) -> None:
        """Copy one processed slot's data into the chunk buffer and free the slot."""
        ring = self.ring
        n = int(ring.n_rois[slot])
        if n and self._rows_f is None:
            self._start_roi_datasets(n)
        if self._pending == self.cap:
            self.flush()
        i = self._pending
        self._timing[i, 0] = ring.device_time_s[slot]
        self._timing[i, 1] = ring.frame_complete_s[slot]
        self._timing[i, 2] = ring.processing_done_s[slot]
        self._timing[i, 3] = ring.stimulus_issued_s[slot]
        if self._rows_f is not None:
            if n:
                self._rows_f[i, :n] = ring.fluorescence[slot, :n]
                self._rows_d[i, :n] = ring.dff[slot, :n]
            else:
                self._rows_f[i] = np.nan
                self._rows_d[i] = np.nan
        if self._frames is not None:
            self._frames[i] = ring.frames[slot]
        self._pending += 1
        ring.free.put_nowait(slot)

    def _start_roi_datasets(self, n: int) -> None:
        """ROIs became known: create the per-ROI datasets, NaN for the frames before."""
        self.flush()
        self._n_rois = n
        before = self.frames_written
        for name in ("fluorescence", "dff"):
            ds = self.file.create_dataset(
                name,
                (before, n),
                maxshape=(None, n),
                dtype="f4",
                chunks=(max(1, min(1024, 2**20 // (4 * n))), n),
                fillvalue=np.nan,
            )
            if before:
                ds[:] = np.nan
        self._rows_f = np.full((self.cap, n), np.nan, np.float32)
        self._rows_d = np.full((self.cap, n), np.nan, np.float32)

    def due(self) -> bool:
        return self._pending and (time.monotonic() - self._last_flush >= self.flush_s)

    def flush(self) -> None:
        m = self._pending
        self._last_flush = time.monotonic()
        if m == 0:
            self.file.flush()
            return
        f = self.file
        a, b = self.frames_written, self.frames_written + m

        def append(name: str, rows: np.ndarray) -> None:
            ds = f[name]
            ds.resize(b, axis=0)
            ds[a:b] = rows

        append("timestamps", self._timing[:m, 0])
        append("timing/frame_complete_s", self._timing[:m, 1])
        append("timing/processing_done_s", self._timing[:m, 2])
        append("timing/stimulus_issued_s", self._timing[:m, 3])
        if self._rows_f is not None:
            append("fluorescence", self._rows_f[:m])
            append("dff", self._rows_d[:m])
        if self._frames is not None:
            append("frames", self._frames[:m])
        self.frames_written = b
        self._pending = 0
        f.flush()

    def finish(
        self,
        *,
        rois: Any,
        mean_image: np.ndarray | None,
        noise_level: np.ndarray | None,
        stimuli: list[dict[str, Any]],
        attrs: dict[str, Any],
    ) -> None:
        self.flush()
        f = self.file
        if self._rows_f is None:
            f.create_dataset("fluorescence", (self.frames_written, 0), dtype="f4")
            f.create_dataset("dff", (self.frames_written, 0), dtype="f4")
        if rois is not None:
            g = f.create_group("rois")
            g.create_dataset("pixels", data=rois.pixels)
            g.create_dataset("offsets", data=rois.offsets)
            g.create_dataset("weights", data=rois.weights)
            g.create_dataset("centroids_px", data=rois.centroids_px)
            g.attrs["shape"] = rois.shape
        else:
            g = f.create_group("rois")
            g.create_dataset("pixels", (0,), dtype="i4")
            g.create_dataset("offsets", data=np.zeros(1, np.int32))
            g.create_dataset("weights", (0,), dtype="f4")
            g.create_dataset("centroids_px", (0, 2), dtype="f8")
        if mean_image is not None:
            f.create_dataset("mean_image", data=mean_image.astype(np.float32))
        nl = noise_level if noise_level is not None else np.zeros(0, np.float32)
        f.create_dataset("noise_level", data=np.asarray(nl, np.float32))
        s = f.create_group("stimuli")
        s.create_dataset("frame", data=np.array([e.get("frame", -1) for e in stimuli], np.int64))
        s.create_dataset(
            "host_time_s", data=np.array([e["host_time_s"] for e in stimuli], np.float64)
        )
        s.create_dataset(
            "device_time_s",
            data=np.array([e.get("device_time_s", np.nan) for e in stimuli], np.float64),
        )
        for k, v in attrs.items():
            if v is not None:
                f.attrs[k] = v
        f.flush()

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


def write_summary(folder: Path, summary: dict[str, Any]) -> Path:
    path = folder / "summary.json"
    tmp = folder / "summary.json.tmp"
    tmp.write_text(json.dumps(jsonable(summary), indent=2))
    tmp.replace(path)
    return path


def format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
