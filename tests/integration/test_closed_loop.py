"""End-to-end: the simulated rig, the real scan engine, the loop and a protocol closing it."""

import json

import h5py
import numpy as np
import pytest

from analysis.noise import noise_level
from rig.run import run_experiment


def run(tmp_path, name, protocol="target_pattern", duration=90.0, seed=2, overrides=(), **kw):
    return run_experiment(
        protocol,
        "sim-galvo",
        duration_s=duration,
        seed=seed,
        out=str(tmp_path / name),
        overrides=list(overrides),
        **kw,
    )


@pytest.mark.slow
def test_coupled_world_meets_the_criterion_and_the_control_world_does_not(tmp_path):
    """The world couples sensory to motor cells; stimulating the sensory ROIs drives the
    motor ROIs to the target pattern. Without the coupling the same protocol never succeeds.
    Responses are stochastic (a few motor cells, shot noise at ~4 Hz): over three worlds the
    coupled ones must reach the criterion (not necessarily every world within the run), the
    control worlds never."""
    params = ["protocol.cycles=2", "protocol.pause_s=5"]
    met_coupled, worlds_met = 0, 0
    for seed in (1, 2, 3):
        coupled = run(tmp_path, f"coupled{seed}", duration=150.0, seed=seed, overrides=params,
                      write_report=False)
        control = run(tmp_path, f"control{seed}", duration=150.0, seed=seed, write_report=False,
                      overrides=params + ["world.coupling.enabled=false"])
        for result in (coupled, control):
            assert result.status == "completed", result.summary["error"]
        met = coupled.summary["protocol"]["metrics"]["cycles_met"]
        met_coupled += met
        worlds_met += met > 0
        assert control.summary["protocol"]["metrics"]["cycles_met"] == 0
        assert control.summary["stimuli"] >= 10  # it kept trying
    assert worlds_met >= 2 and met_coupled >= 3


def test_session_folder_has_everything_a_reader_needs(tmp_path):
    result = run(
        tmp_path,
        "s",
        protocol="open_loop_train",
        duration=30.0,
        overrides=["protocol.interval_s=4", "recording.frames=true"],
    )
    folder = result.session_dir
    s = json.loads((folder / "summary.json").read_text())
    for key in (
        "status",
        "error",
        "seed",
        "frames",
        "frames_dropped",
        "frame_rate_hz",
        "duration_s",
        "n_rois",
        "latency_ms",
        "stimuli",
        "noise_level",
        "protocol",
    ):
        assert key in s, key
    assert s["status"] == "completed" and s["error"] is None and s["seed"] == 2
    assert set(s["latency_ms"]) == {"p50", "p99", "max"}
    assert s["frames"] == round(30.0 * s["frame_rate_hz"]) and s["frames_dropped"] == 0
    assert s["stimuli"] >= 3 and s["n_rois"] > 20
    assert s["protocol"]["parameters"]["interval_s"] == 4.0
    with h5py.File(folder / "session.h5") as f:
        assert f["timestamps"].shape == (s["frames"],)
        np.testing.assert_allclose(np.diff(f["timestamps"][:]), 1 / s["frame_rate_hz"])
        dff = f["dff"][:]
        assert dff.dtype == np.float32 and dff.shape == (s["frames"], s["n_rois"])
        start = int(f.attrs["roi_start_frame"])
        assert np.isnan(dff[:start]).all()
        # after ROI detection every frame has data; single values are NaN only where motion
        # pushed an edge ROI partly out of the frame
        assert np.isfinite(dff[start:]).any(axis=1).all()
        assert np.isfinite(dff[start:]).mean() > 0.95
        # the stored session noise level is recomputable from dff (CASCADE definition)
        recomputed = noise_level(dff[start:].T.astype(np.float64), s["frame_rate_hz"])
        np.testing.assert_allclose(f["noise_level"][:], recomputed, rtol=1e-5)
        assert s["noise_level"]["median"] == pytest.approx(float(np.median(recomputed)), rel=1e-5)
        assert f["frames"].shape == (s["frames"], 256, 256)
        assert f["rois/offsets"].shape == (s["n_rois"] + 1,)
        assert f["stimuli/device_time_s"].shape == (s["stimuli"],)
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    stimuli = [e for e in events if e["type"] == "stimulus"]
    assert len(stimuli) == s["stimuli"]
    assert all("device_time_s" in e and "host_time_s" in e for e in stimuli)
    assert (folder / "report.html").is_file() and (folder / "figures" / "dff_raster.png").is_file()


def test_same_seed_same_data_at_max_speed(tmp_path):
    a = run(
        tmp_path,
        "a",
        protocol="open_loop_train",
        duration=25.0,
        seed=5,
        write_report=False,
        overrides=["protocol.interval_s=3"],
    )
    b = run(
        tmp_path,
        "b",
        protocol="open_loop_train",
        duration=25.0,
        seed=5,
        write_report=False,
        overrides=["protocol.interval_s=3"],
    )
    c = run(
        tmp_path,
        "c",
        protocol="open_loop_train",
        duration=25.0,
        seed=6,
        write_report=False,
        overrides=["protocol.interval_s=3"],
    )
    with (
        h5py.File(a.session_dir / "session.h5") as fa,
        h5py.File(b.session_dir / "session.h5") as fb,
    ):
        np.testing.assert_array_equal(fa["dff"][:], fb["dff"][:])
        np.testing.assert_array_equal(
            fa["stimuli/device_time_s"][:], fb["stimuli/device_time_s"][:]
        )
    with (
        h5py.File(a.session_dir / "session.h5") as fa,
        h5py.File(c.session_dir / "session.h5") as fc,
    ):
        assert fa["dff"].shape != fc["dff"].shape or not np.array_equal(fa["dff"][:], fc["dff"][:])


def test_a_reference_z_stack_gives_the_same_data_for_the_same_seed(tmp_path):
    zstack = ['focus.kind="optotune"', "rois.zstack_range_um=2", "rois.zstack_frames_per_plane=3",
              "protocol.interval_s=3"]
    a, b = (run(tmp_path, name, protocol="open_loop_train", duration=25.0, seed=5,
                write_report=False, overrides=zstack) for name in "ab")
    assert a.summary["status"] == b.summary["status"] == "completed"
    with np.load(a.session_dir / "reference_zstack.npz") as za, np.load(
        b.session_dir / "reference_zstack.npz"
    ) as zb:
        np.testing.assert_array_equal(za["z_um"], [-2.0, -1.0, 0.0, 1.0, 2.0])
        np.testing.assert_array_equal(za["stack"], zb["stack"])
        np.testing.assert_array_equal(za["kept"], zb["kept"])
    with (
        h5py.File(a.session_dir / "session.h5") as fa,
        h5py.File(b.session_dir / "session.h5") as fb,
    ):
        assert fa.attrs["roi_start_frame"] > fa.attrs["reference_end_frame"]
        np.testing.assert_array_equal(fa["dff"][:], fb["dff"][:])


def test_a_lens_that_stops_answering_before_the_z_stack_keeps_the_session_and_its_rois(
    tmp_path,
):
    """focus.on_fault = "record" (default): the lens falls silent (its readings time out)
    during the reference period; the fault is recorded, the z-stack is not taken (a plane
    command to a silent lens cannot be trusted), every detected ROI is kept and the traces
    run."""
    faulty = ['focus.kind="optotune"', "rois.zstack_range_um=4",
              "rois.zstack_frames_per_plane=3", 'focus.port="optotune_sim://?stop_after=10"',
              "focus.timeout_s=0.05", "protocol.interval_s=3"]
    result = run(tmp_path, "record", protocol="open_loop_train", duration=25.0, seed=5,
                 write_report=False, overrides=faulty)
    s = result.summary
    assert s["status"] == "completed" and s["focus"]["fault"] is not None
    events = [json.loads(x) for x in (result.session_dir / "events.jsonl").read_text().splitlines()]
    stopped = [e for e in events if e.get("event") == "stopped"]
    assert len(stopped) == 1 and stopped[0]["type"] == "zstack"
    assert not any(e.get("event") == "plane done" for e in events)
    rois = [e for e in events if e["type"] == "rois"]
    assert len(rois) == 1 and "all kept" in rois[0]["how"] and s["n_rois"] > 0
    assert "reference_zstack" not in s
    assert not (result.session_dir / "reference_zstack.npz").exists()
