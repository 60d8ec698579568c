"""What a running experiment shows the outside (GUI, scripts) and how it is steered.

The processing thread publishes into `LiveState` after every frame: a few numbers and, only
when a reader asked for it since the last frame (`request_frame`), a copy of the frame. The
cost to the loop without a reader is a handful of assignments under a lock; readers take
`snapshot()` (copies) on their own timer and never block the loop for longer than the copy.

`RunControl` carries requests the other way: stop, pause/resume of the protocol (acquisition
and recording go on), and safe-off (stimulation devices to their safe state at once, the
protocol paused until resumed).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LiveSnapshot:
    frame_index: int = -1
    time_s: float = 0.0
    frame: np.ndarray | None = None  # latest published frame (copy), if one was requested
    frame_shape: tuple[int, int] = (0, 0)
    pixel_size_um: tuple[float, float] = (1.0, 1.0)
    frame_rate_hz: float = 0.0
    n_rois: int = 0
    roi_label_image: np.ndarray | None = None  # (H, W) int32, 0 = none, i + 1 = ROI i
    roi_centroids_px: np.ndarray | None = None
    dff_history: np.ndarray | None = None  # (n, n_rois) recent dF/F, oldest first
    history_times_s: np.ndarray | None = None
    noise_level: np.ndarray | None = None  # per ROI, online
    population_noise_history: list[tuple[float, float]] = field(default_factory=list)
    stimuli: list[dict[str, Any]] = field(default_factory=list)  # recent stimulus events
    frames_dropped: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    recording: bool = False
    status: str = "idle"
    protocol_state: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # later stages publish here


class LiveState:
    def __init__(self, history_frames: int = 300) -> None:
        self._lock = threading.Lock()
        self._want_frame = threading.Event()
        self._snap = LiveSnapshot()
        self._frame_buf: np.ndarray | None = None
        self._stimuli: deque[dict[str, Any]] = deque(maxlen=500)
        self._noise_trend: deque[tuple[float, float]] = deque(maxlen=2000)
        self._latency: deque[float] = deque(maxlen=300)
        self.history_frames = history_frames
        self._dff_hist: np.ndarray | None = None
        self._dec_hist: np.ndarray | None = None
        self._has_deconvolved = False
        self._times_hist = np.zeros(history_frames)
        self._hist_count = 0

    # -- writer side (processing thread) ---------------------------------------------------
    def start(
        self,
        *,
        frame_shape: tuple[int, int],
        pixel_size_um: tuple[float, float],
        frame_rate_hz: float,
    ) -> None:
        with self._lock:
            self._snap.frame_shape = tuple(frame_shape)
            self._snap.pixel_size_um = tuple(pixel_size_um)
            self._snap.frame_rate_hz = frame_rate_hz
            self._snap.status = "running"
            self._snap.recording = True
            self._frame_buf = np.zeros(frame_shape, np.int16)

    def set_rois(self, label_image: np.ndarray, centroids_px: np.ndarray) -> None:
        with self._lock:
            self._snap.roi_label_image = label_image
            self._snap.roi_centroids_px = centroids_px
            self._snap.n_rois = int(centroids_px.shape[0])
            self._dff_hist = np.full((self.history_frames, self._snap.n_rois), np.nan, np.float32)
            self._dec_hist = np.full_like(self._dff_hist, np.nan)
            self._hist_count = 0

    def publish(
        self,
        frame_index: int,
        time_s: float,
        frame: np.ndarray,
        dff: np.ndarray | None,
        noise_level: np.ndarray | None,
        latency_ms: float,
        frames_dropped: int,
        deconvolved: np.ndarray | None = None,
    ) -> None:
        with self._lock:
            s = self._snap
            s.frame_index = frame_index
            s.time_s = time_s
            s.frames_dropped = frames_dropped
            self._latency.append(latency_ms)
            if self._want_frame.is_set() and self._frame_buf is not None:
                self._frame_buf[...] = frame
                self._want_frame.clear()
                s.frame = self._frame_buf
            if dff is not None and self._dff_hist is not None and dff.shape[0] == s.n_rois:
                i = self._hist_count % self.history_frames
                self._dff_hist[i] = dff
                self._times_hist[i] = time_s
                if deconvolved is not None and self._dec_hist is not None:
                    self._dec_hist[i] = deconvolved
                    self._has_deconvolved = True
                self._hist_count += 1
            if noise_level is not None:
                s.noise_level = noise_level
                if frame_index % 10 == 0 and noise_level.size:
                    finite = noise_level[np.isfinite(noise_level)]
                    if finite.size:
                        self._noise_trend.append((time_s, float(np.median(finite))))

    def add_stimulus(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._stimuli.append(event)

    def set_extra(self, key: str, value: Any) -> None:
        with self._lock:
            self._snap.extras[key] = value

    def set_protocol_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._snap.protocol_state = dict(state)

    def finish(self, status: str) -> None:
        with self._lock:
            self._snap.status = status
            self._snap.recording = False

    # -- reader side (GUI timer, scripts) --------------------------------------------------
    def request_frame(self) -> None:
        """Ask the loop to copy the next frame for display (dropped display frames are fine)."""
        self._want_frame.set()

    def snapshot(self) -> LiveSnapshot:
        with self._lock:
            s = self._snap
            out = LiveSnapshot(**{k: getattr(s, k) for k in s.__dataclass_fields__})
            out.frame = None if s.frame is None else s.frame.copy()
            out.noise_level = None if s.noise_level is None else s.noise_level.copy()
            out.extras = dict(s.extras)
            out.stimuli = list(self._stimuli)
            out.population_noise_history = list(self._noise_trend)
            if self._latency:
                lat = np.fromiter(self._latency, float)
                out.latency_p50_ms = float(np.percentile(lat, 50))
                out.latency_p99_ms = float(np.percentile(lat, 99))
            if self._dff_hist is not None:
                n = min(self._hist_count, self.history_frames)
                idx = np.arange(self._hist_count - n, self._hist_count) % self.history_frames
                out.dff_history = self._dff_hist[idx].copy()
                out.history_times_s = self._times_hist[idx].copy()
                if self._has_deconvolved and self._dec_hist is not None:
                    out.extras["deconvolved"] = {
                        "times_s": out.history_times_s,
                        "values": self._dec_hist[idx].copy(),
                    }
            return out


class RunControl:
    """Requests from outside the loop; every method is thread-safe and returns at once."""

    def __init__(self) -> None:
        self.stop_requested = threading.Event()
        self.paused = threading.Event()
        self.safe_off_engaged = threading.Event()
        self.manual_queue: deque[Any] = deque()
        self._loop: Any = None

    def attach(self, loop: Any) -> None:
        self._loop = loop
        if self.stop_requested.is_set():
            loop.request_stop("stopped by the user")

    def manual_stimulate(self, stimulus: Any) -> Any:
        """Validate a stimulus now (LimitError for the caller to show, nothing sent) and queue
        it; the processing thread delivers it after the next frame, logged like any other."""
        if self._loop is None:
            raise RuntimeError("no experiment is running")
        stimulator = self._loop.rig.stimulator
        if stimulator is None:
            raise RuntimeError("this rig has no stimulator")
        if self.safe_off_engaged.is_set():
            raise RuntimeError("safe-off is engaged: resume before stimulating")
        validated = stimulator.validate(stimulus)
        self.manual_queue.append(stimulus)
        return validated

    def stop(self) -> None:
        self.stop_requested.set()
        if self._loop is not None:
            self._loop.request_stop("stopped by the user")

    def pause(self) -> None:
        self.paused.set()

    def resume(self) -> None:
        self.safe_off_engaged.clear()
        self.paused.clear()

    def safe_off(self) -> None:
        """Stimulation off now: stimulators to their safe state, protocol paused."""
        self.safe_off_engaged.set()
        self.paused.set()
        if self._loop is not None:
            self._loop.safe_stimulation("safe-off pressed")

    @property
    def protocol_active(self) -> bool:
        return not self.paused.is_set()
