"""Noise level: histogram over ROIs of the online CASCADE noise level, and its population
median over time.

The noise level is nu = 100 median_t |dF/F(t+1) - dF/F(t)| / sqrt(frame rate), in % / sqrt(s)
(Rupprecht et al. 2021, CASCADE; analysis/noise.py), over the trailing `noise.window_s`:
about 1 is excellent, 2-4 decent, above 5-8 poor, comparable across frame rates.
Selected ROIs are marked in their colours under the histogram. Redrawn at most every
`interval_s` (the values move slowly).
"""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtWidgets

from rig.gui.selection import RoiSelection
from rig.gui.widgets import caption
from rig.live import LiveSnapshot

UNIT = "% / sqrt(s)"


def histogram_top(median: float, p90: float, p99: float) -> float:
    """Upper edge of the histogram: the 99th percentile, but no further than
    max(2 p90, 3 median), so a few broken ROIs (values of 1e8 seen with a near-zero
    baseline) land in the last bin instead of squeezing every other ROI into the first."""
    return max(min(p99 * 1.15, max(2 * p90, 3 * median)), 1e-6)


class NoisePanel(QtWidgets.QWidget):
    def __init__(self, selection: RoiSelection, interval_s: float = 0.5) -> None:
        super().__init__()
        self.selection = selection
        self.interval_s = interval_s
        self._last = 0.0
        self.graphics = pg.GraphicsLayoutWidget()
        self.histogram = self.graphics.addPlot()
        self.histogram.setLabel("bottom", f"noise level ({UNIT})")
        self.histogram.setLabel("left", "ROIs")
        self.histogram.setMenuEnabled(False)
        self.bars = pg.PlotDataItem(
            stepMode="center", fillLevel=0, brush=(120, 170, 255, 140), pen=(150, 190, 255)
        )
        self.histogram.addItem(self.bars)
        self.median_line = pg.InfiniteLine(
            angle=90, pen=pg.mkPen((255, 255, 255), style=pg.QtCore.Qt.PenStyle.DashLine)
        )
        self.median_line.setVisible(False)
        self.histogram.addItem(self.median_line)
        self.selected = pg.ScatterPlotItem(symbol="t1", size=12, pen=None)
        self.histogram.addItem(self.selected)
        self.trend = self.graphics.addPlot()
        self.trend.setLabel("bottom", "time (s)")
        self.trend.setLabel("left", f"median ({UNIT})")
        self.trend.setMenuEnabled(False)
        self.trend_curve = self.trend.plot(pen=pg.mkPen((150, 190, 255), width=2))
        self.summary = caption("noise level: waiting for ROIs", style="")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        header = QtWidgets.QHBoxLayout()
        header.addWidget(QtWidgets.QLabel("<b>Noise level</b>"))
        header.addWidget(self.summary, 1)
        layout.addLayout(header)
        layout.addWidget(self.graphics, 1)

    def reset(self) -> None:
        self.bars.setData([], [])
        self.trend_curve.setData([], [])
        self.selected.clear()
        self.median_line.setVisible(False)
        self.summary.setText("noise level: waiting for ROIs")
        self._last = 0.0

    def refresh(self, snap: LiveSnapshot, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        values = snap.noise_level
        finite = values[np.isfinite(values)] if values is not None else np.zeros(0)
        if finite.size:
            median = float(np.median(finite))
            p10, p90, p99 = np.percentile(finite, [10, 90, 99])
            hi = histogram_top(median, float(p90), float(p99))
            counts, edges = np.histogram(np.clip(finite, 0, hi), bins=30, range=(0.0, hi))
            self.bars.setData(edges, counts)
            self.median_line.setPos(median)
            self.median_line.setVisible(True)
            above = int(np.count_nonzero(finite > hi))
            self.summary.setText(
                f"median {median:.2f} (p10 {p10:.2f}, p90 {p90:.2f}) {UNIT}, {finite.size} ROIs"
                + (f"; {above} above {hi:.3g} in the last bin" if above else "")
            )
            rois = [r for r in self.selection.rois if r < len(values) and np.isfinite(values[r])]
            self.selected.setData(
                x=[float(min(values[r], hi)) for r in rois],
                y=[0.0] * len(rois),
                brush=[self.selection.colour_of(r) for r in rois],
            )
        if snap.population_noise_history:
            trend = np.asarray(snap.population_noise_history, float)
            self.trend_curve.setData(trend[:, 0], trend[:, 1])
