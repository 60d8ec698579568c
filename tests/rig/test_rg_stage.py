"""The live coarse-graining stage with a moving brain: ROIs the motion can carry out of the
field would make every frame incomplete, so the stage uses the ROIs that always stay imaged,
re-pairs on schedule, and the session's batch `rg` block uses the same ROIs."""

import json

import h5py
import numpy as np

from analysis.rois import RoiSet
from rig.pipeline import rois_always_imaged
from rig.run import run_experiment


def square_rois(frame_shape, corners, size=4):
    labels = np.zeros(frame_shape, np.int32)
    for i, (y, x) in enumerate(corners, start=1):
        labels[y : y + size, x : x + size] = i
    return RoiSet.from_label_image(labels)


def test_rois_within_the_motion_range_of_the_edge_are_left_out():
    # ROI 0 in the middle, 1 touching the top edge, 2 ending 3 px from the right edge, 3 in
    # the last column (bilinear reads need the right neighbour: never extractable there)
    rois = square_rois((64, 64), [(30, 30), (0, 20), (20, 57), (40, 60)])
    assert list(rois_always_imaged(rois, (64, 64), margin_px=0.0)) == [0, 1, 2]
    assert list(rois_always_imaged(rois, (64, 64), margin_px=2.5)) == [0]
    assert list(rois_always_imaged(rois, (64, 64), margin_px=30.0)) == []


def test_with_brain_motion_the_live_stage_re_pairs_on_schedule_over_the_same_rois(tmp_path):
    result = run_experiment(
        "open_loop_train",
        "sim-galvo",
        duration_s=15.0,
        out=str(tmp_path / "s"),
        overrides=["rg.repair_every_s=3", "rois.reference_s=2"],
        write_report=False,
    )
    assert result.status == "completed", result.summary["error"]
    lines = (result.session_dir / "events.jsonl").read_text().splitlines()
    events = [json.loads(x) for x in lines if x]
    rg = [e for e in events if e["type"] == "rg"]
    chosen = next(e for e in rg if e["event"] == "ROIs chosen")
    repairs = [e for e in rg if e["event"] == "re-paired"]
    # ~45 frames with ROIs at 4.25 Hz, a re-pairing every 13 frames
    assert len(repairs) >= 3
    with h5py.File(result.session_dir / "session.h5") as f:
        columns = f["rg_rois"][:]
        spikes = f["spikes"][:, columns]
        start = f.attrs["roi_start_frame"]
    assert columns.size == chosen["n_rois"] == result.summary["n_rois"] - chosen["left_out"]
    # the chosen ROIs are imaged on every frame the motion corrector registered
    assert np.isfinite(spikes[start + 10 :]).all(axis=1).mean() > 0.9
