"""pyserial URL handler `optotune_sim://`: a serial port whose far end is a SimulatedLens.

pyserial's `serial_for_url(url)` imports `<package>.protocol_<scheme>` for every package in
`serial.protocol_handler_packages`; importing `simulators.optotune` appends that package, so
the unchanged driver reaches this class through `serial_for_url("optotune_sim://...")`.

Timing is the transport's: a reply becomes readable when its bytes would have crossed the
wire (10 bits per byte at the port's baud rate, both ways, when `wire_delay` is on) plus the
`reply_delay_s` fault. `read()` honours the port timeout like a real port.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from simulators.optotune.device import SimulatedLens, lens_for_url


class Serial(SerialBase):
    """Serial port to a simulated Optotune Lens Driver 4."""

    def __init__(self, *args, **kwargs) -> None:
        self.lens: SimulatedLens | None = None
        self._pending: deque[tuple[float, bytes]] = deque()
        self._rx = bytearray()
        self._io_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        self.from_url(self._port)
        self._pending.clear()
        self._rx.clear()
        self.is_open = True

    def from_url(self, url: str) -> None:
        try:
            self.lens = lens_for_url(url)
        except ValueError as e:
            raise SerialException(str(e)) from e

    def close(self) -> None:
        self.is_open = False
        self.lens = None
        super().close()

    def _reconfigure_port(self, *args, **kwargs) -> None:
        pass

    # -- data ------------------------------------------------------------------------------------
    def write(self, data: bytes) -> int:
        if not self.is_open or self.lens is None:
            raise PortNotOpenError()
        data = bytes(data)
        sent_at = time.monotonic()
        reply = self.lens.receive(data)
        if reply:
            faults = self.lens.faults
            wire = 10.0 * (len(data) + len(reply)) / self._baudrate if faults.wire_delay else 0.0
            with self._io_lock:
                self._pending.append((sent_at + wire + faults.reply_delay_s, reply))
        return len(data)

    def _release_due(self) -> float | None:
        """Move replies whose time has come to the input buffer; return the next due time."""
        now = time.monotonic()
        while self._pending and self._pending[0][0] <= now:
            self._rx += self._pending.popleft()[1]
        return self._pending[0][0] if self._pending else None

    @property
    def in_waiting(self) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        with self._io_lock:
            self._release_due()
            return len(self._rx)

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        out = bytearray()
        while len(out) < size:
            with self._io_lock:
                next_due = self._release_due()
                take = min(size - len(out), len(self._rx))
                out += self._rx[:take]
                del self._rx[:take]
            if len(out) >= size:
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if next_due is None:
                if deadline is None:
                    break  # nothing will ever come: a real port would block for good
                time.sleep(deadline - now)
            else:
                wake = next_due if deadline is None else min(next_due, deadline)
                time.sleep(max(wake - now, 0.0))
        return bytes(out)

    def reset_input_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        with self._io_lock:
            self._release_due()
            self._rx.clear()

    def reset_output_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()

    @property
    def out_waiting(self) -> int:
        return 0

    # -- modem lines (none on a virtual COM port that matter here) ---------------------------
    def _update_break_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True
