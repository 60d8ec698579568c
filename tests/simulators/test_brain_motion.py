"""Brain motion model of the simulated world: running-locked shifts, lag, stride, drift, limits."""

import math

import numpy as np
import pytest

from simulators.world.motion import BrainMotion

DT_S = 0.001


def _run(motion: BrainMotion, speed: np.ndarray, chunk: int = 997) -> np.ndarray:
    """Displacement (n, 2) as (x, y) for a speed trace, advanced in chunks."""
    out = np.zeros((speed.size, 2))
    x = np.zeros(chunk)
    y = np.zeros(chunk)
    for start in range(0, speed.size, chunk):
        part = speed[start : start + chunk]
        motion.advance(start, part, x, y)
        out[start : start + part.size, 0] = x[: part.size]
        out[start : start + part.size, 1] = y[: part.size]
    return out


def test_no_motion_at_rest_without_drift():
    motion = BrainMotion(DT_S, np.random.default_rng(1), drift_um=0.0)
    assert np.all(_run(motion, np.zeros(5000)) == 0.0)


def test_steady_running_pushes_the_brain_by_run_shift_along_one_direction_plus_a_stride():
    motion = BrainMotion(DT_S, np.random.default_rng(2), run_shift_um=5.0,
                         reference_speed_m_per_s=0.25, stride_shift_um=1.5,
                         stride_frequency_hz=3.0, drift_um=0.0)  # fmt: skip
    d = _run(motion, np.full(20_000, 0.25))[5000:]  # 15 s after the response has settled
    mean = d.mean(axis=0)
    assert np.hypot(*mean) == pytest.approx(5.0, rel=0.01)
    np.testing.assert_allclose(mean / np.hypot(*mean), motion.run_direction, atol=1e-3)
    # the residual is the stride oscillation: amplitude 1.5 um per axis at 3 Hz
    residual = d - mean
    np.testing.assert_allclose(residual.std(axis=0), 1.5 / math.sqrt(2), rtol=0.01)
    spectrum = np.abs(np.fft.rfft(residual[:, 0]))
    frequencies = np.fft.rfftfreq(residual.shape[0], DT_S)
    assert frequencies[np.argmax(spectrum)] == pytest.approx(3.0, abs=0.1)


def test_the_brain_follows_a_change_of_speed_with_the_response_time_constant():
    tau = 0.3
    motion = BrainMotion(DT_S, np.random.default_rng(3), response_tau_s=tau,
                         stride_shift_um=0.0, drift_um=0.0)  # fmt: skip
    speed = np.zeros(3000)
    speed[1000:] = 0.25
    magnitude = np.hypot(*_run(motion, speed).T)
    # first-order low-pass: 1 - exp(-t / tau) of the final 5 um after a step of speed
    k = int(tau / DT_S)
    assert magnitude[999] == 0.0
    assert magnitude[999 + k] == pytest.approx(5.0 * (1 - math.exp(-1.0)), rel=0.01)


def test_drift_settles_exponentially_to_drift_um():
    motion = BrainMotion(DT_S, np.random.default_rng(4), drift_um=3.0, drift_tau_s=2.0)
    d = _run(motion, np.zeros(10_000))
    t = np.arange(10_000) * DT_S
    np.testing.assert_allclose(np.hypot(*d.T), 3.0 * (1 - np.exp(-t / 2.0)), atol=1e-9)


def test_displacement_never_exceeds_max_shift():
    motion = BrainMotion(DT_S, np.random.default_rng(5), run_shift_um=9.0, stride_shift_um=3.0,
                         drift_um=4.0, drift_tau_s=1.0, max_shift_um=10.0)  # fmt: skip
    speed = np.abs(np.random.default_rng(6).normal(0.3, 0.2, 20_000))
    d = _run(motion, speed)
    assert np.hypot(*d.T).max() <= 10.0 + 1e-12
    assert np.hypot(*d.T).max() > 9.9  # the limit is reached, not an idle bound


def test_deterministic_for_a_seed_whatever_the_chunking():
    speed = np.abs(np.random.default_rng(7).normal(0.2, 0.1, 7000))
    a = _run(BrainMotion(DT_S, np.random.default_rng(8)), speed, chunk=16)
    b = _run(BrainMotion(DT_S, np.random.default_rng(8)), speed, chunk=1000)
    c = _run(BrainMotion(DT_S, np.random.default_rng(9)), speed, chunk=16)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)  # another seed: other directions and phases


def test_trace_records_every_interval_and_steps_must_follow_each_other():
    motion = BrainMotion(DT_S, np.random.default_rng(10), trace_interval_s=0.01)
    d = _run(motion, np.full(1000, 0.2), chunk=37)
    times, xy = motion.trace()
    np.testing.assert_allclose(times, np.arange(0, 1.0, 0.01))
    np.testing.assert_array_equal(xy, d[::10])
    with pytest.raises(ValueError, match="continues at step 1000"):
        motion.advance(2000, np.zeros(5), np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="max_shift_um"):
        BrainMotion(DT_S, np.random.default_rng(0), max_shift_um=0.0)
