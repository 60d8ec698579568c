"""The default embedded rig end to end (issue 4, item 5; issue 3, item 7): resonant 512 x 512 at
about 30 Hz over 0.5 x 0.5 mm, the whole pipeline, per-stage timing recorded per frame and
shown in the report."""

import h5py
import numpy as np
import pytest

from rig.pipeline import STAGES
from rig.run import run_experiment


@pytest.mark.slow
def test_the_default_rig_images_the_seed_papers_field_and_records_per_stage_timing(tmp_path):
    result = run_experiment(
        "open_loop_train",
        duration_s=10.0,
        out=str(tmp_path / "s"),
        overrides=["rois.reference_s=3"],
    )
    summary = result.summary
    assert summary["status"] == "completed", summary["error"]
    assert summary["rig"] == "sim"
    # 7925.52 Hz mirror, 512 lines + 1 ms flyback, bidirectional: ~30 Hz (hardware.md 2)
    assert summary["frame_rate_hz"] == pytest.approx(30.0, abs=0.2)
    scanner = summary["devices"]["resonant-galvo scanner"]
    assert scanner["field_um"] == [500.0, 500.0]
    assert summary["n_rois"] > 100  # a dense 0.5 mm field of cortex
    session = result.session_dir
    with h5py.File(session / "session.h5") as f:
        assert f["mean_image"].shape == (512, 512)
        stage_ms = f["timing/stage_ms"][:]
        assert list(f["timing/stage_ms"].attrs["stages"]) == list(STAGES)
    assert stage_ms.shape == (summary["frames"], len(STAGES))
    # once ROIs exist every enabled stage took time on every frame
    after_rois = stage_ms[summary["roi_start_frame"] + 1 :]
    for name in ("motion", "extract", "dff", "noise_level", "deconvolution"):
        assert np.all(after_rois[:, STAGES.index(name)] > 0), name
    figure = session / "figures" / "extra" / "stage_timing.png"
    assert figure.is_file()
    assert "stage_timing.png" in (session / "report.html").read_text()
