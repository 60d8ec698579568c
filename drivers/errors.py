"""Typed errors raised by every driver.

The tree lets callers react to what went wrong rather than to which device failed:

    DeviceError                 anything a device or its transport did wrong
    ├── DeviceNotFound          the device (or its driver library) is not there at open()
    ├── DeviceTimeout           the device did not answer or deliver data in time
    ├── ProtocolError           the device answered, but not as its protocol says
    ├── DeviceStateError        the call is not allowed in the device's current state
    └── LimitError (ValueError) a requested value is outside the device's limits;
                                raised *before* anything is sent to the hardware
"""

from __future__ import annotations


class DeviceError(Exception):
    """Base class: a device, its transport or its driver library failed."""


class DeviceNotFound(DeviceError):
    """Raised by open() when the device, its port, or the vendor driver library is missing.

    The message says what was looked for and what to use instead (for example the
    simulated rig when the NI-DAQmx driver is not installed).
    """


class DeviceTimeout(DeviceError):
    """Raised when a device does not answer, or data does not arrive, within its timeout."""


class ProtocolError(DeviceError):
    """Raised when a reply is malformed: bad checksum, unexpected bytes, an error reply."""


class DeviceStateError(DeviceError):
    """Raised when a call is not valid now (not open, running, wrong mode, closed)."""


class LimitError(DeviceError, ValueError):
    """Raised when a value is outside the device's limits, before any byte is sent.

    Also a ValueError, so code that validates user input can catch it as bad input.
    The message names the parameter, the value and the allowed range.
    """


def check_range(name: str, value: float, low: float, high: float, unit: str = "") -> float:
    """Return `value` if low <= value <= high, else raise LimitError naming all three."""
    if not (low <= value <= high):
        u = f" {unit}" if unit else ""
        raise LimitError(
            f"{name} = {value:g}{u} is outside the allowed range [{low:g}, {high:g}]{u}"
        )
    return value
