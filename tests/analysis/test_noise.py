"""CASCADE standardized noise level: definition, white-noise oracle, scaling laws, online form."""

import math

import numpy as np
import pytest

from analysis.noise import WHITE_NOISE_FACTOR, OnlineNoiseLevel, noise_level


def _median_abs_standard_normal() -> float:
    """Median of |N(0, 1)| = the 75th percentile of N(0, 1), by bisection on erf."""
    low, high = 0.0, 2.0
    for _ in range(100):
        middle = (low + high) / 2
        if 0.5 * (1 + math.erf(middle / math.sqrt(2))) < 0.75:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _transient_traces(rng: np.random.Generator, n_rois: int, n_frames: int) -> np.ndarray:
    """Fractional dF/F: white noise plus spike-driven exponential transients."""
    spikes = rng.random((n_rois, n_frames)) < 0.03
    calcium = np.zeros((n_rois, n_frames))
    for t in range(1, n_frames):
        calcium[:, t] = 0.9 * calcium[:, t - 1] + 0.8 * spikes[:, t]
    noise_sd = rng.uniform(0.02, 0.2, size=(n_rois, 1))
    return (calcium + noise_sd * rng.normal(size=(n_rois, n_frames))).astype(np.float32)


def test_white_noise_factor_is_100_sqrt2_times_median_of_abs_normal():
    expected = 100 * math.sqrt(2) * _median_abs_standard_normal()
    assert WHITE_NOISE_FACTOR == pytest.approx(expected, rel=1e-9)
    assert round(WHITE_NOISE_FACTOR, 1) == 95.4  # the value quoted in science.md


def test_white_noise_oracle_sigma_005_at_20_hz():
    # nu = 95.4 sigma / sqrt(rate) for white Gaussian dF/F (science.md section 1)
    rng = np.random.default_rng(1)
    sigma, rate_hz = 0.05, 20.0
    dff = sigma * rng.normal(size=50_000)
    nu = noise_level(dff, rate_hz)
    assert nu == pytest.approx(95.4 * sigma / math.sqrt(rate_hz), rel=0.01)


def test_batch_equals_direct_transcription_of_the_cascade_formula():
    rng = np.random.default_rng(2)
    dff = _transient_traces(rng, 5, 300).astype(np.float64)
    dff[1, 40:45] = np.nan
    dff[3, ::7] = np.nan
    rate_hz = 30.0
    expected = 100 * np.nanmedian(np.abs(np.diff(dff, axis=1)), axis=1) / np.sqrt(rate_hz)
    np.testing.assert_allclose(noise_level(dff, rate_hz), expected, rtol=1e-12)
    # a single trace gives a float equal to its row
    assert noise_level(dff[0], rate_hz) == pytest.approx(expected[0], rel=1e-12)


def test_fixed_per_frame_sigma_scales_as_inverse_sqrt_rate():
    rng = np.random.default_rng(3)
    sigma = 0.1
    rates_hz = np.array([7.5, 30.0, 120.0])
    nus = np.array([noise_level(sigma * rng.normal(size=40_000), r) for r in rates_hz])
    # nu * sqrt(rate) is the same for all rates (independent noise realisations)
    np.testing.assert_allclose(nus * np.sqrt(rates_hz), nus[0] * np.sqrt(rates_hz[0]), rtol=0.02)


def test_fixed_photon_flux_gives_a_noise_level_independent_of_frame_rate():
    # shot noise: photons per frame = flux / rate, so per-frame sigma grows as sqrt(rate) and
    # nu = 95.4 / sqrt(flux) whatever the frame rate
    rng = np.random.default_rng(4)
    photons_per_s = 1e5
    nus = []
    for rate_hz in (10.0, 100.0):
        counts = rng.poisson(photons_per_s / rate_hz, size=30_000)
        dff = counts / (photons_per_s / rate_hz) - 1.0
        nus.append(noise_level(dff, rate_hz))
    assert nus[0] == pytest.approx(nus[1], rel=0.03)
    assert nus[0] == pytest.approx(95.4 / math.sqrt(photons_per_s), rel=0.03)


def test_nan_frames_drop_only_the_differences_that_touch_them():
    rate_hz = 4.0
    trace = np.array([0.0, 0.1, np.nan, 0.5, 0.2, 0.2, 0.6])
    # valid differences: |0.1-0|, |0.2-0.5|, |0.2-0.2|, |0.6-0.2| -> 0.1, 0.3, 0.0, 0.4
    expected = 100 * np.median([0.1, 0.3, 0.0, 0.4]) / 2.0
    assert noise_level(trace, rate_hz) == pytest.approx(expected)
    all_nan = np.full((2, 10), np.nan)
    all_nan[1] = np.arange(10) * 0.01
    result = noise_level(all_nan, rate_hz)
    assert np.isnan(result[0])
    assert result[1] == pytest.approx(100 * 0.01 / 2.0)


@pytest.mark.parametrize("with_nan", [False, True])
def test_online_equals_batch_on_the_trailing_window_at_every_frame(with_nan):
    rng = np.random.default_rng(5)
    n_rois, n_frames, window_frames, rate_hz = 6, 400, 50, 30.0
    dff = _transient_traces(rng, n_rois, n_frames)
    if with_nan:
        dff[rng.random(dff.shape) < 0.05] = np.nan
        dff[2, 100:160] = np.nan  # a gap longer than the window
    online = OnlineNoiseLevel(n_rois, window_frames, rate_hz)
    for t in range(n_frames):
        values = online.update(dff[:, t])
        if t == 0:
            assert np.all(np.isnan(values))
            continue
        window = dff[:, max(0, t - window_frames) : t + 1]  # the last window_frames differences
        expected = noise_level(window, rate_hz)
        np.testing.assert_allclose(values, expected, rtol=1e-6, equal_nan=True)
    assert online.values.dtype == np.float32


def test_population_is_the_median_over_rois_with_a_value():
    rate_hz = 1.0
    online = OnlineNoiseLevel(4, 10, rate_hz)
    assert np.isnan(online.population())
    frames = np.array(
        [[0.0, 0.0, 0.0, np.nan], [0.01, 0.02, 0.04, np.nan]], dtype=np.float32
    )  # ROI 3 never has a difference
    for row in frames:
        online.update(row)
    # per ROI: 100 * |diff| -> 1, 2, 4 (% per sqrt(s) at 1 Hz), NaN for ROI 3
    assert online.population() == pytest.approx(2.0, rel=1e-6)


def test_bad_arguments_raise_value_errors_naming_the_parameter():
    with pytest.raises(ValueError, match="frame_rate_hz"):
        noise_level(np.zeros(10), 0.0)
    with pytest.raises(ValueError, match="frame_rate_hz"):
        noise_level(np.zeros(10), -5.0)
    with pytest.raises(ValueError, match="at least 2 frames"):
        noise_level(np.zeros((3, 1)), 30.0)
    with pytest.raises(ValueError, match="window_frames"):
        OnlineNoiseLevel(3, 0, 30.0)
    with pytest.raises(ValueError, match="frame_rate_hz"):
        OnlineNoiseLevel(3, 10, 0.0)
    online = OnlineNoiseLevel(3, 10, 30.0)
    with pytest.raises(ValueError, match="dff_row"):
        online.update(np.zeros(4, dtype=np.float32))
