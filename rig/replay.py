"""`rig replay SOURCE`: run a recording through the same loop, pipeline and protocol.

    replay("sessions/target_pattern-20261122-015733", protocol="target_pattern")

The rig is rebuilt with simulated devices in place of the hardware: a `ReplayScanner` that
delivers the recorded frames with their recorded timestamps, and the real light-stimulator
driver on a `ReplayDAQ` that logs each pulse train with its onset on the recording's clock
(simulators/replay.py). Everything after the scanner is the code a rig runs: the ring, the
pipeline stages, the protocol, the recorder, the report.

Configuration: a session (or an NWB file written by `rig export-nwb`) carries the rig
configuration it was recorded with, and the replay uses it (ROI detection, dF/F and noise
settings, stimulator limits), so replaying the raw frames of a max-speed session computes the
same ROIs, dF/F and noise levels. Other sources start from the `sim` rig. Always: the DAQ is
simulated, scanner.lines / pixels_per_line are the recording's frame shape, raw frames are not
recorded again (recording.frames = false); for traces (suite2p) motion correction and the
neuropil stage are off (the traces are final); `--set KEY=VALUE` applies last. Keys a session
recorded that this version does not know are ignored (they cannot affect its pipeline).

The recording does not respond to the protocol's stimuli: replay is open loop. It shows what
a protocol would have decided and when, and its stimulus times can drive a yoked control
(protocols/yoked_replay.py).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from drivers.stimulation.light import LightStimulator
from rig.assembly import Rig, stimulator_parts
from rig.config import SCHEMA, ConfigError, RigConfig, load_rig_config, split_overrides
from rig.live import LiveState, RunControl
from rig.protocol import Protocol, load_protocol_class
from rig.run import RunResult, run_experiment
from simulators.replay import (
    FrameSource,
    ReplayClock,
    ReplayDAQ,
    ReplayScanner,
    ReplaySourceError,
    open_source,
)


class Playback(Protocol):
    """Plays the recording through the pipeline; decides nothing, stimulates nothing."""

    name = "playback"


def replay(
    source: str | FrameSource,
    protocol: str | Protocol | None = None,
    speed: str = "max",
    out: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    frame_rate_hz: float | None = None,
    *,
    rig: str = "sim",
    write_report: bool = True,
    progress: Callable[[int, int], None] | None = None,
    live: LiveState | None = None,
    control: RunControl | None = None,
) -> RunResult:
    """Replay `source` (a path or an opened FrameSource) and write a new session folder.

    `protocol` is a protocol name or file, an instance, or None (Playback). `overrides` are
    `--set` assignments (rig keys and protocol.NAME=VALUE). `frame_rate_hz` is for sources
    without a recorded rate (plain TIFF) or to override suite2p's ops["fs"]. Raises
    ConfigError (bad settings), ReplaySourceError (a ValueError naming the file and field)."""
    if speed not in ("max", "realtime"):
        raise ConfigError(f"--speed {speed!r}: choose max or realtime")
    src = source if isinstance(source, FrameSource) else open_source(source, frame_rate_hz)
    rig_overrides, protocol_overrides = split_overrides(list(overrides))
    config = replay_config(src, rig_overrides, base=rig)
    proto = _make_protocol(protocol, protocol_overrides)
    rig_obj = build_replay_rig(config, src, speed=speed, progress=progress)
    return run_experiment(
        proto,
        config,
        duration_s=src.n_frames / src.frame_rate_hz,
        speed=speed,
        out=out,
        write_report=write_report,
        live=live,
        control=control,
        prebuilt_rig=rig_obj,
    )


def _make_protocol(protocol: str | Protocol | None, values: dict[str, str]) -> Protocol:
    if isinstance(protocol, Protocol):
        if values:
            raise ConfigError(
                f"protocol parameters {sorted(values)} given with --set, but the protocol is "
                "already an instance: pass them to its constructor"
            )
        return protocol
    cls = Playback if protocol is None else load_protocol_class(protocol)
    return cls(**values)


def replay_config(
    source: FrameSource, rig_overrides: dict[str, Any], *, base: str = "sim"
) -> RigConfig:
    """The rig configuration of a replay (see the module docstring for the rules)."""
    values: dict[str, Any] = {}
    recorded = source.recorded_config
    if recorded:
        for section, table in recorded.items():
            if section == "world" and isinstance(table, dict):
                values.update(_flatten("world", table))
            elif isinstance(table, dict):
                for key, value in table.items():
                    name = f"{section}.{key}"
                    if name in SCHEMA:
                        values[name] = value
    height, width = source.frame_shape
    values.update(
        {
            "daq.backend": "sim",
            "scanner.lines": height,
            "scanner.pixels_per_line": width,
            "recording.frames": False,
            # a replay has no focus to step: the recorded z-stack frames (if any) replay as
            # frames of the imaging plane and the ROIs are not checked against a z-stack
            "rois.zstack_range_um": 0.0,
        }
    )
    if source.trace_source is not None:
        # the traces are final fluorescence (suite2p: neuropil already subtracted) and the
        # frames are a still mean image: no motion correction, no neuropil stage on top
        for key in ("motion.enabled", "neuropil.enabled"):
            if key in SCHEMA:
                values[key] = False
    if not recorded and source.pixel_size_um is not None:
        # a field that matches the recorded pixels (stimulation targets are checked in it)
        zoom = float(rig_overrides.get("scanner.zoom", 1.0))
        fov = [source.pixel_size_um[1] * width * zoom, source.pixel_size_um[0] * height * zoom]
        lo, hi = SCHEMA["scanner.fov_um"].lo, SCHEMA["scanner.fov_um"].hi
        if all(lo <= v <= hi for v in fov):
            values["scanner.fov_um"] = fov
    values.update(rig_overrides)
    config = load_rig_config(base, values)
    config.source = f"replay of {source.path} ({source.kind})"
    return config


def _flatten(prefix: str, table: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(f"{prefix}.{key}", value))
        else:
            out[f"{prefix}.{key}"] = value
    return out


def replay_pixel_size_um(config: RigConfig, frame_shape: tuple[int, int]) -> tuple[float, float]:
    """(y, x) um per pixel of the configured field: fov / zoom / pixels."""
    fov_x, fov_y = config["scanner.fov_um"]
    zoom = config["scanner.zoom"]
    height, width = frame_shape
    return fov_y / zoom / height, fov_x / zoom / width


def build_replay_rig(
    config: RigConfig,
    source: FrameSource,
    *,
    speed: str = "max",
    progress: Callable[[int, int], None] | None = None,
) -> Rig:
    """A Rig whose scanner replays `source` and whose light stimulator drives a ReplayDAQ."""
    if source.trace_source is not None and not _pipeline_takes_traces():
        raise ConfigError(
            f"{source.path}: {source.kind} output carries traces, not frames, and this version "
            "of rig/pipeline.py cannot take traces (Pipeline(..., trace_source=...))"
        )
    clock = ReplayClock(speed)
    pixel = source.pixel_size_um or replay_pixel_size_um(config, source.frame_shape)
    if not all(math.isfinite(p) and p > 0 for p in pixel):
        raise ReplaySourceError(f"{source.path}: pixel size {pixel} is not positive")
    if source.trace_source is None and config["rois.source"] == "detect":
        _check_cell_size(config, source, pixel)
    scanner = ReplayScanner(source, clock=clock, pixel_size_um=pixel, progress=progress)
    daq = ReplayDAQ(clock)
    stimulator = None
    if config["stimulator.kind"] == "light":
        limits, calibration = stimulator_parts(config)
        stimulator = LightStimulator(
            daq,
            channels=tuple(config["stimulator.channels"]),
            limits=limits,
            calibration=calibration,
        )
    devices: list[Any] = [daq, scanner] + ([stimulator] if stimulator else [])
    return Rig(
        config=config,
        daq=daq,
        scanner=scanner,
        stimulator=stimulator,
        world=None,
        clock=clock,
        devices=devices,
    )


def _check_cell_size(config: RigConfig, source: FrameSource, pixel: tuple[float, float]) -> None:
    """ROI detection needs cells of 2 pixels up to the frame size (analysis.rois.detect_rois);
    refuse before running when the pixel size makes that impossible, saying where it came
    from and what to set."""
    diameter_um = config["rois.cell_diameter_um"]
    diameter_px = diameter_um / math.sqrt(pixel[0] * pixel[1])
    if 2.0 <= diameter_px <= min(source.frame_shape):
        return
    where = (
        f"recorded in {source.path}"
        if source.pixel_size_um is not None
        else "from scanner.fov_um / scanner.zoom / frame size, as the file records none"
    )
    raise ConfigError(
        f"replay of {source.path}: pixel size ({pixel[0]:.3g}, {pixel[1]:.3g}) um ({where}) "
        f"makes rois.cell_diameter_um = {diameter_um:g} um {diameter_px:.3g} pixels; ROI "
        f"detection needs 2 to {min(source.frame_shape)}: set --set scanner.fov_um=[x, y] to "
        "the recorded field, or rois.cell_diameter_um"
    )


def _pipeline_takes_traces() -> bool:
    from rig.pipeline import Pipeline

    return "trace_source" in inspect.signature(Pipeline).parameters
