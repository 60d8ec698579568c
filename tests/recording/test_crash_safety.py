"""Crash safety: a session killed with SIGKILL keeps everything up to its last flush, and
`rig recover` finishes it (session.h5, summary.json, report.html)."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from recording_helpers import FAST_RIG, TRAIN

from analysis.noise import noise_level
from rig.bench_record import write_synthetic_session
from rig.recover import recover_session
from rig.session import SessionStreamError, SessionStreams, assemble_session_h5, open_frames


def commit_lines(folder):
    path = folder / "streams" / "commits.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


@pytest.mark.slow
def test_sigkill_mid_session_keeps_every_flushed_frame_and_recover_finishes_it(tmp_path, rig_cli):
    out = tmp_path / "s"
    args = ["run", "open_loop_train", "--rig", "sim-galvo", "--speed", "realtime",
            "--duration", "60", "--out", str(out)]
    for kv in FAST_RIG + TRAIN + ["recording.frames=true"]:
        args += ["--set", kv]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rig.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    events_path = out / "events.jsonl"
    # kill once several flushes are on disk and the ROIs exist (at 2 s of acquisition)
    while len(commit_lines(out)) < 4 or '"type": "rois"' not in (
        events_path.read_text() if events_path.is_file() else ""
    ):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never flushed"
        time.sleep(0.1)
    saved = out / "streams" / "rois.npz"  # written by the recorder right after
    soon = time.monotonic() + 10
    while not saved.is_file() and time.monotonic() < soon and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    finished = out / "summary.json"
    assert not finished.exists(), f"the run ended before the kill: {finished.read_text()[:500]}"
    assert not (out / "session.h5").exists()

    last_commit = commit_lines(out)[-1]["frames"]
    streams = SessionStreams(out)
    assert streams.frames == last_commit >= 4  # everything up to the last flush
    assert rig_cli(["recover", str(out)]) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "aborted"
    assert "without closing the session" in summary["error"]
    assert summary["frames"] == last_commit == summary["recovered"]["frames_committed"]
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    n_rois = next(e["n_rois"] for e in events if e["type"] == "rois")
    assert events[-1]["type"] == "session" and events[-1]["event"] == "recovered"
    with h5py.File(out / "session.h5", "r") as f:
        n = last_commit
        rate = f.attrs["frame_rate_hz"]
        assert f["timestamps"].shape == (n,)
        # device times sit on the frame grid (index / rate), increasing; a loaded machine
        # may have dropped frames in realtime, which leaves gaps
        index = f["timestamps"][:] * rate
        np.testing.assert_allclose(index, np.round(index), atol=1e-6)
        assert np.all(np.diff(index) > 0.5)
        dff = f["dff"][:]
        assert dff.shape == (n, n_rois)
        start = streams.roi_start_row  # the first row with ROIs (frames may have dropped)
        assert 0 < start < n
        assert np.all(np.isnan(dff[:start])) and np.isfinite(dff[-3:]).any()
        # the ROI shapes were saved when they were detected
        assert f["rois/offsets"].shape == (n_rois + 1,), (
            "ROI set not saved: rig/run.py must pass pipeline= to SessionRecorder"
        )
        # the session noise level is recomputable from dF/F (docs/SESSION_FORMAT.md)
        expected = noise_level(dff[start:].T.astype(np.float64), rate)
        np.testing.assert_allclose(f["noise_level"][:], expected, rtol=1e-6)
        frames = open_frames(f)
        assert frames.shape == (n, 64, 256) and frames.dtype == np.int16
        assert frames[n - 1].mean() > 0  # the last committed frame holds image data
        stimuli = [e for e in events if e["type"] == "stimulus"]
        np.testing.assert_array_equal(
            f["stimuli/device_time_s"][:], [e["device_time_s"] for e in stimuli]
        )
    assert (out / "report.html").is_file()

    # recovering again changes nothing
    before = (out / "summary.json").read_bytes()
    assert not recover_session(out).needed
    assert (out / "summary.json").read_bytes() == before


def _crash_mid_flush(folder):
    """What a kill in the middle of a flush leaves: a torn row in one stream, a whole row not
    yet committed in another, and a commit line cut short."""
    streams = folder / "streams"
    with open(streams / "dff.f4", "ab") as f:
        f.write(b"\x01\x02\x03")  # 3 bytes of a row of float32 values
    with open(streams / "timing.f8", "ab") as f:
        f.write(np.zeros(4).tobytes())  # a complete row the commit never covered
    with open(streams / "commits.jsonl", "a") as f:
        f.write('{"frames": 9')


def test_a_torn_flush_is_cut_at_the_last_commit_and_the_values_survive(tmp_path):
    written = write_synthetic_session(
        tmp_path / "s", duration_s=3.0, frame_rate_hz=20.0, n_rois=6, finish=False
    )
    folder = written["folder"]
    committed = len(written["timestamps"])
    _crash_mid_flush(folder)
    streams = SessionStreams(folder)
    assert streams.frames == committed
    assert streams.torn_bytes["dff"] == 3
    assert streams.uncommitted["timing"] == 1
    result = recover_session(folder, write_report=False)
    assert result.needed
    with h5py.File(folder / "session.h5", "r") as f:
        np.testing.assert_array_equal(f["timestamps"][:], written["timestamps"])
        np.testing.assert_array_equal(f["dff"][:], written["dff"])
        np.testing.assert_array_equal(f["fluorescence"][:], written["fluorescence"])
        np.testing.assert_array_equal(f["rois/pixels"][:], written["rois"].pixels)
        expected = written["distinct_frames"][written["frame_index"] % 8]
        np.testing.assert_array_equal(open_frames(f)[:], expected)
    assert result.summary["recovered"]["torn_bytes"]["dff"] == 3


def test_frames_written_after_the_last_commit_are_not_part_of_the_recording(tmp_path):
    written = write_synthetic_session(
        tmp_path / "s", duration_s=2.0, frame_rate_hz=20.0, n_rois=4, finish=False
    )
    folder = written["folder"]
    commits = commit_lines(folder)
    # cut the commit log back to an earlier flush: later rows are on disk but uncommitted
    (folder / "streams" / "commits.jsonl").write_text(json.dumps(commits[0]) + "\n")
    streams = SessionStreams(folder)
    assert streams.frames == commits[0]["frames"] < len(written["timestamps"])
    recover_session(folder, write_report=False)
    with h5py.File(folder / "session.h5", "r") as f:
        assert f["dff"].shape[0] == commits[0]["frames"]


def test_a_session_that_finished_is_left_alone(tmp_path):
    written = write_synthetic_session(tmp_path / "s", duration_s=1.0, n_rois=3)
    result = recover_session(written["folder"])
    assert not result.needed and "nothing to recover" in result.actions[0]


def test_a_failed_assembly_leaves_no_session_h5_behind(tmp_path, monkeypatch):
    written = write_synthetic_session(tmp_path / "s", duration_s=1.0, n_rois=3, finish=False)
    folder = written["folder"]
    import rig.session

    def fail(*args, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(rig.session, "_write_h5", fail)
    with pytest.raises(OSError, match="disk full"):
        assemble_session_h5(
            folder, rois=None, mean_image=None, noise_level=None, stimuli=[], attrs={}
        )
    assert not (folder / "session.h5").exists() and not (folder / "session.h5.tmp").exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "dff.json").write_text('{"dtype": "float99", "row_shape": [3]}'),
         r"dff\.json: field 'dtype'"),
        (lambda d: (d / "dff.json").write_text('{"dtype": "<f4", "row_shape": "three"}'),
         r"dff\.json: field 'row_shape'"),
        (lambda d: (d / "frames.i2").unlink(), r"frames\.i2: data file of stream 'frames'"),
        (lambda d: (d / "header.json").write_text("{not json"), r"header\.json: not readable"),
        (lambda d: (d / "frames.json").write_text(
            '{"dtype": "<i2", "row_shape": [8, 8], "file": "frames.i2"}'),
         r"frames\.json: field 'row_shape' = \[8, 8\] differs"),
    ],
)  # fmt: skip
def test_corrupt_streams_are_refused_naming_the_file_and_field(tmp_path, damage, message):
    written = write_synthetic_session(tmp_path / "s", duration_s=1.0, n_rois=3, finish=False)
    damage(written["folder"] / "streams")
    with pytest.raises(SessionStreamError, match=message):
        recover_session(written["folder"])
    assert not (written["folder"] / "session.h5").exists()


def test_recover_of_a_folder_without_streams_exits_2_naming_it(tmp_path, rig_cli, capsys):
    (tmp_path / "x").mkdir()
    assert rig_cli(["recover", str(tmp_path / "x")]) == 2
    assert "streams is missing" in capsys.readouterr().err
    assert rig_cli(["recover", str(tmp_path / "nope")]) == 2
