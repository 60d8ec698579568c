"""Typed errors of the Optotune Lens Driver 4 protocol (all in the drivers.errors tree).

    ProtocolError
    ├── LensRefusedError      the lens answered `N\\r\\n`: it received a frame with a bad CRC
    ├── ReplyCrcError         a reply's CRC-16 does not match its payload
    ├── UnexpectedReplyError  bytes that are not the expected reply (wrong echo, no CRLF,
    │                         stray bytes between commands)
    └── IncompleteReplyError  a reply stopped short (bytes lost on the line)
    LimitError + DeviceStateError
    └── ModeMismatchError     a command that needs another mode (current in focal power mode)

Timeouts are plain `DeviceTimeout`.
"""

from __future__ import annotations

from drivers.errors import DeviceStateError, LimitError, ProtocolError


class LensRefusedError(ProtocolError):
    """The lens answered `N\\r\\n`: a frame reached it with a CRC that did not match."""


class ReplyCrcError(ProtocolError):
    """A reply arrived whole, but the CRC-16 it carries is not the CRC of its payload."""


class UnexpectedReplyError(ProtocolError):
    """Bytes arrived that are not the reply the protocol prescribes for the command sent."""


class IncompleteReplyError(ProtocolError):
    """Part of a reply arrived, then nothing more within the timeout (bytes were lost)."""


class ModeMismatchError(LimitError, DeviceStateError):
    """A command that the lens only accepts in another mode (for example `Aw`, set current,
    in focal power mode). Raised before any byte is sent; it is a LimitError (bad input)
    and a DeviceStateError (wrong state) so callers can catch either."""
