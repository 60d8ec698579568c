"""The simulation's pacing: one virtual clock, two speeds.

- "max": the simulated devices produce data as fast as the machine computes it; the run
  loop runs lock-step so results are deterministic for a seed.
- "realtime": simulated devices hand out data no earlier than real hardware would: a block
  of samples ending at virtual time t is released at wall time start + t.
"""

from __future__ import annotations

import time


class SimClock:
    def __init__(self, speed: str = "max") -> None:
        if speed not in ("max", "realtime"):
            raise ValueError(f"speed = {speed!r}: choose 'max' or 'realtime'")
        self.speed = speed
        self._wall_start: float | None = None

    @property
    def realtime(self) -> bool:
        return self.speed == "realtime"

    def start(self) -> None:
        """Virtual time 0 is now (called when the acquisition starts)."""
        self._wall_start = time.monotonic()

    def now_virtual_s(self) -> float | None:
        """Virtual time that corresponds to this wall-clock instant (realtime only)."""
        if not self.realtime or self._wall_start is None:
            return None
        return time.monotonic() - self._wall_start

    def wait_until(self, t_virtual_s: float) -> None:
        """Block until the wall clock reaches virtual time t (no wait at max speed)."""
        if not self.realtime or self._wall_start is None:
            return
        delay = self._wall_start + t_virtual_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
