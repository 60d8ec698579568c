"""The loop for spike input (MEA): acquisition of spike blocks -> protocol -> stimulation.

The same three threads and the same fault handling as the frame loop (rig/loop.py), with a
ring of preallocated SpikeBlocks instead of frames:

    acquisition   spikes.read_block() into a free block (device times on the recording
                  device's clock), hand it on
    processing    protocol.on_spikes(ctx): the protocol sees the block's spikes and stimulus
                  onsets read back from the device, and may stimulate directly
    recorder      appends spikes, onsets and block timing to session.h5, writes events

At max speed the simulated RHX server produces exactly one block per read (lock-step), so
a stimulus issued while processing block i acts on the culture at the end of block i: the same
seed gives the same session.
"""

from __future__ import annotations

import gc
import math
import queue
import time
from typing import Any

import h5py
import numpy as np

from rig.loop import END, RunLoop


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


class SpikeRecorder:
    """session.h5 for spike sessions: every spike and onset, block timing; appended in chunks
    (flushed every flush_s) so a long session never holds its spikes in memory."""

    DATASETS = {
        "spikes/electrode": "i4",
        "spikes/sample": "i8",
        "spikes/unit": "u1",
        "onsets/electrode": "i4",
        "onsets/sample": "i8",
        "blocks/first_sample": "i8",
        "blocks/n_samples": "i4",
        "blocks/host_time_s": "f8",
        "blocks/processing_done_s": "f8",
        "blocks/stimulus_issued_s": "f8",
        "blocks/lost_samples_before": "i8",
    }

    def __init__(self, folder: Any, ring: BlockRing, source: Any, flush_s: float = 1.0) -> None:
        self.ring = ring
        self.flush_s = flush_s
        self.file = h5py.File(folder / "session.h5", "w")
        self.file.attrs["sample_rate_hz"] = source.sample_rate_hz
        self.file.attrs["electrodes"] = list(source.electrodes)
        for name, dtype in self.DATASETS.items():
            self.file.create_dataset(name, (0,), maxshape=(None,), dtype=dtype, chunks=(8192,))
        self._pending: dict[str, list[np.ndarray]] = {name: [] for name in self.DATASETS}
        self._last_flush = time.monotonic()
        self.blocks_written = 0
        self.spikes_written = 0

    def take(self, slot: int) -> None:
        ring = self.ring
        block = ring.blocks[slot]
        e, s, u = block.spikes()
        oe, os_ = block.onsets()
        p = self._pending
        p["spikes/electrode"].append(e.copy())
        p["spikes/sample"].append(s.copy())
        p["spikes/unit"].append(u.copy())
        p["onsets/electrode"].append(oe.copy())
        p["onsets/sample"].append(os_.copy())
        p["blocks/first_sample"].append(np.array([block.first_sample]))
        p["blocks/n_samples"].append(np.array([block.n_samples]))
        p["blocks/host_time_s"].append(np.array([block.host_time_s]))
        p["blocks/processing_done_s"].append(np.array([ring.processing_done_s[slot]]))
        p["blocks/stimulus_issued_s"].append(np.array([ring.stimulus_issued_s[slot]]))
        p["blocks/lost_samples_before"].append(np.array([block.lost_samples_before]))
        ring.free.put_nowait(slot)

    def due(self) -> bool:
        return time.monotonic() - self._last_flush >= self.flush_s

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        for name, parts in self._pending.items():
            if not parts:
                continue
            data = np.concatenate(parts)
            ds = self.file[name]
            a = ds.shape[0]
            ds.resize(a + data.size, axis=0)
            ds[a:] = data
            parts.clear()
            if name == "blocks/first_sample":
                self.blocks_written += data.size
            elif name == "spikes/sample":
                self.spikes_written += data.size
        self.file.flush()

    def finish(self, stimuli: list[dict[str, Any]], attrs: dict[str, Any]) -> None:
        self.flush()
        g = self.file.create_group("stimuli")
        g.create_dataset("block", data=np.array([e.get("frame", -1) for e in stimuli], np.int64))
        g.create_dataset("host_time_s", data=np.array([e["host_time_s"] for e in stimuli], float))
        g.create_dataset(
            "device_time_s", data=np.array([e.get("device_time_s", np.nan) for e in stimuli], float)
        )
        for k, v in attrs.items():
            if v is not None:
                self.file.attrs[k] = v
        self.file.flush()

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


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
