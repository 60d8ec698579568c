"""The main window: panels laid out for a running experiment, refreshed on the GUI's own timer.

    +-------------------+-------------------------+---------------------+
    | live image        | dF/F of selected ROIs   | SAFE-OFF   Resume   |
    |                   | (stimulus trains)       +---------------------+
    |                   +-------------------------+ Protocol | Manual   |
    +-------------------+ stimulus raster         | stimulus | Devices  |
    | noise level       +-------------------------+                     |
    | histogram + trend | coarse-graining         |                     |
    +-------------------+-------------------------+---------------------+
    status bar: frame rate, dropped frames, latency p50/p99, display rate, recording

The experiment runs in the controller's worker thread; this window never waits for it. On
every tick of its QTimer it asks the loop for the next frame (`request_frame`, honoured once
per request), takes one `snapshot()` (copies, under the LiveState lock for the time of a
copy) and hands it to every panel. A slow panel therefore delays only the display: frames
published meanwhile are simply not shown, and acquisition is never blocked. A panel that
raises is logged and reported in the status bar; the others and the experiment go on.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from rig.config import RigConfig
from rig.gui import geometry, stimuli
from rig.gui.controller import ExperimentController
from rig.gui.devices_panel import DevicesPanel
from rig.gui.image_panel import ImagePanel
from rig.gui.noise_panel import NoisePanel
from rig.gui.rg_panel import CoarseGrainingPanel
from rig.gui.runner_panel import ProtocolRunner
from rig.gui.selection import RoiSelection, auto_selection
from rig.gui.stimulation import ManualTrigger, SafetyControls, StimulusRaster
from rig.gui.status import StatusLine
from rig.gui.traces_panel import TracesPanel
from rig.live import LiveSnapshot, LiveState

log = logging.getLogger(__name__)

AUTO_SELECT_AFTER_S = 2.0  # of dF/F history before ROIs are chosen for the user


class MainWindow(QtWidgets.QMainWindow):
    def __init__(
        self,
        config: RigConfig,
        *,
        protocol: str | None = None,
        protocol_values: dict[str, Any] | None = None,
        duration_s: float = 60.0,
        speed: str = "realtime",
        seed: int | None = None,
        refresh_hz: float = 25.0,
    ) -> None:
        super().__init__()
        self.config = config
        self.setWindowTitle(f"looprig - {config['rig.name']} ({config.source})")
        self.controller = ExperimentController(config)
        self.selection = RoiSelection()
        cell_radius_um = config["rois.cell_diameter_um"] / 2
        self.cell_radius_um = cell_radius_um

        self.image = ImagePanel(self.selection, cell_radius_um)
        self.noise = NoisePanel(self.selection)
        self.traces = TracesPanel(self.selection)
        self.raster = StimulusRaster(cell_radius_um)
        self.rg = CoarseGrainingPanel()
        self.safety = SafetyControls(self.controller)
        self.manual = ManualTrigger(self.controller, self.selection, config)
        self.devices = DevicesPanel(config, self.controller)
        self.runner = ProtocolRunner(
            self.controller,
            protocol=protocol,
            protocol_values=protocol_values,
            duration_s=duration_s,
            speed=speed,
            seed=seed,
        )
        self.runner.started.connect(self._run_started)
        self.selection.changed.connect(self._redraw_traces)
        self.traces.spacing.valueChanged.connect(self._redraw_traces)
        self.traces.show_deconvolved.toggled.connect(self._redraw_traces)

        left = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        left.addWidget(self.image)
        left.addWidget(self.noise)
        left.setSizes([600, 340])
        middle = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        middle.addWidget(self.traces)
        middle.addWidget(self.raster)
        middle.addWidget(self.rg)
        middle.setSizes([430, 170, 340])
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(self.runner, "Protocol")
        manual_page = QtWidgets.QWidget()
        manual_layout = QtWidgets.QVBoxLayout(manual_page)
        manual_layout.addWidget(self.manual)
        manual_layout.addStretch(1)
        self.tabs.addTab(manual_page, "Manual stimulus")
        self.tabs.addTab(self.devices, "Devices")
        right = QtWidgets.QWidget()
        right_layout = QtWidgets.QVBoxLayout(right)
        right_layout.setContentsMargins(2, 2, 2, 2)
        right_layout.addWidget(self.safety)
        right_layout.addWidget(self.tabs, 1)
        columns = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        columns.addWidget(left)
        columns.addWidget(middle)
        columns.addWidget(right)
        columns.setSizes([520, 580, 460])
        self.setCentralWidget(columns)
        self.status = StatusLine(self.statusBar())
        self.resize(1560, 960)

        self.safe_off_shortcut = QtGui.QShortcut(QtGui.QKeySequence("Esc"), self)
        self.safe_off_shortcut.activated.connect(self.safety.press_safe_off)

        self.refreshes = 0
        self.refresh_ms: deque[float] = deque(maxlen=100_000)
        self.last_snapshot: LiveSnapshot | None = None
        self._frame_request_index: int | None = None
        self._auto_stage = 0
        self._failed_panels: set[str] = set()
        self._frozen_at: set[str] = set()
        self._traces_at = -2
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(max(1, int(round(1000 / refresh_hz))))
        self.timer.timeout.connect(self.refresh)
        self.timer.start()

    # -- refresh ---------------------------------------------------------------------------
    def refresh(self) -> None:
        """One display tick: one snapshot, every panel, the run's outcome when it ends."""
        t0 = time.perf_counter()
        live = self.controller.live
        snap = frame = None
        if live is not None:
            snap = live.snapshot()
            frame = self._take_frame(live, snap)
            self.last_snapshot = snap
            self._freeze_heap(snap)
            self._call("selection", self._auto_select, snap)
            self._call("image", self.image.refresh, snap, frame)
            if snap.frame_index != self._traces_at:  # new data only: no idle repaints
                self._traces_at = snap.frame_index
                self._call("traces", self.traces.refresh, snap)
            self._call("stimulus raster", self.raster.refresh, snap)
            self._call("noise", self.noise.refresh, snap)
            self._call("coarse-graining", self.rg.refresh, snap)
            self._call("manual trigger", self.manual.refresh, snap)
        self._call("devices", self.devices.refresh, snap)
        self._call("safety", self.safety.refresh)
        self._call("runner", self.runner.refresh, snap)
        self._call("status", self.status.refresh, snap)
        if self.controller.poll():
            gc.unfreeze()  # the run's objects may now be collected
            self._call("runner", self.runner.show_outcome)
        self.refreshes += 1
        self.refresh_ms.append((time.perf_counter() - t0) * 1e3)

    def _freeze_heap(self, snap: LiveSnapshot) -> None:
        """Move the long-lived objects (modules, devices, world, window) out of the cyclic
        garbage collector's sight once the run is set up and again once ROIs exist.

        A full collection walks every tracked object with the GIL held, stalling every
        thread; with numba, Qt, pyqtgraph and matplotlib loaded that took ~45 ms
        (133,000 objects; more under load), most of a 60 ms frame period, and the display's
        allocations make such collections more frequent. After gc.freeze() it takes ~0 ms.
        Undone (gc.unfreeze) when the run ends."""
        if not self.controller.running:
            return
        for stage, ready in (("running", snap.status == "running"), ("rois", snap.n_rois > 0)):
            if ready and stage not in self._frozen_at:
                self._frozen_at.add(stage)
                gc.freeze()

    def _take_frame(self, live: LiveState, snap: LiveSnapshot) -> np.ndarray | None:
        """The frame copied by the loop since our last request, if any; then ask again.

        The loop fills its display buffer at the first publish after `request_frame()`, so
        once the published frame index has moved past the index seen when asking, the buffer
        holds a frame we have not shown."""
        new = None
        requested = self._frame_request_index
        if requested is not None and snap.frame is not None and snap.frame_index > requested:
            new = snap.frame
            requested = None
        if requested is None:
            live.request_frame()
            self._frame_request_index = snap.frame_index
        return new

    def _call(self, name: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - a display bug must not stop the others
            if name not in self._failed_panels:
                self._failed_panels.add(name)
                log.exception("%s panel failed", name)
            self.statusBar().showMessage(f"{name} panel failed: {type(e).__name__}: {e}")

    def _auto_select(self, snap: LiveSnapshot) -> None:
        """Until the user clicks an ROI: show the most active cells once there is a little
        history, and again with the stimulated cells after the first stimulus."""
        if self.selection.chosen_by_user or snap.n_rois == 0 or snap.dff_history is None:
            return
        enough = snap.dff_history.shape[0] >= AUTO_SELECT_AFTER_S * max(snap.frame_rate_hz, 1e-9)
        stage = 2 if snap.stimuli and enough else 1 if enough else 0
        if stage <= self._auto_stage:
            return
        self._auto_stage = stage
        targets: list[int] = []
        if snap.stimuli and snap.roi_centroids_px is not None:
            centres = geometry.centroids_um(
                snap.roi_centroids_px, snap.frame_shape, snap.pixel_size_um
            )
            found = geometry.nearest_rois(
                stimuli.targets_um(snap.stimuli[-1]), centres, self.cell_radius_um
            )
            targets = [int(r) for r in found if r >= 0]
        chosen = auto_selection(snap.dff_history, targets, noise_level=snap.noise_level)
        self.selection.set(chosen, by_user=False)

    def _redraw_traces(self, *_: Any) -> None:
        """The traces' look changed: redraw them at the next tick even without new data."""
        self._traces_at = -2

    def _run_started(self) -> None:
        for panel in (self.image, self.traces, self.raster, self.noise, self.rg, self.status):
            panel.reset()
        self.selection.reset()
        self._frame_request_index = None
        self._auto_stage = 0
        self._traces_at = -2
        self._failed_panels.clear()
        self._frozen_at.clear()
        self.statusBar().clearMessage()

    # -- headless use and shutdown ---------------------------------------------------------
    def screenshot(self, path: str | Path) -> Path:
        """Save the whole window as an image (works with QT_QPA_PLATFORM=offscreen).

        Encoded by Pillow (through matplotlib), not QImage.save: PyQt holds the GIL during
        QImage.save, and PNG-encoding a full window took ~60 ms, long enough to make the
        acquisition thread miss a frame at 16 Hz; Pillow releases the GIL while encoding."""
        from matplotlib.image import imsave

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        image = self.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB888)
        pixels = pg.functions.ndarray_from_qimage(image)[:, : image.width(), :3].copy()
        try:
            imsave(path, pixels)
        except (OSError, ValueError) as e:
            raise OSError(f"could not write the screenshot {path}: {e}") from e
        return path

    def stop_and_wait(self, timeout_s: float = 120.0) -> bool:
        """Stop a running experiment and wait for its session to close, keeping the window
        responsive; True once nothing runs."""
        self.controller.stop()
        deadline = time.monotonic() + timeout_s
        while self.controller.running and time.monotonic() < deadline:
            QtWidgets.QApplication.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 50)
            self.controller.wait(0.05)
        self.refresh()
        return not self.controller.running

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        """Closing the window ends a running experiment cleanly (devices safe, session
        flushed) before the window goes."""
        if self.controller.running:
            self.statusBar().showMessage("stopping the experiment and closing the session...")
            self.stop_and_wait()
        self.timer.stop()
        # release pyqtgraph's scenes now, in order: left to garbage collection, a view could
        # paint an item whose C++ half is already gone (a crash, not an exception)
        for view in self.findChildren(pg.GraphicsView):
            view.close()
        super().closeEvent(event)
