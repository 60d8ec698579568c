"""The live view a GUI reads and the controls it sends, on a running simulated experiment."""

import threading
import time

import numpy as np

from rig.live import LiveState, RunControl
from rig.run import run_experiment

FAST = [
    "scanner.lines=64",
    "scanner.fov_um=[300, 75]",
    "rois.reference_s=2",
    "protocol.target_centre_um=[0, 0]",
    "protocol.target_radius_um=100",
    "protocol.interval_s=0.5",
    "protocol.start_after_s=0.5",
]


def test_live_state_publishes_frames_on_request_and_traces(tmp_path):
    live = LiveState()
    control = RunControl()
    frames = []

    def reader():
        deadline = time.monotonic() + 60
        while live.snapshot().status != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        while live.snapshot().status == "running":
            live.request_frame()
            time.sleep(0.05)
            snap = live.snapshot()
            if snap.frame is not None:
                frames.append(snap.frame_index)

    t = threading.Thread(target=reader)
    t.start()
    result = run_experiment(
        "open_loop_train",
        "sim-galvo",
        duration_s=6.0,
        speed="realtime",
        seed=1,
        out=str(tmp_path / "s"),
        overrides=FAST,
        write_report=False,
        live=live,
        control=control,
    )
    t.join()
    snap = live.snapshot()
    assert result.status == "completed" and snap.status == "completed"
    assert frames, "the GUI never got a frame"
    assert snap.n_rois == result.summary["n_rois"] > 0
    assert snap.roi_label_image.shape == snap.frame_shape
    assert snap.dff_history.shape[1] == snap.n_rois
    # the deconvolution stage's calcium travels with the dF/F history (GUI traces)
    dec = snap.extras["deconvolved"]
    assert dec["values"].shape == snap.dff_history.shape
    np.testing.assert_array_equal(dec["times_s"], snap.history_times_s)
    assert len(snap.stimuli) == result.summary["stimuli"] > 0
    assert snap.latency_p99_ms is not None


def test_safe_off_stops_stimulation_and_pause_holds_the_protocol(tmp_path):
    live = LiveState()
    control = RunControl()

    def press_safe_off():
        deadline = time.monotonic() + 60
        while live.snapshot().stimuli == [] and time.monotonic() < deadline:
            if live.snapshot().status not in ("idle", "running"):
                return  # the run ended without a stimulus: the assertions below say why
            time.sleep(0.01)
        control.safe_off()

    t = threading.Thread(target=press_safe_off)
    t.start()
    result = run_experiment(
        "open_loop_train",
        "sim-galvo",
        duration_s=8.0,
        speed="realtime",
        seed=1,
        out=str(tmp_path / "s"),
        overrides=FAST,
        write_report=False,
        live=live,
        control=control,
    )
    t.join()
    s = result.summary
    assert s["status"] == "completed"
    # trains every 0.5 s would give ~10; after safe-off no further stimulus is issued
    assert 1 <= s["stimuli"] <= 2
    events = (result.session_dir / "events.jsonl").read_text()
    assert "safe-off pressed" in events


def test_stop_from_outside_ends_the_run_completed(tmp_path):
    control = RunControl()
    timer = threading.Timer(2.0, control.stop)
    timer.start()
    t0 = time.monotonic()
    result = run_experiment(
        "open_loop_train",
        "sim-galvo",
        duration_s=60.0,
        speed="realtime",
        seed=1,
        out=str(tmp_path / "s"),
        overrides=FAST,
        write_report=False,
        control=control,
    )
    assert time.monotonic() - t0 < 20
    assert result.status == "completed" and result.summary["stop_reason"] == "stopped by the user"
    assert np.isfinite(result.summary["duration_s"])
