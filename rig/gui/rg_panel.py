"""Coarse-graining (phenomenological renormalization group, Meshulam et al. PRL 2019), live.

Fed by `extras["rg"]`, which the coarse-graining stage publishes as a new dict each time
(never mutated after publishing):

    {"K": [1, 2, 4, ...],            cluster sizes
     "p0": [...],                     silence probability P0(K), same length as K
     "beta": 0.87,                    fitted exponent of P0(K) = exp(-a K^beta)
     "q_k": {K: (x, density)},        distribution of nonzero coarse-grained values
     "spectra": {K: (rank / K, eigenvalues)},   within-cluster covariance spectra
     "c_k": {K: (t / tau_c(K), C)}}   autocorrelation, time scaled by tau_c(K)

Four plots: -ln P0 against K (log-log, where P0 = exp(-a K^beta) is a line of slope beta;
the amplitude a is fitted with the published beta, or both are fitted when beta is absent),
Q_K(x), eigenvalue against rank / K (log-log; lambda = B (K / rank)^mu collapses), and
C_K against t / tau_c(K). Any missing or malformed entry leaves its plot empty with a note;
the others still draw. Until the first dict arrives the panel says it is waiting.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from rig.live import LiveSnapshot

WAITING = "waiting for coarse-graining (no extras['rg'] published yet)"


def p0_fit(k: np.ndarray, p0: np.ndarray, beta: float | None) -> tuple[float, float] | None:
    """(a, beta) of -ln P0 = a K^beta on the points with 0 < P0 < 1 (least squares in log-log;
    with beta given, only ln a = mean(ln(-ln P0) - beta ln K))."""
    ok = (k > 0) & (p0 > 0) & (p0 < 1) & np.isfinite(p0)
    if not ok.any():
        return None
    lk, ly = np.log(k[ok]), np.log(-np.log(p0[ok]))
    if beta is not None and np.isfinite(beta):
        return float(np.exp(np.mean(ly - beta * lk))), float(beta)
    if ok.sum() < 2:
        return None
    slope, intercept = np.polyfit(lk, ly, 1)
    return float(np.exp(intercept)), float(slope)


def _curves(table: Any) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """[(K, x, y)] sorted by K from {K: (x, y)}, finite points only; entries that are not
    two equal-length 1-d arrays are skipped."""
    out = []
    if not isinstance(table, dict):
        return out
    for key, value in table.items():
        try:
            k = float(key)
            x, y = (np.asarray(v, float).ravel() for v in value)
        except (TypeError, ValueError):
            continue
        if x.size and x.size == y.size:
            keep = np.isfinite(x) & np.isfinite(y)
            if keep.any():
                out.append((k, x[keep], y[keep]))
    return sorted(out, key=lambda c: c[0])


class CoarseGrainingPanel(QtWidgets.QWidget):
    def __init__(self) -> None:
        super().__init__()
        self._last_rg: Any = None
        self.waiting = QtWidgets.QLabel(WAITING)
        self.waiting.setStyleSheet("color: #555; font-size: 14px;")
        self.waiting.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.waiting.setWordWrap(True)
        self.graphics = pg.GraphicsLayoutWidget()
        self.p0_plot = self.graphics.addPlot(title="P0(K)")
        self.p0_plot.setLogMode(x=True, y=True)
        self.p0_plot.setLabel("bottom", "cluster size K")
        self.p0_plot.setLabel("left", "-ln P0")
        self.q_plot = self.graphics.addPlot(title="Q_K(x)")
        self.q_plot.setLabel("bottom", "x (nonzero, mean 1)")
        self.q_plot.setLabel("left", "density")
        self.graphics.nextRow()
        self.spectra_plot = self.graphics.addPlot(title="covariance spectra")
        self.spectra_plot.setLogMode(x=True, y=True)
        self.spectra_plot.setLabel("bottom", "rank / K")
        self.spectra_plot.setLabel("left", "eigenvalue")
        self.c_plot = self.graphics.addPlot(title="C_K(t)")
        self.c_plot.setLabel("bottom", "t / tau_c(K)")
        self.c_plot.setLabel("left", "C_K")
        for plot in (self.p0_plot, self.q_plot, self.spectra_plot, self.c_plot):
            plot.setMenuEnabled(False)
            for side in ("left", "bottom"):
                axis = plot.getAxis(side)
                axis.enableAutoSIPrefix(False)
                axis.setStyle(maxTextLevel=0)  # label major ticks only (log axes crowd)
        layout_grid = self.graphics.ci.layout
        layout_grid.setColumnStretchFactor(0, 1)
        layout_grid.setColumnStretchFactor(1, 1)
        self.colour_note = QtWidgets.QLabel("curves: dark = small K, bright = large K")
        self.colour_note.setStyleSheet("color: #555")
        self.colour_note.setVisible(False)
        self.pages = QtWidgets.QStackedWidget()
        self.pages.addWidget(self.waiting)
        self.pages.addWidget(self.graphics)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        header = QtWidgets.QHBoxLayout()
        header.addWidget(
            QtWidgets.QLabel("<b>Coarse-graining</b> (renormalization group, Meshulam et al. 2019)")
        )
        header.addStretch(1)
        header.addWidget(self.colour_note)
        layout.addLayout(header)
        layout.addWidget(self.pages, 1)
        self.notes: dict[str, str] = {}

    def reset(self) -> None:
        self._last_rg = None
        self.waiting.setText(WAITING)
        self.pages.setCurrentWidget(self.waiting)
        for plot in (self.p0_plot, self.q_plot, self.spectra_plot, self.c_plot):
            plot.clear()

    def refresh(self, snap: LiveSnapshot) -> None:
        rg = snap.extras.get("rg")
        if rg is self._last_rg:
            return
        self._last_rg = rg
        if not isinstance(rg, dict):
            self.waiting.setText(WAITING if rg is None else "coarse-graining: unreadable data")
            self.pages.setCurrentWidget(self.waiting)
            self.colour_note.setVisible(False)
            return
        self.pages.setCurrentWidget(self.graphics)
        self.colour_note.setVisible(True)
        self.notes = {}
        self._draw_p0(rg)
        self._draw_family(self.q_plot, "q_k", rg, "Q_K(x)")
        self._draw_family(self.spectra_plot, "spectra", rg, "covariance spectra", positive=True)
        self._draw_family(self.c_plot, "c_k", rg, "C_K(t)")

    @staticmethod
    def _colours(ks: list[float]) -> list[Any]:
        cmap = pg.colormap.get("viridis")
        if len(ks) == 1:
            return [cmap.map(0.6, mode="qcolor")]
        logs = np.log2(np.maximum(ks, 1e-9))
        span = max(logs.max() - logs.min(), 1e-9)
        return [cmap.map(0.15 + 0.85 * (v - logs.min()) / span, mode="qcolor") for v in logs]

    def _draw_p0(self, rg: dict[str, Any]) -> None:
        plot = self.p0_plot
        plot.clear()
        try:
            k = np.asarray(rg["K"], float).ravel()
            p0 = np.asarray(rg["p0"], float).ravel()
            if k.size != p0.size:
                raise ValueError(f"{k.size} K values but {p0.size} P0 values")
        except (KeyError, TypeError, ValueError) as e:
            self.notes["p0"] = str(e)
            plot.setTitle("P0(K): no data")
            return
        beta = rg.get("beta")  # None while the fit is not valid: then a and beta are fitted here
        beta = float(beta) if isinstance(beta, (int, float)) else None
        ok = (k > 0) & (p0 > 0) & (p0 < 1)
        plot.plot(
            k[ok], -np.log(p0[ok]), pen=None, symbol="o", symbolSize=7, symbolBrush=(150, 190, 255)
        )
        fit = p0_fit(k, p0, beta)
        if fit is None:
            plot.setTitle("P0(K): no silent clusters yet")
            return
        a, b = fit
        kk = np.geomspace(k[ok].min(), k[ok].max(), 50)
        plot.plot(kk, a * kk**b, pen=pg.mkPen((255, 170, 80), width=2))
        plot.setTitle(f"-ln P0 = a K^beta, beta = {b:.2f}")

    def _draw_family(
        self, plot: Any, key: str, rg: dict[str, Any], title: str, *, positive: bool = False
    ) -> None:
        plot.clear()
        curves = _curves(rg.get(key))
        if not curves:
            plot.setTitle(f"{title}: no data")
            self.notes[key] = "missing or unreadable"
            return
        ks = [c[0] for c in curves]
        plot.setTitle(f"{title}, K = {ks[0]:g} to {ks[-1]:g}" if len(ks) > 1 else title)
        colours = self._colours([c[0] for c in curves])
        for (_, x, y), colour in zip(curves, colours):
            if positive:
                keep = (x > 0) & (y > 0)
                x, y = x[keep], y[keep]
            plot.plot(x, y, pen=pg.mkPen(colour, width=1.5))
