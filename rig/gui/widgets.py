"""Small widget helpers shared by the panels."""

from __future__ import annotations

from pyqtgraph.Qt import QtWidgets


def caption(text: str = "", style: str = "color: #555") -> QtWidgets.QLabel:
    """A label for changing text (counts, messages) that never widens its panel: long text
    is cut at the panel's edge instead of pushing the window wider than the screen."""
    label = QtWidgets.QLabel(text)
    label.setStyleSheet(style)
    label.setSizePolicy(
        QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred
    )
    label.setMinimumWidth(0)
    return label


def title(text: str) -> QtWidgets.QLabel:
    """A panel title (bold first words, then a plain explanation)."""
    label = QtWidgets.QLabel(text)
    label.setSizePolicy(
        QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred
    )
    return label


def restyle(widget: QtWidgets.QWidget, style: str) -> None:
    """Set a style sheet only if it changes: every setStyleSheet re-polishes the widget,
    which costs more than the rest of a refresh when done on every tick."""
    if widget.styleSheet() != style:
        widget.setStyleSheet(style)
