"""Session folders: crash-safe recording, summary.json, session.h5 and events.jsonl.

Why streams and not HDF5 while recording: a file written with h5py is not guaranteed to be
readable after the process dies in the middle of a write (SIGKILL, power cut, a segfault in a
driver): HDF5 metadata is cached and rewritten in place, so one torn write can make every
dataset unreadable. So the durable record of a running session is a set of append-only raw
streams, which a crash can only cut short, never corrupt:

    <session>/streams/header.json        session facts known at the start (rate, frame shape)
    <session>/streams/<name>.json        one per stream: dtype, row shape, first frame, columns
    <session>/streams/timing.f8          (frames, 4) float64: device time, frame complete,
                                         processing done, stimulus issued (NaN = none)
    <session>/streams/fluorescence.f4    (frames - first_frame, n_rois) float32, from the
    <session>/streams/dff.f4             frame the ROIs appeared (first_frame in the header);
    <session>/streams/neuropil.f4        neuropil, calcium and spikes when those pipeline
    <session>/streams/calcium.f4         stages are on (ROI_FIELDS)
    <session>/streams/spikes.f4
    <session>/streams/shift.f8           (frames, 2) and (frames,) motion correction results
    <session>/streams/motion_status.i1   when it is on (FRAME_FIELDS)
    <session>/streams/frames.i2          (frames, H, W) int16, with recording.frames = true
    <session>/streams/commits.jsonl      one line per flush: {"frames": n, ...}
    <session>/streams/rois.npz           the ROI set, written (atomically) once it is known
    <session>/streams/mean_image.npy     the mean image of the reference period, once known
    <session>/events.jsonl               append-only, one JSON object per line

The recorder owns all disk access. Its thread drains the ring's `record` queue, copies each
frame's timestamps, per-ROI rows and (optionally) the raw frame into preallocated chunks,
returns the slot to the free queue, and has the chunks appended to the streams at least
every `flush_s` seconds - by handing the chunk to its writer thread, so the recorder thread
never waits for the disk. The writer appends the chunk to every stream and then one line to
commits.jsonl: a frame counts as recorded once a commit line covers it, so after a crash every
stream is read up to the same frame ("everything up to the last flush"). Writes are plain
`write()` system calls, which survive the death of the process; the writer also `fsync`s the
streams every `flush_s`, so they survive a power cut too.

At the end `finish()` assembles session.h5 (docs/SESSION_FORMAT.md) from the streams: traces
and timing are copied (small), raw frames are not written twice: the `frames` dataset uses
HDF5 external storage pointing at streams/frames.i2 (open it with `open_frames`, which
resolves the file next to session.h5; plain h5py resolves it against the working directory
unless HDF5_EXTFILE_PREFIX=${ORIGIN} is set). session.h5 is written to a temporary name and
renamed when complete, so it either exists whole or not at all. After a crash,
`rig recover DIR` (rig/recover.py) assembles it from the streams. See docs/RECORDING.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rig.ring import FrameRing

STREAMS_DIR = "streams"
STREAMS_FORMAT = "looprig-streams"
STREAMS_VERSION = 1
TIMING_COLUMNS = ("device_time_s", "frame_complete_s", "processing_done_s", "stimulus_issued_s")
TIMING_DATASETS = (
    "timestamps",
    "timing/frame_complete_s",
    "timing/processing_done_s",
    "timing/stimulus_issued_s",
)
#: per-ROI results recorded from the ring: stream -> (session.h5 dataset, description,
#: the pipeline setting that turns it on; None = always)
ROI_FIELDS = {
    "fluorescence": ("fluorescence", "ROI mean fluorescence (raw units)", None),
    "dff": ("dff", "causal dF/F (fractional)", None),
    "neuropil": ("neuropil", "neuropil mean around each ROI (raw units)", "neuropil"),
    "calcium": ("calcium", "denoised calcium (deconvolution), dF/F units", "deconvolution"),
    "spikes": ("spikes", "deconvolved spike estimate (dF/F units)", "deconvolution"),
}
#: per-frame results recorded from the ring: stream -> (session.h5 dataset, dtype, row shape,
#: description, the pipeline setting that turns it on)
FRAME_FIELDS = {
    "shift": ("motion/shift_px", "<f8", (2,), "(dy, dx) motion of the frame, pixels", "motion"),
    "motion_status": ("motion/status", "<i1", (), "registration status (0 = ok)", "motion"),
}
STREAM_FILES = {
    "timing": "timing.f8",
    "frames": "frames.i2",
    **{name: f"{name}.f4" for name in ROI_FIELDS},
    "shift": "shift.f8",
    "motion_status": "motion_status.i1",
}
#: raw frames per chunk handed to the writer thread: at most this many bytes
CHUNK_FRAME_BYTES = 16 * 2**20
#: raw-frame chunks in flight while the disk is behind: at most this many bytes in total
MAX_BUFFER_BYTES = 512 * 2**20
#: chunks allocated at the start (more only while the writer is behind)
INITIAL_CHUNKS = 4
#: rows copied per block when session.h5 is assembled (bounded memory for long sessions)
ASSEMBLY_BLOCK_ROWS = 8192
#: frames averaged for a missing mean image when the header does not give the reference period
FALLBACK_REFERENCE_FRAMES = 300


class SessionStreamError(ValueError):
    """A session's streams are unreadable (a header missing or malformed, a data file missing).

    The message names the file and the field. A torn final row is not an error: it is what a
    crash leaves behind and is simply not part of the recording."""


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


def write_json_atomic(path: Path, value: Any, *, indent: int | None = 2) -> Path:
    """Write JSON to a temporary name, fsync, then rename: the file is whole or absent."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(jsonable(value), indent=indent))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class EventLog:
    """events.jsonl: posted from any thread (no disk access there), written by the recorder.

    Each drain ends with a write() system call, so the lines survive a crash of the process;
    a small thread fsyncs the file every `sync_s` when something was written, so they also
    survive a power cut without the recorder thread ever waiting for the disk."""

    def __init__(self, path: Path, sync_s: float = 1.0) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._file = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._unsynced = threading.Event()
        self._stop = threading.Event()
        self._syncer = threading.Thread(
            target=self._sync_loop, args=(sync_s,), name="looprig-events-fsync", daemon=True
        )
        self._syncer.start()
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
                self._unsynced.set()

    def _sync_loop(self, sync_s: float) -> None:
        fd = self._file.fileno()
        while not self._stop.wait(sync_s):
            if self._unsynced.is_set():
                self._unsynced.clear()
                try:
                    os.fsync(fd)
                except OSError:
                    return  # closed meanwhile; close() syncs itself

    def close(self) -> None:
        self.drain()
        self._stop.set()
        self._syncer.join()
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()


def read_events(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Parse events.jsonl: (events, number of unreadable lines). A line cut short by a crash
    (the last one) or any line that is not a JSON object is counted, not fatal."""
    if not path.is_file():
        return [], 0
    events: list[dict[str, Any]] = []
    unreadable = 0
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                unreadable += 1
                continue
            if isinstance(event, dict):
                events.append(event)
            else:
                unreadable += 1
    return events, unreadable


def read_stimuli(session_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The stimuli a session delivered (events.jsonl `stimulus` events: frame, host and device
    time, the validated stimulus), in order of device time; for yoked controls and exports.

    Raises FileNotFoundError naming events.jsonl if the folder has none, and
    SessionStreamError naming the event if a stimulus lacks its device time."""
    path = Path(session_dir) / "events.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {session_dir} is not a session folder")
    events, _ = read_events(path)
    stimuli = [e for e in events if e.get("type") == "stimulus"]
    for number, event in enumerate(stimuli):
        t = event.get("device_time_s")
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
            raise SessionStreamError(
                f"{path}: stimulus {number} (frame {event.get('frame')}) has field "
                f"'device_time_s' = {t!r}: a finite device time is needed"
            )
        if not isinstance(event.get("stimulus"), dict):
            raise SessionStreamError(
                f"{path}: stimulus {number} (frame {event.get('frame')}) has no field 'stimulus' "
                "with the delivered stimulus"
            )
    return sorted(stimuli, key=lambda e: e["device_time_s"])


def append_event(path: Path, event: dict[str, Any]) -> None:
    """Append one event to a closed session's events.jsonl (after a torn last line, if any,
    a newline first so the new event stays readable)."""
    if "host_time_s" not in event:
        event["host_time_s"] = time.monotonic()
    prefix = ""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                prefix = "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(prefix + json.dumps(jsonable(event)) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------
# Append-only streams
# ---------------------------------------------------------------------------------------------


class AppendStream:
    """One append-only binary file of fixed-size rows, described by `<name>.json`.

    The header (dtype, row shape, first frame, columns) is written atomically before the first
    row, so a reader always knows how to cut the bytes into rows; a crash can only leave a
    torn final row, which readers ignore."""

    def __init__(
        self,
        folder: Path,
        name: str,
        dtype: str,
        row_shape: tuple[int, ...],
        *,
        first_frame: int = 0,
        columns: tuple[str, ...] | None = None,
        description: str = "",
        file_name: str | None = None,
    ) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.row_bytes = int(self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64)))
        # frame sessions name their files in STREAM_FILES; other sessions (spikes) pass theirs
        self.path = folder / (file_name or STREAM_FILES[name])
        header = {
            "stream": name,
            "file": self.path.name,
            "dtype": self.dtype.str,
            "row_shape": list(self.row_shape),
            "first_frame": int(first_frame),
            "description": description,
        }
        if columns:
            header["columns"] = list(columns)
        write_json_atomic(folder / f"{name}.json", header)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.rows_written = 0

    def append(self, rows: np.ndarray) -> None:
        """Append whole rows (C-contiguous, this stream's dtype); loops over short writes."""
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        if data.shape[1:] != self.row_shape:
            raise ValueError(
                f"{self.path.name}: rows of shape {data.shape[1:]} appended to a stream of "
                f"rows {self.row_shape}"
            )
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        self.rows_written += data.shape[0]

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Chunk:
    """Preallocated rows of up to `cap` frames, filled by the recorder thread and written by
    the writer thread (a chunk belongs to one thread at a time)."""

    def __init__(
        self,
        cap: int,
        frame_shape: tuple[int, int] | None,
        frame_fields: dict[str, tuple[str, tuple[int, ...]]],
        roi_fields: tuple[str, ...],
        n_rois: int,
    ) -> None:
        self.cap = cap
        self.timing = np.zeros((cap, len(TIMING_COLUMNS)))
        self.frames = None
        if frame_shape:
            # touch every page now: a first write later, under memory pressure from a page
            # cache full of frames on their way to disk, can stall on page allocation
            self.frames = np.empty((cap, *frame_shape), np.int16)
            self.frames.fill(0)
        self.extra = {
            name: np.zeros((cap, *shape), np.dtype(dtype))
            for name, (dtype, shape) in frame_fields.items()
        }
        self.roi_fields = roi_fields
        self.rows: dict[str, np.ndarray] = {}
        self.count = 0
        if n_rois:
            self.add_rois(n_rois)

    def add_rois(self, n_rois: int) -> None:
        self.rows = {name: np.full((self.cap, n_rois), np.nan, np.float32)
                     for name in self.roi_fields}  # fmt: skip


class _StreamWriter:
    """The thread that appends chunks to the streams, commits them and fsyncs.

    Tasks run in the order they were handed over: chunk writes, the creation of the ROI
    streams, saving the ROI set and mean image. After each chunk a commit line is appended;
    every `sync_s` all streams are fsync'ed (here, so a slow disk never blocks the recorder
    thread, which only copies rows into chunks). The first error stops further writes and is
    raised to the recorder thread at its next call."""

    def __init__(self, streams: dict[str, AppendStream], commits: Any, sync_s: float,
                 fsync: bool) -> None:  # fmt: skip
        self.streams = streams
        self.commits = commits
        self.sync_s = sync_s
        self.fsync = fsync
        self.committed = 0
        self.error: BaseException | None = None
        self.free: queue.Queue[_Chunk] = queue.Queue()
        self._todo: queue.Queue[Any] = queue.Queue()
        self._last_sync = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="looprig-writer", daemon=True)
        self._thread.start()

    def submit_chunk(self, chunk: _Chunk) -> None:
        self._todo.put(("chunk", chunk))

    def submit_call(self, fn: Callable[[], None]) -> None:
        self._todo.put(("call", fn))

    def wait_idle(self) -> None:
        """Block until every task handed over so far is done."""
        self._todo.join()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._todo.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._todo.get()
            try:
                if item is None:
                    self._sync()
                    return
                kind, payload = item
                if self.error is None:
                    if kind == "chunk":
                        self._write(payload)
                    else:
                        payload()
            except BaseException as e:  # noqa: BLE001 - reported to the recorder thread
                if self.error is None:
                    self.error = e
            finally:
                if item is not None and item[0] == "chunk":
                    item[1].count = 0
                    self.free.put(item[1])
                self._todo.task_done()

    def _write(self, chunk: _Chunk) -> None:
        m = chunk.count
        if m == 0:
            return
        if chunk.frames is not None and "frames" in self.streams:
            self.streams["frames"].append(chunk.frames[:m])
        for name, rows in chunk.rows.items():
            self.streams[name].append(rows[:m])
        for name, values in chunk.extra.items():
            self.streams[name].append(values[:m])
        self.streams["timing"].append(chunk.timing[:m])
        self.committed += m
        self.commits.write(
            json.dumps({"frames": self.committed, "host_time_s": time.monotonic()}) + "\n"
        )
        self.commits.flush()
        if self.fsync and time.monotonic() - self._last_sync >= self.sync_s:
            self._sync()

    def _sync(self) -> None:
        if not self.fsync:
            return
        for stream in list(self.streams.values()):
            if stream.fileno() >= 0:
                os.fsync(stream.fileno())
        if not self.commits.closed:
            os.fsync(self.commits.fileno())
        self._last_sync = time.monotonic()


class StreamRecorderBase:
    """What the frame recorder (SessionRecorder) and the spike recorder (rig/spike_loop.py)
    share: a chunk handed to a writer thread every `flush_s`, the writer's first error raised
    on the recorder thread, the final flush-and-fsync, and closing. Subclasses set `_writer`,
    `_commits`, `_chunk`, `_last_flush`, `_closed`, `flush_s`, `streams_dir` and `flush()`."""

    _writer: _StreamWriter
    _commits: Any
    _chunk: Any
    _last_flush: float
    _closed: bool
    flush_s: float
    streams_dir: Path

    def flush(self) -> None:  # pragma: no cover - every recorder defines its own
        raise NotImplementedError

    def due(self) -> bool:
        """True when the current chunk holds rows and `flush_s` has passed since the last flush."""
        return bool(self._chunk.count) and time.monotonic() - self._last_flush >= self.flush_s

    def _raise_writer_error(self) -> None:
        error = self._writer.error
        if error is not None:
            raise RuntimeError(
                f"writing the streams in {self.streams_dir} failed: "
                f"{type(error).__name__}: {error}"
            ) from error

    def _flush_and_sync(self) -> None:
        """Hand over the last chunk, wait for the writer, fsync every stream (end of session)."""
        self.flush()
        self._writer.wait_idle()
        self._raise_writer_error()
        self._writer.submit_call(self._writer._sync)
        self._writer.wait_idle()
        self._raise_writer_error()

    def close(self) -> None:
        """Write what is pending, stop the writer thread, close the files (idempotent)."""
        if self._closed:
            return
        try:
            if self._writer.error is None:
                self.flush()
        finally:
            self._closed = True
            self._writer.stop()
            for stream in self._writer.streams.values():
                stream.close()
            self._commits.close()


class SessionRecorder(StreamRecorderBase):
    """Copies each frame's results into chunks (recorder thread) that a writer thread appends
    to the session's streams; see the module docstring.

    Chunks hold up to `flush_s` of frames (raw frames: at most CHUNK_FRAME_BYTES); four are
    allocated at the start and more only while the disk is behind (at most MAX_BUFFER_BYTES
    of raw frames in flight), so a write that stalls for a while costs memory, not frames.
    Beyond that the recorder thread waits for the disk, the ring fills, and the acquisition
    thread drops (and counts) frames.

    `pipeline` (optional) gives the recorder the pipeline's settings for the stream header
    and lets it save the ROI set and mean image durably as soon as they exist, so that
    `rig recover` can rebuild a complete session.h5 after a crash."""

    def __init__(
        self,
        folder: Path,
        ring: FrameRing,
        frame_rate_hz: float,
        *,
        record_frames: bool,
        flush_s: float = 1.0,
        pipeline: Any = None,
        fsync: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.ring = ring
        self.frame_rate_hz = float(frame_rate_hz)
        self.record_frames = record_frames
        self.flush_s = flush_s
        self.pipeline = pipeline
        self.streams_dir = self.folder / STREAMS_DIR
        self.streams_dir.mkdir(exist_ok=True)
        h, w = (int(s) for s in ring.frames.shape[1:])
        self.frame_shape = (h, w)
        header: dict[str, Any] = {
            "format": STREAMS_FORMAT,
            "version": STREAMS_VERSION,
            "frame_rate_hz": self.frame_rate_hz,
            "frame_shape": [h, w],
            "record_frames": bool(record_frames),
            "flush_s": flush_s,
            "created_unix_s": time.time(),
        }
        settings = getattr(pipeline, "settings", None)
        if settings is not None:
            header.update(
                pixel_size_um=list(settings.pixel_size_um),
                dff_baseline_window_s=settings.baseline_window_s,
                dff_percentile=settings.percentile,
                roi_source=settings.roi_source,
                reference_frames=settings.reference_frames,
            )
        write_json_atomic(self.streams_dir / "header.json", header)
        streams = {
            "timing": AppendStream(
                self.streams_dir,
                "timing",
                "<f8",
                (len(TIMING_COLUMNS),),
                columns=TIMING_COLUMNS,
                description="per frame: device time of its first sample; host times "
                "(monotonic) of frame complete, processing done, stimulus issued (NaN if none)",
            )
        }
        if record_frames:
            streams["frames"] = AppendStream(
                self.streams_dir, "frames", "<i2", (h, w), description="raw frames"
            )

        def enabled(setting: str | None, ring_name: str) -> bool:
            on = setting is None or bool(getattr(settings, setting, False))
            return on and hasattr(ring, ring_name)

        # results of optional pipeline stages are recorded when the stage is on
        self.roi_fields = tuple(
            name for name, (_, _, setting) in ROI_FIELDS.items() if enabled(setting, name)
        )
        self.frame_fields = {
            name: (dtype, shape)
            for name, (_, dtype, shape, _, setting) in FRAME_FIELDS.items()
            if enabled(setting, name)
        }
        for name in self.frame_fields:
            _, dtype, shape, what, _ = FRAME_FIELDS[name]
            streams[name] = AppendStream(self.streams_dir, name, dtype, shape, description=what)
        self._commits = open(self.streams_dir / "commits.jsonl", "a", encoding="utf-8")
        self._writer = _StreamWriter(streams, self._commits, flush_s, fsync)
        per_flush = max(1, int(math.ceil(frame_rate_hz * flush_s)))
        if record_frames:
            frame_bytes = h * w * 2
            self.cap = max(1, min(per_flush, CHUNK_FRAME_BYTES // frame_bytes))
            self.max_chunks = max(2, MAX_BUFFER_BYTES // (self.cap * frame_bytes))
        else:
            self.cap = max(8, per_flush)
            self.max_chunks = 64
        self._n_rois = 0
        self._chunks = INITIAL_CHUNKS
        for _ in range(INITIAL_CHUNKS - 1):
            self._writer.free.put(self._new_chunk())
        self._chunk = self._new_chunk()
        self.frames_submitted = 0
        self.roi_start_row: int | None = None
        self._mean_image_saved = False
        self._zstack_saved = False  # reference_zstack.npz, when the pipeline took one
        self._last_flush = time.monotonic()
        self._closed = False

    # -- recorder thread -------------------------------------------------------------------
    def take(self, slot: int) -> None:
        """Copy one processed slot's data into the current chunk and free the slot."""
        ring = self.ring
        n = int(ring.n_rois[slot])
        if n and not self._n_rois:
            self._start_rois(n)
        chunk = self._chunk
        if chunk.count == chunk.cap:
            self.flush()
            chunk = self._chunk
        i = chunk.count
        chunk.timing[i, 0] = ring.device_time_s[slot]
        chunk.timing[i, 1] = ring.frame_complete_s[slot]
        chunk.timing[i, 2] = ring.processing_done_s[slot]
        chunk.timing[i, 3] = ring.stimulus_issued_s[slot]
        if chunk.rows:
            m = min(n, self._n_rois)
            for name, rows in chunk.rows.items():
                rows[i, :m] = getattr(ring, name)[slot, :m]
                if m < self._n_rois:
                    rows[i, m:] = np.nan
        for name, values in chunk.extra.items():
            values[i] = getattr(ring, name)[slot]
        if chunk.frames is not None:
            chunk.frames[i] = ring.frames[slot]
        chunk.count += 1
        ring.free.put_nowait(slot)

    def _start_rois(self, n: int) -> None:
        """ROIs became known: hand over the frames before them, then (in the writer thread)
        start the per-ROI streams at this frame and save the ROI set."""
        self.flush()
        self._n_rois = n
        self.roi_start_row = self.frames_submitted
        first = self.frames_submitted
        writer = self._writer

        def start_streams() -> None:
            for name in self.roi_fields:
                writer.streams[name] = AppendStream(
                    self.streams_dir, name, "<f4", (n,), first_frame=first,
                    description=ROI_FIELDS[name][1],
                )  # fmt: skip

        writer.submit_call(start_streams)
        self._chunk.add_rois(n)
        rois = getattr(self.pipeline, "rois", None)
        if rois is not None:
            # the processing thread installed the ROIs before the first frame carrying them
            # reached this thread, so reading them here is safe; they never change
            start = getattr(self.pipeline, "roi_start_frame", None)
            arrays = dict(
                pixels=rois.pixels,
                offsets=rois.offsets,
                weights=rois.weights,
                centroids_px=rois.centroids_px,
                shape=np.asarray(rois.shape, np.int64),
                roi_start_frame=np.asarray(-1 if start is None else start, np.int64),
            )
            writer.submit_call(lambda: _save_npz_atomic(self.streams_dir / "rois.npz", **arrays))

    def _save_mean_image(self) -> None:
        mean_image = getattr(self.pipeline, "mean_image", None)
        if mean_image is not None and not self._mean_image_saved:
            image = np.array(mean_image, np.float32)
            path = self.streams_dir / "mean_image.npy"
            self._writer.submit_call(lambda: _save_npy_atomic(path, image))
            self._mean_image_saved = True
        zstack = getattr(self.pipeline, "zstack_result", None)
        if zstack is not None and not self._zstack_saved:
            path = self.folder / "reference_zstack.npz"
            self._writer.submit_call(lambda: _save_npz_atomic(path, **zstack))
            self._zstack_saved = True

    def _next_chunk(self) -> _Chunk:
        """A free chunk: one the writer returned, a new one while under the limit, or (the
        disk is behind by MAX_BUFFER_BYTES) wait for the writer."""
        try:
            chunk = self._writer.free.get_nowait()
        except queue.Empty:
            if self._chunks < self.max_chunks:
                self._chunks += 1
                chunk = self._new_chunk()
            else:
                chunk = self._writer.free.get()
        if self._n_rois and not chunk.rows:
            chunk.add_rois(self._n_rois)
        return chunk

    def _new_chunk(self) -> _Chunk:
        return _Chunk(
            self.cap,
            self.frame_shape if self.record_frames else None,
            self.frame_fields,
            self.roi_fields,
            self._n_rois,
        )

    def flush(self) -> None:
        """Hand the current chunk to the writer thread (which appends it to every stream and
        then commits it); returns without waiting for the disk."""
        self._raise_writer_error()
        self._last_flush = time.monotonic()
        if not (self._mean_image_saved and self._zstack_saved) and self.pipeline is not None:
            self._save_mean_image()
        chunk = self._chunk
        if chunk.count == 0 or self._closed:
            return
        self.frames_submitted += chunk.count
        self._writer.submit_chunk(chunk)
        self._chunk = self._next_chunk()

    # -- end of session --------------------------------------------------------------------
    @property
    def frames_written(self) -> int:
        """Frames committed to the streams (waits for the writes in flight)."""
        if not self._closed:
            self._writer.wait_idle()
        return self._writer.committed

    @property
    def file(self) -> "_StreamArrays":
        """Recorded arrays by session.h5 name (`dff`, `fluorescence`, `timestamps`, ...), read
        back from the streams once the writes in flight are done; `"dff" in recorder.file`
        is true once ROIs were recorded."""
        if not self._closed:
            self._writer.wait_idle()
        return _StreamArrays(self.folder)

    def finish(
        self,
        *,
        rois: Any,
        mean_image: np.ndarray | None,
        noise_level: np.ndarray | None,
        stimuli: list[dict[str, Any]],
        attrs: dict[str, Any],
    ) -> Path:
        """Flush, wait for the writer, sync and assemble session.h5 from the streams."""
        self._flush_and_sync()
        return assemble_session_h5(
            self.folder,
            rois=rois,
            mean_image=mean_image,
            noise_level=noise_level,
            stimuli=stimuli,
            attrs=attrs,
        )

    @property
    def sync_error(self) -> str | None:
        error = self._writer.error
        return None if error is None else f"{type(error).__name__}: {error}"


# ---------------------------------------------------------------------------------------------
# Reading streams
# ---------------------------------------------------------------------------------------------


class StreamInfo:
    """What one stream holds on disk: header fields, complete rows, torn bytes."""

    def __init__(self, streams_dir: Path, name: str) -> None:
        header_path = streams_dir / f"{name}.json"
        header = _read_json_object(header_path)
        try:
            self.dtype = np.dtype(header["dtype"])
        except KeyError:
            raise SessionStreamError(f"{header_path}: field 'dtype' is missing") from None
        except TypeError as e:
            raise SessionStreamError(
                f"{header_path}: field 'dtype' = {header['dtype']!r} is not a numpy dtype ({e})"
            ) from e
        row_shape = header.get("row_shape")
        if not (
            isinstance(row_shape, list)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in row_shape)
        ):
            raise SessionStreamError(
                f"{header_path}: field 'row_shape' = {row_shape!r} must be a list of "
                "non-negative integers"
            )
        first = header.get("first_frame", 0)
        if not isinstance(first, int) or isinstance(first, bool) or first < 0:
            raise SessionStreamError(
                f"{header_path}: field 'first_frame' = {first!r} must be an integer >= 0"
            )
        self.name = name
        self.header = header
        self.row_shape = tuple(row_shape)
        self.first_frame = first
        self.path = streams_dir / str(header.get("file", STREAM_FILES.get(name, name)))
        if not self.path.is_file():
            raise SessionStreamError(
                f"{self.path}: data file of stream {name!r} is missing (header {header_path})"
            )
        self.row_bytes = int(self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64)))
        size = self.path.stat().st_size
        self.rows = size // self.row_bytes if self.row_bytes else 0
        self.torn_bytes = size - self.rows * self.row_bytes

    def read(self, start_row: int, stop_row: int) -> np.ndarray:
        """Rows [start, stop) of this stream (as stored), as a fresh array."""
        count = max(0, stop_row - start_row)
        with open(self.path, "rb") as f:
            f.seek(start_row * self.row_bytes)
            data = np.fromfile(f, dtype=self.dtype, count=count * int(np.prod(self.row_shape)))
        if data.size != count * int(np.prod(self.row_shape)):
            raise SessionStreamError(
                f"{self.path}: expected {count} rows from row {start_row}, the file is shorter"
            )
        return data.reshape((count, *self.row_shape))


class SessionStreams:
    """The streams of one session folder and the frames committed in them.

    `frames` is the number of frames every stream holds completely and a commit line covers
    (the recording after a crash). Frames written after the last commit, and torn rows, are
    reported in `uncommitted` and `torn_bytes` and are not part of the recording."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.dir = self.folder / STREAMS_DIR
        if not self.dir.is_dir():
            raise SessionStreamError(
                f"{self.dir} is missing: {self.folder} has no recording streams (was it "
                "written by `rig run`?)"
            )
        self.header = _read_json_object(self.dir / "header.json")
        if self.header.get("format") != STREAMS_FORMAT:
            raise SessionStreamError(
                f"{self.dir / 'header.json'}: field 'format' = {self.header.get('format')!r}, "
                f"expected {STREAMS_FORMAT!r}"
            )
        rate = self.header.get("frame_rate_hz")
        if not isinstance(rate, (int, float)) or not (math.isfinite(rate) and rate > 0):
            raise SessionStreamError(
                f"{self.dir / 'header.json'}: field 'frame_rate_hz' = {rate!r} must be a "
                "positive number"
            )
        shape = self.header.get("frame_shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(
                isinstance(s, int) and s >= 1 for s in shape)):  # fmt: skip
            raise SessionStreamError(
                f"{self.dir / 'header.json'}: field 'frame_shape' = {shape!r} must be [H, W]"
            )
        self.frame_rate_hz = float(rate)
        self.frame_shape = (int(shape[0]), int(shape[1]))
        self.streams: dict[str, StreamInfo] = {}
        for name in STREAM_FILES:
            if (self.dir / f"{name}.json").is_file():
                self.streams[name] = StreamInfo(self.dir, name)
        if "timing" not in self.streams:
            raise SessionStreamError(f"{self.dir / 'timing.json'} is missing")
        if "frames" in self.streams and self.streams["frames"].row_shape != self.frame_shape:
            raise SessionStreamError(
                f"{self.dir / 'frames.json'}: field 'row_shape' = "
                f"{list(self.streams['frames'].row_shape)} differs from the header's "
                f"frame_shape {list(self.frame_shape)}"
            )
        if ("dff" in self.streams) != ("fluorescence" in self.streams):
            raise SessionStreamError(
                f"{self.dir}: dff and fluorescence streams must exist together"
            )
        roi_streams = [self.streams[k] for k in ROI_FIELDS if k in self.streams]
        for stream in roi_streams[1:]:
            if (stream.row_shape, stream.first_frame) != (
                roi_streams[0].row_shape,
                roi_streams[0].first_frame,
            ):
                raise SessionStreamError(
                    f"{self.dir / (stream.name + '.json')}: fields 'row_shape' and "
                    f"'first_frame' must match {roi_streams[0].name}.json"
                )
        self.committed = _last_commit(self.dir / "commits.jsonl")
        complete = min(s.first_frame + s.rows for s in self.streams.values())
        self.frames = min(self.committed, complete)
        self.uncommitted = {
            name: max(0, s.first_frame + s.rows - self.frames) for name, s in self.streams.items()
        }
        self.torn_bytes = {name: s.torn_bytes for name, s in self.streams.items()}

    @property
    def n_rois(self) -> int:
        dff = self.streams.get("dff")
        return int(dff.row_shape[0]) if dff is not None else 0

    @property
    def roi_start_row(self) -> int | None:
        dff = self.streams.get("dff")
        return dff.first_frame if dff is not None else None

    def timing(self) -> np.ndarray:
        """(frames, 4) float64 (see TIMING_COLUMNS)."""
        return self.streams["timing"].read(0, self.frames)

    def frame_rows(self, name: str) -> np.ndarray:
        """All committed rows of a per-frame stream (timing, shift, motion_status)."""
        return self.streams[name].read(0, self.frames)

    def roi_rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of a per-ROI stream (`fluorescence`, `dff`, ...) as
        (rows, n_rois) float32, NaN for the frames before the ROIs existed."""
        stop = self.frames if stop is None else min(stop, self.frames)
        stream = self.streams.get(name)
        n = self.n_rois
        out = np.full((max(0, stop - start), n), np.nan, np.float32)
        if stream is None or stop <= start:
            return out
        a = max(start, stream.first_frame)
        if a < stop:
            out[a - start :] = stream.read(a - stream.first_frame, stop - stream.first_frame)
        return out

    def rois(self) -> Any:
        """The saved RoiSet (or None) and the pipeline's ROI start frame (or None)."""
        path = self.dir / "rois.npz"
        if not path.is_file():
            return None, None
        from analysis.rois import RoiSet

        try:
            with np.load(path, allow_pickle=False) as z:
                rois = RoiSet(
                    tuple(int(s) for s in z["shape"]),
                    z["pixels"],
                    z["offsets"],
                    z["weights"],
                    z["centroids_px"],
                )
                start = int(z["roi_start_frame"])
        except (OSError, KeyError, ValueError) as e:
            raise SessionStreamError(f"{path}: not a readable ROI set ({e})") from e
        return rois, (None if start < 0 else start)

    def mean_image(self) -> np.ndarray | None:
        path = self.dir / "mean_image.npy"
        if not path.is_file():
            return None
        try:
            image = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SessionStreamError(f"{path}: not a readable .npy image ({e})") from e
        if image.shape != self.frame_shape:
            raise SessionStreamError(
                f"{path}: shape {image.shape} differs from the frame shape {self.frame_shape}"
            )
        return image.astype(np.float32)


def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SessionStreamError(f"{path} is missing")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SessionStreamError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(value, dict):
        raise SessionStreamError(f"{path}: must hold a JSON object")
    return value


def _last_commit(path: Path) -> int:
    """Frames covered by the last complete line of commits.jsonl (0 if none)."""
    if not path.is_file():
        return 0
    frames = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # torn last line: its flush did not complete
            try:
                value = json.loads(line)["frames"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if isinstance(value, int) and value >= frames:
                frames = value
    return frames


class _StreamArrays:
    """Read-only mapping from session.h5 dataset names to arrays read from the streams."""

    def __init__(self, folder: Path) -> None:
        self._streams = SessionStreams(folder)
        self._names = {ROI_FIELDS[k][0]: k for k in ROI_FIELDS}
        self._names.update({FRAME_FIELDS[k][0]: k for k in FRAME_FIELDS})

    def __contains__(self, name: str) -> bool:
        if name in TIMING_DATASETS:
            return True
        stream = self._names.get(name, name)
        return stream in self._streams.streams and stream != "timing"

    def __getitem__(self, name: str) -> np.ndarray:
        s = self._streams
        if name in TIMING_DATASETS:
            return s.timing()[:, TIMING_DATASETS.index(name)]
        stream = self._names.get(name, name)
        if stream not in s.streams or stream == "timing":
            raise KeyError(name)
        if stream in ROI_FIELDS:
            return s.roi_rows(stream)
        return s.frame_rows(stream)


# ---------------------------------------------------------------------------------------------
# session.h5
# ---------------------------------------------------------------------------------------------


@contextmanager
def atomic_session_h5(folder: Path) -> Iterator[h5py.File]:
    """Open session.h5.tmp in `folder` for writing; when the block ends, fsync it and rename it
    to session.h5 (then fsync the folder). If the block fails the temporary file is removed
    and any existing session.h5 is left as it was."""
    path = folder / "session.h5"
    tmp = folder / "session.h5.tmp"
    tmp.unlink(missing_ok=True)
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)


def assemble_session_h5(
    folder: str | os.PathLike[str],
    *,
    rois: Any,
    mean_image: np.ndarray | None,
    noise_level: np.ndarray | None,
    stimuli: list[dict[str, Any]],
    attrs: dict[str, Any],
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write session.h5 (docs/SESSION_FORMAT.md) from the committed frames of the streams.

    Written as session.h5.tmp and renamed when complete; a failure removes the temporary file.
    Raw frames are stored as HDF5 external storage pointing at streams/frames.i2."""
    folder = Path(folder)
    streams = SessionStreams(folder)
    with atomic_session_h5(folder) as f:
        _write_h5(f, streams, rois, mean_image, noise_level, stimuli, attrs, progress)
    return folder / "session.h5"


def _write_h5(
    f: h5py.File,
    streams: SessionStreams,
    rois: Any,
    mean_image: np.ndarray | None,
    noise_level: np.ndarray | None,
    stimuli: list[dict[str, Any]],
    attrs: dict[str, Any],
    progress: Callable[[int, int], None] | None,
) -> None:
    n = streams.frames
    h, w = streams.frame_shape
    f.attrs["frame_rate_hz"] = streams.frame_rate_hz
    timing = streams.timing()
    for column, name in enumerate(TIMING_DATASETS):
        f.create_dataset(name, data=timing[:, column], dtype="f8")
    n_rois = streams.n_rois
    roi_names = [k for k in ROI_FIELDS if k in streams.streams or k in ("fluorescence", "dff")]
    for number, name in enumerate(roi_names):
        dataset = ROI_FIELDS[name][0]
        if n_rois == 0:
            f.create_dataset(dataset, (n, 0), dtype="f4")
            continue
        ds = f.create_dataset(
            dataset,
            (n, n_rois),
            dtype="f4",
            chunks=(max(1, min(n, 1024, 2**20 // (4 * n_rois))), n_rois) if n else None,
            fillvalue=np.nan,
        )
        ds.attrs["description"] = ROI_FIELDS[name][1]
        for start in range(0, n, ASSEMBLY_BLOCK_ROWS):
            stop = min(n, start + ASSEMBLY_BLOCK_ROWS)
            ds[start:stop] = streams.roi_rows(name, start, stop)
            if progress is not None:
                progress(number * n + stop, len(roi_names) * n)
    for name, (dataset, _, _, what, _) in FRAME_FIELDS.items():
        if name in streams.streams:
            f.create_dataset(dataset, data=streams.frame_rows(name))
            f[dataset].attrs["description"] = what
    g = f.create_group("rois")
    if rois is not None:
        g.create_dataset("pixels", data=rois.pixels)
        g.create_dataset("offsets", data=rois.offsets)
        g.create_dataset("weights", data=rois.weights)
        g.create_dataset("centroids_px", data=rois.centroids_px)
        g.attrs["shape"] = rois.shape
    else:
        g.create_dataset("pixels", (0,), dtype="i4")
        g.create_dataset("offsets", data=np.zeros(1, np.int32))
        g.create_dataset("weights", (0,), dtype="f4")
        g.create_dataset("centroids_px", (0, 2), dtype="f8")
    if mean_image is None and "frames" in streams.streams and n:
        # the reference period ended early (or its mean was not saved before a crash): the
        # mean of the recorded part of it, as the pipeline defines it
        count = min(n, int(streams.header.get("reference_frames") or FALLBACK_REFERENCE_FRAMES))
        mean_image = _mean_of_stream_frames(streams.streams["frames"], count)
        f.create_dataset("mean_image", data=mean_image)
        f["mean_image"].attrs["source"] = f"mean of the first {count} recorded frames"
    elif mean_image is not None:
        f.create_dataset("mean_image", data=np.asarray(mean_image, np.float32))
    nl = noise_level if noise_level is not None else np.zeros(0, np.float32)
    f.create_dataset("noise_level", data=np.asarray(nl, np.float32))
    s = f.create_group("stimuli")
    s.create_dataset("frame", data=np.array([e.get("frame", -1) for e in stimuli], np.int64))
    s.create_dataset("host_time_s", data=np.array([e["host_time_s"] for e in stimuli], np.float64))
    s.create_dataset(
        "device_time_s",
        data=np.array(
            [np.nan if e.get("device_time_s") is None else e["device_time_s"] for e in stimuli],
            np.float64,
        ),
    )
    if "frames" in streams.streams:
        frames = streams.streams["frames"]
        if n:
            f.create_dataset(
                "frames",
                (n, h, w),
                dtype=frames.dtype,
                external=[(f"{STREAMS_DIR}/{frames.path.name}", 0, n * frames.row_bytes)],
            )
        else:
            f.create_dataset("frames", (0, h, w), dtype=frames.dtype)
        f["frames"].attrs["storage"] = (
            f"external: {STREAMS_DIR}/{frames.path.name}, resolved next to session.h5 "
            "(rig.session.open_frames, or HDF5_EXTFILE_PREFIX=${ORIGIN})"
        )
    for k, v in attrs.items():
        if v is not None:
            f.attrs[k] = v


def _mean_of_stream_frames(frames: StreamInfo, count: int) -> np.ndarray:
    total = np.zeros(frames.row_shape, np.float64)
    for start in range(0, count, 256):
        stop = min(count, start + 256)
        total += frames.read(start, stop).sum(axis=0, dtype=np.float64)
    return (total / max(count, 1)).astype(np.float32)


def open_frames(h5: h5py.File) -> h5py.Dataset | None:
    """The `frames` dataset of an open session.h5 with its external raw file resolved next to
    session.h5 (whatever the working directory); None if frames were not recorded."""
    if h5.get("frames", getclass=True) is not h5py.Dataset:
        return None
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_efile_prefix(b"${ORIGIN}")
    return h5py.Dataset(h5py.h5d.open(h5.id, b"frames", dapl=dapl))


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (the directory entry), where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_summary(folder: Path, summary: dict[str, Any]) -> Path:
    return write_json_atomic(folder / "summary.json", summary)


def format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
