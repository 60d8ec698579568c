"""Devices: the scanner's settings, the stimulator's status and limits, and the focus device
(tunable lens or piezo) when a stage publishes it.

Settings come from the rig configuration (`rig.config.describe`: key, value, unit, help);
live rows (frame size and rate, stimulation state) from the snapshot. The focus device is
shown from `extras["focus"]`, a flat dict such as {"focal_power_dpt": 1.5,
"min_focal_power_dpt": -2, "max_focal_power_dpt": 3, "temperature_c": 31.2}; units are read
from the key's suffix (lab naming: _dpt, _ma, _um, _c ...). Refreshed at most every
`interval_s`, and only rows whose text changed are touched.
"""

from __future__ import annotations

import time
from typing import Any

from pyqtgraph.Qt import QtWidgets

from rig.config import RigConfig, describe
from rig.gui.controller import ExperimentController
from rig.live import LiveSnapshot

SUFFIX_UNITS = (
    ("_dpt", "dpt"),
    ("_ma", "mA"),
    ("_degc", "degC"),
    ("_c", "degC"),
    ("_um", "um"),
    ("_mm", "mm"),
    ("_ms", "ms"),
    ("_s", "s"),
    ("_hz", "Hz"),
    ("_mw", "mW"),
    ("_v", "V"),
    ("_k", "K"),
)


def unit_from_name(key: str) -> str:
    for suffix, unit in SUFFIX_UNITS:
        if key.endswith(suffix):
            return unit
    return ""


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


class DevicesPanel(QtWidgets.QWidget):
    def __init__(
        self, config: RigConfig, controller: ExperimentController, interval_s: float = 0.5
    ) -> None:
        super().__init__()
        self.controller = controller
        self.interval_s = interval_s
        self._last = 0.0
        self.tree = QtWidgets.QTreeWidget()
        self.tree.setColumnCount(3)
        self.tree.setHeaderLabels(["setting", "value", "unit"])
        self.tree.setAlternatingRowColors(True)
        self._live: dict[str, QtWidgets.QTreeWidgetItem] = {}
        rows = describe(config)
        self.rig = self._group(f"Rig: {config['rig.name']}")
        self._add(self.rig, "source", config.source)
        self._add(self.rig, "daq.backend", config["daq.backend"])
        self.scanner = self._group("Scanner")
        for key, label in (
            ("frame", "frame size"),
            ("pixel", "pixel size"),
            ("rate", "frame rate"),
        ):
            self._live[key] = self._add(self.scanner, label, "(not running)")
        self._config_rows(self.scanner, rows, "scanner.")
        self.stimulator = self._group("Stimulator")
        self._live["stim_state"] = self._add(self.stimulator, "state", "(not running)")
        self._live["stim_count"] = self._add(self.stimulator, "stimuli (last 500 kept)", "0")
        self._config_rows(self.stimulator, rows, "stimulator.")
        self.focus = self._group("Focus (lens)")
        self.focus.setHidden(True)
        self._focus_rows: dict[str, QtWidgets.QTreeWidgetItem] = {}
        for group in (self.rig, self.scanner, self.stimulator):
            group.setExpanded(True)
        self.tree.resizeColumnToContents(0)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.tree)

    def _group(self, title: str) -> QtWidgets.QTreeWidgetItem:
        item = QtWidgets.QTreeWidgetItem([title])
        font = item.font(0)
        font.setBold(True)
        item.setFont(0, font)
        self.tree.addTopLevelItem(item)
        return item

    @staticmethod
    def _add(
        parent: QtWidgets.QTreeWidgetItem, key: str, value: str, unit: str = "", help: str = ""
    ) -> QtWidgets.QTreeWidgetItem:
        item = QtWidgets.QTreeWidgetItem([key, value, unit])
        if help:
            for col in range(3):
                item.setToolTip(col, help)
        parent.addChild(item)
        return item

    def _config_rows(self, parent: QtWidgets.QTreeWidgetItem, rows: list, prefix: str) -> None:
        for key, value, unit, help_text in rows:
            if key.startswith(prefix):
                self._add(parent, key[len(prefix) :], value, unit, help_text)

    @staticmethod
    def _set(item: QtWidgets.QTreeWidgetItem, value: str, unit: str = "") -> None:
        if item.text(1) != value:
            item.setText(1, value)
        if item.text(2) != unit:
            item.setText(2, unit)

    def refresh(self, snap: LiveSnapshot | None) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        c = self.controller
        if snap is not None and snap.frame_shape != (0, 0):
            h, w = snap.frame_shape
            py, px = snap.pixel_size_um
            self._set(self._live["frame"], f"{w} x {h}", "px")
            self._set(self._live["pixel"], f"{px:.3g} x {py:.3g}", "um")
            self._set(self._live["rate"], f"{snap.frame_rate_hz:.2f}", "Hz")
            self._set(self._live["stim_count"], str(len(snap.stimuli)))
        if not c.running:
            state = "off (no experiment running)"
        elif c.safe_off_engaged:
            state = "SAFE-OFF (outputs at 0 V)"
        else:
            state = "armed"
        self._set(self._live["stim_state"], state)
        self._refresh_focus(snap.extras.get("focus") if snap is not None else None)

    def _refresh_focus(self, focus: Any) -> None:
        if not isinstance(focus, dict) or not focus:
            self.focus.setHidden(True)
            return
        if self.focus.isHidden():
            self.focus.setHidden(False)
            self.focus.setExpanded(True)
        for key, value in focus.items():
            item = self._focus_rows.get(key)
            if item is None:
                item = self._add(self.focus, str(key), "")
                self._focus_rows[key] = item
            self._set(item, format_value(value), unit_from_name(str(key)))
