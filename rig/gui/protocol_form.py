"""A form generated from a protocol's declared parameters (rig.protocol.Param).

One row per parameter: its name (help text as tooltip), an editor, the unit and allowed range,
and under it the validation message when the value is refused. Every edit is validated at
once with the parameter's own `validate` (the same check `rig run` applies), so the message
the user reads is the protocol's message. Numbers and lists are typed as text (a spin box
would silently clamp a bad value instead of saying why it is bad); booleans are check boxes,
choices are combo boxes. When every field is valid the protocol is constructed, which also
runs its cross-parameter `check()`; its message is shown under the form. `valid` is False
while anything is refused, and `validity_changed` tells the runner to disable Start.
"""

from __future__ import annotations

from typing import Any

from pyqtgraph.Qt import QtCore, QtWidgets

from rig.config import ConfigError
from rig.protocol import Param, Protocol

ERROR_STYLE = "color: #b00020;"


def value_text(param: Param, value: Any) -> str:
    """The editor text for a value, in the --set syntax (TOML): 2.5, 10, [0, 0], text."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(param, v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def limits_text(param: Param) -> str:
    """Unit and allowed values, as shown next to the editor."""
    if param.kind == "bool":
        return "true / false"
    if param.kind == "str" and not param.choices:
        return "text"
    text = param.range_text()
    if param.kind == "list":
        return f"{text} (x{param.length})" if param.length else f"list, {text}"
    return text


class ParameterForm(QtWidgets.QWidget):
    validity_changed = QtCore.Signal(bool)

    def __init__(self) -> None:
        super().__init__()
        self.protocol_class: type[Protocol] | None = None
        self.editors: dict[str, QtWidgets.QWidget] = {}
        self.error_labels: dict[str, QtWidgets.QLabel] = {}
        self.errors: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.form_error: str | None = None
        self.valid = False
        self.grid = QtWidgets.QGridLayout()
        self.grid.setColumnStretch(1, 1)
        self.grid.setHorizontalSpacing(6)
        self.grid.setVerticalSpacing(2)
        self.form_error_label = QtWidgets.QLabel()
        self.form_error_label.setWordWrap(True)
        self.form_error_label.setStyleSheet(ERROR_STYLE)
        self.form_error_label.setVisible(False)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self.grid)
        layout.addWidget(self.form_error_label)
        layout.addStretch(1)

    # -- building --------------------------------------------------------------------------
    def set_protocol(self, cls: type[Protocol], initial: dict[str, Any] | None = None) -> None:
        """Rebuild the form for `cls`; `initial` values (or --set texts) replace defaults."""
        self._clear()
        self.protocol_class = cls
        initial = initial or {}
        for row, (name, param) in enumerate(cls.parameters.items()):
            value = initial.get(name, param.default)
            self._add_row(row, name, param, value)
        self.validate()

    def _clear(self) -> None:
        while self.grid.count():
            item = self.grid.takeAt(0)
            widget = item.widget()
            if widget is not None:
                widget.setParent(None)
                widget.deleteLater()
        self.editors.clear()
        self.error_labels.clear()
        self.errors.clear()
        self.values.clear()

    def _add_row(self, row: int, name: str, param: Param, value: Any) -> None:
        tip = f"{param.help}\nallowed: {limits_text(param)}" if param.help else limits_text(param)
        label = QtWidgets.QLabel(name)
        label.setToolTip(tip)
        if param.kind == "bool":
            editor: QtWidgets.QWidget = QtWidgets.QCheckBox()
            text = value if isinstance(value, str) else None
            editor.setChecked(bool(value) if text is None else text.strip().lower() == "true")
            editor.toggled.connect(self.validate)
        elif param.kind == "str" and param.choices:
            editor = QtWidgets.QComboBox()
            editor.addItems(list(param.choices))
            editor.setCurrentText(str(value))
            editor.currentTextChanged.connect(self.validate)
        else:
            editor = QtWidgets.QLineEdit(
                value if isinstance(value, str) else value_text(param, value)
            )
            editor.textChanged.connect(self.validate)
        editor.setToolTip(tip)
        editor.setObjectName(name)
        editor.setMinimumWidth(80)
        limits = QtWidgets.QLabel(limits_text(param))
        limits.setStyleSheet("color: #555; font-size: 11px;")
        error = QtWidgets.QLabel()
        error.setWordWrap(True)
        error.setStyleSheet(ERROR_STYLE)
        error.setVisible(False)
        self.grid.addWidget(label, 2 * row, 0)
        self.grid.addWidget(editor, 2 * row, 1)
        self.grid.addWidget(limits, 2 * row, 2)
        self.grid.addWidget(error, 2 * row + 1, 0, 1, 3)
        self.editors[name] = editor
        self.error_labels[name] = error

    # -- reading ---------------------------------------------------------------------------
    def raw_value(self, name: str) -> Any:
        editor = self.editors[name]
        if isinstance(editor, QtWidgets.QCheckBox):
            return editor.isChecked()
        if isinstance(editor, QtWidgets.QComboBox):
            return editor.currentText()
        return editor.text()

    def set_text(self, name: str, text: str) -> None:
        """Type into a parameter's editor (CLI --set, scripts, tests)."""
        if name not in self.editors:
            raise ConfigError(
                f"unknown parameter '{name}' for protocol {self._protocol_name()}; its "
                f"parameters are: {', '.join(self.editors) or '(none)'}"
            )
        editor = self.editors[name]
        if isinstance(editor, QtWidgets.QCheckBox):
            editor.setChecked(text.strip().lower() == "true")
        elif isinstance(editor, QtWidgets.QComboBox):
            editor.setCurrentText(text)
        else:
            editor.setText(text)

    def _protocol_name(self) -> str:
        return self.protocol_class.protocol_name() if self.protocol_class else "(none)"

    def validate(self) -> bool:
        """Check every field with its Param and the whole protocol with check()."""
        cls = self.protocol_class
        self.errors.clear()
        self.values.clear()
        if cls is None:
            return self._set_valid(False)
        name_of_protocol = cls.protocol_name()
        for name, param in cls.parameters.items():
            try:
                self.values[name] = param.validate(self.raw_value(name), name_of_protocol)
            except ConfigError as e:
                self.errors[name] = str(e)
            label = self.error_labels[name]
            label.setText(self.errors.get(name, ""))
            label.setVisible(name in self.errors)
        self.form_error = None
        if not self.errors:
            try:
                cls(**self.values)
            except ConfigError as e:
                self.form_error = str(e)
        self.form_error_label.setText(self.form_error or "")
        self.form_error_label.setVisible(self.form_error is not None)
        return self._set_valid(not self.errors and self.form_error is None)

    def _set_valid(self, valid: bool) -> bool:
        changed = valid != self.valid
        self.valid = valid
        if changed:
            self.validity_changed.emit(valid)
        return valid

    def protocol(self) -> Protocol:
        """A fresh protocol instance with the form's values (ConfigError if any is bad)."""
        if self.protocol_class is None:
            raise ConfigError("choose a protocol first")
        if not self.validate():
            first = next(iter(self.errors.values()), self.form_error)
            raise ConfigError(first or "the form has invalid values")
        return self.protocol_class(**self.values)
