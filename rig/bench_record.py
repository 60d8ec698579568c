"""`rig bench record`: how fast sessions are written and exported.

Figures (one run on this machine; ratios from timings of the same run):

    write_MBps                 sustained throughput of the session recorder (raw 512 x 512
                               int16 frames, 500 ROI traces, timing; every stream fsync'ed)
                               with a producer thread filling the ring as fast as it can
    write_x_512px_30hz         write_MBps / data rate of 512 x 512 int16 frames at 30 Hz
                               (15.73 MB/s); the target is >= 10
    paced_x                    rate of the paced run, in multiples of 30 Hz (10)
    paced_frames               frames offered at 10 x 30 Hz = 300 frames/s (512 x 512)
    paced_frames_dropped       frames that found no free ring slot (recorder behind); target 0.
                               The ring holds 640 frames: the default 64-frame ring's 2.1 s at
                               30 Hz, kept in time at the 10 x rate
    nwb_export_s_10min         `rig export-nwb` of a synthetic 10-minute session (30 Hz,
                               512 x 512 raw frames, 500 ROIs, stimuli), validation included
    nwb_export_s_10min_no_frames    the same session without raw frames
    nwb_validate_s_10min       of which pynwb's validator
    nwb_export_MBps            raw-frame bytes exported per second
    recover_s_10min            `rig recover` of the same session (session.h5 from the streams)

--quick: 3 s of frames at full speed, a 3 s paced run, and a 1-minute session of 256 x 256
frames with 100 ROIs instead of the 10-minute one (the names keep "10min" for the JSON keys;
the quick run's minutes are in `nwb_session_min`).
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from rig.bench import benchmark, synthetic_rois
from rig.ring import FrameRing
from rig.loop import END
from rig.session import EventLog, SessionRecorder, write_summary

FRAME_SHAPE = (512, 512)
REFERENCE_RATE_HZ = 30.0
REFERENCE_MBPS = FRAME_SHAPE[0] * FRAME_SHAPE[1] * 2 * REFERENCE_RATE_HZ / 1e6  # 15.73 MB/s
N_ROIS = 500
PACED_X = 10
#: loop.ring_frames default: 2.1 s of frames at 30 Hz
RING_SLOTS = 64


def _record_loop(ring: FrameRing, recorder: SessionRecorder, events: EventLog) -> None:
    """The recorder thread of rig/loop.py (RunLoop._record): drain, take, flush when due."""
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
    events.drain()


def _distinct_frames(shape: tuple[int, int], count: int, seed: int) -> np.ndarray:
    """Shot-noise frames (Poisson around a fixed brightness), cycled by the producers."""
    rng = np.random.default_rng(seed)
    brightness = rng.uniform(50.0, 400.0, shape)
    return rng.poisson(brightness, (count, *shape)).astype(np.int16)


def measure_recording(
    folder: Path,
    n_frames: int,
    rate_hz: float | None,
    *,
    ring_slots: int = RING_SLOTS,
    n_rois: int = N_ROIS,
    seed: int = 0,
) -> dict[str, float]:
    """Push n_frames 512 x 512 frames with n_rois traces through a ring into the recorder
    thread. rate_hz None: as fast as the producer can; else paced, and a frame that finds no
    free slot is dropped and counted (as the acquisition thread does in realtime)."""
    ring = FrameRing(ring_slots, FRAME_SHAPE, n_rois)
    frames = _distinct_frames(FRAME_SHAPE, 16, seed)
    rows = np.random.default_rng(seed + 1).standard_normal((16, n_rois)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    events = EventLog(folder / "events.jsonl")
    recorder = SessionRecorder(
        folder, ring, rate_hz or REFERENCE_RATE_HZ, record_frames=True, flush_s=1.0
    )
    writer = threading.Thread(target=_record_loop, args=(ring, recorder, events))
    dropped = 0
    t0 = time.perf_counter()
    writer.start()
    for i in range(n_frames):
        if rate_hz is not None:
            delay = t0 + i / rate_hz - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                slot = ring.free.get_nowait()
            except queue.Empty:
                dropped += 1
                continue
        else:
            slot = ring.free.get()
        ring.frames[slot] = frames[i % 16]
        ring.n_rois[slot] = n_rois
        ring.fluorescence[slot, :n_rois] = rows[i % 16]
        ring.dff[slot, :n_rois] = rows[(i + 1) % 16]
        ring.device_time_s[slot] = i / (rate_hz or REFERENCE_RATE_HZ)
        now = time.monotonic()
        ring.frame_complete_s[slot] = now
        ring.processing_done_s[slot] = now
        ring.stimulus_issued_s[slot] = np.nan
        ring.record.put(slot)
    ring.record.put(END)
    writer.join()
    recorder.close()  # the final fsync of every stream is part of the time
    events.close()
    wall = time.perf_counter() - t0
    written = recorder.frames_written
    row_bytes = FRAME_SHAPE[0] * FRAME_SHAPE[1] * 2 + 2 * 4 * n_rois + 4 * 8
    return {
        "frames": float(written),
        "dropped": float(dropped),
        "wall_s": wall,
        "MBps": written * row_bytes / wall / 1e6,
        "sync_error": 0.0 if recorder.sync_error is None else 1.0,
    }


# ---------------------------------------------------------------------------------------------
# Synthetic sessions (also used by the recording tests)
# ---------------------------------------------------------------------------------------------


def write_synthetic_session(
    folder: str | Path,
    *,
    duration_s: float,
    frame_rate_hz: float = 30.0,
    frame_shape: tuple[int, int] = (64, 64),
    n_rois: int = 10,
    record_frames: bool = True,
    stimulus_interval_s: float = 2.0,
    roi_start_s: float = 1.0,
    devices: dict[str, Any] | None = None,
    extra_events: list[dict[str, Any]] | None = None,
    stimulus: dict[str, Any] | None = None,
    drops: tuple[int, ...] = (),
    seed: int = 0,
    finish: bool = True,
) -> dict[str, Any]:
    """Write a complete session folder (streams, events.jsonl, session.h5, summary.json)
    through the real SessionRecorder, without simulating a rig.

    Frames are shot noise around a fixed brightness; fluorescence is the ROIs' weighted mean
    of each frame; dF/F is (F - F0) / F0 with F0 the ROI's mean over the session (simple and
    exact, not the online estimator). Stimuli are `stimulus` (a light train by default)
    every `stimulus_interval_s` once ROIs exist, issued at the end of a frame. `drops` are
    acquisition indices of frames lost (a `drop` event each, no row). `finish=False` stops
    like a killed process (no session.h5, no summary). Returns what was written, for
    comparisons: timestamps, frames (distinct_frames[frame_index % 8]), fluorescence, dff,
    rois, stimuli, noise_level."""
    from analysis.noise import noise_level
    from analysis.rois import RoiSet, extract
    from rig.config import load_rig_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=False)
    rng = np.random.default_rng(seed)
    h, w = frame_shape
    n_acquired = int(round(duration_s * frame_rate_hz))
    period = 1.0 / frame_rate_hz
    labels = synthetic_rois(frame_shape, n_rois, diameter_px=min(h, w) / 8, seed=seed)
    rois = RoiSet.from_label_image(labels)
    n_rois = rois.n_rois
    brightness = rng.uniform(50.0, 400.0, frame_shape)
    distinct = rng.poisson(brightness, (8, h, w)).astype(np.int16)
    config = load_rig_config("sim").to_dict()
    config["scanner"]["lines"], config["scanner"]["pixels_per_line"] = h, w
    config["recording"]["frames"] = record_frames
    pixel_size_um = (config["scanner"]["fov_um"][1] / h, config["scanner"]["fov_um"][0] / w)
    roi_start_frame = int(round(roi_start_s * frame_rate_hz))
    pipeline = SimpleNamespace(
        settings=SimpleNamespace(
            pixel_size_um=pixel_size_um,
            baseline_window_s=60.0,
            percentile=8.0,
            roi_source="detect",
            reference_frames=roi_start_frame,
        ),
        rois=rois,
        mean_image=brightness.astype(np.float32),
        roi_start_frame=roi_start_frame,
    )
    ring = FrameRing(8, frame_shape, max(1, n_rois))
    events = EventLog(folder / "events.jsonl")
    host0 = time.monotonic()
    events.post(
        {
            "type": "session",
            "event": "start",
            "protocol": "synthetic",
            "parameters": {},
            "seed": seed,
            "speed": "max",
            "rig": "synthetic",
            "wall_clock": time.time(),
            "duration_s": duration_s,
            "host_time_s": host0,
        }
    )
    events.post({"type": "config", "config": config, "host_time_s": host0})
    snapshots = devices or {
        "scanner": {"name": "scanner", "role": "scanner", "driver": "synthetic"},
        "light stimulator": {"name": "light stimulator", "role": "stimulator"},
    }
    events.post({"type": "device", "event": "opened", "snapshots": snapshots, "host_time_s": host0})
    events.post({"type": "session", "event": "acquisition started", "host_time_s": host0})
    recorder = SessionRecorder(
        folder, ring, frame_rate_hz, record_frames=record_frames, flush_s=1.0, pipeline=pipeline
    )
    dropped = set(drops)
    kept = np.array([i for i in range(n_acquired) if i not in dropped], np.int64)
    fluorescence = np.zeros((kept.size, n_rois), np.float32)
    for row, i in enumerate(kept):
        extract(distinct[i % 8], rois, fluorescence[row])
    f0 = fluorescence.mean(axis=0)
    dff = ((fluorescence - f0) / f0).astype(np.float32)
    before_rois = kept < roi_start_frame
    dff[before_rois] = np.nan
    fluorescence_recorded = fluorescence.copy()
    fluorescence_recorded[before_rois] = np.nan
    timestamps = kept * period
    stimulus = stimulus or {
        "kind": "light",
        "targets_um": [[0.0, 0.0], [10.0, -5.0]],
        "power_mw": 10.0,
        "pulse_ms": 5.0,
        "n_pulses": 5,
        "pulse_rate_hz": 20.0,
    }
    stimuli = []
    next_stimulus_s = roi_start_frame * period
    row = 0
    per_second = max(1, int(round(frame_rate_hz)))
    for i in range(n_acquired):
        if i in dropped:
            events.post({"type": "drop", "frame": i, "reason": "synthetic drop"})
            continue
        slot = ring.free.get_nowait()
        t = i * period
        ring.frames[slot] = distinct[i % 8]
        has_rois = i >= roi_start_frame
        ring.n_rois[slot] = n_rois if has_rois else 0
        if has_rois:
            ring.fluorescence[slot, :n_rois] = fluorescence[row]
            ring.dff[slot, :n_rois] = dff[row]
        ring.device_time_s[slot] = t
        ring.frame_complete_s[slot] = host0 + t + period
        ring.processing_done_s[slot] = host0 + t + period + 0.001
        ring.stimulus_issued_s[slot] = np.nan
        if has_rois and t >= next_stimulus_s - 1e-9:
            issued = host0 + t + period + 0.0005
            ring.stimulus_issued_s[slot] = issued
            event = {
                "type": "stimulus",
                "frame": i,
                "host_time_s": issued,
                "device_time_s": t + period,
                "stimulus": dict(stimulus),
            }
            events.post(event)
            stimuli.append(event)
            next_stimulus_s += stimulus_interval_s
        recorder.take(slot)
        row += 1
        if row % per_second == 0:  # one flush per second of session time (deterministic)
            recorder.flush()
        events.drain()
    for event in extra_events or []:
        events.post(dict(event))
    events.drain()
    recorder.flush()
    noise = np.asarray(noise_level(dff.T.astype(np.float64), frame_rate_hz), np.float32)
    summary = {
        "status": "completed",
        "error": None,
        "stop_reason": None,
        "seed": seed,
        "rig": "synthetic",
        "speed": "max",
        "frames": int(kept.size),
        "frames_dropped": len(drops),
        "frame_rate_hz": frame_rate_hz,
        "duration_s": kept.size / frame_rate_hz,
        "n_rois": n_rois,
        "stimuli": len(stimuli),
        "protocol": {"name": "synthetic", "file": None, "parameters": {}, "metrics": {}},
        "config": config,
        "devices": snapshots,
    }
    if finish:
        recorder.finish(
            rois=rois,
            mean_image=pipeline.mean_image,
            noise_level=noise,
            stimuli=stimuli,
            attrs={
                "pixel_size_um": pixel_size_um,
                "roi_start_frame": roi_start_frame,
                "dff_baseline_window_s": 60.0,
                "dff_percentile": 8.0,
                "seed": seed,
                "status": "completed",
            },
        )
        recorder.close()
        write_summary(folder, summary)
        events.post({"type": "session", "event": "end", "status": "completed", "error": None})
        events.close()
    else:
        recorder.close()
        events.close()
    return {
        "folder": folder,
        "timestamps": timestamps,
        "distinct_frames": distinct,  # frame of row r = distinct_frames[frame_index[r] % 8]
        "frame_index": kept,
        "fluorescence": fluorescence_recorded,
        "dff": dff,
        "noise_level": noise,
        "rois": rois,
        "stimuli": stimuli,
        "pixel_size_um": pixel_size_um,
        "summary": summary,
    }


# ---------------------------------------------------------------------------------------------


@benchmark("record")
def bench_record(quick: bool) -> dict[str, float]:
    from rig.nwb_export import export_nwb
    from rig.recover import recover_session

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="looprig-bench-record-") as tmp:
        base = Path(tmp)
        # 1. sustained throughput, producer as fast as it can go
        n_fast = int((3.0 if quick else 20.0) * REFERENCE_RATE_HZ * PACED_X)
        fast = measure_recording(base / "fast", n_fast, None)
        shutil.rmtree(base / "fast")
        figures["write_MBps"] = fast["MBps"]
        figures["write_x_512px_30hz"] = fast["MBps"] / REFERENCE_MBPS
        # 2. paced at 10 x 30 Hz: every frame must find a slot
        paced_rate = REFERENCE_RATE_HZ * PACED_X
        n_paced = int((3.0 if quick else 20.0) * paced_rate)
        # the ring keeps the default's 2.1 s of slack at the 10 x rate (640 slots)
        paced = measure_recording(
            base / "paced", n_paced, paced_rate, ring_slots=RING_SLOTS * PACED_X
        )
        shutil.rmtree(base / "paced")
        figures["paced_x"] = float(PACED_X)
        figures["paced_frames"] = float(n_paced)
        figures["paced_frames_dropped"] = paced["dropped"]
        figures["paced_MBps"] = paced["MBps"]
        # 3. NWB export (and recovery) of a 10-minute session
        minutes = 1.0 if quick else 10.0
        shape = (256, 256) if quick else FRAME_SHAPE
        n_rois = 100 if quick else N_ROIS
        session = base / "session"
        write_synthetic_session(
            session,
            duration_s=minutes * 60.0,
            frame_rate_hz=REFERENCE_RATE_HZ,
            frame_shape=shape,
            n_rois=n_rois,
            record_frames=True,
            stimulus_interval_s=5.0,
        )
        figures["nwb_session_min"] = minutes
        t0 = time.perf_counter()
        result = export_nwb(session, base / "with_frames.nwb")
        figures["nwb_export_s_10min"] = time.perf_counter() - t0
        figures["nwb_export_MBps"] = (
            result.frames * shape[0] * shape[1] * 2 / figures["nwb_export_s_10min"] / 1e6
        )
        t0 = time.perf_counter()
        from pynwb import validate

        errors = validate(path=str(base / "with_frames.nwb"))
        figures["nwb_validate_s_10min"] = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"benchmark export does not validate: {errors[:3]}")
        (base / "with_frames.nwb").unlink()
        t0 = time.perf_counter()
        export_nwb(session, base / "no_frames.nwb", include_frames=False)
        figures["nwb_export_s_10min_no_frames"] = time.perf_counter() - t0
        # recovery: as if the process had died before finishing
        for name in ("session.h5", "summary.json"):
            (session / name).unlink()
        t0 = time.perf_counter()
        recover_session(session, write_report=False)
        figures["recover_s_10min"] = time.perf_counter() - t0
    return figures
