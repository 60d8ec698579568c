"""Crash safety of spike (MEA) sessions: a session killed with SIGKILL keeps every block up
to its last flush in the append-only spike streams, and `rig recover` turns them into a valid
session.h5, summary.json and report (as tests/recording/test_crash_safety.py for frames)."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from rig.recover import recover_session
from rig.run import run_experiment
from rig.session import SessionStreamError
from rig.spike_loop import SpikeStreams

BLOCK_SAMPLES = 128  # one RHX data block (hardware.md section 4)
LSA_MINIMAL = ["--set", "culture.preset=lsa_minimal"]


def commit_lines(folder):
    path = folder / "streams" / "commits.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def events_of(folder):
    lines = (folder / "events.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.endswith("}")]


def assert_blocks_hold_their_spikes(f):
    """Blocks follow each other on the device clock, the per-block counts add up to the spike
    and onset rows, and every spike lies in the block that carries it or, read one block late
    (simulators/rhx_server.py, as RHX may deliver it), in the block before - never later."""
    first = f["blocks/first_sample"][:]
    n_samples = f["blocks/n_samples"][:]
    lost = f["blocks/lost_samples_before"][:]
    n_spikes, n_onsets = f["blocks/n_spikes"][:], f["blocks/n_onsets"][:]
    np.testing.assert_array_equal(first[1:], first[:-1] + n_samples[:-1] + lost[1:])
    assert n_spikes.sum() == f["spikes/sample"].shape[0] == f["spikes/electrode"].shape[0]
    assert n_onsets.sum() == f["onsets/sample"].shape[0]
    block_of_spike = np.repeat(np.arange(first.size), n_spikes)
    samples = f["spikes/sample"][:]
    assert np.all(samples >= first[block_of_spike] - BLOCK_SAMPLES)
    assert np.all(samples < first[block_of_spike] + n_samples[block_of_spike])


@pytest.mark.slow
def test_sigkill_mid_spike_session_keeps_every_flushed_block_and_recover_finishes_it(
    tmp_path, rig_cli
):
    out = tmp_path / "s"
    args = ["run", "lsa", "--rig", "sim-culture", "--speed", "realtime", "--duration", "60"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rig.cli", *args, *LSA_MINIMAL, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    # kill once several flushes are on disk and the protocol has stimulated
    while len(commit_lines(out)) < 4 or '"type": "stimulus"' not in (
        (out / "events.jsonl").read_text() if (out / "events.jsonl").is_file() else ""
    ):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never flushed"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists(), "the run ended before the kill"
    assert not (out / "session.h5").exists()

    last = commit_lines(out)[-1]
    streams = SpikeStreams(out)
    assert streams.blocks == last["frames"] >= 4  # everything up to the last flush
    assert (streams.spikes, streams.onsets) == (last["spikes"], last["onsets"])
    assert rig_cli(["recover", str(out)]) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "aborted" and summary["input"] == "spikes"
    assert "without closing the session" in summary["error"]
    assert summary["blocks"] == last["frames"] == summary["recovered"]["frames_committed"]
    assert summary["spikes"] == last["spikes"]
    events = events_of(out)
    assert events[-1]["type"] == "session" and events[-1]["event"] == "recovered"
    with h5py.File(out / "session.h5", "r") as f:
        assert f.attrs["sample_rate_hz"] == 30000.0
        assert list(f.attrs["electrodes"])[20] == "A-020"
        assert f["blocks/first_sample"].shape == (last["frames"],)
        assert set(f["blocks/n_samples"][:].tolist()) == {BLOCK_SAMPLES}
        assert_blocks_hold_their_spikes(f)
        assert f["spikes/sample"].shape[0] > 0  # the culture fired
        stimuli = [e for e in events if e["type"] == "stimulus"]
        np.testing.assert_array_equal(
            f["stimuli/device_time_s"][:], [e["device_time_s"] for e in stimuli]
        )
    assert (out / "report.html").is_file()

    # recovering again changes nothing
    before = (out / "summary.json").read_bytes()
    assert not recover_session(out).needed
    assert (out / "summary.json").read_bytes() == before


def finished_session(tmp_path, name="s", duration_s=3.0):
    result = run_experiment(
        "lsa",
        "sim-culture",
        duration_s=duration_s,
        seed=3,
        out=str(tmp_path / name),
        overrides=["culture.preset=lsa_minimal", "recording.flush_s=0.05"],
        write_report=False,
    )
    assert result.summary["status"] == "completed", result.summary["error"]
    return result


def test_a_finished_spike_session_is_assembled_from_its_streams(tmp_path):
    result = finished_session(tmp_path)
    folder = result.session_dir
    assert len(commit_lines(folder)) >= 2  # flushed along the way, not once at the end
    with h5py.File(folder / "session.h5", "r") as f:
        assert f["blocks/first_sample"].shape == (result.summary["blocks"],)
        assert f["spikes/sample"].shape == (result.summary["spikes"],)
        assert f.attrs["status"] == "completed" and f.attrs["seed"] == 3
        assert_blocks_hold_their_spikes(f)
    assert not recover_session(folder).needed


def _crash_mid_flush(folder):
    """What a kill in the middle of a flush leaves: a torn spike row, a whole block row that no
    commit covers, and a commit line cut short."""
    streams = folder / "streams"
    with open(streams / "spike_sample.i8", "ab") as f:
        f.write(b"\x01\x02\x03")
    with open(streams / "block_counts.i8", "ab") as f:
        f.write(np.array([10**9, 128, 0, 5, 0], "<i8").tobytes())
    with open(streams / "commits.jsonl", "a") as f:
        f.write('{"frames": 99999')


def test_a_torn_flush_is_cut_at_the_last_commit_and_every_value_survives(tmp_path):
    result = finished_session(tmp_path)
    folder = result.session_dir
    with h5py.File(folder / "session.h5", "r") as f:
        original = {}
        f.visititems(lambda k, v: original.setdefault(k, v[:]) if hasattr(v, "shape") else None)
    (folder / "session.h5").unlink()
    (folder / "summary.json").unlink()
    _crash_mid_flush(folder)
    streams = SpikeStreams(folder)
    assert streams.blocks == result.summary["blocks"]
    assert streams.torn_bytes["spike_sample"] == 3
    assert streams.uncommitted["block_counts"] == 1
    recovered = recover_session(folder, write_report=False)
    assert recovered.needed
    assert recovered.summary["recovered"]["torn_bytes"]["spike_sample"] == 3
    with h5py.File(folder / "session.h5", "r") as f:
        assert f.attrs["status"] == "aborted"
        for name, values in original.items():
            np.testing.assert_array_equal(f[name][:], values, err_msg=name)


def test_blocks_after_the_last_commit_are_not_part_of_the_recording(tmp_path):
    folder = finished_session(tmp_path).session_dir
    (folder / "session.h5").unlink()
    (folder / "summary.json").unlink()
    commits = commit_lines(folder)
    (folder / "streams" / "commits.jsonl").write_text(json.dumps(commits[0]) + "\n")
    recover_session(folder, write_report=False)
    with h5py.File(folder / "session.h5", "r") as f:
        assert f["blocks/first_sample"].shape == (commits[0]["frames"],)
        assert f["spikes/sample"].shape == (commits[0]["spikes"],)
        assert_blocks_hold_their_spikes(f)


def test_a_cut_spike_stream_is_refused_naming_the_file(tmp_path):
    folder = finished_session(tmp_path).session_dir
    (folder / "session.h5").unlink()
    path = folder / "streams" / "spike_sample.i8"
    data = path.read_bytes()
    assert len(data) >= 16, "the session recorded too few spikes for this test"
    path.write_bytes(data[:8])  # one spike left: fewer than the committed blocks hold
    with pytest.raises(SessionStreamError, match=r"spike_sample\.i8: 1 rows"):
        recover_session(folder)
    assert not (folder / "session.h5").exists()
