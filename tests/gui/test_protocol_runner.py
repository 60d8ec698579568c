"""The protocol runner: a protocol chosen and filled in through the generated form runs on the
simulated rig to completion; bad values are refused with the parameter's own message."""

import json
from pathlib import Path

import pytest
from gui_settings import FAST_PROTOCOL
from pyqtgraph.Qt import QtCore, QtWidgets

from rig.config import ConfigError
from rig.protocol import load_protocol_class


def pick_with_keyboard(qtbot, box, text):
    """Choose an entry of a combo box as a user does, with Home and Down keys."""
    box.setFocus()
    qtbot.keyClick(box, QtCore.Qt.Key.Key_Home)
    for _ in range(box.count()):
        if box.currentText() == text:
            return
        qtbot.keyClick(box, QtCore.Qt.Key.Key_Down)


def type_into(qtbot, editor, text):
    editor.clear()
    qtbot.keyClicks(editor, text)


@pytest.mark.slow
def test_a_protocol_chosen_and_filled_in_the_form_runs_to_completion(make_window, qtbot):
    window = make_window(protocol="target_pattern")
    runner = window.runner
    box = runner.protocol_box
    pick_with_keyboard(qtbot, box, "open_loop_train")
    assert box.currentText() == "open_loop_train"
    assert set(runner.form.editors) == set(load_protocol_class("open_loop_train").parameters)
    for name, text in FAST_PROTOCOL.items():
        type_into(qtbot, runner.form.editors[name], text)
    type_into(qtbot, runner.duration, "5")
    runner.speed.setCurrentText("realtime")
    assert runner.start_button.isEnabled()

    qtbot.mouseClick(runner.start_button, QtCore.Qt.MouseButton.LeftButton)
    assert not runner.start_button.isEnabled() and runner.stop_button.isEnabled()
    qtbot.waitUntil(lambda: window.controller.state == "finished", timeout=40_000)
    qtbot.waitUntil(lambda: "session folder" in runner.session.text(), timeout=5_000)

    result = window.controller.result
    s = result.summary
    assert s["status"] == "completed", s["error"]
    # the values typed into the form are the ones the protocol ran with
    params = json.loads((result.session_dir / "summary.json").read_text())["protocol"]
    assert params["name"] == "open_loop_train"
    assert params["parameters"]["target_centre_um"] == [0.0, 0.0]
    assert params["parameters"]["target_radius_um"] == 100.0
    assert params["parameters"]["interval_s"] == 1.0
    assert s["stimuli"] > 0 and s["n_rois"] > 0
    # the session folder and its report are offered when done
    assert str(result.session_dir) in runner.session.text()
    assert runner.report_path == Path(result.session_dir) / "report.html"
    assert runner.report_path.is_file() and runner.open_report_button.isEnabled()
    assert "completed" in runner.outcome.text()
    # the window showed the live experiment: frames, traces, the stimuli
    assert window.image.frames_shown > 0
    assert window.selection.rois, "no ROI was selected for the trace panel"
    assert window.raster.ticks.data.size > 0
    assert runner.start_button.isEnabled()  # ready for the next run


def test_the_form_refuses_a_bad_value_with_the_parameters_message(make_window, qtbot):
    window = make_window(protocol="open_loop_train")
    form, start = window.runner.form, window.runner.start_button
    param = load_protocol_class("open_loop_train").parameters["target_radius_um"]
    assert start.isEnabled()

    type_into(qtbot, form.editors["target_radius_um"], "5000")
    with pytest.raises(ConfigError) as expected:
        param.validate("5000", "open_loop_train")
    label = form.error_labels["target_radius_um"]
    assert label.text() == str(expected.value)
    assert not label.isHidden()
    assert "target_radius_um" in label.text() and "[1, 2000] um" in label.text()
    assert not start.isEnabled()

    type_into(qtbot, form.editors["interval_s"], "soon")
    assert "must be a number" in form.error_labels["interval_s"].text()
    type_into(qtbot, form.editors["target_centre_um"], "[0]")
    assert "must have 2 elements" in form.error_labels["target_centre_um"].text()
    assert not start.isEnabled()

    type_into(qtbot, form.editors["target_radius_um"], "100")
    type_into(qtbot, form.editors["interval_s"], "2")
    type_into(qtbot, form.editors["target_centre_um"], "[0, 0]")
    assert form.errors == {}
    assert label.isHidden()
    assert start.isEnabled()

    # run settings are checked too
    type_into(qtbot, window.runner.duration, "-3")
    assert not start.isEnabled() and "positive number of seconds" in window.runner.run_error.text()


def test_a_cross_parameter_check_is_shown_under_the_form(make_window, qtbot):
    window = make_window(protocol="target_pattern")
    form = window.runner.form
    # trains every 0.5 s cannot have a 1 s response window (TargetPattern.check)
    type_into(qtbot, form.editors["stim_rate_hz"], "2")
    assert form.errors == {}
    assert form.form_error is not None and "response_window_s" in form.form_error
    assert not form.form_error_label.isHidden()
    assert not window.runner.start_button.isEnabled()
    type_into(qtbot, form.editors["stim_rate_hz"], "0.25")
    assert form.form_error is None and window.runner.start_button.isEnabled()


def test_open_file_loads_a_protocol_from_any_path(make_window, qtbot, tmp_path, monkeypatch):
    source = Path(load_protocol_class("open_loop_train").source_file).read_text()
    path = tmp_path / "my_train.py"
    path.write_text(source.replace('name = "open_loop_train"', 'name = "my_train"'))
    monkeypatch.setattr(
        QtWidgets.QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), "Protocols (*.py)")
    )
    window = make_window(protocol="open_loop_train")
    box = window.runner.protocol_box
    box.setFocus()
    qtbot.keyClick(box, QtCore.Qt.Key.Key_End)  # "Open file..." is the last entry
    assert box.currentText() == str(path)
    assert window.runner.form.protocol_class.protocol_name() == "my_train"

    broken = tmp_path / "broken.py"
    broken.write_text("this is not python\n")
    assert not window.runner.choose_protocol(str(broken))
    assert "broken.py" in window.runner.load_error.text()
    assert box.currentText() == str(path)  # the previous choice stays
