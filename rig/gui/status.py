"""Status bar: acquisition frame rate, dropped frames, loop latency, display rate, recording.

Rates are measured over the last `window_s` of wall time: the acquisition rate from the
published frame index, the display rate from the window's own refreshes. Dropped frames are
acquisition frames the loop lost (shown red when any); dropped display frames are normal and
not counted here.
"""

from __future__ import annotations

import time
from collections import deque

from pyqtgraph.Qt import QtWidgets

from rig.gui.widgets import restyle
from rig.live import LiveSnapshot


class RateMeter:
    """Events per second over a trailing wall-clock window, from (time, count) samples."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, count: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def reset(self) -> None:
        self._samples.clear()

    @property
    def rate_hz(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else None


class StatusLine:
    """The permanent fields of the main window's QStatusBar."""

    def __init__(self, bar: QtWidgets.QStatusBar) -> None:
        self.frames = QtWidgets.QLabel("no acquisition")
        self.dropped = QtWidgets.QLabel("dropped -")
        self.latency = QtWidgets.QLabel("latency -")
        self.display = QtWidgets.QLabel("display -")
        self.recording = QtWidgets.QLabel("not recording")
        for w in (self.frames, self.dropped, self.latency, self.display, self.recording):
            w.setContentsMargins(8, 0, 8, 0)
            bar.addPermanentWidget(w)
        self.acquisition_rate = RateMeter()
        self.display_rate = RateMeter()
        self._refreshes = 0

    def reset(self) -> None:
        self.acquisition_rate.reset()

    def refresh(self, snap: LiveSnapshot | None) -> None:
        self._refreshes += 1
        self.display_rate.add(self._refreshes)
        shown = self.display_rate.rate_hz
        self.display.setText("display -" if shown is None else f"display {shown:.0f} Hz")
        if snap is None:
            return
        if snap.frame_index >= 0:
            self.acquisition_rate.add(snap.frame_index)
            rate = self.acquisition_rate.rate_hz
            measured = "" if rate is None else f"{rate:.1f} Hz, "
            self.frames.setText(
                f"frame {snap.frame_index}: {measured}nominal {snap.frame_rate_hz:.2f} Hz"
            )
        self.dropped.setText(f"dropped {snap.frames_dropped}")
        restyle(self.dropped, "color: #b00020; font-weight: bold;" if snap.frames_dropped else "")
        if snap.latency_p50_ms is not None and snap.latency_p99_ms is not None:
            self.latency.setText(
                f"latency p50 {snap.latency_p50_ms:.2f} ms, p99 {snap.latency_p99_ms:.2f} ms"
            )
        if snap.recording:
            self.recording.setText("\u25cf REC")
            restyle(self.recording, "color: #d00000; font-weight: bold;")
        else:
            self.recording.setText(f"not recording ({snap.status})")
            restyle(self.recording, "")
