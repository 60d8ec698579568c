"""Z-stack with the rig's focus device (tunable lens or piezo): a plane, settle, average, next.

For each plane z = start_um, start_um + step_um, ... up to stop_um: command the focus, let it
settle (frames that start less than `settle_s` after the command are not used: an EL-10-30
rings for about 15 ms after a step, hardware.md section 1), average `frames_per_plane`
frames, read the lens (focal power, current, temperature), go on. The session stops itself
when the stack is complete.

Written to the session folder, `zstack.npz`:
    stack            (planes, H, W) float32, mean of each plane's frames (raw ADC units)
    z_um             (planes,) commanded z of each plane
    frames           (planes,) frames averaged (fewer than frames_per_plane if cut short)
    first_frame      (planes,) index of the first frame used for each plane
    focal_power_dpt, current_ma, temperature_c   (planes,) what the lens reported after the
                     plane's frames (NaN for a piezo or when the reading failed)
    settle_s, complete

The command lands where the acquisition stands: at max speed (lock-step) at the end of the
frame just processed; in realtime the next frame is already being acquired, so that whole
frame is counted as settling too.

    rig run etl_zstack --rig sim-volume --set volume.planes_um=[] --duration 30
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rig.protocol import Param, Protocol


class EtlZstack(Protocol):
    name = "etl_zstack"

    start_um = Param(-30.0, unit="um", min=-10000.0, max=10000.0, help="first plane")
    stop_um = Param(30.0, unit="um", min=-10000.0, max=10000.0, help="last plane (inclusive)")
    step_um = Param(3.0, unit="um", min=0.05, max=1000.0, help="plane spacing")
    settle_s = Param(0.03, unit="s", min=0.0, max=10.0, help="after each step before frames count")
    frames_per_plane = Param(2, min=1, max=10000, help="frames averaged per plane")

    def setup(self, ctx: Any) -> None:
        self.focus = ctx.focus
        if self.focus is None:
            raise RuntimeError(
                'etl_zstack needs a focus device: set focus.kind = "optotune" (or "piezo") '
                "in the rig file"
            )
        if ctx.rig_config["volume.planes_um"]:
            raise RuntimeError(
                "etl_zstack steps the focus itself: run it with volume.planes_um = [] "
                "(e.g. --set volume.planes_um=[])"
            )
        if self.stop_um < self.start_um:
            raise ValueError(f"stop_um = {self.stop_um:g} is below start_um = {self.start_um:g} um")
        n = int(math.floor((self.stop_um - self.start_um) / self.step_um + 1e-9)) + 1
        self.z_um = self.start_um + self.step_um * np.arange(n)
        z_range = _z_range(self.focus)
        if z_range is not None:
            lo, hi = z_range
            if self.z_um[0] < lo or self.z_um[-1] > hi:
                raise ValueError(
                    f"the stack [{self.z_um[0]:g}, {self.z_um[-1]:g}] um leaves the focus range "
                    f"[{lo:g}, {hi:g}] um"
                )
        h, w = ctx.frame_shape
        self.sums = np.zeros((n, h, w), np.float64)
        self.frames = np.zeros(n, np.int64)
        self.first_frame = np.full(n, -1, np.int64)
        self.readings = {
            key: np.full(n, np.nan) for key in ("focal_power_dpt", "current_ma", "temperature_c")
        }
        self.plane = -1
        self.use_from_s = math.inf
        self.complete = False

    def _step(self, ctx: Any) -> None:
        """Command the next plane; frames starting before use_from_s are settling."""
        self.plane += 1
        z = float(self.z_um[self.plane])
        self.focus.move_to_um(z)
        period = 1.0 / ctx.frame_rate_hz
        # where the acquisition stands: the end of the last acquired frame; in realtime the
        # frame after it is already under way and sees the step
        landed_s = ctx.acquired_until_s + (period if ctx.speed == "realtime" else 0.0)
        self.use_from_s = landed_s + self.settle_s - 1e-9
        ctx.mark("zstack plane", plane=self.plane, z_um=z, use_from_s=self.use_from_s)

    def on_frame(self, ctx: Any) -> None:
        if self.complete:
            return
        if self.plane < 0:
            self._step(ctx)
            return
        if ctx.time_s < self.use_from_s:
            return  # settling
        k = self.plane
        self.sums[k] += ctx.frame
        if self.frames[k] == 0:
            self.first_frame[k] = ctx.frame_index
        self.frames[k] += 1
        if self.frames[k] < self.frames_per_plane:
            return
        self._read_lens(k)
        if k + 1 < self.z_um.size:
            self._step(ctx)
        else:
            self.complete = True
            ctx.stop("z-stack complete")

    def _read_lens(self, k: int) -> None:
        readings = getattr(self.focus, "readings", None)
        if not callable(readings):
            return
        values = readings()
        for key, array in self.readings.items():
            array[k] = float(values.get(key, math.nan))

    def teardown(self, ctx: Any) -> None:
        if not hasattr(self, "sums") or ctx.session_dir is None:
            return
        counts = np.maximum(self.frames, 1)[:, None, None]
        np.savez(
            ctx.session_dir / "zstack.npz",
            stack=(self.sums / counts).astype(np.float32),
            z_um=self.z_um,
            frames=self.frames,
            first_frame=self.first_frame,
            settle_s=self.settle_s,
            complete=self.complete,
            **self.readings,
        )

    def metrics(self) -> dict[str, Any]:
        done = int(np.count_nonzero(self.frames >= self.frames_per_plane))
        return {"planes": int(self.z_um.size), "planes_done": done, "complete": self.complete}


def _z_range(focus: Any) -> tuple[float, float] | None:
    calibration = getattr(focus, "calibration", None)
    if calibration is not None and hasattr(calibration, "z_range_um"):
        return tuple(calibration.z_range_um)  # type: ignore[return-value]
    if calibration is not None and hasattr(calibration, "min_um"):
        return (calibration.min_um, calibration.max_um)
    return None
