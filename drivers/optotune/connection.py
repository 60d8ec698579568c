"""The lens's serial connection: the codec over a locked pyserial transport.

A lens *has* a connection; it is not one. The transport is opened only with
`serial.serial_for_url`, so a URL picks the device at run time: a port name (`/dev/ttyACM0`,
`COM5`), `optotune_sim://` for the simulated lens (registered by importing
`simulators.optotune`), or `socket://host:port` for a lens served by another process. A port
can also be named by text in its USB description ("Optotune"), found with
`serial.tools.list_ports`.

Every exchange holds one lock, so commands from several threads never interleave on the wire.
After an error the input is resynchronised: before the next command the connection waits one
timeout for late bytes and discards them, so a late reply is not read as the next one's. (The
protocol has no sequence numbers: a reply later than that is caught as stray bytes before the
command after, and raised as UnexpectedReplyError rather than misread.)
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import serial
import serial.tools.list_ports

from drivers.errors import DeviceError, DeviceNotFound, DeviceTimeout
from drivers.optotune import codec
from drivers.optotune.errors import LensRefusedError, UnexpectedReplyError

log = logging.getLogger(__name__)

SIMULATOR_URL = "optotune_sim://"
_LATE_BYTES_MAX = 4096
DEFAULT_PORT = "Optotune"


def ports_found() -> list[str]:
    """Serial ports on this machine as 'device (description)'."""
    return [f"{p.device} ({p.description})" for p in serial.tools.list_ports.comports()]


def _ports_hint() -> str:
    found = ports_found()
    listing = ", ".join(found) if found else "none"
    return f"Ports found: {listing}. For the simulated lens use '{SIMULATOR_URL}'."


def resolve_port(port: str) -> str:
    """A URL or port name -> itself; otherwise the one port whose description (or
    manufacturer, product) contains `port`, case-insensitively. Raises DeviceNotFound listing
    the ports found and the simulator URL when nothing (or more than one port) matches."""
    if not isinstance(port, str) or not port:
        raise DeviceNotFound(
            f"port = {port!r}: give a port name, a URL or a description text. " + _ports_hint()
        )
    if "://" in port:
        return port
    infos = list(serial.tools.list_ports.comports())
    if any(p.device == port for p in infos) or os.path.exists(port):
        return port
    needle = port.lower()
    matches = [
        p
        for p in infos
        if any(
            needle in (text or "").lower() for text in (p.description, p.manufacturer, p.product)
        )
    ]
    if len(matches) == 1:
        return matches[0].device
    if matches:
        names = ", ".join(f"{p.device} ({p.description})" for p in matches)
        raise DeviceNotFound(f"{len(matches)} serial ports match {port!r}: {names}; name one")
    raise DeviceNotFound(
        f"no serial port is named {port!r} or has it in its description. " + _ports_hint()
    )


def open_transport(port: str, timeout_s: float) -> Any:
    """Open `port` (name, URL or description text) at 115200 8-N-1 with serial_for_url."""
    url = resolve_port(port)
    try:
        return serial.serial_for_url(
            url, baudrate=codec.BAUDRATE, timeout=timeout_s, write_timeout=timeout_s
        )
    except ValueError as e:  # pyserial: "invalid URL, protocol 'x' not known"
        extra = ""
        if url.lower().startswith(SIMULATOR_URL):
            extra = (
                " The simulated lens registers this scheme when simulators.optotune is "
                "imported (rig lens and the simulated rig import it)."
            )
        raise DeviceNotFound(f"cannot open {url!r}: {e}.{extra} " + _ports_hint()) from e
    except serial.SerialException as e:
        raise DeviceNotFound(f"cannot open {url!r}: {e}. " + _ports_hint()) from e


class LensConnection:
    """Frames out, checked replies in, one exchange at a time."""

    def __init__(self, transport: Any, url: str = "") -> None:
        self.transport = transport
        self.url = url or str(getattr(transport, "port", ""))
        self.bytes_written = 0
        self._lock = threading.Lock()
        # before the next command: None, "drain" what is waiting, or "wait" one timeout
        # for late replies to drain too (after an error)
        self._stale: str | None = "drain"
        self._last_silent: str | None = None

    @classmethod
    def open(cls, port: str, timeout_s: float = 0.5) -> "LensConnection":
        transport = open_transport(port, timeout_s)
        return cls(transport, str(transport.port))

    def close(self) -> None:
        with self._lock:
            self.transport.close()

    @property
    def timeout_s(self) -> float:
        return float(self.transport.timeout)

    # -- exchanges -------------------------------------------------------------------------
    def handshake(self) -> None:
        """`Start` -> `Ready\\r\\n` (also resets the output current to zero)."""
        with self._lock:
            self._before_write("handshake (Start)")
            self._write(codec.HANDSHAKE)
            raw = self._read(len(codec.HANDSHAKE_REPLY), "handshake (Start)")
            if raw != codec.HANDSHAKE_REPLY:
                self._stale = "wait"
                raise UnexpectedReplyError(
                    f"handshake: sent b'Start', expected b'Ready\\r\\n', got {raw!r}"
                )

    def query(self, request: codec.Request) -> tuple:
        """Send a command that has a reply; return the reply's values."""
        if request.reply is None:
            raise ValueError(f"{request.name} has no reply: use send()")
        with self._lock:
            self._before_write(request.name)
            self._write(request.frame)
            raw = self._read_reply(request)
            try:
                return codec.parse_reply(request, raw)
            except Exception:
                self._stale = "wait"
                raise

    def send(self, request: codec.Request) -> None:
        """Send a silent write (no reply on success). A refusal (`N`) shows up as stray
        bytes before the next command and is raised then."""
        if request.reply is not None:
            raise ValueError(f"{request.name} has a reply: use query()")
        with self._lock:
            self._before_write(request.name)
            self._write(request.frame)
            self._last_silent = request.name

    # -- internals ---------------------------------------------------------------------------
    def _write(self, frame: bytes) -> None:
        try:
            self.transport.write(frame)
        except serial.SerialTimeoutException as e:
            self._stale = "wait"
            raise DeviceTimeout(f"writing {frame.hex(' ')} to {self.url} timed out") from e
        except serial.SerialException as e:
            self._stale = "wait"
            raise DeviceError(f"writing to {self.url} failed: {e}") from e
        self.bytes_written += len(frame)

    def _before_write(self, name: str) -> None:
        """Bytes waiting before a command are not a reply to it: after an error they are
        late leftovers (discarded); otherwise a refusal of an earlier silent write, or noise."""
        stray = b""
        if self._stale == "wait":  # a late reply may still be on its way: give it a timeout
            stray = self.transport.read(_LATE_BYTES_MAX)
        waiting = self.transport.in_waiting
        stray += self.transport.read(waiting) if waiting else b""
        if self._stale:
            if stray:
                log.warning("%s: discarded %d late bytes %s", self.url, len(stray), stray.hex(" "))
            self._stale = None
            self._last_silent = None
            return
        if not stray:
            return
        earlier, self._last_silent = self._last_silent, None
        if stray == codec.REFUSAL and earlier is not None:
            raise LensRefusedError(
                f"the lens answered N to the earlier {earlier}: it did not take effect "
                f"(a bad CRC on the line); {name} was not sent"
            )
        raise UnexpectedReplyError(
            f"{len(stray)} unexpected bytes {stray.hex(' ')} arrived between commands; "
            f"{name} was not sent"
        )

    def _read(self, n: int, name: str) -> bytes:
        try:
            raw = self.transport.read(n)
        except serial.SerialException as e:
            self._stale = "wait"
            raise DeviceError(f"reading the reply to {name} from {self.url} failed: {e}") from e
        if not raw:
            self._stale = "wait"
            raise DeviceTimeout(
                f"the lens at {self.url} did not answer {name} within {self.timeout_s:g} s"
            )
        return raw

    def _read_reply(self, request: codec.Request) -> bytes:
        assert request.reply is not None
        first = self._read(1, request.name)
        if first == codec.REFUSAL[:1]:
            return first + self.transport.read(len(codec.REFUSAL) - 1)
        return first + self.transport.read(request.reply.size - 1)
