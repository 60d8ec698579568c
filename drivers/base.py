"""The device contract shared by every driver (template method, as in python-microscope).

Public lifecycle methods live here and are final in spirit; drivers implement the private
hooks `_open`, `_close`, `_safe` and `_snapshot`. Guarantees a caller can rely on:

- `open()` then `close()`; `close()` is idempotent and always tries `safe()` first;
- the device is a context manager (`with Lens(url) as lens: ...`), closing on exit;
- `safe()` puts the device in its neutral state (stimulation off, lens at rest, galvos
  parked) and may be called at any time after `open()`, including from an error handler;
- `snapshot()` returns a JSON-serialisable dict of the settings a session records;
- calling a method that needs an open device on a closed one raises DeviceStateError.

Hardware safety never relies on `__del__`: the run loop calls `safe()` and `close()`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

from drivers.errors import DeviceStateError


class Device(ABC):
    """A piece of hardware (or its simulation) with a lifecycle, a safe state and a snapshot."""

    #: the role name used in rig configs and snapshots ("scanner", "focus", "stimulator", ...)
    role: str = "device"

    def __init__(self, name: str | None = None) -> None:
        self.name = name or type(self).__name__
        self._is_open = False
        self._lifecycle_lock = threading.RLock()

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._is_open

    def open(self) -> "Device":
        with self._lifecycle_lock:
            if not self._is_open:
                self._open()
                self._is_open = True
        return self

    def close(self) -> None:
        """Put the device in its safe state and release it. Safe to call more than once."""
        with self._lifecycle_lock:
            if not self._is_open:
                return
            try:
                self._safe()
            finally:
                try:
                    self._close()
                finally:
                    self._is_open = False

    def safe(self) -> None:
        """Neutral state: no stimulation, lens at rest, scanners parked. Never raises for a
        closed device (there is nothing to make safe)."""
        with self._lifecycle_lock:
            if self._is_open:
                self._safe()

    def snapshot(self) -> dict[str, Any]:
        """Settings to record with a session (JSON-serialisable)."""
        snap = {
            "name": self.name,
            "role": self.role,
            "driver": type(self).__qualname__,
            "open": self._is_open,
        }
        snap.update(self._snapshot())
        return snap

    def require_open(self) -> None:
        if not self._is_open:
            raise DeviceStateError(f"{self.name} is not open: call open() (or use 'with') first")

    def __enter__(self) -> "Device":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- hooks for drivers -----------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None:
        """Connect to the hardware; raise DeviceNotFound if it is not there."""

    @abstractmethod
    def _close(self) -> None:
        """Release the hardware (called after `_safe`)."""

    @abstractmethod
    def _safe(self) -> None:
        """Put the hardware in its neutral state."""

    def _snapshot(self) -> dict[str, Any]:
        return {}
