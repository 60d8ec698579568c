"""The online processing pipeline: explicit stages run by the processing thread per frame.

Stages of the rig core:

1. `rois`        - collects the reference period (or loads an ROI file at setup), builds the
                   mean image and detects ROIs once; until then later stages are idle.
2. `extract`     - weighted mean fluorescence per ROI (numba, no allocation).
3. `dff`         - causal dF/F against a running percentile baseline (trailing window).
4. `noise_level` - CASCADE noise level per ROI over a trailing window, updated per frame.

Each stage's time is measured per frame (`stage_ms`). State is allocated once, when the ROIs
are known (the only allocation after start, logged as an event).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from analysis.dff import OnlineDff
from analysis.noise import OnlineNoiseLevel
from analysis.rois import RoiSet, detect_rois, extract, load_roi_file
from rig.ring import FrameRing


@dataclass(frozen=True)
class PipelineSettings:
    frame_rate_hz: float
    frame_shape: tuple[int, int]
    pixel_size_um: tuple[float, float]
    roi_source: str = "detect"
    reference_s: float = 8.0
    cell_diameter_um: float = 12.0
    max_rois: int = 2000
    baseline_window_s: float = 60.0
    percentile: float = 8.0
    noise_window_s: float = 30.0
    history_s: float = 20.0

    @property
    def reference_frames(self) -> int:
        return max(20, int(math.ceil(self.reference_s * self.frame_rate_hz)))


STAGES = ("rois", "extract", "dff", "noise_level")


class Pipeline:
    def __init__(
        self, settings: PipelineSettings, post_event: Callable[[dict[str, Any]], None]
    ) -> None:
        self.settings = settings
        self.post_event = post_event
        h, w = settings.frame_shape
        self._reference = np.zeros((settings.reference_frames, h, w), np.float32)
        self._n_reference = 0
        self.mean_image: np.ndarray | None = None
        self.rois: RoiSet | None = None
        self.roi_start_frame: int | None = None
        self.stage_ms = np.zeros(len(STAGES))
        self._dff: OnlineDff | None = None
        self._noise: OnlineNoiseLevel | None = None
        self.history_frames = max(2, int(round(settings.history_s * settings.frame_rate_hz)))
        self.history: np.ndarray | None = None  # (history_frames, n_rois) ring of dF/F
        self.history_count = 0
        self.roi_centroids_um: np.ndarray | None = None

    def setup(self) -> None:
        if self.settings.roi_source != "detect":
            rois = load_roi_file(self.settings.roi_source, self.settings.frame_shape)
            self._install_rois(rois, frame_index=0, how=f"file {self.settings.roi_source}")

    @property
    def n_rois(self) -> int:
        return 0 if self.rois is None else self.rois.n_rois

    @property
    def noise_level(self) -> np.ndarray | None:
        return None if self._noise is None else self._noise.values

    def process(self, ring: FrameRing, slot: int, frame_index: int) -> None:
        frame = ring.frames[slot]
        t0 = time.perf_counter()
        if self.rois is None or self._n_reference < self._reference.shape[0]:
            self._collect_reference(frame, frame_index)
        t1 = time.perf_counter()
        n = self.n_rois
        ring.n_rois[slot] = n
        if n == 0 or self._dff is None or self._noise is None:
            self.stage_ms[:] = 0.0
            self.stage_ms[0] = (t1 - t0) * 1e3
            return
        fluor = ring.fluorescence[slot, :n]
        dff = ring.dff[slot, :n]
        extract(frame, self.rois, fluor)
        t2 = time.perf_counter()
        self._dff.update(fluor, dff)
        t3 = time.perf_counter()
        self._noise.update(dff)
        t4 = time.perf_counter()
        assert self.history is not None
        self.history[self.history_count % self.history_frames] = dff
        self.history_count += 1
        self.stage_ms[0] = (t1 - t0) * 1e3
        self.stage_ms[1] = (t2 - t1) * 1e3
        self.stage_ms[2] = (t3 - t2) * 1e3
        self.stage_ms[3] = (t4 - t3) * 1e3

    def recent_dff(self, n_frames: int) -> np.ndarray:
        """The last n frames of dF/F (chronological, shape (n, n_rois)); fewer at the start."""
        if self.history is None:
            return np.zeros((0, 0), np.float32)
        n = min(n_frames, self.history_count, self.history_frames)
        idx = (np.arange(self.history_count - n, self.history_count)) % self.history_frames
        return self.history[idx]

    # -- ROI stage -------------------------------------------------------------------------
    def _collect_reference(self, frame: np.ndarray, frame_index: int) -> None:
        if self._n_reference < self._reference.shape[0]:
            self._reference[self._n_reference] = frame
            self._n_reference += 1
        if self._n_reference == self._reference.shape[0]:
            self.mean_image = self._reference.mean(axis=0)
            if self.rois is None:
                px = self.settings.pixel_size_um
                diameter_px = self.settings.cell_diameter_um / float(np.sqrt(px[0] * px[1]))
                rois = detect_rois(
                    self._reference, cell_diameter_px=diameter_px, max_rois=self.settings.max_rois
                )
                self._install_rois(rois, frame_index, how="detected on the reference period")

    def _install_rois(self, rois: RoiSet, frame_index: int, how: str) -> None:
        if rois.shape != tuple(self.settings.frame_shape):
            raise ValueError(
                f"ROI set has shape {rois.shape} but frames are {self.settings.frame_shape}"
            )
        if rois.n_rois > self.settings.max_rois:
            raise ValueError(f"{rois.n_rois} ROIs exceed rois.max_rois = {self.settings.max_rois}")
        self.rois = rois
        self.roi_start_frame = frame_index
        s = self.settings
        n = rois.n_rois
        self._dff = OnlineDff(
            n, s.frame_rate_hz, baseline_window_s=s.baseline_window_s, percentile=s.percentile
        )
        window = max(2, int(round(s.noise_window_s * s.frame_rate_hz)))
        self._noise = OnlineNoiseLevel(n, window, s.frame_rate_hz)
        self.history = np.zeros((self.history_frames, n), np.float32)
        self.history_count = 0
        # centroids in field coordinates (x, y) um, field centred on 0, as stimulation targets
        h, w = s.frame_shape
        py, px = s.pixel_size_um
        cy, cx = rois.centroids_px[:, 0], rois.centroids_px[:, 1]
        self.roi_centroids_um = np.column_stack([(cx + 0.5 - w / 2) * px, (cy + 0.5 - h / 2) * py])
        self.post_event({"type": "rois", "frame": frame_index, "n_rois": n, "how": how})
