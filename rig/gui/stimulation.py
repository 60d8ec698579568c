"""Stimulation: the raster of stimuli, the SAFE-OFF button, and a manual trigger.

- Raster: one tick per stimulated target at its onset (device clock, s), on the row of the ROI
  nearest the target (within a cell radius; row -1 when no ROI is that close).
- SAFE-OFF: `RunControl.safe_off()` - stimulators to their safe state at once and the protocol
  paused (acquisition and recording go on) until Resume. Always enabled, also bound to Esc.
- Manual trigger: a light train on the centres of the selected ROIs. It goes through the
  stimulator's own validation synchronously (`RunControl.manual_stimulate`): a LimitError is
  shown as it is, nothing is sent; a valid stimulus is queued and delivered by the processing
  thread after the next frame, logged like any other (events.jsonl, mark "manual stimulus").
  The inputs accept any number on purpose: the stimulator's limits are the only gate.
"""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtWidgets

from drivers.errors import DeviceError
from drivers.stimulation.light import LightStimulus
from rig.config import RigConfig
from rig.gui import geometry, stimuli
from rig.gui.controller import ExperimentController
from rig.gui.selection import RoiSelection
from rig.gui.widgets import caption, restyle
from rig.live import LiveSnapshot

SAFE_OFF_STYLE = (
    "QPushButton { background-color: #c62828; color: white; font-weight: bold; "
    "font-size: 18px; border: 2px solid #7f0000; border-radius: 6px; padding: 8px; }"
    "QPushButton:pressed { background-color: #7f0000; }"
)
ERROR_STYLE = "color: #b00020;"
OK_STYLE = "color: #1b5e20;"


class StimulusRaster(QtWidgets.QWidget):
    def __init__(self, cell_radius_um: float = 6.0, interval_s: float = 0.5) -> None:
        super().__init__()
        self.cell_radius_um = cell_radius_um
        self.interval_s = interval_s
        self._last_axis = 0.0
        self.plot = pg.PlotWidget()
        self.plot.setLabel("bottom", "time (s)")
        self.plot.setLabel("left", "ROI")
        self.plot.setMenuEnabled(False)
        self.ticks = pg.ScatterPlotItem(
            symbol="|", size=12, pen=pg.mkPen((255, 80, 80), width=2), brush=None
        )
        self.plot.addItem(self.ticks)
        self.caption = caption("no stimulus yet", style="")
        header = QtWidgets.QHBoxLayout()
        header.addWidget(QtWidgets.QLabel("<b>Stimuli</b> on target ROIs:"))
        header.addWidget(self.caption, 1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(header)
        layout.addWidget(self.plot, 1)
        self._key: tuple[int, int, float] | None = None

    def reset(self) -> None:
        self.ticks.clear()
        self.caption.setText("no stimulus yet")
        self._key = None

    def refresh(self, snap: LiveSnapshot) -> None:
        """Redrawn when a stimulus arrives, else the time axis moves at most every
        `interval_s` (a whole-session view needs no 25 Hz repaint)."""
        last_onset = stimuli.onset_s(snap.stimuli[-1]) if snap.stimuli else -1.0
        key = (len(snap.stimuli), snap.n_rois, last_onset)
        now = time.monotonic()
        if key == self._key and now - self._last_axis < self.interval_s:
            return
        self._last_axis = now
        self.plot.setXRange(0.0, max(snap.time_s, 1.0), padding=0.01)
        if key == self._key:
            return
        self._key = key
        if not snap.stimuli:
            self.ticks.clear()
            return
        centres = np.zeros((0, 2))
        if snap.roi_centroids_px is not None:
            centres = geometry.centroids_um(
                snap.roi_centroids_px, snap.frame_shape, snap.pixel_size_um
            )
        xs, ys = [], []
        for event in snap.stimuli:
            rows = geometry.nearest_rois(stimuli.targets_um(event), centres, self.cell_radius_um)
            if rows.size == 0:
                rows = np.array([-1])
            xs.extend([stimuli.onset_s(event)] * rows.size)
            ys.extend(rows.tolist())
        self.ticks.setData(x=xs, y=ys)
        last = snap.stimuli[-1]
        self.caption.setText(
            f"{len(snap.stimuli)}, last at {stimuli.onset_s(last):.1f} s: {stimuli.summary(last)}"
        )


class SafetyControls(QtWidgets.QGroupBox):
    def __init__(self, controller: ExperimentController) -> None:
        super().__init__("Stimulation safety")
        self.controller = controller
        self.safe_off_button = QtWidgets.QPushButton("SAFE-OFF")
        self.safe_off_button.setToolTip(
            "stimulation off now (stimulators to their safe state), protocol paused; "
            "acquisition and recording go on. Shortcut: Esc"
        )
        self.safe_off_button.setStyleSheet(SAFE_OFF_STYLE)
        self.safe_off_button.setMinimumHeight(52)
        self.safe_off_button.clicked.connect(self.press_safe_off)
        self.resume_button = QtWidgets.QPushButton("Resume")
        self.resume_button.setToolTip("re-arm stimulation and resume the protocol")
        self.resume_button.setMinimumHeight(52)
        self.resume_button.clicked.connect(self.press_resume)
        self.state = QtWidgets.QLabel("no experiment running")
        self.state.setWordWrap(True)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.safe_off_button, 3)
        row.addWidget(self.resume_button, 1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.state)

    def press_safe_off(self) -> None:
        if self.controller.safe_off():
            self.refresh()
        else:
            self.state.setText("no experiment running: nothing is stimulating")

    def press_resume(self) -> None:
        if self.controller.running:
            self.controller.resume()
        self.refresh()

    def refresh(self) -> None:
        c = self.controller
        if not c.running:
            text, style = "no experiment running", ""
        elif c.safe_off_engaged:
            text = "SAFE-OFF engaged: stimulation off, protocol paused (Resume to re-arm)"
            style = ERROR_STYLE + " font-weight: bold;"
        elif c.paused:
            text, style = "protocol paused; stimulation armed (manual trigger works)", ""
        else:
            text, style = "stimulation armed; protocol running", OK_STYLE
        self.state.setText(text)
        restyle(self.state, style)
        self.resume_button.setEnabled(c.running and (c.paused or c.safe_off_engaged))


class ManualTrigger(QtWidgets.QGroupBox):
    def __init__(
        self, controller: ExperimentController, selection: RoiSelection, config: RigConfig
    ) -> None:
        super().__init__("Manual stimulus (light on the selected ROIs)")
        self.controller = controller
        self.selection = selection
        self._snap: LiveSnapshot | None = None
        self.power_mw = self._number(10.0, " mW", 0.0, 100000.0, 1)
        self.pulse_ms = self._number(5.0, " ms", 0.0, 100000.0, 2)
        self.n_pulses = QtWidgets.QSpinBox()
        self.n_pulses.setRange(1, 1000000)
        self.n_pulses.setValue(5)
        self.pulse_rate_hz = self._number(10.0, " Hz", 0.001, 100000.0, 3)
        self.button = QtWidgets.QPushButton("Stimulate selected ROIs")
        self.button.clicked.connect(self.trigger)
        self.targets = QtWidgets.QLabel()
        self.message = QtWidgets.QLabel("")
        self.message.setWordWrap(True)
        s = config.section("stimulator")
        limits = QtWidgets.QLabel(
            f"limits: {s['max_power_mw']:g} mW per spot, {s['max_pulse_ms']:g} ms pulses, "
            f"{s['max_pulses']} pulses, {s['max_pulse_rate_hz']:g} Hz, duty "
            f"{s['max_duty_cycle']:g}, {s['max_mean_power_mw']:g} mW mean over 1 s"
        )
        limits.setWordWrap(True)
        limits.setStyleSheet("color: #555")
        form = QtWidgets.QFormLayout(self)
        form.addRow("power per spot", self.power_mw)
        form.addRow("pulse", self.pulse_ms)
        form.addRow("pulses", self.n_pulses)
        form.addRow("pulse rate", self.pulse_rate_hz)
        form.addRow(limits)
        form.addRow(self.targets)
        form.addRow(self.button)
        form.addRow(self.message)
        selection.changed.connect(self._show_targets)
        self._show_targets()

    @staticmethod
    def _number(
        value: float, suffix: str, lo: float, hi: float, decimals: int
    ) -> QtWidgets.QWidget:
        box = QtWidgets.QDoubleSpinBox()
        box.setRange(lo, hi)
        box.setDecimals(decimals)
        box.setValue(value)
        box.setSuffix(suffix)
        return box

    def refresh(self, snap: LiveSnapshot) -> None:
        self._snap = snap

    def _show_targets(self) -> None:
        n = len(self.selection.rois)
        self.targets.setText(
            f"targets: centres of the {n} selected ROI(s)" if n else "targets: select ROIs first"
        )

    def stimulus(self) -> LightStimulus:
        """The light train for the current selection (not yet validated)."""
        snap = self._snap
        if snap is None or snap.roi_centroids_px is None:
            raise RuntimeError("no ROIs yet: wait for ROI detection, then select targets")
        rois = [r for r in self.selection.rois if r < snap.n_rois]
        if not rois:
            raise RuntimeError("select ROIs on the image first: they are the targets")
        centres = geometry.centroids_um(
            np.asarray(snap.roi_centroids_px)[rois], snap.frame_shape, snap.pixel_size_um
        )
        return LightStimulus(
            targets_um=tuple((float(x), float(y)) for x, y in centres),
            power_mw=self.power_mw.value(),
            pulse_ms=self.pulse_ms.value(),
            n_pulses=self.n_pulses.value(),
            pulse_rate_hz=self.pulse_rate_hz.value(),
        )

    def trigger(self) -> None:
        try:
            validated = self.controller.manual_stimulate(self.stimulus())
        except (ValueError, RuntimeError, DeviceError) as e:  # LimitError is a ValueError
            self.message.setText(f"refused: {e}")
            self.message.setStyleSheet(ERROR_STYLE)
            return
        self.message.setText(f"queued: {validated.summary()}")
        self.message.setStyleSheet(OK_STYLE)
