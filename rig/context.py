"""What a protocol sees and may do during a run (`ctx` in the protocol hooks)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from drivers.errors import DeviceStateError
from drivers.roles import StimulusRecord

if TYPE_CHECKING:
    from rig.loop import RunLoop


class StopRequested(Exception):
    pass


class ProtocolContext:
    """The protocol's window on the run. Valid inside hooks (processing thread only)."""

    def __init__(self, loop: "RunLoop") -> None:
        self._loop = loop
        self.frame_index = -1
        self.time_s = 0.0  # device time of the current frame's first sample
        self.slot = -1
        self.stimuli_this_frame = 0

    # -- what the protocol reads -----------------------------------------------------------
    @property
    def frame_rate_hz(self) -> float:
        return self._loop.frame_rate_hz

    @property
    def rois_ready(self) -> bool:
        return self._loop.pipeline.n_rois > 0 and self._loop.pipeline.history_count > 0

    @property
    def n_rois(self) -> int:
        return self._loop.pipeline.n_rois

    @property
    def dff(self) -> np.ndarray:
        """This frame's dF/F per ROI (fractional); empty before ROIs exist. Read-only view."""
        ring = self._loop.ring
        n = int(ring.n_rois[self.slot]) if self.slot >= 0 else 0
        return ring.dff[self.slot, :n]

    def recent_dff(self, n_frames: int) -> np.ndarray:
        """The last n frames of dF/F, shape (n, n_rois), oldest first (a copy)."""
        return self._loop.pipeline.recent_dff(n_frames)

    @property
    def noise_level(self) -> np.ndarray | None:
        """Online CASCADE noise level per ROI over the trailing window (% / sqrt(s))."""
        return self._loop.pipeline.noise_level

    @property
    def roi_centroids_um(self) -> np.ndarray:
        """(n_rois, 2) ROI centres as (x, y) um in the imaging field (centre = 0, 0) where
        the cells are in the reference image (stable: use these to choose groups)."""
        c = self._loop.pipeline.roi_centroids_um
        return np.zeros((0, 2)) if c is None else c

    def roi_positions_um(self, rois: np.ndarray | list[int]) -> tuple[tuple[float, float], ...]:
        """Where the given ROIs' cells are now: reference centres moved by this frame's motion
        estimate (content moved by +shift). Stimulation targets must use these, or light
        aimed at a moving brain misses its cells."""
        c = self.roi_centroids_um[np.asarray(rois, dtype=np.int64)]
        shift = self._loop.ring.shift[self.slot] if self.slot >= 0 else np.zeros(2)
        py, px = self._loop.pipeline.settings.pixel_size_um
        dy, dx = (float(shift[0]), float(shift[1])) if np.isfinite(shift).all() else (0.0, 0.0)
        return tuple((float(x + dx * px), float(y + dy * py)) for x, y in c)

    def rois_near_um(
        self,
        centre_um: tuple[float, float] | list[float],
        radius_um: float,
        limit: int | None = None,
        required: str | None = None,
    ) -> np.ndarray:
        """Indices of ROIs whose centre is within radius_um of centre_um (x, y), nearest
        first, at most `limit`. With `required` (a name for the group, e.g. "motor"), finding
        none raises an error that names the group, the centre and the radius."""
        c = self.roi_centroids_um
        if len(c) == 0:
            found = np.zeros(0, np.int64)
        else:
            d = np.hypot(c[:, 0] - centre_um[0], c[:, 1] - centre_um[1])
            inside = np.flatnonzero(d <= radius_um)
            found = inside[np.argsort(d[inside], kind="stable")][:limit]
        if required and found.size == 0:
            raise RuntimeError(
                f"no ROI within {radius_um:g} um of the {required} centre {list(centre_um)} "
                f"({self.n_rois} ROIs in the field): move the centre or widen the radius"
            )
        return found

    @property
    def focus(self) -> Any:
        """The rig's FocusDevice (tunable lens or piezo), None without one."""
        return self._loop.rig.focus

    @property
    def frame(self) -> np.ndarray:
        """The raw frame being processed (read-only use; the ring slot is reused)."""
        return self._loop.ring.frames[self.slot]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self._loop.ring.frames.shape[1:])  # type: ignore[return-value]

    @property
    def speed(self) -> str:
        """"max" (lock-step) or "realtime"."""
        return self._loop.speed

    @property
    def acquired_until_s(self) -> float:
        """Device time at the end of the last acquired frame (realtime: the next frame is
        already under way)."""
        return self._loop.last_device_time_s

    @property
    def rig_config(self) -> Any:
        return self._loop.rig.config

    @property
    def has_stimulator(self) -> bool:
        return self._loop.rig.stimulator is not None

    @property
    def session_dir(self) -> Any:
        """The session folder (a protocol may add report figures with rig.report.add_figure
        in teardown)."""
        return self._loop.session_dir

    # -- spike input (MEA rigs) -------------------------------------------------------------
    block: Any = None  # the current SpikeBlock in on_spikes

    @property
    def electrodes(self) -> tuple[str, ...]:
        """Electrode names; spike and onset electrode indices refer to this order."""
        return tuple(self._loop.rig.spikes.electrodes)

    @property
    def sample_rate_hz(self) -> float:
        return float(self._loop.rig.spikes.sample_rate_hz)

    def spikes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This block's spikes: (electrode index, device sample, unit id), views."""
        return self.block.spikes()

    def onsets(self) -> tuple[np.ndarray, np.ndarray]:
        """Stimulation pulse onsets read back from the device: (electrode index, sample)."""
        return self.block.onsets()

    @property
    def ground_truth(self) -> Any:
        """The simulated culture (None on real rigs). For metrics only (e.g. synaptic weights);
        a protocol must never decide from it."""
        return self._loop.rig.culture

    def prepare_stimuli(self, stimuli: list[Any]) -> list[Any]:
        """Program stimuli before acquisition starts (RHX uploads only while stopped); call
        in setup. Returns them as they will be delivered (validated and quantised)."""
        return self._loop.rig.stimulator.prepare(stimuli)

    def start_stimulus(self, stimulus: Any) -> StimulusRecord:
        """Hold a repeat_while_held stimulus on (MEA) until stop_stimulus."""
        return self._record(self._loop.rig.stimulator.start(stimulus), "start")

    def stop_stimulus(self, stimulus: Any) -> StimulusRecord:
        return self._record(self._loop.rig.stimulator.stop(stimulus), "stop")

    # -- commands --------------------------------------------------------------------------
    def stimulate(self, stimulus: Any) -> StimulusRecord:
        """Validate and deliver a stimulus now; returns when and how it fired.

        Raises LimitError (nothing sent) if the stimulus breaks the stimulator's limits; an
        uncaught error aborts the run with every device made safe."""
        stimulator = self._loop.rig.stimulator
        if stimulator is None:
            raise DeviceStateError('this rig has no stimulator (stimulator.kind = "none")')
        record = stimulator.stimulate(stimulus)
        return self._record(record, "pulse")

    def _record(self, record: StimulusRecord, action: str) -> StimulusRecord:
        ring = self._loop.ring
        if self.stimuli_this_frame == 0:
            ring.stimulus_issued_s[self.slot] = record.host_time_s
        self.stimuli_this_frame += 1
        if action != "stop":
            self._loop.stimuli += 1
        event = {
            "type": "stimulus" if action != "stop" else "stimulus_stop",
            "action": action,
            "frame": self.frame_index,
            "host_time_s": record.host_time_s,
            "device_time_s": record.device_time_s,
            "stimulus": record.description,
        }
        self._loop.events.post(event)
        if self._loop.live is not None:
            self._loop.live.add_stimulus(event)
        return record

    def mark(self, label: str, **data: Any) -> None:
        """Record a protocol event in events.jsonl (with this frame and its device time)."""
        self._loop.events.post(
            {
                "type": "protocol",
                "label": label,
                "frame": self.frame_index,
                "device_time_s": self.time_s,
                "host_time_s": time.monotonic(),
                **data,
            }
        )

    def stop(self, reason: str = "protocol finished") -> None:
        """End the run after this frame (status 'completed')."""
        self._loop.request_stop(reason)
