"""Errors of MEA devices, on top of the shared tree in drivers/errors.py."""

from __future__ import annotations

from typing import Any

from drivers.errors import DeviceError


class ConnectionLost(DeviceError):
    """The connection to the device broke (the peer closed it or reset it). Nothing more can
    be sent until `reconnect()` succeeds."""


class StimulationFailed(DeviceError):
    """A stimulus was not delivered, or its delivery cannot be confirmed (the connection broke
    while it was being triggered). `record` describes the attempt, with status "failed"."""

    def __init__(self, message: str, record: Any = None) -> None:
        super().__init__(message)
        self.record = record
