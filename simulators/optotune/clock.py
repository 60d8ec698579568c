"""Clocks the simulated lens can run on.

The lens only needs `now_s()`: the time, in seconds, at which a command that arrives now takes
effect. By default that is the wall clock (RealTimeClock). A simulated rig passes a clock of
its own virtual time instead (any object with `now_s()`), so the lens moves on the same time
axis as the simulated scanner and world; ManualClock is the simplest such clock.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Protocol


class LensClock(Protocol):
    def now_s(self) -> float: ...


class RealTimeClock:
    """Seconds of time.monotonic() since the clock was made."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def now_s(self) -> float:
        return time.monotonic() - self._start


class ManualClock:
    """A virtual clock that moves only when told to (tests, benchmarks, lock-step rigs)."""

    def __init__(self, t_s: float = 0.0) -> None:
        self._t_s = float(t_s)
        self._lock = threading.Lock()

    def now_s(self) -> float:
        return self._t_s

    def set(self, t_s: float) -> None:
        """Move to t_s; virtual time never goes back."""
        with self._lock:
            if not (math.isfinite(t_s) and t_s >= self._t_s):
                raise ValueError(
                    f"t_s = {t_s!r} must be finite and >= the current time "
                    f"{self._t_s!r} s (virtual time does not go back)"
                )
            self._t_s = float(t_s)

    def advance(self, dt_s: float) -> None:
        if not (math.isfinite(dt_s) and dt_s >= 0):
            raise ValueError(f"dt_s = {dt_s!r} must be finite and >= 0")
        self.set(self._t_s + dt_s)
