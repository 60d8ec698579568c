"""dF/F traces of the selected ROIs over the live history, stimulus trains shaded.

Traces are stacked, the first selected on top, `spacing` dF/F apart; each is labelled with its
ROI number and online noise level. When a stage publishes `extras["deconvolved"]` (an array
shaped like `dff_history`, rows aligned with it, or {"times_s": (n,), "values": (n, n_rois)}),
the deconvolved signal is drawn under each trace in the same colour.

Time runs in seconds before the latest frame (0 = now) on an axis that stays fixed once the
history is full: an axis that scrolls with absolute time recomputes and redraws its ticks on
every frame, which was the largest single cost of the window's painting.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtWidgets

from rig.gui import stimuli
from rig.gui.selection import RoiSelection
from rig.gui.widgets import caption, title
from rig.live import LiveSnapshot

STIMULUS_BRUSH = (255, 60, 60, 45)
ONSET_PEN = (255, 80, 80)


def deconvolved_rows(
    extras: dict[str, Any], times_s: np.ndarray, n_rois: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(times, values (n, n_rois)) of extras["deconvolved"], or None if absent or unusable."""
    dec = extras.get("deconvolved")
    if dec is None:
        return None
    if isinstance(dec, dict):
        t = np.asarray(dec.get("times_s", []), float)
        v = np.asarray(dec.get("values", []), float)
    else:
        v = np.asarray(dec, float)
        t = times_s[-v.shape[0] :] if v.ndim == 2 and v.shape[0] <= len(times_s) else np.zeros(0)
    if v.ndim != 2 or v.shape[1] != n_rois or v.shape[0] != t.shape[0] or t.size == 0:
        return None
    return t, v


class TracesPanel(QtWidgets.QWidget):
    def __init__(self, selection: RoiSelection) -> None:
        super().__init__()
        self.selection = selection
        self.plot = pg.PlotWidget()
        self.plot.setLabel("bottom", "time before the latest frame (s)")
        self.plot.setLabel("left", "dF/F (stacked)")
        self.plot.setMenuEnabled(False)
        self.plot.showGrid(x=True, y=False, alpha=0.2)
        self.stimulus_bars = pg.BarGraphItem(
            x0=[0.0], width=[0.0], y0=[0.0], height=[0.0], brush=STIMULUS_BRUSH, pen=None
        )
        self.stimulus_bars.setVisible(False)
        self.plot.addItem(self.stimulus_bars)
        self.onsets = pg.PlotDataItem(connect="pairs", pen=pg.mkPen(ONSET_PEN, width=1.5))
        self.plot.addItem(self.onsets)
        self._curves: list[pg.PlotDataItem] = []
        self._deconvolved: list[pg.PlotDataItem] = []
        self._labels: list[pg.TextItem] = []
        self._y_key: tuple[int, float] | None = None
        self._span_s = 0.0  # x axis: [-span, 0] s before the latest frame, fixed once full

        self.spacing = QtWidgets.QDoubleSpinBox()
        self.spacing.setRange(0.05, 50.0)
        self.spacing.setSingleStep(0.25)
        self.spacing.setValue(1.0)
        self.spacing.setPrefix("spacing ")
        self.spacing.setSuffix(" dF/F")
        self.spacing.setToolTip("vertical distance between stacked traces")
        self.show_deconvolved = QtWidgets.QCheckBox("deconvolved")
        self.show_deconvolved.setChecked(True)
        self.show_deconvolved.setVisible(False)
        self.show_deconvolved.setToolTip("shown when a deconvolution stage publishes it")
        self.empty = caption("select ROIs on the image (click) to see their traces")

        header = QtWidgets.QHBoxLayout()
        header.addWidget(title("<b>dF/F</b> of selected ROIs, stimulus trains red"), 3)
        header.addWidget(self.empty, 2)
        header.addWidget(self.spacing)
        header.addWidget(self.show_deconvolved)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(header)
        layout.addWidget(self.plot, 1)

    def reset(self) -> None:
        self._set_count(0)
        self.stimulus_bars.setVisible(False)
        self.onsets.setData([], [])
        self._y_key = None
        self._span_s = 0.0

    def refresh(self, snap: LiveSnapshot) -> None:
        rois = [r for r in self.selection.rois if r < snap.n_rois]
        self.empty.setVisible(not rois)
        d, t = snap.dff_history, snap.history_times_s
        if d is None or t is None or d.shape[0] < 2 or not rois:
            self._set_count(0)
            self.stimulus_bars.setVisible(False)
            self.onsets.setData([], [])
            return
        self._set_count(len(rois))
        spacing = self.spacing.value()
        n = len(rois)
        now = float(t[-1])
        x = t - now
        # drawn within the plot's band: a runaway ROI (dF/F of 1e8 seen with a near-zero
        # baseline) saturates at the edge instead of striping the whole plot
        low, high = -1.0 * spacing, (n + 0.5) * spacing
        dec = deconvolved_rows(snap.extras, t, snap.n_rois)
        self.show_deconvolved.setVisible(dec is not None)
        noise = snap.noise_level
        for k, roi in enumerate(rois):
            offset = (n - 1 - k) * spacing
            colour = self.selection.colour_of(roi)
            y = np.clip(d[:, roi], low - offset, high - offset) + offset
            self._curves[k].setData(x, y, pen=pg.mkPen(colour, width=1.5))
            if dec is not None and self.show_deconvolved.isChecked():
                self._deconvolved[k].setData(
                    dec[0] - now, dec[1][:, roi] + offset, pen=pg.mkPen(colour + (140,), width=1)
                )
                self._deconvolved[k].setVisible(True)
            else:
                self._deconvolved[k].setVisible(False)
            nu = ""
            if noise is not None and roi < len(noise) and np.isfinite(noise[roi]):
                nu = f"  noise {noise[roi]:.3g}"
            self._labels[k].setText(f"ROI {roi}{nu}", color=colour)
        span = now - float(t[0])
        if span > self._span_s * 1.05:  # grows while the history fills, then stays
            self._span_s = span
            self.plot.setXRange(-span, 0.0, padding=0.01)
        for k in range(n):
            self._labels[k].setPos(-self._span_s, (n - 1 - k) * spacing + 0.45 * spacing)
        if self._y_key != (n, spacing):
            self._y_key = (n, spacing)
            self.plot.setYRange(-0.6 * spacing, (n - 0.4) * spacing + 0.3 * spacing, padding=0)
        self._draw_stimuli(snap, float(t[0]), now, n, spacing)

    def _draw_stimuli(
        self, snap: LiveSnapshot, t0: float, t1: float, n: int, spacing: float
    ) -> None:
        frame_s = 1.0 / snap.frame_rate_hz if snap.frame_rate_hz > 0 else 0.1
        onsets, widths = [], []
        for event in snap.stimuli:
            onset = stimuli.onset_s(event)
            width = max(stimuli.duration_s(event), frame_s)
            if onset + width >= t0 and onset <= t1:
                onsets.append(onset)
                widths.append(width)
        if not onsets:
            self.stimulus_bars.setVisible(False)
            self.onsets.setData([], [])
            return
        m = len(onsets)
        y0, y1 = -0.6 * spacing, (n - 0.3) * spacing
        x0 = np.array(onsets) - t1
        self.onsets.setData(np.repeat(x0, 2), np.tile([y0, y1], m))
        self.stimulus_bars.setOpts(
            x0=x0,
            width=np.array(widths),
            y0=np.full(m, -0.6 * spacing),
            height=np.full(m, (n + 0.3) * spacing),
        )
        self.stimulus_bars.setVisible(True)

    def _set_count(self, n: int) -> None:
        while len(self._curves) < n:
            curve = pg.PlotDataItem(connect="finite")
            dec = pg.PlotDataItem(connect="finite")
            label = pg.TextItem(anchor=(0, 1), fill=(0, 0, 0, 160))
            for item in (dec, curve, label):
                self.plot.addItem(item)
            self._curves.append(curve)
            self._deconvolved.append(dec)
            self._labels.append(label)
        while len(self._curves) > n:
            for item in (self._curves.pop(), self._deconvolved.pop(), self._labels.pop()):
                self.plot.removeItem(item)
