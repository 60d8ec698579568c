"""The reference z-stack: after the reference period, the focus device steps through planes
around the imaging plane so that each detected ROI's brightness against depth can be measured
and the cells the plane does not cut can be left out (rois.zstack_range_um > 0; see
analysis.rois.axial_fraction and docs/PIPELINE.md).

Order: the imaging plane (z = 0) first, then outward below it (-step, -2 step, ...), then
outward above it, then back to z = 0. After every focus command the frames of
`settle_frames` are not used (the lens rings for ~15 ms; in realtime the frame in flight sees
the step too). Each frame is registered, rigid and subpixel, against the plane next to its
own towards z = 0 (the z = 0 plane against the session's mean image), so the brain may move
during the stack: every plane ends up aligned with the session's reference, and a plane
1 um from its neighbour correlates with it as well as two frames of one plane do. Frames are
accumulated at the whole-pixel shift (ROIs are ~100 pixels; half a pixel does not change a
mean over them). A frame that cannot be registered is left out; a plane that gets fewer than
its frames within three times the planned count is closed with what it has.

Runs on the processing thread: per frame one registration (~1 ms at 512 x 512) and one add.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from analysis import motion as motion_numerics
from rig.focus import move_focus

MAX_FRAMES_FACTOR = 3  # a plane is closed after this many times its planned frames


class ReferenceZStack:
    def __init__(
        self,
        *,
        half_range_um: float,
        step_um: float,
        frames_per_plane: int,
        settle_frames: int,
        frame_shape: tuple[int, int],
        focus: Any,
        max_shift_px: float | None,
        registration_px: int,
        post_event: Callable[[dict[str, Any]], None],
        faults: Any = None,
    ) -> None:
        """max_shift_px None: no registration (motion correction off). faults: the session's
        rig.focus.FocusFaults (focus.on_fault); None: a focus error propagates."""
        if focus is None:
            raise ValueError("a reference z-stack needs a focus device (focus.kind)")
        n_side = int(math.floor(half_range_um / step_um + 1e-9))
        if n_side < 1:
            raise ValueError(
                f"a z-stack of +-{half_range_um:g} um in steps of {step_um:g} um holds no plane "
                "besides the imaging plane"
            )
        side = step_um * np.arange(1, n_side + 1)
        self.z_um = np.concatenate([-side[::-1], [0.0], side])  # ascending; index n_side is 0
        centre = n_side
        below = [centre - k for k in range(1, n_side + 1)]
        above = [centre + k for k in range(1, n_side + 1)]
        self.order = [centre] + below + above
        # the plane each plane is registered against: its neighbour towards z = 0
        self.towards_centre = {k: (k + 1 if k < centre else k - 1) for k in below + above}
        self.centre = centre
        self.frames_per_plane = int(frames_per_plane)
        self.settle_frames = int(settle_frames)
        self.focus = focus
        self.max_shift_px = max_shift_px
        self.registration_px = int(registration_px)
        self.post_event = post_event
        self.faults = faults
        self.failed: str | None = None  # why the stack stopped early (a focus fault)
        n_planes = self.z_um.size
        h, w = frame_shape
        self.frame_shape = (h, w)
        self.sums = np.zeros((n_planes, h, w), np.float64)
        self.counts = np.zeros((n_planes, h, w), np.int32)
        self.frames = np.zeros(n_planes, np.int64)
        self.first_frame = np.full(n_planes, -1, np.int64)
        self.means: dict[int, np.ndarray] = {}
        self._position = -1
        self._skip = 0
        self._seen = 0
        self._corrector: motion_numerics.MotionCorrector | None = None
        self._shift = np.zeros(3)
        self.started = False
        self.done = False

    @property
    def active(self) -> bool:
        return self.started and not self.done

    @property
    def n_planes(self) -> int:
        return int(self.z_um.size)

    def start(self, session_mean_image: np.ndarray, frame_index: int) -> None:
        """Begin at the imaging plane; registration against the session's mean image."""
        self.means[-1] = np.asarray(session_mean_image, np.float64)
        self.started = True
        self.post_event(
            {
                "type": "zstack",
                "event": "started",
                "frame": frame_index,
                "planes_um": self.z_um.tolist(),
                "frames_per_plane": self.frames_per_plane,
            }
        )
        self._next_plane(frame_index)

    def take(self, frame: np.ndarray, frame_index: int, shift_out: np.ndarray) -> int:
        """Use one frame; shift_out[0:2] gets its shift against the session reference (NaN
        while settling or when it cannot be registered). Returns the motion status."""
        shift_out[0] = shift_out[1] = np.nan
        if self._skip > 0:
            self._skip -= 1
            return motion_numerics.OK
        if self._position >= len(self.order):  # back at z = 0 and settled
            self.done = True
            self.post_event({"type": "zstack", "event": "complete", "frame": frame_index})
            return motion_numerics.OK
        plane = self.order[self._position]
        self._seen += 1
        status = motion_numerics.OK
        dy = dx = 0
        if self._corrector is not None:
            status = self._corrector.register(frame, self._shift)
            if status in (motion_numerics.OK, motion_numerics.AT_LIMIT):
                shift_out[0], shift_out[1] = self._shift[0], self._shift[1]
                dy, dx = int(round(self._shift[0])), int(round(self._shift[1]))
        else:
            shift_out[0] = shift_out[1] = 0.0
        if status in (motion_numerics.OK, motion_numerics.AT_LIMIT):
            _add_shifted(frame, dy, dx, self.sums[plane], self.counts[plane])
            if self.frames[plane] == 0:
                self.first_frame[plane] = frame_index
            self.frames[plane] += 1
        if (
            self.frames[plane] >= self.frames_per_plane
            or self._seen >= MAX_FRAMES_FACTOR * self.frames_per_plane
        ):
            self._close_plane(plane, frame_index)
            self._next_plane(frame_index)
        return status

    def stack(self) -> np.ndarray:
        """(planes, H, W) float64 aligned plane means, NaN where a plane has no data."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)

    def _close_plane(self, plane: int, frame_index: int) -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(
                self.counts[plane] > 0,
                self.sums[plane] / np.maximum(self.counts[plane], 1),
                np.nan,
            )
        self.means[plane] = mean
        event = {
            "type": "zstack",
            "event": "plane done",
            "frame": frame_index,
            "z_um": float(self.z_um[plane]),
            "frames": int(self.frames[plane]),
        }
        if self.frames[plane] < self.frames_per_plane:
            event["warning"] = (
                f"only {int(self.frames[plane])} of {self.frames_per_plane} frames could be "
                f"registered in {self._seen}"
            )
        self.post_event(event)

    def _move(self, z_um: float, frame_index: int) -> bool:
        """Command the focus; False (and the stack ends) after a focus fault that
        focus.on_fault = "record" lets the session survive."""
        if move_focus(self.focus, z_um, self.faults, f"reference z-stack: moving the focus to "
                      f"{z_um:g} um"):
            return True
        error = self.faults.error if self.faults is not None else None
        self._stop_early(error or "the focus device faulted", frame_index)
        return False

    def _stop_early(self, why: str, frame_index: int) -> None:
        self.failed = why
        self.done = True
        self.post_event(
            {
                "type": "zstack",
                "event": "stopped",
                "frame": frame_index,
                "reason": why,
                "warning": "the focus may not be back at the imaging plane; all detected ROIs "
                "are kept",
            }
        )

    def _next_plane(self, frame_index: int) -> None:
        self._position += 1
        self._seen = 0
        self._skip = self.settle_frames
        self._corrector = None
        if self._position >= len(self.order):
            self._move(0.0, frame_index)
            return
        plane = self.order[self._position]
        if not self._move(float(self.z_um[plane]), frame_index):
            return
        if self.max_shift_px is not None:
            image = self._registration_image(plane)
            self._corrector = motion_numerics.MotionCorrector(
                image.astype(np.float32), self.max_shift_px,
                registration_size_px=self.registration_px,
            )

    def _registration_image(self, plane: int) -> np.ndarray:
        """The nearest plane towards z = 0 that has data (the session's mean image for the
        imaging plane, or when none has); its edge without data filled with its mean."""
        k = plane
        while k != self.centre:
            k = self.towards_centre[k]
            mean = self.means.get(k)
            if mean is not None and np.isfinite(mean).any():
                return np.nan_to_num(mean, nan=float(np.nanmean(mean)))
        return self.means[-1]


def _add_shifted(frame: np.ndarray, dy: int, dx: int, sums: np.ndarray,
                 counts: np.ndarray) -> None:
    """sums[y, x] += frame[y + dy, x + dx] where that pixel exists; counts[y, x] += 1 there.
    (dy, dx): the frame's content displacement against the reference."""
    h, w = frame.shape
    if abs(dy) >= h or abs(dx) >= w:
        return
    out_y = slice(max(0, -dy), min(h, h - dy))
    out_x = slice(max(0, -dx), min(w, w - dx))
    in_y = slice(max(0, dy), min(h, h + dy))
    in_x = slice(max(0, dx), min(w, w + dx))
    sums[out_y, out_x] += frame[in_y, in_x]
    counts[out_y, out_x] += 1
