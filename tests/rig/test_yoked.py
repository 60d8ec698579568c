"""The yoked schedule (rig/yoked.py): what a yoked control replays of its source session."""

import json

import pytest

from drivers.mea.stimulus import MEAStimulus, Pulse
from rig.config import ConfigError
from rig.yoked import load_held_changes, load_pulses

FOCAL = MEAStimulus.on("A-027", Pulse(10.0, 200.0), label="focal")


def write_events(folder, events, torn_tail=""):
    folder.mkdir()
    lines = [json.dumps(e) for e in events]
    (folder / "events.jsonl").write_text("\n".join(lines) + "\n" + torn_tail)
    return folder


def pulse(t):
    return {"type": "stimulus", "action": "pulse", "device_time_s": t, "stimulus": FOCAL.to_dict()}


def test_pulses_in_delivery_order_and_a_restarted_clock_is_not_replayed(tmp_path):
    """A trigger after acquisition stopped restarts the RHX clock (its time runs backwards)."""
    folder = write_events(
        tmp_path / "s",
        [{"type": "session", "event": "start"}, pulse(1.0), pulse(2.5), pulse(0.01)],
        torn_tail='{"type": "stimulus", "act',  # a crashed source: its torn last line
    )
    schedule = load_pulses(folder)
    assert [t for t, _ in schedule] == [1.0, 2.5]
    assert all(s == FOCAL for _, s in schedule)


def test_held_changes_are_the_start_and_stop_times(tmp_path):
    folder = write_events(
        tmp_path / "s",
        [
            {"type": "stimulus", "action": "start", "device_time_s": 3.0},
            {"type": "stimulus_stop", "action": "stop", "device_time_s": 3.2},
            {"type": "stimulus", "action": "start", "device_time_s": 1.0},
            {"type": "stimulus_stop", "action": "stop", "device_time_s": 1.5},
            pulse(2.0),  # a single trigger is not a held change
        ],
    )
    assert load_held_changes(folder) == [(1.0, "start"), (1.5, "stop"), (3.0, "start"),
                                         (3.2, "stop")]  # fmt: skip


def test_a_missing_or_empty_source_is_refused_naming_the_parameter(tmp_path):
    with pytest.raises(ConfigError, match=r"'yoked_from': .*nowhere.*does not exist"):
        load_pulses(tmp_path / "nowhere")
    empty = write_events(tmp_path / "e", [{"type": "session", "event": "start"}])
    with pytest.raises(ConfigError, match="holds no single-trigger stimuli"):
        load_pulses(empty)
    with pytest.raises(ConfigError, match="holds no held-stimulation start/stop"):
        load_held_changes(empty)


def test_a_stimulus_that_cannot_be_replayed_is_refused_naming_its_line(tmp_path):
    bad = {"type": "stimulus", "action": "pulse", "device_time_s": 1.0, "stimulus": {"x": 1}}
    folder = write_events(tmp_path / "s", [pulse(0.5), bad])
    with pytest.raises(ConfigError, match=r"events\.jsonl line 2: the stimulus cannot be"):
        load_pulses(folder)


def test_a_yoked_protocol_without_a_session_to_replay_is_refused_by_name():
    from pathlib import Path

    from rig.yoked import yoked_source

    assert yoked_source("stop_on_output", "") is None
    assert yoked_source("yoked", "sessions/closed") == Path("sessions/closed")
    with pytest.raises(ConfigError, match="'yoked_from' must name the session to replay"):
        yoked_source("yoked", "")
