"""The world applies brain motion: image content moves by the displacement, nothing else does."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.motion import OK, MotionCorrector
from simulators.world.config import WorldConfig
from simulators.world.world import World

SAMPLE_DT_S = 0.5e-6
PIXEL_UM = 0.5
HALF_WIDTH_UM = 40.0


def _world(enabled: bool, **motion: float) -> World:
    config = {"extent_um": [150.0, 150.0, 60.0],
              "motion": {"enabled": enabled, "run_shift_um": 0.0, "stride_shift_um": 0.0,
                         "drift_um": 6.0, "drift_tau_s": 1.0, **motion}}  # fmt: skip
    return World(WorldConfig.from_dict(config), seed=3)


def _image(world: World, t0_s: float, n_frames: int = 4) -> tuple[np.ndarray, float]:
    """Sum of n raster frames (0.5 um pixels, 2 samples each) from t0_s; and its mean time."""
    edges = np.arange(-HALF_WIDTH_UM, HALF_WIDTH_UM, PIXEL_UM) + PIXEL_UM / 2
    n_px = edges.size
    xs = np.tile(np.repeat(edges, 2), n_px)
    ys = np.repeat(edges, 2 * n_px)
    image = np.zeros(xs.size)
    out = np.zeros(xs.size, dtype=np.int32)
    t = t0_s
    for _ in range(n_frames):
        world.sample_photons(xs, ys, t, SAMPLE_DT_S, 60.0, out)
        image += out
        t += xs.size * SAMPLE_DT_S
    return image.reshape(n_px, n_px, 2).sum(axis=-1), (t0_s + t) / 2


def test_image_content_moves_by_the_true_displacement():
    world = _world(enabled=True)
    before, t_before = _image(world, 0.0)
    after, t_after = _image(world, 5.0)
    truth = world.ground_truth
    d_before = np.array([np.interp(t_before, truth.motion_times_s, truth.motion_um[:, k])
                         for k in range(2)])  # fmt: skip
    d_after = np.array([np.interp(t_after, truth.motion_times_s, truth.motion_um[:, k])
                        for k in range(2)])  # fmt: skip
    assert np.hypot(*(d_after - d_before)) > 4.0  # the tissue has settled by several um
    corrector = MotionCorrector(before, max_shift_px=30)
    shift_px = np.zeros(3)
    assert corrector.register(after, shift_px) == OK
    # image rows are y, columns x; content moves by +d
    np.testing.assert_allclose(shift_px[[1, 0]] * PIXEL_UM, d_after - d_before, atol=0.3)


def test_without_motion_the_image_stays_put_and_no_trace_is_kept():
    world = _world(enabled=False)
    before, _ = _image(world, 0.0)
    after, _ = _image(world, 5.0)
    shift_px = np.zeros(3)
    MotionCorrector(before, max_shift_px=30).register(after, shift_px)
    assert np.hypot(shift_px[0], shift_px[1]) * PIXEL_UM < 0.2
    assert world.ground_truth.motion_um.shape == (0, 2)


def test_running_moves_the_brain_and_motion_never_changes_the_spikes():
    moving = _world(enabled=True, run_shift_um=5.0, stride_shift_um=1.5, drift_um=1.0)
    still = _world(enabled=False)
    for world in (moving, still):
        world.advance_to(30.0)
    truth, control = moving.ground_truth, still.ground_truth
    magnitude = np.hypot(*truth.motion_um.T)
    assert magnitude.max() <= 10.0
    speed = np.interp(truth.motion_times_s, truth.animal_times_s, truth.animal_speed_m_per_s)
    running, resting = speed > 0.15, speed < 0.01
    assert running.any() and magnitude[running].mean() > 2 * magnitude[resting].mean()
    for a, b in zip(truth.spikes, control.spikes):
        np.testing.assert_array_equal(a, b)  # its own random stream, no feedback on activity


def test_motion_config_is_validated_by_name():
    with pytest.raises(ValueError, match=r"motion.max_shift_um = 0 um is outside"):
        WorldConfig.from_dict({"motion": {"max_shift_um": 0.0}})
    with pytest.raises(ValueError, match=r"unknown key 'amplitude' in section 'motion'"):
        WorldConfig.from_dict({"motion": {"amplitude": 3.0}})
    assert WorldConfig.from_dict(WorldConfig().to_dict()) == WorldConfig()
