"""The Qt window for live experiments (`rig gui`): see docs/GUI.md.

Written against pyqtgraph's Qt shim (`from pyqtgraph.Qt import QtCore, QtGui, QtWidgets`), so
PyQt5, PyQt6 and PySide6 all run it. Modules: controller (runs one experiment in a worker
thread, no Qt), main_window (layout and the refresh timer), one module per panel, app (the
`rig gui` entry, also headless with --run-for and --screenshot).
"""
