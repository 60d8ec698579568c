"""Run one experiment: config -> rig -> protocol -> loop -> session folder with report.

    run_experiment("target_pattern", rig="sim", duration_s=120, speed="max", seed=3)

Order matters for safety: everything that can be validated (rig config, scan settings,
stimulator limits, protocol parameters, ROI file) is validated before any device is opened;
once devices are open, every exit path - normal end, protocol stop, an exception in any
thread, Ctrl-C - makes every device safe, flushes what was recorded and writes summary.json.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.noise import noise_level as batch_noise_level
from rig.assembly import Rig, build_rig
from rig.config import ConfigError, RigConfig, load_rig_config, split_overrides
from rig.focus import FocusFaults, FocusMonitor
from rig.live import LiveState, RunControl
from rig.loop import RunLoop
from rig.line_phase_follow import check_line_phase_tracking, line_phase_follower
from rig.pipeline import STAGES, Pipeline, PipelineSettings, load_rois
from rig.protocol import Protocol, load_protocol_class
from rig.ring import FrameRing
from rig.session import EventLog, SessionRecorder, format_exception, new_session_dir, write_summary
from rig.volume import VolumePipeline, VolumeSchedule

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    session_dir: Path
    summary: dict[str, Any]

    @property
    def status(self) -> str:
        return self.summary["status"]


def prepare(
    protocol: str,
    rig: str = "sim",
    overrides: list[str] | None = None,
    protocol_values: dict[str, Any] | None = None,
) -> tuple[RigConfig, Protocol]:
    """Validate everything (no device touched): the rig config with --set overrides and the
    protocol with its parameters. Raises ConfigError with a message that says what to fix."""
    rig_overrides, protocol_overrides = split_overrides(overrides or [])
    config = load_rig_config(rig, rig_overrides)
    cls = load_protocol_class(protocol)
    values: dict[str, Any] = dict(protocol_values or {})
    values.update(protocol_overrides)
    return config, cls(**values)


def pipeline_settings(config: RigConfig, scanner: Any, speed: str = "max") -> PipelineSettings:
    """Pipeline settings from the rig config and the scanner's geometry (checked). Realtime
    sessions detect ROIs on a worker thread so frames keep flowing; max-speed sessions in
    place, so the session data stay deterministic."""
    settings = PipelineSettings(
        frame_rate_hz=scanner.frame_rate_hz,
        frame_shape=scanner.frame_shape,
        pixel_size_um=scanner.pixel_size_um,
        roi_source=config["rois.source"],
        reference_s=config["rois.reference_s"],
        cell_diameter_um=config["rois.cell_diameter_um"],
        max_rois=config["rois.max_rois"],
        min_relative_excess=config["rois.min_relative_excess"],
        zstack_range_um=config["rois.zstack_range_um"],
        zstack_step_um=config["rois.zstack_step_um"],
        zstack_frames_per_plane=config["rois.zstack_frames_per_plane"],
        # frames that start before the focus settled; in realtime the frame in flight too
        zstack_settle_frames=math.ceil(config["rois.zstack_settle_s"] * scanner.frame_rate_hz)
        + (1 if speed == "realtime" else 0),
        min_axial_fraction=config["rois.min_axial_fraction"],
        baseline_window_s=config["dff.baseline_window_s"],
        percentile=config["dff.percentile"],
        noise_window_s=config["noise.window_s"],
        history_s=config["loop.history_s"],
        motion=config["motion.enabled"],
        motion_max_shift_um=config["motion.max_shift_um"],
        motion_registration_px=config["motion.registration_px"],
        detect_in_background=speed == "realtime",
        neuropil=config["neuropil.enabled"],
        neuropil_coefficient=config["neuropil.coefficient"],
        noise=config["noise.enabled"],
        deconvolution=config["deconvolution.enabled"],
        decay_tau_s=config["deconvolution.decay_tau_s"],
        deconvolution_model=config["deconvolution.model"],
        rise_tau_s=config["deconvolution.rise_tau_s"],
        s_min_sds=config["deconvolution.s_min_sds"],
        spike_lag_s=config["deconvolution.spike_lag_s"],
        rg=config["rg.enabled"],
        rg_signal=config["rg.signal"],
        rg_repair_every_s=config["rg.repair_every_s"],
        rg_publish_every_s=config["rg.publish_every_s"],
    )
    try:
        settings.check()
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return settings


class _ProtocolRun:
    """One protocol driven on an opened rig: open the devices, set the protocol up, run the loop
    to its end, tear the protocol down, and always put every device in its safe state.

    Whatever fails (opening, setup, the loop, Ctrl-C) ends the loop through `loop.fail` and is
    recorded in events.jsonl; what is known so far stays in the attributes for the summary."""

    def __init__(self) -> None:
        self.snapshots: dict[str, Any] = {}
        self.teardown_error: str | None = None
        self.setup_done = False

    def drive(
        self,
        loop: Any,
        rig_obj: Any,
        proto: Any,
        events: Any,
        open_devices: Callable[[], dict[str, Any]],
        stop: Callable[[], None] | None = None,
    ) -> None:
        try:
            self.snapshots = open_devices()
            proto.setup(loop.ctx)
            self.setup_done = True
            # collect once and freeze what survives setup: a full collection with numba, Qt
            # and matplotlib loaded takes tens of ms and must not land mid-loop
            gc.collect()
            gc.freeze()
            loop.start()
            loop.wait()
        except KeyboardInterrupt:
            loop.fail(KeyboardInterrupt("interrupted by user (Ctrl-C)"), "main")
            loop.wait()
        except BaseException as exc:  # noqa: BLE001 - setup failures abort the session too
            loop.fail(exc, "setup")
            loop.wait()
        finally:
            try:
                if self.setup_done:
                    proto.teardown(loop.ctx)
            except Exception as exc:  # noqa: BLE001
                self.teardown_error = f"protocol teardown: {type(exc).__name__}: {exc}"
                events.post(
                    {
                        "type": "error",
                        "where": "teardown",
                        "error": self.teardown_error,
                        "traceback": format_exception(exc),
                    }
                )
            if stop is not None:
                stop()
            problems = rig_obj.safe_all()
            events.post({"type": "safe", "reason": "end of session", "problems": problems})


def run_experiment(
    protocol: str | Protocol,
    rig: str | RigConfig = "sim",
    *,
    duration_s: float = 60.0,
    speed: str = "max",
    seed: int | None = None,
    out: str | None = None,
    overrides: list[str] | None = None,
    write_report: bool = True,
    live: LiveState | None = None,
    control: RunControl | None = None,
    prebuilt_rig: Rig | None = None,
) -> RunResult:
    """Run one session. `prebuilt_rig` replaces the rig built from the config (replay uses it
    to put a replaying scanner and simulated stimulator in place of the hardware)."""
    if isinstance(protocol, Protocol):
        rig_overrides, protocol_overrides = split_overrides(overrides or [])
        if protocol_overrides:
            raise ConfigError(
                f"protocol parameters {sorted(protocol_overrides)} given with --set, but the "
                "protocol is already an instance: pass them to its constructor"
            )
        config = rig if isinstance(rig, RigConfig) else load_rig_config(rig, rig_overrides)
        proto = protocol
    else:
        if isinstance(rig, RigConfig):
            raise ConfigError("pass the rig as a name or path when the protocol is given by name")
        config, proto = prepare(protocol, rig, overrides)
    if speed not in ("max", "realtime"):
        raise ConfigError(f"--speed {speed!r}: choose max or realtime")
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise ConfigError(f"--duration {duration_s!r} must be a positive number of seconds")
    seed = config["sim.seed"] if seed is None else seed
    # building the rig validates scan settings and stimulator limits
    rig_obj = (
        prebuilt_rig if prebuilt_rig is not None else build_rig(config, seed=seed, speed=speed)
    )
    if rig_obj.spikes is not None:
        return run_spike_session(
            rig_obj,
            proto,
            config,
            duration_s=duration_s,
            speed=speed,
            seed=seed,
            out=out,
            write_report=write_report,
            live=live,
            control=control,
        )
    scanner = rig_obj.scanner
    frame_rate = scanner.frame_rate_hz
    max_frames = max(1, int(round(duration_s * frame_rate)))
    settings = pipeline_settings(config, scanner, speed)

    check_line_phase_tracking(config)
    if config["volume.planes_um"] and settings.roi_source != "detect":
        raise ConfigError(
            f"rois.source = {settings.roi_source!r}: volumetric imaging (volume.planes_um) "
            'detects ROIs per plane; set rois.source = "detect"'
        )
    if settings.roi_source != "detect":  # a bad ROI file is refused before devices open
        try:
            load_rois(settings.roi_source, settings.frame_shape)
        except (OSError, ValueError) as e:
            raise ConfigError(f"rois.source: {e}") from e
    if out and Path(out).exists() and any(Path(out).iterdir()):
        raise FileExistsError(
            f"session folder {out} already exists and is not empty: sessions "
            "are never overwritten; choose another --out"
        )
    try:  # a missing device or driver is reported before a session folder exists
        rig_obj.open_all()
    except BaseException:
        rig_obj.safe_all()
        rig_obj.close_all()
        raise
    try:
        folder = new_session_dir(out, config["recording.out_dir"], proto.protocol_name())
    except BaseException:
        rig_obj.safe_all()
        rig_obj.close_all()
        raise
    # a scanner may measure its rate when it opens (resonant: the line clock)
    frame_rate = scanner.frame_rate_hz
    max_frames = max(1, int(round(duration_s * frame_rate)))
    settings = pipeline_settings(config, scanner, speed)
    events = EventLog(folder / "events.jsonl")
    started_wall = time.time()
    t_start = time.monotonic()
    events.post(
        {
            "type": "session",
            "event": "start",
            "protocol": proto.protocol_name(),
            "parameters": proto.values,
            "seed": seed,
            "speed": speed,
            "rig": config.source,
            "wall_clock": started_wall,
            "duration_s": duration_s,
        }
    )
    events.post({"type": "config", "config": config.to_dict()})
    ring = FrameRing(config["loop.ring_frames"], scanner.frame_shape, config["rois.max_rois"])
    schedule = VolumeSchedule.from_config(config, frame_rate)
    focus_faults = None
    if rig_obj.focus is not None:  # a lens that stops answering: focus.on_fault
        focus_faults = FocusFaults(
            config["focus.on_fault"], events.post, lambda exc, where: loop.fail(exc, where)
        )
    pipeline: Pipeline | VolumePipeline
    if schedule is None:
        pipeline = Pipeline(
            settings,
            events.post,
            publish=live.set_extra if live else None,
            # a replayed suite2p recording hands over traces instead of frames to extract
            trace_source=getattr(scanner, "trace_source", None),
            focus=rig_obj.focus,
            focus_faults=focus_faults,
        )
    else:  # a pipeline per plane; the loop steps the focus a plane per frame
        pipeline = VolumePipeline(
            schedule,
            settings,
            ring,
            events.post,
            focus=rig_obj.focus,
            settling=config["volume.settling"],
            max_frames=max_frames,
            faults=focus_faults,
        )
    recorder = SessionRecorder(
        folder,
        ring,
        frame_rate,
        record_frames=config["recording.frames"],
        flush_s=config["recording.flush_s"],
        pipeline=pipeline,  # saves the ROI set and mean image once known (for rig recover)
    )
    loop = RunLoop(
        rig_obj,
        pipeline,
        proto,
        ring,
        recorder,
        events,
        speed=speed,
        max_frames=max_frames,
        live=live,
        control=control,
        late_tolerance_s=config["loop.late_tolerance_s"],
    )
    loop.line_phase = line_phase_follower(config, scanner, events.post)
    if live is not None:
        live.start(
            frame_shape=scanner.frame_shape,
            pixel_size_um=scanner.pixel_size_um,
            frame_rate_hz=frame_rate,
        )
    loop.session_dir = folder
    loop.focus_faults = focus_faults  # type: ignore[attr-defined]
    monitor = None
    if rig_obj.focus is not None and focus_faults is not None:
        monitor = FocusMonitor(
            rig_obj.focus,
            events.post,
            focus_faults,
            config["focus.read_every_s"],
            device_time=lambda: loop.last_device_time_s,
        )
    if control is not None:
        control.attach(loop)

    def open_devices() -> dict[str, Any]:
        pipeline.setup()
        snapshots = rig_obj.snapshot()
        events.post({"type": "device", "event": "opened", "snapshots": snapshots})
        if rig_obj.focus is not None and schedule is None:
            rig_obj.focus.move_to_um(0.0)  # the nominal plane (a volume starts at plane 0)
        if monitor is not None:
            monitor.start()
        return snapshots

    run = _ProtocolRun()
    try:
        run.drive(loop, rig_obj, proto, events, open_devices,
                  stop=None if monitor is None else monitor.stop)  # fmt: skip
    finally:
        snapshots, teardown_error, setup_done = run.snapshots, run.teardown_error, run.setup_done
        gc.unfreeze()
        summary = _finish(
            loop,
            rig_obj,
            proto,
            pipeline,
            recorder,
            events,
            folder,
            config,
            seed,
            speed,
            snapshots,
            t_start,
            teardown_error,
            setup_done,
        )
        rig_obj.close_all()
        if live is not None:
            live.finish(summary["status"])
    if write_report:
        try:
            from rig.report import write_report as _write_report

            _write_report(folder)
        except Exception as exc:  # noqa: BLE001 - the data are safe; say what failed
            summary["report_error"] = f"{type(exc).__name__}: {exc}"
            write_summary(folder, summary)
            log.exception("report failed")
    return RunResult(folder, summary)


def _pct(values: np.ndarray) -> dict[str, float | None]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"p50": None, "p99": None, "max": None, "count": 0}
    return {
        "p50": float(np.percentile(v, 50)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
        "count": int(v.size),
    }


def _after_session(
    folder: Path, rig_obj: Any, pipeline: Pipeline | VolumePipeline, frame_rate_hz: float
) -> dict[str, Any]:
    """The `rg` block (coarse-graining of the recorded signal) and, on simulated rigs, the
    `accuracy` block against ground truth; a failure becomes a reason, never an abort."""
    from rig.session_analysis import accuracy_block, rg_block

    out: dict[str, Any] = {}
    s = pipeline.settings
    if not (folder / "session.h5").is_file():
        return out
    if s.rg:
        try:
            out["rg"] = rg_block(folder, s.rg_signal, frame_rate_hz)
        except Exception as e:  # noqa: BLE001
            out["rg"] = {"valid": False, "reason": f"{type(e).__name__}: {e}"}
    if isinstance(pipeline, VolumePipeline):
        out["volume"] = pipeline.summary()
        if rig_obj.world is not None:  # the accuracy block compares with one plane's truth
            out["accuracy"] = {"skipped": "volumetric session (a ground truth per plane)"}
        return out
    if rig_obj.world is not None and pipeline.rois is not None:
        try:
            out["accuracy"] = accuracy_block(
                folder,
                rig_obj.world,
                pipeline.rois,
                frame_rate_hz=frame_rate_hz,
                pixel_size_um=s.pixel_size_um,
                frame_shape=s.frame_shape,
                reference_frames=s.reference_frames,
                spike_lag_frames=int(round(s.spike_lag_s * s.frame_rate_hz)),
            )
        except Exception as e:  # noqa: BLE001
            out["accuracy"] = {"error": f"{type(e).__name__}: {e}"}
    return out


def _finish(
    loop: RunLoop,
    rig_obj: Any,
    proto: Protocol,
    pipeline: Pipeline | VolumePipeline,
    recorder: SessionRecorder,
    events: EventLog,
    folder: Path,
    config: RigConfig,
    seed: int,
    speed: str,
    snapshots: dict[str, Any],
    t_start: float,
    teardown_error: str | None,
    setup_done: bool,
) -> dict[str, Any]:
    """Flush and close the session files and write summary.json (always runs)."""
    status = "aborted" if loop.aborted else "completed"
    error = loop.error_text or teardown_error
    if teardown_error and not loop.aborted:
        status = "aborted"
    noise = None
    finish_error = None
    try:
        events.drain()
        recorder.flush()
        if pipeline.rois is not None and recorder.frames_written > 1 and "dff" in recorder.file:
            dff = recorder.file["dff"][:]
            start = pipeline.roi_start_frame or 0
            rows = dff[start:]
            if isinstance(pipeline, VolumePipeline):  # each ROI over its own plane's frames
                noise = pipeline.session_noise_level(dff)
            elif rows.shape[0] >= 2:
                noise = batch_noise_level(rows.T.astype(np.float64), loop.frame_rate_hz)
        recorder.finish(
            rois=pipeline.rois,
            mean_image=pipeline.mean_image,
            noise_level=noise,
            stimuli=events.stimuli,
            attrs={
                "pixel_size_um": rig_obj.scanner.pixel_size_um,
                "roi_start_frame": pipeline.roi_start_frame,
                "reference_end_frame": getattr(pipeline, "reference_end_frame", None),
                "dff_baseline_window_s": pipeline.settings.baseline_window_s,
                "dff_percentile": pipeline.settings.percentile,
                "seed": seed,
                "status": status,
            },
        )
        if isinstance(pipeline, VolumePipeline):
            pipeline.write_h5(folder / "session.h5")
    except Exception as exc:  # noqa: BLE001
        finish_error = f"writing session.h5: {type(exc).__name__}: {exc}"
        status = "aborted"
        events.post(
            {
                "type": "error",
                "where": "finish",
                "error": finish_error,
                "traceback": format_exception(exc),
            }
        )
    finally:
        recorder.close()
    n = loop.frames_processed
    finite_noise = noise[np.isfinite(noise)] if noise is not None else np.zeros(0)
    stage_ms = loop.stage_ms[:n]
    try:
        metrics = proto.metrics() if setup_done else {}
    except Exception as exc:  # noqa: BLE001
        metrics = {"error": f"metrics() failed: {exc}"}
    summary = {
        "status": status,
        "error": error or finish_error,
        "stop_reason": loop.stop_reason,
        "seed": seed if config.simulated else None,
        "rig": config["rig.name"],
        "rig_source": config.source,
        "speed": speed,
        "frames": n,
        "frames_acquired": loop.frames_acquired,
        "frames_dropped": loop.frames_dropped,
        "frame_rate_hz": loop.frame_rate_hz,
        "duration_s": n / loop.frame_rate_hz,
        "wall_time_s": time.monotonic() - t_start,
        "n_rois": pipeline.n_rois,
        "roi_start_frame": pipeline.roi_start_frame,
        "latency_ms": {k: v for k, v in _pct(loop.latency_ms[:n]).items() if k != "count"},
        "stimulus_latency_ms": _pct(loop.stimulus_latency_ms[:n]),
        "processing_ms": {
            "median": float(np.nanmedian(loop.processing_ms[:n])) if n else None,
            "p99": float(np.nanpercentile(loop.processing_ms[:n], 99)) if n else None,
        },
        "stage_ms_median": {
            name: (float(np.nanmedian(stage_ms[:, i])) if n else None)
            for i, name in enumerate(STAGES)
        },
        "stimuli": loop.stimuli,
        "noise_level": (
            {
                "median": float(np.median(finite_noise)),
                "p10": float(np.percentile(finite_noise, 10)),
                "p90": float(np.percentile(finite_noise, 90)),
            }
            if finite_noise.size
            else {"median": None, "p10": None, "p90": None}
        ),
        "protocol": {
            "name": proto.protocol_name(),
            "file": getattr(proto, "source_file", None),
            "parameters": proto.values,
            "metrics": metrics,
        },
        "config": config.to_dict(),
        "devices": snapshots,
    }
    zstack = getattr(pipeline, "zstack_result", None)
    if zstack is not None:
        summary["reference_zstack"] = {
            "planes_um": zstack["z_um"].tolist(),
            "frames_per_plane": zstack["frames"].tolist(),
            "detected": int(zstack["kept"].size),
            "kept": int(zstack["kept"].sum()),
            "not_measurable": int(np.isnan(zstack["axial_fraction"]).sum()),
        }
    if loop.line_phase is not None:
        summary["line_phase"] = loop.line_phase.summary()
    focus_faults = getattr(loop, "focus_faults", None)
    if focus_faults is not None:
        summary["focus"] = {"on_fault": focus_faults.on_fault, "fault": focus_faults.error}
    if (folder / "session.h5").is_file():
        try:
            from rig.session_analysis import record_rg_rois, record_stage_timing

            record_stage_timing(folder, stage_ms, STAGES)
            record_rg_rois(folder, getattr(pipeline, "rg_columns", None))
        except Exception as e:  # noqa: BLE001 - a figure must never fail the session
            summary["stage_timing_error"] = f"{type(e).__name__}: {e}"
    summary.update(_after_session(folder, rig_obj, pipeline, loop.frame_rate_hz))
    write_summary(folder, summary)
    events.post({"type": "session", "event": "end", "status": status, "error": summary["error"]})
    events.close()
    return summary


def run_spike_session(
    rig_obj: Rig,
    proto: Protocol,
    config: RigConfig,
    *,
    duration_s: float,
    speed: str,
    seed: int,
    out: str | None,
    write_report: bool,
    live: LiveState | None,
    control: RunControl | None,
) -> RunResult:
    """A session on an MEA rig: spike blocks in, stimulation out (rig/spike_loop.py)."""
    from rig.spike_loop import BlockRing, SpikeLoop, SpikeRecorder

    if out and Path(out).exists() and any(Path(out).iterdir()):
        raise FileExistsError(
            f"session folder {out} already exists and is not empty: sessions "
            "are never overwritten; choose another --out"
        )
    try:
        rig_obj.open_all()
        folder = new_session_dir(out, config["recording.out_dir"], proto.protocol_name())
    except BaseException:
        rig_obj.safe_all()
        rig_obj.close_all()
        raise
    source = rig_obj.spikes
    max_blocks = max(1, int(round(duration_s / source.block_duration_s)))
    events = EventLog(folder / "events.jsonl")
    t_start = time.monotonic()
    events.post(
        {
            "type": "session",
            "event": "start",
            "protocol": proto.protocol_name(),
            "parameters": proto.values,
            "seed": seed,
            "speed": speed,
            "rig": config.source,
            "wall_clock": time.time(),
            "duration_s": duration_s,
        }
    )
    events.post({"type": "config", "config": config.to_dict()})
    ring = BlockRing(source, config["loop.ring_frames"])
    recorder = SpikeRecorder(folder, ring, source, flush_s=config["recording.flush_s"])
    loop = SpikeLoop(
        rig_obj,
        proto,
        ring,
        recorder,
        events,
        speed=speed,
        max_blocks=max_blocks,
        live=live,
        control=control,
    )
    loop.session_dir = folder
    if control is not None:
        control.attach(loop)

    def open_devices() -> dict[str, Any]:
        snapshots = rig_obj.snapshot()
        events.post({"type": "device", "event": "opened", "snapshots": snapshots})
        return snapshots

    run = _ProtocolRun()
    try:
        run.drive(loop, rig_obj, proto, events, open_devices)
    finally:
        snapshots, teardown_error, setup_done = run.snapshots, run.teardown_error, run.setup_done
        status = "aborted" if (loop.aborted or teardown_error) else "completed"
        try:
            events.drain()
            recorder.finish(
                events.stimuli,
                {"seed": seed, "status": status, "block_duration_s": source.block_duration_s},
            )
        finally:
            recorder.close()
        n = loop.frames_processed
        try:
            metrics = proto.metrics() if setup_done else {}
        except Exception as exc:  # noqa: BLE001
            metrics = {"error": f"metrics() failed: {exc}"}
        summary = {
            "status": status,
            "error": loop.error_text or teardown_error,
            "stop_reason": loop.stop_reason,
            "seed": seed if config.simulated else None,
            "rig": config["rig.name"],
            "rig_source": config.source,
            "speed": speed,
            "input": "spikes",
            "blocks": n,
            "frames": n,
            "frames_acquired": loop.frames_acquired,
            "frames_dropped": loop.frames_dropped,
            "block_duration_s": source.block_duration_s,
            "frame_rate_hz": 1.0 / source.block_duration_s,
            "duration_s": n * source.block_duration_s,
            "wall_time_s": time.monotonic() - t_start,
            "spikes": loop.spikes_seen,
            "n_rois": 0,
            "latency_ms": {k: v for k, v in _pct(loop.latency_ms[:n]).items() if k != "count"},
            "stimulus_latency_ms": _pct(loop.stimulus_latency_ms[:n]),
            "processing_ms": {
                "median": float(np.nanmedian(loop.processing_ms[:n])) if n else None,
                "p99": float(np.nanpercentile(loop.processing_ms[:n], 99)) if n else None,
            },
            "stimuli": loop.stimuli,
            "noise_level": {"median": None, "p10": None, "p90": None},
            "protocol": {
                "name": proto.protocol_name(),
                "file": getattr(proto, "source_file", None),
                "parameters": proto.values,
                "metrics": metrics,
            },
            "config": config.to_dict(),
            "devices": snapshots,
        }
        write_summary(folder, summary)
        events.post(
            {"type": "session", "event": "end", "status": status, "error": summary["error"]}
        )
        events.close()
        rig_obj.close_all()
        if live is not None:
            live.finish(status)
    if write_report:
        try:
            from rig.report import write_report as _write_report

            _write_report(folder)
        except Exception as exc:  # noqa: BLE001
            summary["report_error"] = f"{type(exc).__name__}: {exc}"
            write_summary(folder, summary)
    return RunResult(folder, summary)
