"""Line-phase estimation from forward and backward lines (hardware.md section 2).

Frames are synthesised from the scan geometry: the scanner reads forward pixel k (centre at
mirror angle u_k = asin(c_k)) believing the mirror is there, while a mirror lagging by e
more than assumed is at angle u_k - omega e on forward lines and u_k + omega e on backward
lines (it sweeps back). The estimators have to undo exactly that.
"""

import math

import numpy as np
import pytest

from analysis.line_phase import (
    LinePhaseTable,
    LinePhaseTracker,
    estimate_line_phase_error,
    pixel_angles,
)

F_HZ = 7925.52
FILL = 0.9
N_PX = 256
N_LINES = 128


def synth_frame(error_s, blobs_x, rng=None, photons=None, n_px=N_PX, lines=N_LINES):
    """Bidirectional frame of Gaussian blobs (x in units of the amplitude, SD 0.006) on a
    dim background; even rows forward, odd rows backward; optional Poisson noise."""
    u = pixel_angles(n_px, FILL)
    shift = 2 * math.pi * F_HZ * error_s
    frame = np.zeros((lines, n_px))
    for row in range(lines):
        sweep = -1 if row % 2 else 1
        x = np.sin(u - sweep * shift)
        for bx, by in blobs_x:
            frame[row] += np.exp(-((x - bx) ** 2) / (2 * 0.006**2) - ((row - by) ** 2) / 8.0)
    frame += 0.05
    if photons is not None:
        frame = rng.poisson(frame * photons).astype(float)
    return frame


def centre_px(error_s, n_px=N_PX):
    return 2 * math.pi * F_HZ * error_s * n_px / (2 * FILL)


def blobs(rng, n=120, span=0.85):
    return list(zip(rng.uniform(-span, span, n), rng.uniform(0, N_LINES, n)))


@pytest.mark.parametrize("method", ["search", "correlation"])
@pytest.mark.parametrize("error_us", [-0.25, 0.0, 0.13, 0.4])
def test_a_known_phase_error_is_recovered(method, error_us):
    rng = np.random.default_rng(1)
    frame = synth_frame(error_us * 1e-6, blobs(rng))
    estimate = estimate_line_phase_error(frame, FILL, F_HZ, method=method)
    assert abs(centre_px(estimate.error_s - error_us * 1e-6)) < 0.03
    assert estimate.error_centre_px == pytest.approx(centre_px(error_us * 1e-6), abs=0.03)


@pytest.mark.parametrize("method", ["search", "correlation"])
def test_recovered_within_a_tenth_of_a_pixel_with_shot_noise(method):
    rng = np.random.default_rng(2)
    frames = np.stack([synth_frame(0.3e-6, blobs(rng), rng, photons=3.0) for _ in range(4)])
    estimate = estimate_line_phase_error(frames, FILL, F_HZ, method=method)
    assert abs(centre_px(estimate.error_s - 0.3e-6)) < 0.1


def test_the_displacement_between_forward_and_backward_lines_is_twice_the_phase_error():
    """One blob at the line centre: its forward-minus-backward centroid shift, measured
    directly, is twice the estimate's error in centre pixels."""
    frame = synth_frame(0.35e-6, [(0.0, N_LINES / 2)])
    cols = np.arange(N_PX)
    rows = frame[N_LINES // 2 - 6 : N_LINES // 2 + 6] - 0.05
    fwd = rows[0::2].sum(axis=0)
    bwd = rows[1::2].sum(axis=0)
    displacement = (fwd * cols).sum() / fwd.sum() - (bwd * cols).sum() / bwd.sum()
    estimate = estimate_line_phase_error(frame, FILL, F_HZ)
    assert displacement == pytest.approx(2 * estimate.error_centre_px, rel=0.02)


@pytest.mark.parametrize("method", ["search", "correlation"])
def test_structure_only_near_the_edges_gives_the_same_error_in_time(method):
    """Near the edges the mirror is slow, so the comb in pixels is smaller there (v ~ cos u);
    the estimators work in mirror angle, so the phase error in time is the same."""
    rng = np.random.default_rng(3)
    edge_blobs = [(sign * rng.uniform(0.8, 0.88), rng.uniform(0, N_LINES)) for sign in (-1, 1)
                  for _ in range(40)]  # fmt: skip
    frame = synth_frame(0.3e-6, edge_blobs)
    estimate = estimate_line_phase_error(frame, FILL, F_HZ, method=method)
    assert abs(centre_px(estimate.error_s - 0.3e-6)) < 0.05
    # while the blobs themselves moved by much less than at the centre
    u = math.asin(0.84)
    assert math.cos(u) < 0.6


def test_featureless_frames_have_low_quality_and_do_not_move_the_tracker():
    rng = np.random.default_rng(4)
    tracker = LinePhaseTracker((N_LINES, N_PX), FILL, F_HZ, line_phase_us=1.0, every_frames=4)
    structured = estimate_line_phase_error(synth_frame(0.2e-6, blobs(rng)), FILL, F_HZ)
    for _ in range(8):
        assert tracker.update(rng.poisson(5.0, (N_LINES, N_PX)).astype(float)) is None
    assert tracker.last_estimate.quality < tracker.min_quality < structured.quality
    assert tracker.line_phase_us == 1.0


def test_tracker_follows_a_drifting_phase_slowly_with_bounded_steps():
    """A first-order loop: each block moves the phase by gain x the residual error, at most
    max_step_us, so the residual shrinks geometrically to zero."""
    rng = np.random.default_rng(5)
    scene = blobs(rng)
    true_phase_us = 1.3
    tracker = LinePhaseTracker(
        (N_LINES, N_PX), FILL, F_HZ, line_phase_us=1.0, every_frames=2, gain=0.5,
        max_step_us=0.1,
    )  # fmt: skip
    residuals, steps = [], []
    for _ in range(12):
        before = tracker.line_phase_us
        for _ in range(2):
            error_s = (true_phase_us - tracker.line_phase_us) * 1e-6
            new = tracker.update(synth_frame(error_s, scene))
        assert new is not None
        steps.append(new - before)
        residuals.append(true_phase_us - new)
    assert max(abs(s) for s in steps) <= 0.1 + 1e-12
    assert steps[0] == pytest.approx(0.1)  # 0.5 x 0.3 us, capped
    assert abs(centre_px(residuals[-1] * 1e-6)) < 0.05
    assert abs(residuals[-1]) < abs(residuals[4]) < abs(residuals[0])


def test_table_interpolates_linearly_in_amplitude_and_holds_its_ends():
    table = LinePhaseTable((2.0, 1.0), (2.0, 3.0))  # unordered input is sorted
    assert table.zooms == (1.0, 2.0)
    assert table.phase_us_at(1.0) == 3.0 and table.phase_us_at(2.0) == 2.0
    assert table.phase_us_at(4 / 3) == pytest.approx(2.5)  # amplitude 0.75: halfway
    assert table.phase_us_at(0.5) == 3.0 and table.phase_us_at(10.0) == 2.0
    updated = table.with_measurement(1.0, 3.2).with_measurement(1.5, 2.6)
    assert updated.zooms == (1.0, 1.5, 2.0) and updated.phase_us_at(1.0) == 3.2
    assert LinePhaseTable.from_dict(updated.to_dict()) == updated


def test_bad_tables_and_inputs_are_refused_with_the_parameter_named():
    with pytest.raises(ValueError, match="same length"):
        LinePhaseTable((1.0, 2.0), (1.0,))
    with pytest.raises(ValueError, match="zoom -1"):
        LinePhaseTable((-1.0,), (1.0,))
    with pytest.raises(ValueError, match="duplicate"):
        LinePhaseTable((1.0, 1.0), (1.0, 2.0))
    with pytest.raises(ValueError, match="empty"):
        LinePhaseTable().phase_us_at(1.0)
    with pytest.raises(ValueError, match="zooms.*phases_us"):
        LinePhaseTable.from_dict({"zoom": [1.0]})
    frame = np.zeros((16, 32))
    with pytest.raises(ValueError, match="method"):
        estimate_line_phase_error(frame, FILL, F_HZ, method="fft")
    with pytest.raises(ValueError, match="fill_fraction"):
        estimate_line_phase_error(frame, 1.0, F_HZ)
    with pytest.raises(ValueError, match="shape"):
        estimate_line_phase_error(np.zeros(32), FILL, F_HZ)
