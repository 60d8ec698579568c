"""Protocol runner: choose a protocol, fill its form, start / pause / stop, follow the progress,
and find the session folder and its report when the run is done.

The protocol list is `available_protocols()` (./protocols and the repository's protocols/)
plus "Open file..." for any protocol file. Start builds a fresh protocol instance from the
form (so the values are validated exactly as `rig run` validates them) and hands it to the
controller; it is disabled while the form or the run settings are invalid, or a run is going.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any

from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from rig.config import ConfigError
from rig.gui.controller import ExperimentController
from rig.gui.protocol_form import ERROR_STYLE, ParameterForm
from rig.live import LiveSnapshot
from rig.protocol import Protocol, available_protocols, load_protocol_class, protocol_dirs

OPEN_FILE = "Open file..."


def protocol_description(cls: type[Protocol]) -> str:
    """First paragraph of the protocol's class docstring, else of its file's docstring."""
    doc = cls.__doc__ or ""
    if not doc.strip() and getattr(cls, "source_file", None):
        try:
            doc = ast.get_docstring(ast.parse(Path(cls.source_file).read_text())) or ""
        except (OSError, SyntaxError):
            doc = ""
    return " ".join(doc.strip().split("\n\n")[0].split())


class ProtocolRunner(QtWidgets.QWidget):
    started = QtCore.Signal()

    def __init__(
        self,
        controller: ExperimentController,
        *,
        protocol: str | None = None,
        protocol_values: dict[str, Any] | None = None,
        duration_s: float = 60.0,
        speed: str = "realtime",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.controller = controller
        self._previous_index = 0
        self.protocol_box = QtWidgets.QComboBox()
        self.protocol_box.addItems(available_protocols())
        self.protocol_box.addItem(OPEN_FILE)
        self.protocol_box.activated.connect(self._protocol_chosen)
        self.description = QtWidgets.QLabel()
        self.description.setWordWrap(True)
        self.description.setStyleSheet("color: #444")
        self.load_error = QtWidgets.QLabel()
        self.load_error.setWordWrap(True)
        self.load_error.setStyleSheet(ERROR_STYLE)
        self.load_error.setVisible(False)
        self.form = ParameterForm()
        self.form.validity_changed.connect(self._update_buttons)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.form)
        scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)

        self.duration = QtWidgets.QLineEdit(f"{duration_s:g}")
        self.duration.setToolTip("seconds of acquisition (device clock)")
        self.duration.textChanged.connect(self._update_buttons)
        self.speed = QtWidgets.QComboBox()
        self.speed.addItems(["realtime", "max"])
        self.speed.setCurrentText(speed)
        self.speed.setToolTip(
            "realtime: paced like hardware (late frames are dropped and counted); "
            "max: lock-step, as fast as the machine goes (simulated rigs)"
        )
        self.seed = QtWidgets.QLineEdit("" if seed is None else str(seed))
        self.seed.setPlaceholderText("rig default")
        self.seed.setToolTip("seed of the simulated world (empty: sim.seed of the rig)")
        self.seed.textChanged.connect(self._update_buttons)
        self.run_error = QtWidgets.QLabel()
        self.run_error.setWordWrap(True)
        self.run_error.setStyleSheet(ERROR_STYLE)

        self.start_button = QtWidgets.QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.pause_button = QtWidgets.QPushButton("Pause")
        self.pause_button.setToolTip("pause the protocol (acquisition and recording go on)")
        self.pause_button.clicked.connect(self._pause_or_resume)
        self.stop_button = QtWidgets.QPushButton("Stop")
        self.stop_button.setToolTip("end the run now; the session is closed and its report written")
        self.stop_button.clicked.connect(controller.stop)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFormat("idle")
        self.progress.setTextVisible(True)
        self.state = QtWidgets.QLabel("idle")
        self.state.setWordWrap(True)
        self.session = QtWidgets.QLabel("")
        self.session.setWordWrap(True)
        self.session.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.open_report_button = QtWidgets.QPushButton("Open report.html")
        self.open_report_button.setEnabled(False)
        self.open_report_button.clicked.connect(self.open_report)
        self.outcome = QtWidgets.QLabel("")
        self.outcome.setWordWrap(True)

        settings = QtWidgets.QHBoxLayout()
        settings.addWidget(QtWidgets.QLabel("duration"))
        settings.addWidget(self.duration)
        settings.addWidget(QtWidgets.QLabel("s   speed"))
        settings.addWidget(self.speed)
        settings.addWidget(QtWidgets.QLabel("seed"))
        settings.addWidget(self.seed)
        buttons = QtWidgets.QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.stop_button):
            b.setMinimumHeight(30)
            buttons.addWidget(b)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.protocol_box)
        layout.addWidget(self.description)
        layout.addWidget(self.load_error)
        layout.addWidget(scroll, 1)
        layout.addLayout(settings)
        layout.addWidget(self.run_error)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.state)
        layout.addWidget(self.outcome)
        layout.addWidget(self.session)
        layout.addWidget(self.open_report_button)

        first = protocol or (
            self.protocol_box.itemText(0) if self.protocol_box.count() > 1 else None
        )
        if first is not None:
            self.choose_protocol(first, protocol_values)
        self._update_buttons()

    # -- choosing a protocol ---------------------------------------------------------------
    def choose_protocol(self, spec: str, values: dict[str, Any] | None = None) -> bool:
        """Load a protocol by name or file path and build its form; False (and the message
        shown) if it cannot be loaded."""
        try:
            cls = load_protocol_class(spec)
        except ConfigError as e:
            return self._load_failed(str(e))
        except Exception as e:  # noqa: BLE001 - a broken protocol file must not kill the GUI
            return self._load_failed(f"cannot load protocol {spec!r}: {type(e).__name__}: {e}")
        index = self.protocol_box.findText(spec)
        if index < 0:
            index = self.protocol_box.count() - 1  # before "Open file..."
            self.protocol_box.insertItem(index, spec)
        self.protocol_box.setCurrentIndex(index)
        self._previous_index = index
        self.load_error.setVisible(False)
        self.description.setText(protocol_description(cls))
        self.form.set_protocol(cls, values)
        self._update_buttons()
        return True

    def _load_failed(self, message: str) -> bool:
        self.load_error.setText(message)
        self.load_error.setVisible(True)
        self.protocol_box.setCurrentIndex(self._previous_index)
        self._update_buttons()
        return False

    def _protocol_chosen(self, index: int) -> None:
        text = self.protocol_box.itemText(index)
        if text != OPEN_FILE:
            self.choose_protocol(text)
            return
        folders = protocol_dirs()
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "Protocol file", str(folders[0]) if folders else "", "Protocols (*.py)"
        )
        if path:
            self.choose_protocol(path)
        else:
            self.protocol_box.setCurrentIndex(self._previous_index)

    # -- run settings ----------------------------------------------------------------------
    def duration_s(self) -> float:
        try:
            value = float(self.duration.text())
        except ValueError:
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(
                f"duration = {self.duration.text()!r}: give a positive number of seconds"
            )
        return value

    def seed_value(self) -> int | None:
        text = self.seed.text().strip()
        if not text:
            return None
        try:
            seed = int(text)
        except ValueError:
            seed = -1
        if seed < 0:
            raise ConfigError(f"seed = {text!r}: give a whole number >= 0, or leave it empty")
        return seed

    def _settings_error(self) -> str | None:
        try:
            self.duration_s()
            self.seed_value()
        except ConfigError as e:
            return str(e)
        return None

    def _update_buttons(self, *_: Any) -> None:
        running = self.controller.running
        settings_error = self._settings_error()
        self.run_error.setText(settings_error or "")
        self.run_error.setVisible(settings_error is not None)
        self.start_button.setEnabled(not running and self.form.valid and settings_error is None)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        self.pause_button.setText("Resume" if running and self.controller.paused else "Pause")
        self.protocol_box.setEnabled(not running)
        self.form.setEnabled(not running)
        for w in (self.duration, self.speed, self.seed):
            w.setEnabled(not running)

    # -- running ---------------------------------------------------------------------------
    def start(self) -> bool:
        """Start the chosen protocol with the form's values; False (message shown) if not."""
        try:
            protocol = self.form.protocol()
            duration = self.duration_s()
            seed = self.seed_value()
            self.controller.start(
                protocol, duration_s=duration, speed=self.speed.currentText(), seed=seed
            )
        except (ConfigError, RuntimeError) as e:
            self.run_error.setText(str(e))
            self.run_error.setVisible(True)
            return False
        self.outcome.setText("")
        self.session.setText("")
        self.open_report_button.setEnabled(False)
        self.progress.setValue(0)
        self.started.emit()
        self._update_buttons()
        return True

    def _pause_or_resume(self) -> None:
        if not self.controller.running:
            return
        if self.controller.paused:
            self.controller.resume()
        else:
            self.controller.pause()
        self._update_buttons()

    def refresh(self, snap: LiveSnapshot | None) -> None:
        self._update_buttons()
        c = self.controller
        if snap is None or not c.running:
            return
        duration = c.duration_s
        self.progress.setValue(int(1000 * min(1.0, snap.time_s / duration)) if duration else 0)
        self.progress.setFormat(f"{snap.time_s:.1f} / {duration:g} s")
        parts = [f"running {c.protocol.protocol_name() if c.protocol else ''} ({c.speed})"]
        if c.safe_off_engaged:
            parts.append("SAFE-OFF engaged")
        elif c.paused:
            parts.append("protocol paused")
        if snap.n_rois == 0:
            parts.append("finding ROIs")
        if snap.protocol_state:
            parts.append(", ".join(f"{k}: {v}" for k, v in list(snap.protocol_state.items())[:4]))
        self.state.setText("; ".join(parts))

    def show_outcome(self) -> None:
        """The run has ended: say how, where the session is, and offer its report."""
        c = self.controller
        self._update_buttons()
        if c.result is None:
            self.progress.setFormat("failed")
            self.state.setText("not started")
            self.outcome.setText(f"the experiment could not run: {c.error}")
            self.outcome.setStyleSheet(ERROR_STYLE)
            return
        s = c.result.summary
        self.progress.setValue(1000 if s["status"] == "completed" else self.progress.value())
        self.progress.setFormat(f"{s['status']} ({s['duration_s']:.1f} s)")
        text = (
            f"<b>{s['status']}</b>: {s['frames']} frames at {s['frame_rate_hz']:.2f} Hz, "
            f"dropped {s['frames_dropped']}, {s['n_rois']} ROIs, {s['stimuli']} stimuli"
        )
        if s.get("stop_reason"):
            text += f"; stop: {s['stop_reason']}"
        if s.get("error"):
            text += f"<br><span style='{ERROR_STYLE}'>error: {s['error']}</span>"
        self.outcome.setText(text)
        self.outcome.setStyleSheet("")
        self.state.setText("done")
        folder = c.result.session_dir
        self.session.setText(f"session folder: {folder}")
        self.open_report_button.setEnabled((Path(folder) / "report.html").is_file())

    @property
    def report_path(self) -> Path | None:
        r = self.controller.result
        return None if r is None else Path(r.session_dir) / "report.html"

    def open_report(self) -> None:
        path = self.report_path
        if path is not None and path.is_file():
            QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(str(path.resolve())))
