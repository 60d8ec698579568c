"""Spike blocks as the closed-loop input: the MEA rig, the loop and the LSA protocol."""

import json

import h5py
import numpy as np
import pytest

from rig.cli import main
from rig.run import run_experiment

MINIMAL = ["culture.preset=lsa_minimal"]


def run(tmp_path, name, duration=20.0, seed=1, overrides=(), **kw):
    return run_experiment(
        "lsa",
        "sim-culture",
        duration_s=duration,
        seed=seed,
        out=str(tmp_path / name),
        overrides=MINIMAL + list(overrides),
        write_report=False,
        **kw,
    )


def test_lsa_closed_loop_runs_and_records_spikes_and_stimuli(tmp_path):
    result = run(tmp_path, "closed")
    s = result.summary
    assert s["status"] == "completed", s["error"]
    assert s["input"] == "spikes" and s["frames_dropped"] == 0
    block_s = s["block_duration_s"]
    assert block_s == pytest.approx(128 / 30000)
    assert s["blocks"] == round(20.0 / block_s)
    m = s["protocol"]["metrics"]
    assert m["trials"] >= 2 and m["weight_in_out_start"] == pytest.approx(5.0)
    events = [json.loads(x) for x in (result.session_dir / "events.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["type"] == "stimulus" and e["action"] == "start"]
    stops = [e for e in events if e["type"] == "stimulus_stop"]
    assert len(starts) == s["stimuli"] and abs(len(starts) - len(stops)) <= 1
    with h5py.File(result.session_dir / "session.h5") as f:
        assert f["blocks/first_sample"].shape == (s["blocks"],)
        assert np.all(np.diff(f["blocks/first_sample"][:]) == 128)
        assert f["spikes/sample"].shape[0] == s["spikes"] > 0
        # the stimulation the protocol switched on is read back from the device as onsets
        assert f["onsets/sample"].shape[0] > 0
        assert list(f.attrs["electrodes"])[20] == "A-020"


def test_output_spikes_end_stimulation_within_a_block(tmp_path):
    """stop_on_output: every 'stop' follows an output spike in the same block."""
    result = run(tmp_path, "closed", duration=15.0)
    events = [json.loads(x) for x in (result.session_dir / "events.jsonl").read_text().splitlines()]
    changes = [e for e in events if e["type"] in ("stimulus", "stimulus_stop")]
    with h5py.File(result.session_dir / "session.h5") as f:
        electrodes = list(f.attrs["electrodes"])
        out = electrodes.index("A-027")
        spike_blocks = set((f["spikes/sample"][:][f["spikes/electrode"][:] == out] // 128).tolist())
    last_block = result.summary["blocks"] - 1
    answered = 0
    for start, stop in zip(changes[::2], changes[1::2]):
        assert start["action"] == "start" and stop["action"] == "stop"
        if stop["frame"] >= last_block:  # switched off by the protocol's teardown
            continue
        gave_up = stop["device_time_s"] - start["device_time_s"] >= 10.0
        assert stop["frame"] in spike_blocks or gave_up
        answered += stop["frame"] in spike_blocks
    assert answered >= 1


def test_same_seed_same_session_at_max_speed(tmp_path):
    a = run(tmp_path, "a", duration=10.0)
    b = run(tmp_path, "b", duration=10.0)
    with (
        h5py.File(a.session_dir / "session.h5") as fa,
        h5py.File(b.session_dir / "session.h5") as fb,
    ):
        np.testing.assert_array_equal(fa["spikes/sample"][:], fb["spikes/sample"][:])
        np.testing.assert_array_equal(fa["onsets/sample"][:], fb["onsets/sample"][:])
    assert a.summary["protocol"]["metrics"] == b.summary["protocol"]["metrics"]


def test_yoked_control_replays_the_closed_loop_schedule(tmp_path):
    closed = run(tmp_path, "closed", duration=15.0)
    yoked = run(
        tmp_path,
        "yoked",
        duration=15.0,
        overrides=[
            "protocol.contingency=yoked",
            f"protocol.yoked_from={closed.session_dir}",
            "culture.noise_stream=1",
        ],
    )
    assert yoked.summary["status"] == "completed", yoked.summary["error"]

    def starts(result):
        events = [
            json.loads(x) for x in (result.session_dir / "events.jsonl").read_text().splitlines()
        ]
        return [e["device_time_s"] for e in events if e["type"] == "stimulus"]

    c, y = starts(closed), starts(yoked)
    assert len(c) == len(y) > 0
    # replayed at the first block at or after each recorded time
    assert np.all(np.array(y) - np.array(c) >= -1e-9)
    assert np.all(np.array(y) - np.array(c) <= closed.summary["block_duration_s"] + 1e-6)


def test_mea_bad_input_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "lsa", "--rig", "sim-culture", "--set", "protocol.contingency=yoked"]) == 2
    assert "yoked_from" in capsys.readouterr().err
    assert main(["run", "lsa", "--rig", "sim-culture", "--set", "culture.no_such=1"]) == 2
    assert "culture.no_such" in capsys.readouterr().err
    assert main(["run", "lsa", "--rig", "sim-culture", "--set", "protocol.amplitude_ua=3000"]) == 2
    assert "amplitude_ua" in capsys.readouterr().err


def test_yoked_reaction_time_is_the_first_output_event_of_each_replayed_period(tmp_path):
    """A yoked run times this culture's first output event in every replayed stimulation
    period (null when the period ends without one), so its curve can be set beside the
    closed loop's; each time lies within its period."""
    closed = run(tmp_path, "closed", duration=15.0)
    yoked = run(
        tmp_path,
        "yoked",
        duration=15.0,
        overrides=[
            "protocol.contingency=yoked",
            f"protocol.yoked_from={closed.session_dir}",
            "culture.noise_stream=1",
        ],
    )
    m = yoked.summary["protocol"]["metrics"]
    events = [json.loads(x) for x in (yoked.session_dir / "events.jsonl").read_text().splitlines()]
    changes = [e for e in events if e["type"] in ("stimulus", "stimulus_stop")]
    periods = [
        b["device_time_s"] - a["device_time_s"]
        for a, b in zip(changes[::2], changes[1::2])
        if b["frame"] < yoked.summary["blocks"] - 1  # not the one stopped by teardown
    ]
    times = m["reaction_times_s"]
    assert len(times) == m["trials"] == len(periods) > 0
    assert m["gave_up"] == sum(t is None for t in times)
    block_s = yoked.summary["block_duration_s"]
    for t, period in zip(times, periods):
        assert t is None or 0 < t <= period + block_s / 2
    assert any(t is not None for t in times)
    assert m["weight_in_out_change"] == pytest.approx(
        m["weight_in_out_end"] - m["weight_in_out_start"]
    )
