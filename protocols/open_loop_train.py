"""Open-loop train: stimulate a chosen set of cells periodically, whatever they do.

The targets are the ROIs whose centres lie within `target_radius_um` of `target_centre_um`
(x, y in the imaging field, um; the field centre is 0, 0), found once the ROIs exist.
Every `interval_s` a light train is delivered to those targets. This is the open-loop
baseline (and the yoked-control building block) for the closed-loop protocols.
"""

from __future__ import annotations

import numpy as np

from drivers.stimulation.light import LightStimulus
from rig.protocol import Param, Protocol


class OpenLoopTrain(Protocol):
    name = "open_loop_train"

    target_centre_um = Param(
        [-70.0, -60.0],
        unit="um",
        min=-5000,
        max=5000,
        length=2,
        help="(x, y) centre of the target cell set in the field",
    )
    target_radius_um = Param(
        30.0,
        unit="um",
        min=1.0,
        max=2000.0,
        help="ROIs with centres this close to the centre are targets",
    )
    max_targets = Param(8, min=1, max=50, help="at most this many targets (closest first)")
    interval_s = Param(5.0, unit="s", min=0.1, max=3600.0, help="time between trains")
    start_after_s = Param(
        5.0,
        unit="s",
        min=0.0,
        max=3600.0,
        help="wait after the ROIs exist (lets the dF/F baseline settle)",
    )
    power_mw = Param(15.0, unit="mW", min=0.0, max=1000.0, help="power per target spot")
    pulse_ms = Param(5.0, unit="ms", min=0.05, max=1000.0, help="light per target per pulse")
    n_pulses = Param(10, min=1, max=1000, help="pulses per train")
    pulse_rate_hz = Param(10.0, unit="Hz", min=0.1, max=1000.0, help="pulses per second in a train")
    response_window_s = Param(
        1.5, unit="s", min=0.05, max=60.0, help="window after onset for the response metric"
    )

    def setup(self, ctx):
        self.targets: np.ndarray | None = None
        self.target_rois: np.ndarray = np.zeros(0, np.int64)
        self.ready_at: float | None = None
        self.next_s = 0.0
        self.onsets: list[float] = []
        self.responses: list[float] = []
        self._window: list[float] = []

    def on_frame(self, ctx):
        if not ctx.rois_ready:
            return
        if self.targets is None:
            self._choose_targets(ctx)
            self.ready_at = ctx.time_s + self.start_after_s
            self.next_s = self.ready_at
        if self.onsets and ctx.time_s <= self.onsets[-1] + self.response_window_s:
            # NaN: frames motion correction flagged, or ROIs of planes this frame did not image
            values = ctx.dff[self.target_rois]
            values = values[np.isfinite(values)]
            if values.size:
                self._window.append(float(values.mean()))
        if ctx.time_s >= self.next_s:
            if self._window:
                self.responses.append(max(self._window))
                self._window = []
            record = ctx.stimulate(
                LightStimulus(
                    targets_um=ctx.roi_positions_um(self.target_rois),
                    power_mw=self.power_mw,
                    pulse_ms=self.pulse_ms,
                    n_pulses=self.n_pulses,
                    pulse_rate_hz=self.pulse_rate_hz,
                )
            )
            self.onsets.append(record.device_time_s)
            # trains missed while the loop was behind are skipped, not fired back to back
            while self.next_s <= ctx.time_s:
                self.next_s += self.interval_s

    def _choose_targets(self, ctx):
        self.target_rois = ctx.rois_near_um(
            self.target_centre_um, self.target_radius_um, self.max_targets, required="target"
        )
        self.targets = ctx.roi_centroids_um[self.target_rois]
        ctx.mark("targets", rois=self.target_rois.tolist(), targets_um=self.targets.tolist())

    def metrics(self):
        return {
            "trains": len(self.onsets),
            "targets": int(self.target_rois.size),
            "target_rois": self.target_rois.tolist(),
            "mean_peak_target_dff": float(np.mean(self.responses)) if self.responses else None,
        }
