"""dF/F = (F - F0) / F0 with a running-percentile F0: online (causal) and offline."""

import math

import numpy as np
import pytest

from analysis.dff import OnlineDff, baseline_window_frames, dff_offline


def _run_online(F: np.ndarray, online: OnlineDff) -> np.ndarray:
    out = np.empty(F.shape, dtype=np.float32)
    for t in range(F.shape[1]):
        online.update(F[:, t], out[:, t])
    return out


def test_baseline_window_is_window_seconds_times_frame_rate():
    assert baseline_window_frames(30.0, 60.0) == 1800
    assert OnlineDff(2, 30.0).window_frames == 1800
    assert OnlineDff(2, 7.5, baseline_window_s=2.0).window_frames == 15


@pytest.mark.parametrize("centered", [False, True])
def test_constant_fluorescence_has_zero_dff(centered):
    F = np.full((3, 200), 250.0, dtype=np.float32)
    np.testing.assert_array_equal(dff_offline(F, 30.0, 2.0, 8.0, centered=centered), 0.0)
    np.testing.assert_array_equal(_run_online(F, OnlineDff(3, 30.0, 2.0)), 0.0)


def test_a_known_transient_gives_its_known_dff():
    # F = F0 (1 + A exp(-(t - t0) / tau)) after t0: while the transient fills less than
    # 92 % of the window, the 8th percentile is still F0, so dF/F = A exp(-(t - t0) / tau)
    rate_hz, F0, amplitude, tau_s = 30.0, 400.0, 0.8, 0.5
    t_s = np.arange(900) / rate_hz
    onset_s = 20.0
    transient = np.where(t_s >= onset_s, amplitude * np.exp(-(t_s - onset_s) / tau_s), 0.0)
    F = (F0 * (1 + transient)).astype(np.float32)[np.newaxis, :]
    online = OnlineDff(1, rate_hz, baseline_window_s=10.0)
    dff = _run_online(F, online)[0]
    expected = F[0].astype(np.float64) / F0 - 1.0  # the float32 F, exactly (F - F0) / F0
    np.testing.assert_allclose(dff, expected, rtol=1e-6, atol=1e-7)
    peak = int(onset_s * rate_hz)
    assert dff[peak] == pytest.approx(amplitude, rel=1e-6)
    assert dff[peak + int(tau_s * rate_hz)] == pytest.approx(amplitude / math.e, rel=1e-5)
    assert online.baseline[0] == F0


def test_online_equals_offline_causal_exactly():
    rng = np.random.default_rng(20)
    n_rois, n_frames, rate_hz = 7, 1200, 30.0
    spikes = rng.random((n_rois, n_frames)) < 0.02
    calcium = np.zeros((n_rois, n_frames))
    for t in range(1, n_frames):
        calcium[:, t] = 0.93 * calcium[:, t - 1] + spikes[:, t]
    drift = 1 + 0.2 * np.sin(np.arange(n_frames) / 200.0)
    F = (300 * drift * (1 + calcium) + 10 * rng.normal(size=(n_rois, n_frames))).astype(np.float32)
    F[4, 300:320] = np.nan
    F[5] -= 400  # offset-subtracted ROI: F0 <= 0 at times
    online = OnlineDff(n_rois, rate_hz, baseline_window_s=10.0)
    np.testing.assert_array_equal(
        _run_online(F, online), dff_offline(F, rate_hz, 10.0, 8.0, centered=False)
    )
    np.testing.assert_array_equal(
        _run_online(F[2:3], OnlineDff(1, rate_hz, 10.0))[0],
        dff_offline(F[2], rate_hz, 10.0, 8.0, centered=False),
    )


def test_centered_dff_has_no_lag_on_a_baseline_drop():
    # a drop of F0 at t0: the causal baseline keeps the old F0 for ~q/100 * W frames (false
    # negative dF/F); the centred baseline already has the new one
    rate_hz, window_s = 10.0, 20.0
    F = np.where(np.arange(1000) < 500, 200.0, 100.0)
    causal = dff_offline(F, rate_hz, window_s, 8.0, centered=False)
    centered = dff_offline(F, rate_hz, window_s, 8.0, centered=True)
    assert causal[500] == pytest.approx(-0.5)
    assert centered[500] == pytest.approx(0.0)


def test_nonpositive_baseline_is_floored_and_counted_never_divided_by():
    online = OnlineDff(3, 10.0, baseline_window_s=1.0, min_baseline=1e-3)
    out = np.empty(3, dtype=np.float32)
    F = np.array([-5.0, 0.0, 50.0], dtype=np.float32)
    for _ in range(4):
        online.update(F, out)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(online.nonpositive_baseline_count, [4, 4, 0])
    np.testing.assert_array_equal(online.baseline, [-5.0, 0.0, 50.0])  # reported unfloored
    np.testing.assert_allclose(out, [(-5.0 - 1e-3) / 1e-3, (0.0 - 1e-3) / 1e-3, 0.0], rtol=1e-6)


def test_nan_fluorescence_gives_nan_dff_and_does_not_enter_the_baseline():
    online = OnlineDff(1, 10.0, baseline_window_s=1.0)
    out = np.empty(1, dtype=np.float32)
    for value in (100.0, 100.0, np.nan, 150.0):
        online.update(np.array([value], dtype=np.float32), out)
        if np.isnan(value):
            assert np.isnan(out[0])
            assert online.baseline[0] == 100.0
    assert out[0] == pytest.approx(0.5)  # baseline over {100, 100, 150}: 8th pct = 100


def test_bad_arguments_raise_value_errors_naming_the_parameter():
    with pytest.raises(ValueError, match="frame_rate_hz"):
        OnlineDff(3, 0.0)
    with pytest.raises(ValueError, match="baseline_window_s"):
        OnlineDff(3, 30.0, baseline_window_s=-1.0)
    with pytest.raises(ValueError, match="percentile"):
        OnlineDff(3, 30.0, percentile=101.0)
    with pytest.raises(ValueError, match="min_baseline"):
        OnlineDff(3, 30.0, min_baseline=0.0)
    online = OnlineDff(3, 30.0)
    with pytest.raises(ValueError, match="out_dff_row"):
        online.update(np.zeros(3, dtype=np.float32), np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match="F must have shape"):
        dff_offline(np.zeros((2, 3, 4)), 30.0, 1.0, 8.0, centered=False)
