"""Interleaved volumetric imaging: the focus steps one plane per frame; a pipeline per plane.

With `volume.planes_um` set (and a focus device, rig/focus.py), the acquisition thread
commands the focus on frame boundaries, before it reads the frame (`before_frame`), following
a fixed schedule (`VolumeSchedule`):

    plane 0: [settle_frames settling] [frames_per_plane imaged], plane 1: [...], ..., repeat

`frames_per_plane = 1, settle_frames = 0` is the classic interleaved scheme (a plane per
frame; the lens settles within the first lines of each frame: about 15 ms for an EL-10-30,
measured by `rig bench lens`). Settling frames are frames that start less than
`volume.settle_s` after a step, or the first `volume.settle_frames` of each plane, whichever
is more. `volume.settling = "flag"`: they are traced with their plane and marked in
session.h5 `volume/settling`; `"discard"`: they are recorded (timestamps, raw frames) but not
traced (NaN).

`VolumePipeline` holds one rig.pipeline.Pipeline per plane (each with its own reference
period, motion reference, ROIs, dF/F baselines, noise levels and deconvolution, at the
plane's own sampling rate) and routes each frame to its plane's pipeline. To the loop, the
recorder and protocols it looks like one Pipeline whose ROIs are all planes' ROIs
concatenated (plane 0's first): ROI i of the session belongs to plane `roi_plane[i]`. A
frame's row holds its plane's values and NaN for the ROIs of other planes, so session.h5
`dff` keeps when each plane was really sampled. The session's ROIs start when every plane
has its ROIs (less than one volume after the first plane's). `recent_dff` (what protocols
read) holds each ROI's latest value (sample and hold across planes).

Record: events.jsonl gets a `focus` `plane` event at every plane change (plane, z, the
commanded focal power) and lens readings on a slow schedule (rig/focus.py FocusMonitor);
session.h5 gets a `volume` group at the end (`write_h5`): the plane, settling flag and frame
index of every recorded frame, and per plane `volume/plane_K/` with its z, ROI range, ROIs,
mean image, dF/F rows of that plane's frames and their session-wide noise level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from analysis.rois import RoiSet
from rig.config import ConfigError, RigConfig
from rig.focus import move_focus
from rig.pipeline import STAGES, Pipeline, PipelineSettings
from rig.ring import FrameRing

PER_ROI_FIELDS = ("fluorescence", "neuropil", "dff", "calcium", "spikes")


@dataclass(frozen=True)
class VolumeSchedule:
    """Which plane each frame images, and whether it is a settling frame."""

    planes_um: tuple[float, ...]
    frames_per_plane: int = 1
    settle_frames: int = 0

    def __post_init__(self) -> None:
        if not self.planes_um:
            raise ValueError("planes_um is empty: a volume needs at least one plane")
        if not all(math.isfinite(z) for z in self.planes_um):
            raise ValueError(f"planes_um = {self.planes_um} must be finite")
        if self.frames_per_plane < 1:
            raise ValueError(f"frames_per_plane = {self.frames_per_plane} must be >= 1")
        if self.settle_frames < 0:
            raise ValueError(f"settle_frames = {self.settle_frames} must be >= 0")

    @property
    def n_planes(self) -> int:
        return len(self.planes_um)

    @property
    def dwell_frames(self) -> int:
        """Frames spent at each plane (settling + imaged)."""
        return self.settle_frames + self.frames_per_plane

    @property
    def cycle_frames(self) -> int:
        """Frames per volume."""
        return self.n_planes * self.dwell_frames

    def plane_of(self, frame_index: int) -> int:
        return (frame_index % self.cycle_frames) // self.dwell_frames

    def settling(self, frame_index: int) -> bool:
        return (frame_index % self.cycle_frames) % self.dwell_frames < self.settle_frames

    def step_due(self, frame_index: int) -> bool:
        """A plane's dwell begins at this frame (the focus moves unless only one plane)."""
        return frame_index % self.dwell_frames == 0 and (frame_index == 0 or self.n_planes > 1)

    def plane_rate_hz(self, frame_rate_hz: float) -> float:
        """Mean rate of a plane's imaged (non-settling) frames."""
        return frame_rate_hz * self.frames_per_plane / self.cycle_frames

    @classmethod
    def from_config(cls, config: RigConfig, frame_rate_hz: float) -> VolumeSchedule | None:
        """None for a single-plane rig (volume.planes_um empty). Settling frames: the larger
        of volume.settle_frames and the frames that start within volume.settle_s of a step."""
        v = config.section("volume")
        if not v["planes_um"]:
            return None
        by_time = math.ceil(v["settle_s"] * frame_rate_hz - 1e-9) if v["settle_s"] > 0 else 0
        return cls(tuple(v["planes_um"]), v["frames_per_plane"], max(v["settle_frames"], by_time))


class _PlaneRing:
    """What one plane's Pipeline writes to: the frames and motion results of the session's
    ring (shared slots), its own per-ROI rows."""

    def __init__(self, ring: FrameRing, max_rois: int) -> None:
        n = ring.n_slots
        self.n_slots = n
        self.frames = ring.frames
        self.index = ring.index
        self.device_time_s = ring.device_time_s
        self.shift = ring.shift
        self.motion_status = ring.motion_status
        self.n_rois = np.zeros(n, np.int32)
        self.fluorescence = np.zeros((n, max_rois), np.float32)
        self.neuropil = np.full((n, max_rois), np.nan, np.float32)
        self.dff = np.zeros((n, max_rois), np.float32)
        self.calcium = np.full((n, max_rois), np.nan, np.float32)
        self.spikes = np.full((n, max_rois), np.nan, np.float32)


class VolumePipeline:
    """A Pipeline per plane behind the Pipeline interface the loop, recorder and protocol
    context use (see the module docstring)."""

    def __init__(
        self,
        schedule: VolumeSchedule,
        settings: PipelineSettings,
        ring: FrameRing,
        post_event: Callable[[dict[str, Any]], None],
        *,
        focus: Any,
        settling: str = "flag",
        max_frames: int,
        faults: Any = None,
        publish: Callable[[str, Any], None] | None = None,
    ) -> None:
        if settling not in ("flag", "discard"):
            raise ConfigError(f"volume.settling = {settling!r}: choose flag or discard")
        if settings.roi_source != "detect":
            raise ConfigError(
                f"rois.source = {settings.roi_source!r}: volumetric imaging detects ROIs per "
                'plane; set rois.source = "detect"'
            )
        n = schedule.n_planes
        if settings.max_rois < n:
            raise ConfigError(f"rois.max_rois = {settings.max_rois} is below {n} planes")
        self.schedule = schedule
        self.focus = focus
        self.settling_mode = settling
        self.post_event = post_event
        self.faults = faults
        # the coarse-graining stage needs one population sampled together: off per plane
        self.settings = replace(settings, rg=False)
        plane_settings = replace(
            self.settings,
            frame_rate_hz=schedule.plane_rate_hz(settings.frame_rate_hz),
            max_rois=settings.max_rois // n,
        )
        self.plane_settings = plane_settings
        self.planes = [
            Pipeline(plane_settings, self._plane_poster(k), publish=None) for k in range(n)
        ]
        self._rings = [_PlaneRing(ring, plane_settings.max_rois) for _ in range(n)]
        # acquisition side -> processing side, per ring slot
        self.plane_of_slot = np.full(ring.n_slots, -1, np.int16)
        self.settling_of_slot = np.zeros(ring.n_slots, np.bool_)
        self._next_index = 0
        self._commanded_plane = -1
        # per recorded row (the processing order is the recording order)
        self.row_plane = np.full(max_frames, -1, np.int16)
        self.row_settling = np.zeros(max_frames, np.bool_)
        self.row_frame = np.full(max_frames, -1, np.int64)
        self.rows = 0
        self.settling_frames = 0
        self.discarded_frames = 0
        self.untraced_frames = 0  # plane unknown (focus fault)
        # the session's ROIs: all planes' ROIs once every plane has them
        self.rois: RoiSet | None = None
        self.roi_start_frame: int | None = None
        self.roi_offsets = np.zeros(n + 1, np.int64)
        self.roi_plane = np.zeros(0, np.int16)
        self.roi_centroids_um: np.ndarray | None = None
        self.stage_ms = np.zeros(len(STAGES))
        self.history_frames = max(2, int(round(settings.history_s * settings.frame_rate_hz)))
        self.history: np.ndarray | None = None
        self.history_count = 0
        self._latest: np.ndarray | None = None
        self._noise: np.ndarray | None = None

    def _plane_poster(self, plane: int) -> Callable[[dict[str, Any]], None]:
        def post(event: dict[str, Any]) -> None:
            event["plane"] = plane
            self.post_event(event)

        return post

    # -- what the loop and the recorder read -------------------------------------------------
    @property
    def stage_names(self) -> tuple[str, ...]:
        return STAGES

    @property
    def n_planes(self) -> int:
        return self.schedule.n_planes

    @property
    def n_rois(self) -> int:
        return 0 if self.rois is None else self.rois.n_rois

    @property
    def mean_image(self) -> np.ndarray | None:
        """Plane 0's mean image (each plane's is in session.h5 volume/plane_K/mean_image)."""
        return self.planes[0].mean_image

    @property
    def flagged_frames(self) -> int:
        return sum(p.flagged_frames for p in self.planes)

    @property
    def noise_level(self) -> np.ndarray | None:
        """Online noise level per ROI, all planes (each over its own plane's frames)."""
        if self._noise is None:
            return None
        for k, p in enumerate(self.planes):
            values = p.noise_level
            a, b = self.roi_offsets[k], self.roi_offsets[k + 1]
            self._noise[a:b] = values if values is not None else np.nan
        return self._noise

    def setup(self) -> None:
        for p in self.planes:
            p.setup()

    def recent_dff(self, n_frames: int) -> np.ndarray:
        """The last n frames of every ROI's latest dF/F (sample and hold across planes)."""
        if self.history is None:
            return np.zeros((0, 0), np.float32)
        n = min(n_frames, self.history_count, self.history_frames)
        idx = np.arange(self.history_count - n, self.history_count) % self.history_frames
        return self.history[idx]

    # -- acquisition thread ---------------------------------------------------------------
    def before_frame(self) -> tuple[int, bool]:
        """Move the focus if the next frame begins a plane's dwell; return (plane, settling)
        of the next frame (-1: unknown, after a focus fault)."""
        i = self._next_index
        s = self.schedule
        plane = s.plane_of(i)
        if s.step_due(i) and plane != self._commanded_plane:
            z = s.planes_um[plane]
            where = f"moving the focus to plane {plane} ({z:g} um)"
            if not move_focus(self.focus, z, self.faults, where):
                return -1, False
            self._commanded_plane = plane
            event = {"type": "focus", "event": "plane", "frame": i, "plane": plane, "z_um": z}
            calibration = getattr(self.focus, "calibration", None)
            if calibration is not None:
                event["focal_power_dpt"] = calibration.focal_power_dpt(z)
            self.post_event(event)
        if self.faults is not None and self.faults.faulted.is_set():
            return -1, False
        return plane, s.settling(i)

    def after_frame(self, slot: int | None, frame_index: int, plane: int, settling: bool) -> None:
        """Tag the frame's slot with the plane it imaged."""
        if frame_index != self._next_index:
            self.post_event(
                {
                    "type": "focus",
                    "event": "schedule slipped",
                    "frame": frame_index,
                    "expected_frame": self._next_index,
                    "reason": "the scanner lost frames; planes follow the frames it delivers",
                }
            )
        self._next_index = frame_index + 1
        if slot is not None:
            self.plane_of_slot[slot] = plane
            self.settling_of_slot[slot] = settling

    # -- processing thread ------------------------------------------------------------------
    def process(self, ring: FrameRing, slot: int, frame_index: int) -> None:
        plane = int(self.plane_of_slot[slot])
        settling = bool(self.settling_of_slot[slot])
        row = self.rows
        if row < self.row_plane.shape[0]:
            self.row_plane[row], self.row_settling[row] = plane, settling
            self.row_frame[row] = frame_index
        self.rows += 1
        self.settling_frames += settling
        self.stage_ms[:] = 0.0
        traced = plane >= 0 and not (settling and self.settling_mode == "discard")
        if traced:
            p = self.planes[plane]
            p.process(self._rings[plane], slot, frame_index)  # type: ignore[arg-type]
            self.stage_ms[:] = p.stage_ms
            if self.rois is None and all(q.rois is not None for q in self.planes):
                self._start_rois(frame_index)
        else:
            if plane < 0:
                self.untraced_frames += 1
            else:
                self.discarded_frames += 1
            ring.shift[slot] = np.nan
        total = self.n_rois
        ring.n_rois[slot] = total
        if total == 0:
            return
        for name in PER_ROI_FIELDS:
            getattr(ring, name)[slot, :total] = np.nan
        if not traced:
            self._push_history()
            return
        a, b = self.roi_offsets[plane], self.roi_offsets[plane + 1]
        own = self._rings[plane]
        for name in PER_ROI_FIELDS:
            getattr(ring, name)[slot, a:b] = getattr(own, name)[slot, : b - a]
        assert self._latest is not None
        self._latest[a:b] = own.dff[slot, : b - a]
        self._push_history()

    def _push_history(self) -> None:
        assert self.history is not None and self._latest is not None
        self.history[self.history_count % self.history_frames] = self._latest
        self.history_count += 1

    def _start_rois(self, frame_index: int) -> None:
        """Every plane has its ROIs: concatenate them into the session's ROI set."""
        sets = [p.rois for p in self.planes]
        assert all(r is not None for r in sets)
        counts = [r.n_rois for r in sets]  # type: ignore[union-attr]
        self.roi_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        pixel_counts = [len(r.pixels) for r in sets]  # type: ignore[union-attr]
        pixel_starts = np.concatenate([[0], np.cumsum(pixel_counts)[:-1]])
        offsets = [np.asarray(sets[0].offsets[:1], np.int64)]  # type: ignore[union-attr]
        for r, start in zip(sets, pixel_starts):
            offsets.append(np.asarray(r.offsets[1:], np.int64) + start)  # type: ignore[union-attr]
        self.rois = RoiSet(
            shape=sets[0].shape,  # type: ignore[union-attr]
            pixels=np.concatenate([r.pixels for r in sets]).astype(np.int32),  # type: ignore[union-attr]
            offsets=np.concatenate(offsets).astype(np.int32),
            weights=np.concatenate([r.weights for r in sets]).astype(np.float32),  # type: ignore[union-attr]
            centroids_px=np.concatenate([r.centroids_px for r in sets]),  # type: ignore[union-attr]
        )
        total = int(self.roi_offsets[-1])
        self.roi_plane = np.repeat(np.arange(self.n_planes, dtype=np.int16), counts)
        self.roi_centroids_um = np.concatenate([p.roi_centroids_um for p in self.planes])
        self.roi_start_frame = frame_index
        self._latest = np.full(total, np.nan, np.float32)
        self._noise = np.full(total, np.nan, np.float32)
        self.history = np.full((self.history_frames, total), np.nan, np.float32)
        self.history_count = 0
        self.post_event(
            {
                "type": "rois",
                "event": "volume",
                "frame": frame_index,
                "n_rois": total,
                "rois_per_plane": counts,
                "how": "every plane's ROIs, concatenated (plane 0 first)",
            }
        )

    # -- end of session ---------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        counts = np.diff(self.roi_offsets).tolist() if self.rois is not None else []
        return {
            "planes_um": list(self.schedule.planes_um),
            "frames_per_plane": self.schedule.frames_per_plane,
            "settle_frames": self.schedule.settle_frames,
            "settling": self.settling_mode,
            "plane_rate_hz": self.plane_settings.frame_rate_hz,
            "rois_per_plane": counts,
            "settling_frames": self.settling_frames,
            "discarded_frames": self.discarded_frames,
            "untraced_frames": self.untraced_frames,
        }

    def write_h5(self, session_h5: Path) -> None:
        """Add the `volume` group to session.h5 (module docstring). Rows of session.h5 are
        the processed frames in order, so row r imaged plane `volume/plane[r]`."""
        import h5py

        from analysis.noise import noise_level as batch_noise_level

        rows = min(self.rows, self.row_plane.shape[0])
        with h5py.File(session_h5, "a") as f:
            n_rows = int(f["timestamps"].shape[0])
            rows = min(rows, n_rows)
            g = f.create_group("volume")
            g.attrs["planes_um"] = np.asarray(self.schedule.planes_um, np.float64)
            g.attrs["frames_per_plane"] = self.schedule.frames_per_plane
            g.attrs["settle_frames"] = self.schedule.settle_frames
            g.attrs["settling"] = self.settling_mode
            g.attrs["plane_rate_hz"] = self.plane_settings.frame_rate_hz
            g.create_dataset("plane", data=self.row_plane[:rows])
            g.create_dataset("settling", data=self.row_settling[:rows])
            g.create_dataset("frame_index", data=self.row_frame[:rows])
            g.create_dataset("roi_plane", data=self.roi_plane)
            dff = f["dff"][:rows] if "dff" in f and self.rois is not None else None
            for k, p in enumerate(self.planes):
                pg = g.create_group(f"plane_{k}")
                pg.attrs["z_um"] = self.schedule.planes_um[k]
                a, b = int(self.roi_offsets[k]), int(self.roi_offsets[k + 1])
                pg.attrs["roi_range"] = np.asarray([a, b], np.int64)
                if p.mean_image is not None:
                    pg.create_dataset("mean_image", data=np.asarray(p.mean_image, np.float32))
                if p.rois is not None:
                    rg = pg.create_group("rois")
                    for name in ("pixels", "offsets", "weights", "centroids_px"):
                        rg.create_dataset(name, data=getattr(p.rois, name))
                mine = (self.row_plane[:rows] == k) & ~(
                    self.row_settling[:rows] & (self.settling_mode == "discard")
                )
                pg.create_dataset("rows", data=np.flatnonzero(mine).astype(np.int64))
                if dff is None or b == a:
                    continue
                plane_dff = dff[mine][:, a:b]
                pg.create_dataset("dff", data=plane_dff)
                started = plane_dff[np.isfinite(plane_dff).all(axis=1)]
                if started.shape[0] >= 2:
                    noise = batch_noise_level(
                        started.T.astype(np.float64), self.plane_settings.frame_rate_hz
                    )
                    pg.create_dataset("noise_level", data=np.asarray(noise, np.float32))

    def session_noise_level(self, dff: np.ndarray) -> np.ndarray | None:
        """CASCADE noise level per ROI over the session, each ROI over the traced frames of
        its own plane at the plane's rate (dff: session.h5 `dff`, every recorded row)."""
        from analysis.noise import noise_level as batch_noise_level

        if self.rois is None:
            return None
        out = np.full(self.n_rois, np.nan)
        rows = min(dff.shape[0], self.rows, self.row_plane.shape[0])
        planes = self.row_plane[:rows]
        for k in range(self.n_planes):
            a, b = int(self.roi_offsets[k]), int(self.roi_offsets[k + 1])
            block = dff[:rows][planes == k][:, a:b]
            block = block[np.isfinite(block).all(axis=1)]
            if b > a and block.shape[0] >= 2:
                out[a:b] = batch_noise_level(
                    block.T.astype(np.float64), self.plane_settings.frame_rate_hz
                )
        return out
