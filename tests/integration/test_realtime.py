"""Realtime speed: paced like hardware; frames the loop cannot take are dropped and counted;
Ctrl-C closes the session safely."""

import json
import signal
import subprocess
import sys
import time

import pytest

from rig.protocol import Param, Protocol
from rig.run import run_experiment

FAST_RIG = ["scanner.lines=64", "scanner.fov_um=[300, 75]", "rois.reference_s=2"]  # ~16 Hz
FAST = FAST_RIG + ["protocol.target_centre_um=[0, 0]", "protocol.target_radius_um=100"]


class Slow(Protocol):
    """Blocks the processing thread for a while on every frame after a given time."""

    name = "slow"
    after_s = Param(2.0, unit="s", min=0.0, max=100.0)
    sleep_ms = Param(200.0, unit="ms", min=0.0, max=5000.0)

    def on_frame(self, ctx):
        if ctx.time_s >= self.after_s:
            time.sleep(self.sleep_ms / 1e3)


def test_realtime_run_takes_wall_clock_time_and_drops_nothing(tmp_path):
    t0 = time.monotonic()
    result = run_experiment("open_loop_train", "sim-galvo", duration_s=4.0, speed="realtime",
                            seed=1, out=str(tmp_path / "s"), overrides=FAST, write_report=False)
    wall = time.monotonic() - t0
    s = result.summary
    assert s["status"] == "completed", s["error"]
    assert wall >= 4.0 * 0.95
    assert s["frames_dropped"] == 0 and s["frames"] == s["frames_acquired"]


def test_a_loop_that_falls_behind_drops_frames_and_counts_every_one(tmp_path):
    # processing takes 200 ms per frame at ~16 Hz: the 8-slot ring fills, frames are dropped
    result = run_experiment(Slow(after_s=1.0, sleep_ms=200.0), "sim-galvo", duration_s=4.0,
                            speed="realtime", seed=1, out=str(tmp_path / "s"),
                            overrides=FAST_RIG + ["loop.ring_frames=8"], write_report=False)
    s = result.summary
    assert s["status"] == "completed", s["error"]
    assert s["frames_dropped"] > 10
    assert s["frames"] + s["frames_dropped"] == s["frames_acquired"]
    events = [json.loads(x) for x in (result.session_dir / "events.jsonl").read_text().splitlines()]
    drops = [e for e in events if e["type"] == "drop"]
    assert len(drops) == s["frames_dropped"]
    assert all("reason" in e and "frame" in e for e in drops)


@pytest.mark.slow
def test_ctrl_c_aborts_safely_and_keeps_the_session(tmp_path):
    out = tmp_path / "s"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rig.cli", "run", "open_loop_train", "--rig", "sim-galvo",
         "--speed", "realtime",
         "--duration", "60", "--out", str(out)] + [a for kv in FAST for a in ("--set", kv)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "events.jsonl").exists() or "acquisition started" not in (
            out / "events.jsonl").read_text():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    time.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "aborted" and "Ctrl-C" in summary["error"]
    assert summary["frames"] > 10
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert any(e["type"] == "safe" for e in events)
    assert (out / "report.html").is_file()
