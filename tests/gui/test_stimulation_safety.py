"""Stimulation from the window: the manual trigger goes through the stimulator's own
validation, and SAFE-OFF stops stimulation (no stimulus is issued after it is pressed)."""

import json

import pytest
from gui_settings import FAST_PROTOCOL
from pyqtgraph.Qt import QtCore

LEFT = QtCore.Qt.MouseButton.LeftButton


def events_of(session_dir):
    return [json.loads(line) for line in (session_dir / "events.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_manual_trigger_is_validated_and_safe_off_stops_stimulation(make_window, qtbot):
    window = make_window(protocol="open_loop_train", protocol_values=FAST_PROTOCOL, duration_s=12.0)
    assert window.runner.start()
    # wait for the protocol's first train (a train every second from then on)
    qtbot.waitUntil(
        lambda: window.last_snapshot is not None and len(window.last_snapshot.stimuli) >= 1,
        timeout=20_000,
    )
    qtbot.waitUntil(lambda: len(window.selection.rois) > 0, timeout=5_000)
    manual = window.manual

    # above the rig's 50 mW per spot (stimulator.max_power_mw): refused, nothing queued
    manual.power_mw.setValue(500.0)
    qtbot.mouseClick(manual.button, LEFT)
    text = manual.message.text()
    assert text.startswith("refused") and "power_mw = 500 mW" in text and "[0, 50] mW" in text
    assert not window.controller.control.manual_queue

    # a gentle single pulse is accepted and delivered like any other stimulus
    manual.power_mw.setValue(1.0)
    manual.n_pulses.setValue(1)
    qtbot.mouseClick(manual.button, LEFT)
    assert manual.message.text().startswith("queued")
    qtbot.waitUntil(
        lambda: any(
            e["stimulus"]["power_mw"] == 1.0 for e in window.controller.live.snapshot().stimuli
        ),
        timeout=5_000,
    )

    qtbot.mouseClick(window.safety.safe_off_button, LEFT)
    pressed_at_s = window.controller.live.snapshot().time_s
    assert window.controller.safe_off_engaged
    assert "SAFE-OFF engaged" in window.safety.state.text()
    assert window.safety.resume_button.isEnabled()
    # while engaged the manual trigger is refused too
    qtbot.mouseClick(manual.button, LEFT)
    assert "safe-off is engaged" in manual.message.text()

    # 2.5 s more would have brought two or three trains; then stop from the runner
    qtbot.waitUntil(
        lambda: window.controller.live.snapshot().time_s > pressed_at_s + 2.5, timeout=20_000
    )
    qtbot.mouseClick(window.runner.stop_button, LEFT)
    qtbot.waitUntil(lambda: window.controller.state == "finished", timeout=30_000)

    result = window.controller.result
    assert result.summary["status"] == "completed", result.summary["error"]
    events = events_of(result.session_dir)
    safe = [e for e in events if e["type"] == "safe" and e["reason"] == "safe-off pressed"]
    assert len(safe) == 1
    stimuli = [e for e in events if e["type"] == "stimulus"]
    assert [e for e in stimuli if e["host_time_s"] < safe[0]["host_time_s"]]
    assert [e for e in stimuli if e["host_time_s"] > safe[0]["host_time_s"]] == []
    manual_marks = [e for e in events if e.get("label") == "manual stimulus"]
    assert len(manual_marks) == 1
    powers = [e["stimulus"]["power_mw"] for e in stimuli]
    assert 1.0 in powers and 500.0 not in powers


def test_safe_off_without_a_run_says_nothing_is_stimulating(make_window, qtbot):
    window = make_window(protocol="open_loop_train")
    qtbot.mouseClick(window.safety.safe_off_button, LEFT)
    assert "nothing is stimulating" in window.safety.state.text()
    qtbot.mouseClick(window.manual.button, LEFT)
    assert window.manual.message.text().startswith("refused")
