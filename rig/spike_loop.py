"""The loop for spike input (MEA): acquisition of spike blocks -> protocol -> stimulation.

The same three threads and the same fault handling as the frame loop (rig/loop.py), with a
ring of preallocated SpikeBlocks instead of frames:

    acquisition   spikes.read_block() into a free block (device times on the recording
                  device's clock), hand it on
    processing    protocol.on_spikes(ctx): the protocol sees the block's spikes and stimulus
                  onsets read back from the device, and may stimulate directly
    recorder      copies spikes, onsets and block timing into chunks that the stream writer
                  appends to crash-safe streams (rig/session.py), writes events

At max speed the simulated RHX server produces exactly one block per read (lock-step), so
a stimulus issued while processing block i acts on the culture at the end of block i: the same
seed gives the same session.
"""

from __future__ import annotations

import gc
import json
import math
import os
import queue
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rig.loop import END, RunLoop
from rig.session import (
    STREAMS_DIR,
    STREAMS_FORMAT,
    STREAMS_VERSION,
    AppendStream,
    SessionStreamError,
    StreamInfo,
    StreamRecorderBase,
    _last_commit,
    _read_json_object,
    _StreamWriter,
    atomic_session_h5,
    write_json_atomic,
)


class BlockRing:
    def __init__(self, source: Any, n_slots: int) -> None:
        self.n_slots = n_slots
        self.blocks = [source.new_block() for _ in range(n_slots)]
        self.processing_done_s = np.zeros(n_slots)
        self.stimulus_issued_s = np.full(n_slots, np.nan)
        self.free: queue.Queue[int] = queue.Queue(maxsize=n_slots)
        self.ready: queue.Queue[int] = queue.Queue(maxsize=n_slots + 1)
        self.record: queue.Queue[int] = queue.Queue(maxsize=n_slots + 1)
        for slot in range(n_slots):
            self.free.put_nowait(slot)


# ---------------------------------------------------------------------------------------------
# Crash-safe recording of spike sessions
# ---------------------------------------------------------------------------------------------

#: the streams of a spike session (<session>/streams/): name -> (dtype, row shape, file,
#: description). Spikes and onsets are one row each; the two block streams one row per block,
#: whose spike and onset counts say which spike and onset rows belong to which block.
SPIKE_STREAMS: dict[str, tuple[str, tuple[int, ...], str, str]] = {
    "spike_electrode": ("<i4", (), "spike_electrode.i4", "electrode index of each spike"),
    "spike_sample": ("<i8", (), "spike_sample.i8", "sample of each spike (device clock)"),
    "spike_unit": ("|u1", (), "spike_unit.u1", "unit of each spike on its electrode"),
    "onset_electrode": ("<i4", (), "onset_electrode.i4", "electrode of each stimulus onset"),
    "onset_sample": ("<i8", (), "onset_sample.i8", "sample of each onset (device clock)"),
    "block_counts": (
        "<i8",
        (5,),
        "block_counts.i8",
        "per block: first sample, samples, samples lost before it, spikes, onsets",
    ),
    "block_timing": (
        "<f8",
        (3,),
        "block_timing.f8",
        "per block: host times (monotonic) of "
        "arrival, processing done, stimulus issued (NaN = none)",
    ),
}
BLOCK_COUNT_COLUMNS = ("first_sample", "n_samples", "lost_samples_before", "n_spikes", "n_onsets")
BLOCK_TIMING_COLUMNS = ("host_time_s", "processing_done_s", "stimulus_issued_s")
#: session.h5 datasets of a spike session (docs/SESSION_FORMAT.md) -> (stream, column or None)
SPIKE_DATASETS = {
    "spikes/electrode": ("spike_electrode", None),
    "spikes/sample": ("spike_sample", None),
    "spikes/unit": ("spike_unit", None),
    "onsets/electrode": ("onset_electrode", None),
    "onsets/sample": ("onset_sample", None),
    "blocks/first_sample": ("block_counts", 0),
    "blocks/n_samples": ("block_counts", 1),
    "blocks/lost_samples_before": ("block_counts", 2),
    "blocks/n_spikes": ("block_counts", 3),
    "blocks/n_onsets": ("block_counts", 4),
    "blocks/host_time_s": ("block_timing", 0),
    "blocks/processing_done_s": ("block_timing", 1),
    "blocks/stimulus_issued_s": ("block_timing", 2),
}
DATASET_DTYPES = {"blocks/n_samples": "i4", "blocks/n_spikes": "i4", "blocks/n_onsets": "i4"}
#: spike rows copied per piece when session.h5 is assembled (bounded memory)
ASSEMBLY_ROWS = 2**20


class _SpikeChunk:
    """Up to `cap` blocks with their spikes and onsets, filled by the recorder thread and
    written by the writer thread (one thread at a time). The spike and onset arrays grow (by
    doubling, in the recorder thread) when a burst overflows them; blocks never do."""

    def __init__(self, cap: int, spikes_per_block: int = 16) -> None:
        self.cap = cap
        self.counts = np.zeros((cap, len(BLOCK_COUNT_COLUMNS)), np.int64)
        self.timing = np.zeros((cap, len(BLOCK_TIMING_COLUMNS)))
        n = cap * spikes_per_block
        self.spike_electrode = np.zeros(n, np.int32)
        self.spike_sample = np.zeros(n, np.int64)
        self.spike_unit = np.zeros(n, np.uint8)
        self.onset_electrode = np.zeros(cap, np.int32)
        self.onset_sample = np.zeros(cap, np.int64)
        self.count = 0  # blocks (the writer thread resets it when the chunk comes back)
        self.n_spikes = 0
        self.n_onsets = 0

    def reserve(self, spikes: int, onsets: int) -> None:
        if self.n_spikes + spikes > self.spike_sample.size:
            size = max(2 * self.spike_sample.size, self.n_spikes + spikes)
            for name in ("spike_electrode", "spike_sample", "spike_unit"):
                old = getattr(self, name)
                new = np.zeros(size, old.dtype)
                new[: self.n_spikes] = old[: self.n_spikes]
                setattr(self, name, new)
        if self.n_onsets + onsets > self.onset_sample.size:
            size = max(2 * self.onset_sample.size, self.n_onsets + onsets)
            for name in ("onset_electrode", "onset_sample"):
                old = getattr(self, name)
                new = np.zeros(size, old.dtype)
                new[: self.n_onsets] = old[: self.n_onsets]
                setattr(self, name, new)


class _SpikeStreamWriter(_StreamWriter):
    """The frame sessions' writer thread (ordering, fsync every `sync_s`, first error kept for
    the recorder thread) writing spike chunks: every stream first, then one commit line
    `{"frames": blocks, "spikes": n, "onsets": n}`, so a block counts as recorded only once
    its spikes, onsets and block rows are all on disk."""

    spikes_committed = 0
    onsets_committed = 0

    def _write(self, chunk: _SpikeChunk) -> None:  # type: ignore[override]
        m, ns, no = chunk.count, chunk.n_spikes, chunk.n_onsets
        if m == 0:
            return
        st = self.streams
        st["spike_electrode"].append(chunk.spike_electrode[:ns])
        st["spike_sample"].append(chunk.spike_sample[:ns])
        st["spike_unit"].append(chunk.spike_unit[:ns])
        st["onset_electrode"].append(chunk.onset_electrode[:no])
        st["onset_sample"].append(chunk.onset_sample[:no])
        st["block_counts"].append(chunk.counts[:m])
        st["block_timing"].append(chunk.timing[:m])
        chunk.n_spikes = chunk.n_onsets = 0
        self.committed += m
        self.spikes_committed += ns
        self.onsets_committed += no
        line = {
            "frames": self.committed,
            "spikes": self.spikes_committed,
            "onsets": self.onsets_committed,
            "host_time_s": time.monotonic(),
        }
        self.commits.write(json.dumps(line) + "\n")
        self.commits.flush()
        if self.fsync and time.monotonic() - self._last_sync >= self.sync_s:
            self._sync()


class SpikeRecorder(StreamRecorderBase):
    """Crash-safe recording of a spike session, as SessionRecorder does for frames
    (rig/session.py): the recorder thread copies each block's spikes, onsets and timing into
    a chunk and frees the slot; every `flush_s` (or when a chunk is full) the chunk goes to the
    writer thread, which appends it to the append-only streams (SPIKE_STREAMS) and then
    commits it. After a SIGKILL every committed block is on disk and `rig recover` rebuilds
    session.h5 from the streams; at the end `finish()` assembles it the same way (written to
    a temporary name and renamed, so it exists whole or not at all)."""

    def __init__(
        self, folder: Any, ring: BlockRing, source: Any, flush_s: float = 1.0, fsync: bool = True
    ) -> None:
        self.folder = Path(folder)
        self.ring = ring
        self.flush_s = flush_s
        self.streams_dir = self.folder / STREAMS_DIR
        self.streams_dir.mkdir(exist_ok=True)
        write_json_atomic(
            self.streams_dir / "header.json",
            {
                "format": STREAMS_FORMAT,
                "version": STREAMS_VERSION,
                "input": "spikes",
                "sample_rate_hz": float(source.sample_rate_hz),
                "electrodes": list(source.electrodes),
                "block_duration_s": float(source.block_duration_s),
                "flush_s": flush_s,
                "created_unix_s": time.time(),
            },
        )
        streams = {}
        for name, (dtype, shape, file_name, what) in SPIKE_STREAMS.items():
            columns = {"block_counts": BLOCK_COUNT_COLUMNS, "block_timing": BLOCK_TIMING_COLUMNS}
            streams[name] = AppendStream(
                self.streams_dir,
                name,
                dtype,
                shape,
                columns=columns.get(name),
                description=what,
                file_name=file_name,
            )
        self._commits = open(self.streams_dir / "commits.jsonl", "a", encoding="utf-8")
        self._writer = _SpikeStreamWriter(streams, self._commits, flush_s, fsync)
        self.cap = max(256, int(math.ceil(flush_s / source.block_duration_s)))
        self.max_chunks = 64
        self._chunks = 4
        for _ in range(self._chunks - 1):
            self._writer.free.put(_SpikeChunk(self.cap))
        self._chunk = _SpikeChunk(self.cap)
        self._last_flush = time.monotonic()
        self._closed = False
        self.blocks_submitted = 0

    # -- recorder thread -------------------------------------------------------------------
    def take(self, slot: int) -> None:
        ring = self.ring
        block = ring.blocks[slot]
        chunk = self._chunk
        if chunk.count == chunk.cap:
            self.flush()
            chunk = self._chunk
        e, s, u = block.spikes()
        oe, os_ = block.onsets()
        chunk.reserve(e.size, oe.size)
        a, b = chunk.n_spikes, chunk.n_spikes + e.size
        chunk.spike_electrode[a:b] = e
        chunk.spike_sample[a:b] = s
        chunk.spike_unit[a:b] = u
        chunk.n_spikes = b
        a, b = chunk.n_onsets, chunk.n_onsets + oe.size
        chunk.onset_electrode[a:b] = oe
        chunk.onset_sample[a:b] = os_
        chunk.n_onsets = b
        i = chunk.count
        row = chunk.counts[i]
        row[0], row[1], row[2] = block.first_sample, block.n_samples, block.lost_samples_before
        row[3], row[4] = e.size, oe.size
        t = chunk.timing[i]
        t[0], t[1], t[2] = (
            block.host_time_s,
            ring.processing_done_s[slot],
            ring.stimulus_issued_s[slot],
        )
        chunk.count = i + 1
        ring.free.put_nowait(slot)

    def flush(self) -> None:
        """Hand the current chunk to the writer thread; returns without waiting for the disk."""
        self._raise_writer_error()
        self._last_flush = time.monotonic()
        chunk = self._chunk
        if chunk.count == 0 or self._closed:
            return
        self.blocks_submitted += chunk.count
        self._writer.submit_chunk(chunk)
        try:
            self._chunk = self._writer.free.get_nowait()
        except queue.Empty:
            if self._chunks < self.max_chunks:
                self._chunks += 1
                self._chunk = _SpikeChunk(self.cap)
            else:  # the disk is far behind: wait for it (the ring fills, blocks are dropped)
                self._chunk = self._writer.free.get()

    @property
    def blocks_written(self) -> int:
        """Blocks committed to the streams (waits for the writes in flight)."""
        if not self._closed:
            self._writer.wait_idle()
        return self._writer.committed

    # -- end of session --------------------------------------------------------------------
    def finish(self, stimuli: list[dict[str, Any]], attrs: dict[str, Any]) -> Path:
        """Flush, wait for the writer, sync, and assemble session.h5 from the streams."""
        self._flush_and_sync()
        return assemble_spike_h5(self.folder, stimuli=stimuli, attrs=attrs)


class SpikeStreams:
    """The streams of one spike session and the blocks committed in them.

    `blocks` is the number of blocks whose rows every block stream holds and a commit line
    covers; the spikes and onsets of those blocks are the first `spikes` and `onsets` rows of
    their streams (written before the commit). Rows after that, and torn rows, are reported
    in `uncommitted` and `torn_bytes` and are not part of the recording."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.dir = self.folder / STREAMS_DIR
        if not self.dir.is_dir():
            raise SessionStreamError(
                f"{self.dir} is missing: {self.folder} has no recording streams"
            )
        header_path = self.dir / "header.json"
        self.header = _read_json_object(header_path)
        if self.header.get("format") != STREAMS_FORMAT or self.header.get("input") != "spikes":
            raise SessionStreamError(
                f"{header_path}: fields 'format' = {self.header.get('format')!r} and 'input' = "
                f"{self.header.get('input')!r}, expected {STREAMS_FORMAT!r} and 'spikes'"
            )
        for key in ("sample_rate_hz", "block_duration_s"):
            value = self.header.get(key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SessionStreamError(
                    f"{header_path}: field {key!r} = {value!r} must be a positive number"
                )
        if not isinstance(self.header.get("electrodes"), list):
            raise SessionStreamError(f"{header_path}: field 'electrodes' must be a list")
        self.streams = {name: StreamInfo(self.dir, name) for name in SPIKE_STREAMS}
        for name, (dtype, shape, _, _) in SPIKE_STREAMS.items():
            info = self.streams[name]
            if info.dtype != np.dtype(dtype) or info.row_shape != shape:
                raise SessionStreamError(
                    f"{self.dir / (name + '.json')}: fields 'dtype' = {info.dtype.str!r} and "
                    f"'row_shape' = {list(info.row_shape)}, expected {dtype!r} and {list(shape)}"
                )
        self.committed = _last_commit(self.dir / "commits.jsonl")
        self.blocks = min(
            self.committed, self.streams["block_counts"].rows, self.streams["block_timing"].rows
        )
        self.counts = self.streams["block_counts"].read(0, self.blocks)
        self.spikes = int(self.counts[:, 3].sum())
        self.onsets = int(self.counts[:, 4].sum())
        rows_used = {"block_counts": self.blocks, "block_timing": self.blocks}
        rows_used.update({n: self.spikes for n in SPIKE_STREAMS if n.startswith("spike_")})
        rows_used.update({n: self.onsets for n in SPIKE_STREAMS if n.startswith("onset_")})
        for name, needed in rows_used.items():
            if self.streams[name].rows < needed:
                raise SessionStreamError(
                    f"{self.streams[name].path}: {self.streams[name].rows} rows, but the "
                    f"committed blocks hold {needed} (the stream was cut or replaced)"
                )
        self.uncommitted = {n: self.streams[n].rows - rows_used[n] for n in SPIKE_STREAMS}
        self.torn_bytes = {n: s.torn_bytes for n, s in self.streams.items()}

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.streams[name].read(start, stop)

    def timing(self) -> np.ndarray:
        """(blocks, 3) float64 (BLOCK_TIMING_COLUMNS)."""
        return self.streams["block_timing"].read(0, self.blocks)


def is_spike_session(folder: str | os.PathLike[str]) -> bool:
    """Whether a session folder's streams were written by a spike session."""
    path = Path(folder) / STREAMS_DIR / "header.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("input") == "spikes"
    except (OSError, ValueError, AttributeError):
        return False


def assemble_spike_h5(
    folder: str | os.PathLike[str], *, stimuli: list[dict[str, Any]], attrs: dict[str, Any]
) -> Path:
    """Write session.h5 of a spike session (spikes/, onsets/, blocks/, stimuli/ and the
    attributes, docs/SESSION_FORMAT.md) from the committed blocks of its streams; written as
    session.h5.tmp and renamed when complete, a failure removes the temporary file."""
    folder = Path(folder)
    streams = SpikeStreams(folder)
    with atomic_session_h5(folder) as f:
        f.attrs["sample_rate_hz"] = streams.header["sample_rate_hz"]
        f.attrs["electrodes"] = list(streams.header["electrodes"])
        f.attrs["block_duration_s"] = streams.header["block_duration_s"]
        timing = streams.timing()
        for dataset, (stream, column) in SPIKE_DATASETS.items():
            dtype = DATASET_DTYPES.get(dataset, SPIKE_STREAMS[stream][0])
            if column is not None:
                source = streams.counts if stream == "block_counts" else timing
                f.create_dataset(dataset, data=source[:, column].astype(dtype))
                continue
            n = streams.spikes if stream.startswith("spike_") else streams.onsets
            ds = f.create_dataset(
                dataset, (n,), dtype=dtype, chunks=(8192,) if n else None, maxshape=(None,)
            )
            for a in range(0, n, ASSEMBLY_ROWS):
                b = min(n, a + ASSEMBLY_ROWS)
                ds[a:b] = streams.rows(stream, a, b)
        g = f.create_group("stimuli")
        g.create_dataset("block", data=np.array([e.get("frame", -1) for e in stimuli], "i8"))
        g.create_dataset(
            "host_time_s", data=np.array([e["host_time_s"] for e in stimuli], float)
        )
        g.create_dataset(
            "device_time_s",
            data=np.array(
                [
                    np.nan if e.get("device_time_s") is None else e["device_time_s"]
                    for e in stimuli
                ],
                float,
            ),
        )
        for k, v in attrs.items():
            if v is not None:
                f.attrs[k] = v
    return folder / "session.h5"


def recover_spike_session(folder: Path, *, force: bool = False, write_report: bool = True) -> Any:
    """`rig recover` for a spike session (called by rig.recover.recover_session): session.h5
    from the committed blocks, summary.json with status "aborted" and a `recovered` block,
    report.html, and a `recovered` event; a complete session is left alone unless `force`."""

    from rig.recover import (
        CRASH_ERROR,
        RecoveryResult,
        _last,
        _percentiles,
        _session_start,
        finish_recovery,
        recovered_context,
    )
    from rig.session import read_events

    streams = SpikeStreams(folder)
    events, unreadable = read_events(folder / "events.jsonl")
    existing = None
    try:
        value = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        existing = value if isinstance(value, dict) and "status" in value else None
    except (OSError, ValueError):
        pass
    h5_ok = False
    try:
        with h5py.File(folder / "session.h5", "r") as f:
            h5_ok = "spikes/sample" in f and "blocks/first_sample" in f
    except (OSError, ValueError):
        pass
    if h5_ok and existing is not None and not force:
        return RecoveryResult(
            folder,
            existing,
            needed=False,
            actions=["session.h5 and summary.json are complete: nothing to recover"],
        )
    actions: list[str] = []
    if (folder / "session.h5.tmp").exists():
        (folder / "session.h5.tmp").unlink()
        actions.append("removed session.h5.tmp left by an interrupted finish")
    start = _session_start(events)
    stimuli = [e for e in events if e.get("type") == "stimulus"]
    block_s = float(streams.header["block_duration_s"])
    if not h5_ok or force:
        assemble_spike_h5(
            folder,
            stimuli=stimuli,
            attrs={"seed": start.get("seed"), "status": "aborted"},
        )
        actions.append(
            f"assembled session.h5 from {streams.blocks} committed blocks "
            f"({streams.spikes} spikes, {streams.onsets} onsets)"
        )
    recovered = {
        "at_unix_s": time.time(),
        "frames_committed": streams.blocks,
        "spikes_committed": streams.spikes,
        "onsets_committed": streams.onsets,
        "rows_after_last_commit": streams.uncommitted,
        "torn_bytes": streams.torn_bytes,
        "rois": "none (spike session)",
        "unreadable_event_lines": unreadable,
    }
    if existing is not None:
        summary = dict(existing)
        summary["recovered"] = recovered
        actions.append("kept the existing summary.json, added `recovered`")
    else:
        config = _last(events, "config").get("config", {})
        timing = streams.timing()
        arrival, done, stim = timing[:, 0], timing[:, 1], timing[:, 2]
        errors = [e for e in events if e.get("type") == "error"]
        host = [e["host_time_s"] for e in events if isinstance(e.get("host_time_s"), float)]
        n = streams.blocks
        summary = {
            "status": "aborted",
            "error": str(errors[-1].get("error")) if errors else CRASH_ERROR,
            "stop_reason": _last(events, "session", event="stop requested").get("reason"),
            "seed": start.get("seed"),
            "rig": (config.get("rig") or {}).get("name"),
            "rig_source": start.get("rig"),
            "speed": start.get("speed"),
            "input": "spikes",
            "blocks": n,
            "frames": n,
            "frames_acquired": None,
            "frames_dropped": sum(1 for e in events if e.get("type") == "drop"),
            "block_duration_s": block_s,
            "frame_rate_hz": 1.0 / block_s,
            "duration_s": n * block_s,
            "wall_time_s": (max(host) - start["host_time_s"]) if host and start else None,
            "spikes": streams.spikes,
            "n_rois": 0,
            "latency_ms": {
                k: v for k, v in _percentiles((done - arrival) * 1e3).items() if k != "count"
            },
            "stimulus_latency_ms": _percentiles((stim - arrival) * 1e3),
            "processing_ms": {"median": None, "p99": None},
            "stimuli": len(stimuli),
            "noise_level": {"median": None, "p10": None, "p90": None},
            **recovered_context(start, config, events, recovered),
        }
        actions.append("wrote summary.json from the streams and events.jsonl")
    return finish_recovery(folder, summary, actions, streams.blocks, write_report)


class SpikeLoop(RunLoop):
    """RunLoop with spike blocks in place of frames (see the module docstring)."""

    def __init__(
        self,
        rig: Any,
        protocol: Any,
        ring: BlockRing,
        recorder: SpikeRecorder,
        events: Any,
        *,
        speed: str,
        max_blocks: int,
        live: Any = None,
        control: Any = None,
    ) -> None:
        self.source = rig.spikes
        self.block_ring = ring
        super().__init__(
            rig,
            _NoPipeline(),
            protocol,
            ring,
            recorder,
            events,
            speed=speed,
            max_frames=max_blocks,
            live=live,
            control=control,
        )
        self.frame_rate_hz = 1.0 / self.source.block_duration_s
        self.spikes_seen = 0

    def _acquire(self) -> None:
        ring, source = self.block_ring, self.source
        lockstep = self.speed == "max"
        source.start()
        self.events.post({"type": "session", "event": "acquisition started"})
        # setup is done: collect now, freeze what survives, so a full collection never lands
        # in the middle of the loop (measured: ~20 ms pauses without this)
        gc.collect()
        gc.freeze()
        try:
            for i in range(self.max_frames):
                if self._stop.is_set():
                    break
                if lockstep and i > 0:
                    while not self._processed.acquire(timeout=0.1):
                        if self._stop.is_set():
                            return
                    if self._stop.is_set():
                        break
                slot = self._next_free_slot()
                if slot is None:
                    break
                block = ring.blocks[slot]
                source.read_block(block)
                block.index = i
                self.frames_acquired += 1
                self.last_device_time_s = block.end_time_s
                if block.lost_samples_before:
                    self._drop(i, f"{block.lost_samples_before} samples lost before this block")
                ring.stimulus_issued_s[slot] = np.nan
                ring.ready.put(slot)
        finally:
            source.stop()
            gc.unfreeze()

    def _process(self) -> None:
        ring, ctx, protocol = self.block_ring, self.ctx, self.protocol
        while True:
            try:
                slot = ring.ready.get(timeout=0.1)
            except queue.Empty:
                if self._aborted.is_set():
                    return
                continue
            if slot == END:
                return
            block = ring.blocks[slot]
            ctx.block = block
            ctx.frame_index, ctx.slot, ctx.time_s = block.index, slot, block.device_time_s
            ctx.stimuli_this_frame = 0
            t0 = time.perf_counter()
            control = self.control
            if not self._stop.is_set() and (control is None or control.protocol_active):
                protocol.on_spikes(ctx)
            if control is not None and control.manual_queue:
                self._deliver_manual(control)
            done = time.monotonic()
            ring.processing_done_s[slot] = done
            n = self.frames_processed
            if n < self.max_frames:
                self.latency_ms[n] = (done - block.host_time_s) * 1e3
                self.processing_ms[n] = (time.perf_counter() - t0) * 1e3
                if not math.isnan(ring.stimulus_issued_s[slot]):
                    self.stimulus_latency_ms[n] = (
                        ring.stimulus_issued_s[slot] - block.host_time_s
                    ) * 1e3
            self.spikes_seen += block.n_spikes
            self.frames_processed += 1
            ring.record.put(slot)
            if self.speed == "max":
                self._processed.release()


class _NoPipeline:
    """Spike sessions have no imaging pipeline; the context's ROI views are empty."""

    n_rois = 0
    rois = None
    roi_centroids_um = None
    noise_level = None
    history_count = 0
    stage_ms = np.zeros(0)

    def recent_dff(self, n_frames: int) -> np.ndarray:
        return np.zeros((0, 0), np.float32)
