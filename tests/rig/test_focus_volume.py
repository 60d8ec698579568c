"""The tunable lens in the rig: [focus]/[volume] config, the world's plane following the lens,
z-stacks and interleaved volumetric imaging (issue 5)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from analysis.optics import remote_focus_shift
from rig.assembly import build_rig
from rig.config import ConfigError, load_rig_config, world_config
from rig.focus import focus_settings
from rig.run import run_experiment
from rig.volume import VolumeSchedule
from simulators.world.world import World

SMALL_RIG = """
[rig]
name = "lens-test"
[daq]
backend = "sim"
[scanner]
kind = "galvo"
fov_um = [120.0, 120.0]
pixels_per_line = 96
lines = 96
sample_rate_hz = 2.0e6
ai_oversample = 4
turnaround_us = 200.0
line_phase_us = 50.0
[stimulator]
kind = "none"
[deconvolution]
enabled = false
[rois]
reference_s = 2.0
[focus]
kind = "optotune"
port = "optotune_sim://"
read_every_s = 0.2
[sim]
seed = 3
[world]
extent_um = [200.0, 200.0, 100.0]
cell_density_per_mm3 = 30000.0
[world.motion]
enabled = false
"""

IDLE_PROTOCOL = """
from rig.protocol import Protocol


class Idle(Protocol):
    name = "idle"

    def on_frame(self, ctx):
        pass
"""


@pytest.fixture
def rig_file(tmp_path: Path) -> Path:
    path = tmp_path / "lens-test.toml"
    path.write_text(SMALL_RIG)
    return path


@pytest.fixture
def idle(tmp_path: Path) -> str:
    path = tmp_path / "idle.py"
    path.write_text(IDLE_PROTOCOL)
    return str(path)


def _events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


# -- config ------------------------------------------------------------------------------------
def test_focus_optics_follow_the_remote_focus_formula(rig_file: Path) -> None:
    """um per dpt = -f_obj^2 / M^2 with M = f_t / f_s x relays (science.md section 5)."""
    config = load_rig_config(
        str(rig_file), {"focus.relay_mm": [100.0, 50.0], "focus.zero_dpt": 0.5}
    )
    s = focus_settings(config)
    assert s.um_per_dpt == pytest.approx(-(12.5**2) / (4.0 * 0.5) ** 2)
    assert s.um_per_dpt == pytest.approx(remote_focus_shift(1.0, 12.5, 50.0, 200.0, [(100, 50)]))
    # the nominal plane z = 0 is imaged at zero_dpt; the calibration is the same line
    assert s.calibration.focal_power_dpt(0.0) == pytest.approx(0.5)
    assert s.calibration.z_um(1.5) == pytest.approx(s.um_per_dpt)


def test_bad_focus_and_volume_settings_are_refused_naming_the_key(rig_file: Path) -> None:
    with pytest.raises(ConfigError, match="focus.kind"):
        load_rig_config(str(rig_file), {"focus.kind": "mirror"})
    with pytest.raises(ConfigError, match="focus.relay_mm.*pairs"):
        focus_settings(load_rig_config(str(rig_file), {"focus.relay_mm": [100.0]}))
    with pytest.raises(ConfigError, match="volume.planes_um.*outside the focus range"):
        focus_settings(load_rig_config(str(rig_file), {"volume.planes_um": [0.0, 400.0]}))
    with pytest.raises(ConfigError, match="needs a focus device"):
        focus_settings(
            load_rig_config(str(rig_file), {"focus.kind": "none", "volume.planes_um": [0.0]})
        )
    with pytest.raises(ConfigError, match="focus.port.*simulated one"):
        focus_settings(load_rig_config(str(rig_file), {"focus.port": "/dev/ttyACM0"}))
    with pytest.raises(ConfigError, match="volume.settling"):
        load_rig_config(str(rig_file), {"volume.settling": "ignore"})
    with pytest.raises(ConfigError, match="volume.planes_um.*list of numbers"):
        load_rig_config(str(rig_file), {"volume.planes_um": "0, 10"})


def test_volume_schedule_steps_a_plane_per_dwell_with_settling_frames() -> None:
    s = VolumeSchedule((-20.0, 0.0, 20.0), frames_per_plane=2, settle_frames=1)
    planes = [s.plane_of(i) for i in range(10)]
    settling = [s.settling(i) for i in range(10)]
    assert planes == [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]
    assert settling == [True, False, False] * 3 + [True]
    assert [i for i in range(10) if s.step_due(i)] == [0, 3, 6, 9]
    assert s.plane_rate_hz(30.0) == pytest.approx(30.0 * 2 / 9)


def test_settle_time_gives_the_frames_that_start_within_it(rig_file: Path) -> None:
    config = load_rig_config(
        str(rig_file), {"volume.planes_um": [0.0, 10.0], "volume.settle_s": 0.05}
    )
    # frames of 40 ms: frames starting at 0 and 40 ms after a step are within 50 ms
    assert VolumeSchedule.from_config(config, 25.0).settle_frames == 2
    assert VolumeSchedule.from_config(load_rig_config(str(rig_file)), 25.0) is None


# -- the world's plane follows the lens -----------------------------------------------------------
def test_world_plane_follows_the_lens_with_its_dynamics(rig_file: Path) -> None:
    """A 20 um step: the imaged plane overshoots (ringing, ~41 % for the EL-10-30 model)
    and then sits at the commanded z through the optics model, on the world's clock."""
    rig = build_rig(load_rig_config(str(rig_file)), seed=3)
    assert rig.focus in rig.devices
    follower = rig.daq.focus_z_source
    assert follower is not None
    sim_lens = rig.focus.sim_lens
    rig.open_all()
    try:
        rig.focus.move_to_um(0.0)
        rig.world.advance_to(0.5)
        assert follower(0.5) == pytest.approx(0.0, abs=follower.quantum_um)
        t_step = rig.world.t_s
        rig.focus.move_to_um(20.0)
        zs = np.array([follower(t_step + dt) for dt in np.arange(0.0, 0.1, 0.0005)])
        assert zs[0] == pytest.approx(0.0, abs=follower.quantum_um)  # nothing moves at once
        assert zs.max() > 20.0 * 1.2  # overshoot
        assert zs[-1] == pytest.approx(20.0, abs=2 * follower.quantum_um)
        # z is the optics model of the lens's true focal power
        p = sim_lens.focal_power_dpt_at(t_step + 0.1)
        assert follower.settings.model_z_um(p) == pytest.approx(zs[-1], abs=follower.quantum_um)
    finally:
        rig.safe_all()
        rig.close_all()


def test_frames_see_the_plane_the_lens_selects(rig_file: Path) -> None:
    """Frames at two lens positions differ as much as the specimen's planes do, and a frame
    back at the first position matches the first again."""
    rig = build_rig(load_rig_config(str(rig_file)), seed=3)
    scanner, focus = rig.scanner, rig.focus
    frame = np.zeros(scanner.frame_shape, np.int16)

    def mean_frames(n: int = 5) -> np.ndarray:
        """Mean of n - 1 frames (the first after a step settles), binned 4 x 4 against
        photon noise."""
        out = []
        for _ in range(n):
            scanner.read_frame(frame)
            out.append(frame.astype(np.float64))
        mean = np.mean(out[1:], axis=0)
        h, w = mean.shape
        return mean.reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))

    rig.open_all()
    try:
        focus.move_to_um(0.0)
        scanner.start()
        a = mean_frames()
        assert rig.world.focus_z_um == pytest.approx(0.0, abs=0.5)
        focus.move_to_um(30.0)
        b = mean_frames()
        assert rig.world.focus_z_um == pytest.approx(30.0, abs=0.5)
        focus.move_to_um(0.0)
        a2 = mean_frames()
        scanner.stop()
    finally:
        rig.safe_all()
        rig.close_all()
    same = np.corrcoef(a.ravel(), a2.ravel())[0, 1]
    other = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert same > other + 0.2


# -- z-stack ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_zstack_puts_each_cell_brightest_within_one_step_of_its_depth(
    rig_file: Path, tmp_path: Path
) -> None:
    """Acceptance (issue 5). Cells are those whose soma lies in the field and inside the
    stack (one step from its ends), and that no other soma in the stacked depth overlaps
    laterally (centre distance < sum of radii): under a brighter neighbour a cell's pixels are
    brightest at the neighbour's depth, whatever the lens does."""
    step = 4.0
    result = run_experiment(
        "etl_zstack",
        str(rig_file),
        duration_s=20.0,
        out=str(tmp_path / "zstack"),
        write_report=False,
        overrides=[
            "protocol.start_um=-24",
            "protocol.stop_um=24",
            f"protocol.step_um={step}",
            "protocol.settle_s=0.03",
            "protocol.frames_per_plane=2",
        ],
    )
    assert result.status == "completed", result.summary["error"]
    data = np.load(result.session_dir / "zstack.npz")
    stack, z = data["stack"], data["z_um"]
    assert bool(data["complete"]) and stack.shape[0] == z.size == 13
    # the lens reported the focal power of each plane through the optics (z = -9.77 um/dpt)
    assert data["focal_power_dpt"] == pytest.approx(z / (-(12.5**2) / 16), abs=0.01)
    config = load_rig_config(str(rig_file))
    world = World(world_config(config), seed=config["sim.seed"])  # the same specimen
    positions, radii = world.specimen.positions_um, world.specimen.radii_um
    lines, pixels = stack.shape[1:]
    fov_x, fov_y = config["scanner.fov_um"]
    yy, xx = np.mgrid[0:lines, 0:pixels]
    x_um = (xx + 0.5 - pixels / 2) * fov_x / pixels
    y_um = (yy + 0.5 - lines / 2) * fov_y / lines
    errors = []
    for c, ((x, y, depth), r) in enumerate(zip(positions, radii)):
        inside = abs(x) < fov_x / 2 - r and abs(y) < fov_y / 2 - r
        if not (inside and z[0] + step <= depth <= z[-1] - step):
            continue
        lateral = np.hypot(positions[:, 0] - x, positions[:, 1] - y) < radii + r
        stacked = (positions[:, 2] > z[0] - radii) & (positions[:, 2] < z[-1] + radii)
        lateral[c] = False
        if np.any(lateral & stacked):
            continue
        profile = stack[:, np.hypot(x_um - x, y_um - y) < 0.7 * r].mean(axis=1)
        errors.append(z[np.argmax(profile)] - depth)
    assert len(errors) >= 5  # enough cells for the statement to mean something
    assert np.all(np.abs(errors) <= step), errors


# -- interleaved volumetric imaging ---------------------------------------------------------------
@pytest.mark.slow
def test_volume_session_traces_each_plane_and_records_the_lens(
    rig_file: Path, idle: str, tmp_path: Path
) -> None:
    result = run_experiment(
        idle,
        str(rig_file),
        duration_s=5.0,
        out=str(tmp_path / "volume"),
        write_report=False,
        overrides=[
            "volume.planes_um=[-20.0, 0.0, 20.0]",
            "volume.settle_frames=1",
            "volume.settling=discard",
        ],
    )
    s = result.summary
    assert s["status"] == "completed", s["error"]
    assert s["volume"]["planes_um"] == [-20.0, 0.0, 20.0]
    per_plane = s["volume"]["rois_per_plane"]
    assert len(per_plane) == 3 and all(n > 0 for n in per_plane) and s["n_rois"] == sum(per_plane)
    events = _events(result.session_dir)
    steps = [e for e in events if e["type"] == "focus" and e["event"] == "plane"]
    # a plane change every dwell of 2 frames (1 settling + 1 imaged), cycling 0, 1, 2
    assert [e["frame"] for e in steps[:4]] == [0, 2, 4, 6]
    assert [e["plane"] for e in steps[:4]] == [0, 1, 2, 0]
    readings = [e for e in events if e["type"] == "focus" and e["event"] == "readings"]
    assert len(readings) >= 2
    assert {"current_ma", "focal_power_dpt", "temperature_c"} <= set(readings[-1])
    with h5py.File(result.session_dir / "session.h5") as f:
        plane, settling = f["volume/plane"][:], f["volume/settling"][:]
        assert list(plane[:6]) == [0, 0, 1, 1, 2, 2]
        assert list(settling[:6]) == [True, False] * 3
        dff = f["dff"][:]
        start = f.attrs["roi_start_frame"]
        a, b = f["volume/plane_1"].attrs["roi_range"]
        rows = np.arange(dff.shape[0])
        traced = rows[(rows > start) & (plane == 1) & ~settling]
        other = rows[(rows > start) & ((plane != 1) | settling)]
        # plane 1's ROIs have values on plane 1's imaged frames only (discarded settling)
        assert np.isfinite(dff[traced, a:b]).all()
        assert np.isnan(dff[other, a:b]).all()
        assert f["volume/plane_1/dff"].shape[1] == b - a
        assert f["volume/plane_1/noise_level"].shape == (b - a,)
        assert f["volume/roi_plane"].shape == (s["n_rois"],)


def test_lens_that_stops_answering_is_recorded_and_the_session_runs_on(
    rig_file: Path, idle: str, tmp_path: Path
) -> None:
    """open() takes 8 frames (Start, H, V, X, CrMA, CrUA, CrLA, MMA); the lens then answers
    2 more, so the first plane step or the first reading meets a silent lens."""
    result = run_experiment(
        idle,
        str(rig_file),
        duration_s=1.0,
        out=str(tmp_path / "fault"),
        write_report=False,
        overrides=[
            "focus.port=optotune_sim://?stop_after=10",
            "focus.timeout_s=0.05",
            "volume.planes_um=[0.0, 10.0]",
        ],
    )
    s = result.summary
    assert s["status"] == "completed"
    assert s["focus"]["fault"] is not None
    faults = [e for e in _events(result.session_dir) if e.get("event") == "fault"]
    assert len(faults) == 1 and "session continues" in faults[0]["action"]


def test_lens_fault_aborts_safely_when_configured(
    rig_file: Path, idle: str, tmp_path: Path
) -> None:
    result = run_experiment(
        idle,
        str(rig_file),
        duration_s=2.0,
        out=str(tmp_path / "abort"),
        write_report=False,
        overrides=[
            "focus.port=optotune_sim://?stop_after=10",
            "focus.timeout_s=0.05",
            "focus.on_fault=abort",
            "volume.planes_um=[0.0, 10.0]",
        ],
    )
    assert result.status == "aborted"
    assert "focus" in result.summary["error"]
    events = _events(result.session_dir)
    assert any(e["type"] == "safe" for e in events)


def test_sim_volume_rig_images_three_planes_with_the_lens() -> None:
    config = load_rig_config("sim-volume")
    assert config["volume.planes_um"] == [-20.0, 0.0, 20.0]
    assert config["focus.kind"] == "optotune"
    rig = build_rig(config)
    assert rig.focus is not None and rig.daq.focus_z_source is not None
