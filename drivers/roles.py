"""Roles: what the run loop needs from a device, independent of who made it.

A role is a small abstract class on top of `Device`. The loop only talks to roles, so a
galvo-galvo scanner, a resonant scanner, or a replayed recording are interchangeable
Scanners, and a light stimulator or an MEA stimulator are interchangeable Stimulators.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drivers.base import Device


@dataclass(frozen=True)
class FrameInfo:
    """Timing of one acquired frame.

    device_time_s: time of the frame's first sample on the acquisition device's clock
    (samples counted from the start trigger), so it has no host jitter.
    host_time_s: time.monotonic() when the frame's last sample was in host memory.
    """

    index: int
    device_time_s: float
    host_time_s: float
    lost_before: int = 0  # frames the device lost before this one (buffer overrun)


class Scanner(Device):
    """Delivers frames (uint16 / int16 images of shape `frame_shape`) with timestamps."""

    role = "scanner"

    @property
    @abstractmethod
    def frame_shape(self) -> tuple[int, int]:
        """(lines, pixels_per_line) of one frame."""

    @property
    @abstractmethod
    def frame_rate_hz(self) -> float:
        """Frame rate that follows from the configured settings."""

    @property
    @abstractmethod
    def pixel_size_um(self) -> tuple[float, float]:
        """(y, x) size of one pixel in the specimen, micrometres."""

    @abstractmethod
    def start(self) -> None:
        """Arm and start acquisition; the first frame's device time is 0."""

    @abstractmethod
    def read_frame(self, out: np.ndarray) -> FrameInfo:
        """Block until the next frame is complete and write it into `out` (no allocation)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop acquisition and park the beam."""


class FocusDevice(Device):
    """Moves the imaged plane (tunable lens, piezo). Positions in micrometres of z."""

    role = "focus"

    @abstractmethod
    def move_to_um(self, z_um: float) -> None:
        """Command the focus to `z_um` (limits checked before anything is sent)."""

    @abstractmethod
    def position_um(self) -> float:
        """Last commanded (or measured, where the device reports it) z position."""


@dataclass(frozen=True)
class StimulusRecord:
    """What a stimulator really did: when, on which clock, with which settings."""

    host_time_s: float  # time.monotonic() when the trigger was issued
    device_time_s: (
        float  # onset on the device clock (same clock as the scanner's frames where shared)
    )
    description: dict[str, Any] = field(default_factory=dict)


class Stimulator(Device):
    """Validate -> upload -> trigger. `validate` checks everything against the device's
    limits and raises LimitError before any byte is sent."""

    role = "stimulator"

    @abstractmethod
    def validate(self, stimulus: Any) -> Any:
        """Return the stimulus as the device will really deliver it (quantised), or raise
        LimitError naming the offending field and its allowed range."""

    @abstractmethod
    def stimulate(self, stimulus: Any) -> StimulusRecord:
        """Validate, upload and trigger one stimulus; return when and how it fired."""
