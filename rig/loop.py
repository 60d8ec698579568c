"""The real-time loop: acquisition thread -> frame ring -> processing thread -> recorder thread.

    acquisition   scanner.read_frame() into a free ring slot, stamp it, hand it on
    processing    pipeline stages, protocol.on_frame (which may stimulate directly),
                  stamps "processing done", hands the slot to the recorder
    recorder      copies results into chunk buffers, frees the slot, writes session.h5 and
                  events.jsonl (the only thread that touches the disk)

Speeds:
- "max": lock-step. Frame i+1 is acquired only after frame i was processed, so a stimulus
  issued while processing frame i reaches the simulated world at the start of frame i+1,
  whatever the machine's load: the same seed gives the same data.
- "realtime": acquisition runs free, paced by the (real or simulated) hardware. A frame that
  finds no free slot (processing or recording fell behind) or that completes more than
  `late_tolerance_s` after it was due (the data a real board's acquisition buffer holds,
  NI: >= 2 s; the simulated DAQ falling further behind than that means the samples would
  have been overwritten) is dropped: counted, recorded as a
  `drop` event, never silently lost.

Any exception in any thread aborts the run: devices are put in their safe state at once
(stimulation off first), the other threads wind down, and everything already recorded is
kept. Ctrl-C does the same (handled by the runner in the main thread).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from drivers.errors import LimitError
from rig.assembly import Rig
from rig.context import ProtocolContext
from rig.live import LiveState, RunControl
from rig.pipeline import STAGES, Pipeline
from rig.protocol import Protocol
from rig.ring import FrameRing
from rig.session import EventLog, SessionRecorder, format_exception
from rig.volume import VolumePipeline

log = logging.getLogger(__name__)

END = -1  # sentinel slot number: no more frames


class RunLoop:
    def __init__(
        self,
        rig: Rig,
        pipeline: Pipeline | VolumePipeline,
        protocol: Protocol,
        ring: FrameRing,
        recorder: SessionRecorder,
        events: EventLog,
        *,
        speed: str,
        max_frames: int,
        late_tolerance_s: float = 2.0,
        live: LiveState | None = None,
        control: RunControl | None = None,
    ) -> None:
        if speed not in ("max", "realtime"):
            raise ValueError(f"speed = {speed!r}: choose 'max' or 'realtime'")
        self.rig = rig
        self.scanner = rig.scanner
        self.pipeline = pipeline
        # volumetric imaging: the acquisition thread steps the focus a plane per frame
        self.volume = pipeline if isinstance(pipeline, VolumePipeline) else None
        self.protocol = protocol
        self.ring = ring
        self.recorder = recorder
        self.events = events
        self.speed = speed
        self.max_frames = max_frames
        self.late_tolerance_s = late_tolerance_s
        self.frame_rate_hz = self.scanner.frame_rate_hz if self.scanner is not None else 0.0
        self.ctx = ProtocolContext(self)
        self.session_dir: Any = None
        self.live = live
        self.control = control
        self._rois_published = False
        self.line_phase: Any = None  # rig.line_phase_follow.LinePhaseFollower when tracking
        # outcome
        self.error: BaseException | None = None
        self.error_text: str | None = None
        self.stop_reason: str | None = None
        self.frames_acquired = 0
        self.frames_processed = 0
        self.frames_dropped = 0
        self.stimuli = 0
        self.last_device_time_s = 0.0
        # per-frame measurements (preallocated)
        self.latency_ms = np.full(max_frames, np.nan)
        self.stimulus_latency_ms = np.full(max_frames, np.nan)
        self.processing_ms = np.full(max_frames, np.nan)
        self.stage_ms = np.full((max_frames, len(STAGES)), np.nan)
        # coordination
        self._stop = threading.Event()
        self._aborted = threading.Event()
        self._processed = threading.Semaphore(0)
        self._fail_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- control ---------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.events.post({"type": "session", "event": "stop requested", "reason": reason})
        self._stop.set()

    def fail(self, exc: BaseException, where: str) -> None:
        """First error wins: record it, make every device safe now, stop all threads."""
        with self._fail_lock:
            first = self.error is None
            if first:
                self.error = exc
                self.error_text = f"{where}: {type(exc).__name__}: {exc}"
            self._aborted.set()
            self._stop.set()
        if first:
            self.events.post(
                {
                    "type": "error",
                    "where": where,
                    "error": self.error_text,
                    "traceback": format_exception(exc),
                }
            )
            problems = self.rig.safe_all()
            self.events.post({"type": "safe", "reason": self.error_text, "problems": problems})

    def safe_stimulation(self, reason: str) -> None:
        """Stimulators to their safe state now (the protocol is paused by RunControl)."""
        problems = []
        stimulator = self.rig.stimulator
        if stimulator is not None:
            try:
                stimulator.safe()
            except Exception as e:  # noqa: BLE001 - report, never hide
                problems.append(f"{stimulator.name}: safe() failed: {e!r}")
        self.events.post(
            {"type": "safe", "reason": reason, "problems": problems, "devices": ["stimulator"]}
        )

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def start(self) -> None:
        for name, target in (
            ("acquisition", self._acquire),
            ("processing", self._process),
            ("recorder", self._record),
        ):
            t = threading.Thread(
                target=self._guard, args=(name, target), name=f"looprig-{name}", daemon=True
            )
            self._threads.append(t)
        for t in self._threads:
            t.start()

    def wait(self, poll_s: float = 0.1) -> None:
        """Join the threads; KeyboardInterrupt aborts the run cleanly (and keeps waiting)."""
        while any(t.is_alive() for t in self._threads):
            try:
                for t in self._threads:
                    t.join(poll_s)
            except KeyboardInterrupt as e:
                self.fail(KeyboardInterrupt("interrupted by user (Ctrl-C)"), "main")
                del e

    def _guard(self, name: str, target: Any) -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - every failure must abort safely
            log.exception("%s thread failed", name)
            self.fail(exc, f"{name} thread")
        finally:
            if name == "acquisition":
                self._put_end(self.ring.ready)
            elif name == "processing":
                self._put_end(self.ring.record)

    @staticmethod
    def _put_end(q: "queue.Queue[int]") -> None:
        while True:
            try:
                q.put(END, timeout=0.1)
                return
            except queue.Full:
                try:  # the consumer died; make room so nobody waits forever
                    q.get_nowait()
                except queue.Empty:
                    pass

    # -- threads ---------------------------------------------------------------------------
    def _next_free_slot(self) -> int | None:
        while not self._stop.is_set():
            try:
                return self.ring.free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _acquire(self) -> None:
        ring, scanner, volume = self.ring, self.scanner, self.volume
        scratch = np.zeros(ring.frames.shape[1:], np.int16)
        period = 1.0 / self.frame_rate_hz
        lockstep = self.speed == "max"
        scanner.start()
        self.events.post({"type": "session", "event": "acquisition started"})
        wall0 = time.monotonic()
        try:
            for i in range(self.max_frames):
                if self._stop.is_set():
                    break
                if lockstep:
                    if i > 0:
                        while not self._processed.acquire(timeout=0.1):
                            if self._stop.is_set():
                                return
                        if self._stop.is_set():
                            break
                    slot = self._next_free_slot()
                    if slot is None:
                        break
                else:
                    try:
                        slot = ring.free.get_nowait()
                    except queue.Empty:
                        slot = None
                target = ring.frames[slot] if slot is not None else scratch
                if volume is not None:  # on the frame boundary, before the frame starts
                    plane, settling = volume.before_frame()
                info = scanner.read_frame(target)
                if volume is not None:
                    volume.after_frame(slot, info.index, plane, settling)
                self.frames_acquired += 1
                self.last_device_time_s = info.device_time_s + period
                if slot is None:
                    self._drop(info.index, "ring buffer full (processing or recording behind)")
                    continue
                if not lockstep:
                    lateness = info.host_time_s - (wall0 + info.device_time_s + period)
                    if lateness > max(self.late_tolerance_s, period):
                        ring.free.put_nowait(slot)
                        self._drop(info.index, f"late by {lateness * 1e3:.1f} ms")
                        continue
                ring.index[slot] = info.index
                ring.device_time_s[slot] = info.device_time_s
                ring.frame_complete_s[slot] = info.host_time_s
                ring.stimulus_issued_s[slot] = np.nan
                ring.ready.put(slot)
        finally:
            scanner.stop()

    def _drop(self, index: int, why: str) -> None:
        self.frames_dropped += 1
        self.events.post({"type": "drop", "frame": index, "reason": why})

    def _process(self) -> None:
        ring, ctx, pipeline, protocol = self.ring, self.ctx, self.pipeline, self.protocol
        while True:
            try:
                slot = ring.ready.get(timeout=0.1)
            except queue.Empty:
                if self._aborted.is_set():
                    return
                continue
            if slot == END:
                return
            index = int(ring.index[slot])
            ctx.frame_index, ctx.slot, ctx.time_s = index, slot, float(ring.device_time_s[slot])
            ctx.stimuli_this_frame = 0
            t0 = time.perf_counter()
            pipeline.process(ring, slot, index)
            control = self.control
            if not self._stop.is_set() and (control is None or control.protocol_active):
                protocol.on_frame(ctx)
            if control is not None and control.manual_queue:
                self._deliver_manual(control)
            done = time.monotonic()
            ring.processing_done_s[slot] = done
            n = self.frames_processed
            if n < self.max_frames:
                complete = ring.frame_complete_s[slot]
                self.latency_ms[n] = (done - complete) * 1e3
                self.processing_ms[n] = (time.perf_counter() - t0) * 1e3
                self.stage_ms[n] = pipeline.stage_ms
                if not np.isnan(ring.stimulus_issued_s[slot]):
                    self.stimulus_latency_ms[n] = (ring.stimulus_issued_s[slot] - complete) * 1e3
            self.frames_processed += 1
            if self.live is not None:
                self._publish(slot, index, (done - ring.frame_complete_s[slot]) * 1e3)
            if self.line_phase is not None:  # after the latency stamp: housekeeping
                self.line_phase.update(ring.frames[slot], index)
            ring.record.put(slot)
            if self.speed == "max":
                self._processed.release()

    def _deliver_manual(self, control: RunControl) -> None:
        while control.manual_queue:
            stimulus = control.manual_queue.popleft()
            if control.safe_off_engaged.is_set():
                self.events.post(
                    {
                        "type": "protocol",
                        "label": "manual stimulus dropped",
                        "reason": "safe-off engaged",
                    }
                )
                continue
            self.ctx.mark("manual stimulus")
            try:
                self.ctx.stimulate(stimulus)
            except LimitError as e:  # validated when queued; a delivery-time limit (heating)
                self.events.post(
                    {"type": "protocol", "label": "manual stimulus refused", "reason": str(e)}
                )

    def _publish(self, slot: int, index: int, latency_ms: float) -> None:
        live, pipeline, ring = self.live, self.pipeline, self.ring
        assert live is not None
        if not self._rois_published and pipeline.rois is not None:
            live.set_rois(pipeline.rois.label_image(), pipeline.rois.centroids_px)
            self._rois_published = True
        n = int(ring.n_rois[slot])
        live.publish(
            index,
            float(ring.device_time_s[slot]),
            ring.frames[slot],
            ring.dff[slot, :n] if n else None,
            pipeline.noise_level,
            latency_ms,
            self.frames_dropped,
            ring.calcium[slot, :n] if n and pipeline.settings.deconvolution else None,
        )

    def _record(self) -> None:
        ring, recorder, events = self.ring, self.recorder, self.events
        try:
            while True:
                try:
                    slot = ring.record.get(timeout=0.05)
                except queue.Empty:
                    slot = None
                events.drain()
                if slot == END:
                    break
                if slot is not None:
                    recorder.take(slot)
                if recorder.due():
                    recorder.flush()
            recorder.flush()
        finally:
            events.drain()
