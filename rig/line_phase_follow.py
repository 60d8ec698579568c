"""Online line-phase tracking during a bidirectional resonant session (`resonant.track_line_phase`).

The resonant mirror's phase lag drifts as it warms (hardware.md section 2), which opens a comb
between forward and backward lines during long sessions. The processing thread hands every
raw frame to `LinePhaseFollower.update`; frames are averaged for `resonant.track_every_s`
(shot noise averages out, the phase hardly moves in that time), the residual error is
estimated from forward vs backward lines (analysis.line_phase.LinePhaseTracker: a slow
first-order loop with a bounded step) and the scanner uses the new phase from the next frame.
Each change is an event (`line_phase`) with the estimate behind it, and the scanner's
snapshot lists every change, so the session record says which phase read which frame.

The estimate costs ~7 ms on a 512 x 512 frame, once per `track_every_s`; it runs after the
protocol's `on_frame`, so it never delays a stimulus decision.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from analysis.line_phase import LinePhaseTracker
from drivers.errors import LimitError


class LinePhaseFollower:
    """Feeds raw frames to a LinePhaseTracker and applies its changes to the scanner."""

    def __init__(
        self,
        scanner: Any,
        every_s: float,
        post_event: Callable[[dict[str, Any]], None],
    ) -> None:
        settings = scanner.settings
        self.scanner = scanner
        self.post_event = post_event
        every_frames = max(1, int(round(every_s * scanner.frame_rate_hz)))
        self.tracker = LinePhaseTracker(
            scanner.frame_shape,
            settings.fill_fraction,
            self._resonant_hz(),
            scanner.line_phase_us,
            every_frames=every_frames,
        )
        self.changes = 0
        self.start_phase_us = float(scanner.line_phase_us)

    def _resonant_hz(self) -> float:
        measured = self.scanner.tracked_resonant_hz or self.scanner.measured_resonant_hz
        return float(measured or self.scanner.settings.resonant_hz)

    def update(self, frame: np.ndarray, frame_index: int) -> None:
        """Add one raw frame (taken with the scanner's current phase)."""
        new_phase_us = self.tracker.update(frame, self._resonant_hz())
        if new_phase_us is None:
            return
        estimate = self.tracker.last_estimate
        assert estimate is not None
        event = {
            "type": "line_phase",
            "frame": frame_index,
            "line_phase_us": new_phase_us,
            "error_us": estimate.error_us,
            "quality": estimate.quality,
        }
        try:
            self.scanner.set_line_phase_us(new_phase_us)
        except LimitError as e:  # the pixels would leave the record: keep the old phase
            self.tracker.line_phase_us = self.scanner.line_phase_us
            event.update(event="refused", reason=str(e), line_phase_us=self.scanner.line_phase_us)
        else:
            self.changes += 1
        self.post_event(event)


    def summary(self) -> dict[str, Any]:
        """summary.json `line_phase`: where tracking started and ended, and how often it
        moved (each change is a `line_phase` event)."""
        last = self.tracker.last_estimate
        return {
            "tracked": True,
            "start_us": self.start_phase_us,
            "final_us": float(self.scanner.line_phase_us),
            "changes": self.changes,
            "last_error_us": None if last is None else last.error_us,
            "last_quality": None if last is None else last.quality,
        }


def check_line_phase_tracking(config: Any) -> None:
    """Refuse tracking a scan it cannot track, before any device opens (ConfigError)."""
    from rig.config import ConfigError

    if not config["resonant.track_line_phase"]:
        return
    if config["scanner.kind"] != "resonant":
        raise ConfigError(
            "resonant.track_line_phase is for resonant scanners: set scanner.kind = "
            '"resonant" or resonant.track_line_phase = false'
        )
    if not config["scanner.bidirectional"]:
        raise ConfigError(
            "resonant.track_line_phase needs a bidirectional scan (the phase is read from "
            "forward vs backward lines): set scanner.bidirectional = true or "
            "resonant.track_line_phase = false"
        )


def line_phase_follower(
    config: Any, scanner: Any, post_event: Callable[[dict[str, Any]], None]
) -> LinePhaseFollower | None:
    """The follower a session needs (None unless `resonant.track_line_phase` is on); build it
    after the scanner opened (it starts from the measured resonant frequency)."""
    check_line_phase_tracking(config)
    if not config["resonant.track_line_phase"]:
        return None
    return LinePhaseFollower(scanner, config["resonant.track_every_s"], post_event)
