"""Live image: user-set levels and colour map, ROI outlines, click to select ROIs, the
targets of the last stimulus, and a plane selector when several planes are imaged.

The image is drawn in field coordinates (um, centre 0, 0; geometry.py), so ROI centres and
stimulus targets land where the stimulator aims. Levels are never recomputed per frame
(`autoLevels=False`): they are set once from the first frame (1st-99.7th percentile) and
then only by the user (histogram handles or "Auto levels").

Planes: when a stage publishes `extras["planes"]` (a list of z positions in um or labels) with
more than one entry, a selector appears; `extras["plane"]` names the plane of the latest
frame, and only frames of the selected plane are shown.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from rig.gui import geometry
from rig.gui.selection import RoiSelection
from rig.gui.widgets import caption
from rig.live import LiveSnapshot

COLOUR_MAPS = ("gray", "viridis", "inferno", "magma", "CET-L8")
OUTLINE_RGBA = (255, 230, 90, 120)  # unselected ROIs: faint yellow
STIMULUS_RECENT_S = 1.5  # targets drawn bright this long after a stimulus (device time)


def colour_map(name: str) -> pg.ColorMap:
    if name == "gray":
        return pg.ColorMap([0.0, 1.0], [(0, 0, 0), (255, 255, 255)])
    return pg.colormap.get(name)


class ImagePanel(QtWidgets.QWidget):
    def __init__(self, selection: RoiSelection, cell_radius_um: float = 6.0) -> None:
        super().__init__()
        self.selection = selection
        self.cell_radius_um = cell_radius_um
        self.frames_shown = 0
        self._shape: tuple[int, int] | None = None
        self._pixel_um: tuple[float, float] = (1.0, 1.0)
        self._labels: np.ndarray | None = None
        self._centroids_px = np.zeros((0, 2))
        self._outline: np.ndarray | None = None
        self._levels_set = False
        self._last_frame: np.ndarray | None = None
        self._plane_frames: dict[int, np.ndarray] = {}
        self._planes: list[Any] = []
        self._stim_key: tuple[int, bool] | None = None

        self.plot = pg.PlotWidget()
        self.plot.setAspectLocked(True)
        self.plot.invertY(True)
        self.plot.setLabel("bottom", "x (um)")
        self.plot.setLabel("left", "y (um)")
        self.plot.setMenuEnabled(False)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.overlay = pg.ImageItem(axisOrder="row-major")
        self.overlay.setZValue(10)
        self.targets = pg.ScatterPlotItem(
            symbol="o", size=16, brush=None, pen=pg.mkPen((255, 60, 60), width=2.5)
        )
        self.targets.setZValue(20)
        self.plot.addItem(self.image)
        self.plot.addItem(self.overlay)
        self.plot.addItem(self.targets)
        self._roi_texts: list[pg.TextItem] = []
        self.waiting = pg.TextItem("waiting for the first frame", color=(200, 200, 200))
        self.plot.addItem(self.waiting)

        self.histogram = pg.HistogramLUTWidget(image=self.image)
        self.histogram.setMinimumWidth(95)
        self.histogram.setMaximumWidth(120)

        self.colour_box = QtWidgets.QComboBox()
        self.colour_box.addItems(COLOUR_MAPS)
        self.colour_box.currentTextChanged.connect(self.set_colour_map)
        self.auto_levels_button = QtWidgets.QPushButton("Auto levels")
        self.auto_levels_button.setToolTip("set the levels once from this frame (1st-99.7th %)")
        self.auto_levels_button.clicked.connect(self.auto_levels)
        self.outlines_box = QtWidgets.QCheckBox("ROI outlines")
        self.outlines_box.setChecked(True)
        self.outlines_box.toggled.connect(self._redraw_overlay)
        self.clear_button = QtWidgets.QPushButton("Clear selection")
        self.clear_button.clicked.connect(selection.clear)
        self.plane_label = QtWidgets.QLabel("plane")
        self.plane_box = QtWidgets.QComboBox()
        self.plane_box.currentIndexChanged.connect(self._plane_changed)
        self.plane_label.setVisible(False)
        self.plane_box.setVisible(False)
        self.info = caption("click an ROI to select it (again to deselect); Esc = SAFE-OFF")

        controls = QtWidgets.QHBoxLayout()
        controls.addWidget(QtWidgets.QLabel("colour"))
        controls.addWidget(self.colour_box)
        controls.addWidget(self.auto_levels_button)
        controls.addWidget(self.outlines_box)
        controls.addWidget(self.plane_label)
        controls.addWidget(self.plane_box)
        controls.addStretch(1)
        controls.addWidget(self.clear_button)
        images = QtWidgets.QHBoxLayout()
        images.setSpacing(0)
        images.addWidget(self.plot, 1)
        images.addWidget(self.histogram)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        title = QtWidgets.QLabel("<b>Live image</b>")
        layout.addWidget(title)
        layout.addLayout(images, 1)
        layout.addLayout(controls)
        layout.addWidget(self.info)

        self.plot.scene().sigMouseClicked.connect(self._clicked)
        selection.changed.connect(self._redraw_overlay)
        self.set_colour_map("gray")

    # -- run lifecycle ---------------------------------------------------------------------
    def reset(self) -> None:
        self._shape = None
        self._labels = None
        self._outline = None
        self._centroids_px = np.zeros((0, 2))
        self._levels_set = False
        self._last_frame = None
        self._plane_frames.clear()
        self._stim_key = None
        self.image.clear()
        self.overlay.clear()
        self.targets.clear()
        self.waiting.setVisible(True)

    def refresh(self, snap: LiveSnapshot, frame: np.ndarray | None) -> None:
        """Called by the window's timer; `frame` is a newly published frame or None."""
        if snap.frame_shape == (0, 0):
            return
        if self._shape != tuple(snap.frame_shape):
            self._set_geometry(tuple(snap.frame_shape), tuple(snap.pixel_size_um))
        if snap.roi_label_image is not None and self._labels is not snap.roi_label_image:
            self._labels = snap.roi_label_image
            self._centroids_px = np.asarray(snap.roi_centroids_px, float).reshape(-1, 2)
            self._outline = geometry.roi_outlines(self._labels)
            self._redraw_overlay()
        self._update_planes(snap.extras)
        if frame is not None:
            plane = int(snap.extras.get("plane", 0) or 0) if self._planes else 0
            self._plane_frames[plane] = frame
            if plane == max(self.plane_box.currentIndex(), 0):
                self._show(frame)
        self._draw_stimulus_targets(snap)

    # -- drawing ---------------------------------------------------------------------------
    def _set_geometry(self, shape: tuple[int, int], pixel_um: tuple[float, float]) -> None:
        self._shape = shape
        self._pixel_um = pixel_um
        rect = QtCore.QRectF(*geometry.field_rect_um(shape, pixel_um))
        # an ImageItem takes a rectangle only once it holds an image of the final shape
        self.image.setImage(np.zeros(shape, np.float32), autoLevels=False, levels=(0.0, 1.0))
        self.overlay.setImage(np.zeros(shape + (4,), np.uint8), autoLevels=False, levels=(0, 255))
        self.image.setRect(rect)
        self.overlay.setRect(rect)
        self.plot.setRange(rect=rect, padding=0.02)
        self.waiting.setPos(rect.left(), rect.top())

    def _show(self, frame: np.ndarray) -> None:
        self._last_frame = frame
        if not self._levels_set:
            self.auto_levels()
        self.image.setImage(frame, autoLevels=False)
        self.waiting.setVisible(False)
        self.frames_shown += 1

    def auto_levels(self) -> None:
        """Levels from the shown frame, once (never per frame)."""
        if self._last_frame is None:
            return
        lo, hi = np.percentile(self._last_frame, [1.0, 99.7])
        if hi <= lo:
            hi = lo + 1
        self.image.setLevels([float(lo), float(hi)])
        self.histogram.setLevels(float(lo), float(hi))
        self._levels_set = True

    def set_levels(self, low: float, high: float) -> None:
        self.image.setLevels([low, high])
        self.histogram.setLevels(low, high)
        self._levels_set = True

    @property
    def levels(self) -> tuple[float, float]:
        lo, hi = self.histogram.getLevels()
        return float(lo), float(hi)

    def set_colour_map(self, name: str) -> None:
        self.histogram.gradient.setColorMap(colour_map(name))
        if self.colour_box.currentText() != name:
            self.colour_box.setCurrentText(name)

    def _redraw_overlay(self) -> None:
        for t in self._roi_texts:
            self.plot.removeItem(t)
        self._roi_texts = []
        if self._outline is None or self._labels is None:
            return
        rgba = np.zeros(self._outline.shape + (4,), np.uint8)
        if self.outlines_box.isChecked():
            rgba[self._outline] = OUTLINE_RGBA
        centres = geometry.centroids_um(self._centroids_px, self._shape, self._pixel_um)
        for roi in self.selection.rois:
            if roi >= len(centres):
                continue
            colour = self.selection.colour_of(roi)
            inside = self._labels == roi + 1
            rgba[inside] = colour + (70,)
            rgba[inside & self._outline] = colour + (255,)
            text = pg.TextItem(str(roi), color=colour, anchor=(0.5, 1.3))
            text.setPos(float(centres[roi, 0]), float(centres[roi, 1]))
            text.setZValue(30)
            self.plot.addItem(text)
            self._roi_texts.append(text)
        self.overlay.setImage(rgba, autoLevels=False, levels=(0, 255))

    def _draw_stimulus_targets(self, snap: LiveSnapshot) -> None:
        if not snap.stimuli:
            if self._stim_key is not None:
                self.targets.clear()
                self._stim_key = None
            return
        last = snap.stimuli[-1]
        recent = snap.time_s - float(last.get("device_time_s", -1e9)) <= STIMULUS_RECENT_S
        key = (len(snap.stimuli), recent)
        if key == self._stim_key:
            return
        self._stim_key = key
        targets = np.asarray(last.get("stimulus", {}).get("targets_um", []), dtype=float).reshape(
            -1, 2
        )
        if recent:
            pen = pg.mkPen((255, 50, 50), width=3)
        else:
            pen = pg.mkPen((255, 80, 80, 200), width=1.5, style=QtCore.Qt.PenStyle.DashLine)
        self.targets.setData(pos=targets, pen=pen, brush=None)

    # -- planes ----------------------------------------------------------------------------
    def _update_planes(self, extras: dict[str, Any]) -> None:
        planes = extras.get("planes")
        planes = list(planes) if isinstance(planes, (list, tuple, np.ndarray)) else []
        if planes == self._planes:
            return
        self._planes = planes
        several = len(planes) > 1
        self.plane_box.blockSignals(True)
        self.plane_box.clear()
        for i, p in enumerate(planes):
            label = f"{i}: z = {p:g} um" if isinstance(p, (int, float)) else f"{i}: {p}"
            self.plane_box.addItem(label)
        self.plane_box.blockSignals(False)
        self.plane_label.setVisible(several)
        self.plane_box.setVisible(several)

    def _plane_changed(self, index: int) -> None:
        frame = self._plane_frames.get(index)
        if frame is not None:
            self._show(frame)

    # -- selection -------------------------------------------------------------------------
    def _clicked(self, event: Any) -> None:
        if event.button() != QtCore.Qt.MouseButton.LeftButton or self._labels is None:
            return
        view = self.plot.getPlotItem().vb
        if not view.sceneBoundingRect().contains(event.scenePos()):
            return
        point = view.mapSceneToView(event.scenePos())
        self.select_at(point.x(), point.y())

    def select_at(self, x_um: float, y_um: float) -> int | None:
        """Toggle the ROI at (or nearest within a cell radius of) the field point."""
        if self._labels is None:
            return None
        roi = geometry.roi_at_um(
            x_um, y_um, self._labels, self._centroids_px, self._pixel_um, self.cell_radius_um
        )
        if roi is not None:
            self.selection.toggle(roi)
            self.info.setText(f"ROI {roi} {'selected' if roi in self.selection.rois else 'off'}")
        return roi
