"""OASIS deconvolution: optimality, the OASIS oracle, online == batch, exact zeros, accuracy."""

import math

import numpy as np
import pytest

from analysis.accuracy import spike_correlation
from analysis.deconvolution import (
    OnlineOasis,
    ar1_decay_factor,
    frame_noise_sd,
    minimum_spike_size,
    oasis_ar1,
    resting_dff_offset,
)
from analysis.noise import noise_level

FRAME_RATE_HZ = 30.0
# GCaMP6f-like indicator (Chen et al., Nature 2013; the world's IndicatorConfig): rise 20 ms,
# decay 200 ms (half-decay ~140 ms), 0.15 dF/F per isolated spike at the peak, saturating at 3.
RISE_TAU_S = 0.02
DECAY_TAU_S = 0.2
DFF_PER_SPIKE = 0.15
DFF_MAX = 3.0


def _ar1_trace(rng: np.random.Generator, n_frames: int, g: float, rate: float, sd: float):
    """AR(1) calcium driven by sparse spikes of random size, plus white noise."""
    spikes = (rng.random(n_frames) < rate) * rng.uniform(0.5, 1.5, n_frames)
    calcium = np.zeros(n_frames)
    for t in range(n_frames):
        calcium[t] = (g * calcium[t - 1] if t else 0.0) + spikes[t]
    return calcium + sd * rng.normal(size=n_frames)


def _kernel_matrix(n_frames: int, g: float) -> np.ndarray:
    """c = K s with K[t, u] = g^(t - u) for u <= t (s_0 = c_0 is the initial calcium)."""
    lags = np.arange(n_frames)[:, None] - np.arange(n_frames)[None, :]
    return np.where(lags >= 0, g ** np.maximum(lags, 0), 0.0)


# --------------------------------------------------------------------------- optimality


@pytest.mark.parametrize("lam", [0.0, 0.3, 2.0])
def test_batch_solution_satisfies_the_kkt_conditions_of_the_convex_problem(lam):
    # s_min = 0: min 1/2 |K s - y|^2 + lam (1 - g) 1'K s over s >= 0 is convex; s is optimal iff
    # the gradient is 0 where s > 0 and >= 0 where s = 0 (Karush-Kuhn-Tucker).
    rng = np.random.default_rng(3)
    g = 0.9
    y = _ar1_trace(rng, 200, g, rate=0.05, sd=0.3)
    c, spikes = oasis_ar1(y, g, s_min=0.0, lam=lam)
    K = _kernel_matrix(y.size, g)
    np.testing.assert_allclose(K @ spikes, c, atol=1e-9)  # c really follows the AR(1) model
    assert (spikes >= -1e-12).all()
    gradient = K.T @ (c - y) + lam * (1 - g) * K.T @ np.ones(y.size)
    active = spikes > 1e-9
    assert active.sum() > 5
    np.testing.assert_allclose(gradient[active], 0.0, atol=1e-8)
    assert (gradient[~active] >= -1e-8).all()


def test_no_feasible_perturbation_lowers_the_objective():
    rng = np.random.default_rng(4)
    g = 0.85
    y = _ar1_trace(rng, 120, g, rate=0.08, sd=0.2)
    lam = 0.5
    _, spikes = oasis_ar1(y, g, lam=lam)
    K = _kernel_matrix(y.size, g)

    def objective(sp: np.ndarray) -> float:
        cc = K @ sp
        return 0.5 * np.sum((cc - y) ** 2) + lam * (1 - g) * cc.sum()

    best = objective(spikes)
    for _ in range(300):
        trial = np.maximum(spikes + 0.01 * rng.normal(size=y.size) * (rng.random(y.size) < 0.1), 0)
        assert objective(trial) >= best - 1e-12


# --------------------------------------------------------------------------- OASIS oracle


@pytest.mark.parametrize("seed", [5, 6, 7])
@pytest.mark.parametrize("s_min", [0.0, 0.2, 0.6])
def test_batch_equals_the_oasis_deconv_package(s_min, seed):
    # same pools; oasis-deconv clips its first pool at 0 instead of s_min and reports s_0 = 0
    oasis = pytest.importorskip("oasis")
    rng = np.random.default_rng(seed)
    g = 0.92
    y = _ar1_trace(rng, 3000, g, rate=0.03, sd=0.25)
    c, s = oasis_ar1(y, g, s_min=s_min)
    c_ref, s_ref = oasis.oasisAR1(y, g, 0.0, s_min)
    second_pool = 1 + np.flatnonzero(np.abs(s_ref[1:]) > 1e-12)[0]
    np.testing.assert_allclose(c[second_pool:], c_ref[second_pool:], atol=1e-10)
    np.testing.assert_allclose(s[second_pool + 1 :], s_ref[second_pool + 1 :], atol=1e-10)
    if c_ref[0] >= s_min:  # the conventions agree on the first pool
        np.testing.assert_allclose(c[:second_pool], c_ref[:second_pool], atol=1e-10)
        assert s[0] == pytest.approx(c_ref[0])
    else:
        assert (c[:second_pool] == 0).all()


def test_batch_with_l1_penalty_equals_oasis_deconv_on_the_same_problem():
    # oasis-deconv penalises the last frame with lam instead of lam (1 - g) (its finite-horizon
    # |s|_1); raising its last sample by lam g poses exactly our problem.
    oasis = pytest.importorskip("oasis")
    rng = np.random.default_rng(6)
    g, lam = 0.9, 0.4
    y = _ar1_trace(rng, 2000, g, rate=0.04, sd=0.3)
    c, _ = oasis_ar1(y, g, lam=lam)
    shifted = y.copy()
    shifted[-1] += lam * g
    c_ref, _ = oasis.oasisAR1(shifted, g, lam, 0.0)
    np.testing.assert_allclose(c, c_ref, atol=1e-10)


# --------------------------------------------------------------------------- online == batch


def test_online_outputs_equal_the_batch_solution_of_every_prefix_exactly():
    rng = np.random.default_rng(7)
    g = ar1_decay_factor(DECAY_TAU_S, FRAME_RATE_HZ)
    n_frames, lag = 240, 4
    traces = np.stack([_ar1_trace(rng, n_frames, g, 0.06, sd) for sd in (0.05, 0.2, 0.5)], 1)
    s_min = np.array([0.0, 0.3, 0.8])
    online = OnlineOasis(3, g, s_min=s_min, spike_lag_frames=lag)
    for t in range(n_frames):
        calcium, spikes = online.update(traces[t])
        for r in range(3):
            c, s = oasis_ar1(traces[: t + 1, r], g, s_min=s_min[r])
            assert calcium[r] == np.float32(c[t])
            if t >= lag:
                assert spikes[r] == np.float32(s[t - lag])
            else:
                assert np.isnan(spikes[r])  # no frame lag frames back yet
    for r in range(3):
        first, c_online, s_online = online.solution(r)
        c, s = oasis_ar1(traces[:, r], g, s_min=s_min[r])
        assert first == 0
        np.testing.assert_array_equal(c_online, c)
        np.testing.assert_array_equal(s_online, s)
    assert (online.truncated == 0).all()


def test_s_min_changed_online_equals_batch_with_the_per_frame_s_min():
    rng = np.random.default_rng(8)
    g = 0.88
    y = _ar1_trace(rng, 600, g, 0.05, 0.3)
    s_min_per_frame = np.where(np.arange(600) < 300, 0.2, 0.7)
    online = OnlineOasis(1, g, s_min=0.2)
    for t in range(600):
        online.set_s_min(s_min_per_frame[t])
        online.update(y[t : t + 1])
    _, c_online, s_online = online.solution(0)
    c, s = oasis_ar1(y, g, s_min=s_min_per_frame)
    np.testing.assert_array_equal(c_online, c)
    np.testing.assert_array_equal(s_online, s)


def test_bounded_memory_is_exact_for_normal_traces_and_flags_a_deep_merge():
    rng = np.random.default_rng(9)
    g = 0.9
    y = _ar1_trace(rng, 3000, g, 0.05, 0.2)  # ~150 events, far more than 16 pools
    online = OnlineOasis(1, g, s_min=0.5, pool_capacity=16)
    for t in range(y.size):
        online.update(y[t : t + 1])
    first, c_online, s_online = online.solution(0)
    c, s = oasis_ar1(y, g, s_min=0.5)
    assert first > 0 and online.truncated[0] == 0
    np.testing.assert_array_equal(c_online, c[first:])
    np.testing.assert_array_equal(s_online, s[first:])
    # 20 growing steps (20 pools), then a long deep drop: the batch solution merges all the
    # way back to the first pool, which the 16-pool ring no longer holds
    staircase = np.concatenate([np.repeat(np.arange(1.0, 21.0), 5), np.full(400, -50.0)])
    online = OnlineOasis(1, g, pool_capacity=16)
    for t in range(staircase.size):
        online.update(staircase[t : t + 1])
    assert online.truncated[0] > 0


def test_nan_frames_carry_no_data_online_and_in_batch():
    rng = np.random.default_rng(10)
    g = 0.9
    y = _ar1_trace(rng, 400, g, 0.05, 0.2)
    y[[0, 1, 50, 51, 52, 200]] = np.nan
    c, s = oasis_ar1(y, g, s_min=0.3)
    assert np.isnan(c[:2]).all() and np.isnan(s[:2]).all()  # before the first data
    assert np.isfinite(c[2:]).all() and (s[[50, 51, 52, 200]] == 0).all()  # no spike without data
    np.testing.assert_allclose(c[50:53], c[49] * g ** np.arange(1, 4), rtol=1e-12)
    online = OnlineOasis(1, g, s_min=0.3, spike_lag_frames=3)
    for t in range(y.size):
        calcium, spikes = online.update(y[t : t + 1])
        ref_c, ref_s = oasis_ar1(y[: t + 1], g, s_min=0.3)
        if np.isnan(y[t]):
            assert np.isnan(calcium[0])  # the flagged frame stays visible online
        else:
            assert calcium[0] == np.float32(ref_c[t])
        if t >= 3:
            if np.isnan(y[t - 3]):
                assert np.isnan(spikes[0])
            else:
                assert spikes[0] == np.float32(ref_s[t - 3])
    _, c_online, s_online = online.solution(0)
    np.testing.assert_array_equal(c_online, c[2:])  # the ROI's data start at frame 2
    np.testing.assert_array_equal(s_online, s[2:])


def test_noise_level_sets_s_min_and_the_resting_offset_in_place():
    g = ar1_decay_factor(DECAY_TAU_S, FRAME_RATE_HZ)
    online = OnlineOasis(3, g, s_min=0.05)
    nu = np.array([2.0, np.nan, 4.0])
    online.set_noise_level(nu, FRAME_RATE_HZ, n_sds=3.0, percentile=8.0)
    expected = minimum_spike_size(nu, FRAME_RATE_HZ, g, n_sds=3.0)
    np.testing.assert_allclose(online.s_min[[0, 2]], expected[[0, 2]])
    assert online.s_min[1] == 0.05  # unknown noise level: unchanged
    np.testing.assert_allclose(online.offset[[0, 2]], resting_dff_offset(nu, 30.0, 8.0)[[0, 2]])
    assert online.offset[1] == 0.0
    # the offset is subtracted from every sample: online == batch of y - offset
    rng = np.random.default_rng(16)
    y = np.stack([_ar1_trace(rng, 300, g, 0.05, 0.1) + 0.2 for _ in range(3)], 1)
    for t in range(300):
        online.update(y[t])
    for r in range(3):
        _, c_online, _ = online.solution(r)
        c, _ = oasis_ar1(y[:, r] - online.offset[r], g, s_min=online.s_min[r])
        np.testing.assert_array_equal(c_online, c)


# --------------------------------------------------------------------------- exact zeros


def test_spikes_are_exactly_zero_or_at_least_s_min_and_calcium_starts_at_exact_zero():
    rng = np.random.default_rng(11)
    g = 0.9
    y = 0.2 * rng.normal(size=1000)  # silence ...
    y[600:] += 2.0 * g ** np.arange(400)  # ... then one large event at frame 600
    s_min = 0.6
    c, s = oasis_ar1(y, g, s_min=s_min)
    nonzero = s != 0.0
    assert (s[nonzero] >= s_min - 1e-12).all()  # the constraint: s = 0 or s >= s_min
    assert nonzero.mean() < 0.02
    assert nonzero[600]
    assert (c[:550] == 0.0).mean() > 0.9  # exact zeros before the event, not small numbers
    # inside a pool c follows the AR(1) decay with no spike
    events = np.flatnonzero(nonzero)
    quiet = np.setdiff1d(np.arange(601, 1000), events)
    np.testing.assert_allclose(c[quiet], g * c[quiet - 1], rtol=1e-12)


# --------------------------------------------------------------------------- s_min and offsets


def test_frame_noise_sd_inverts_the_cascade_white_noise_oracle():
    rng = np.random.default_rng(12)
    sigma = 0.12
    nu = noise_level(sigma * rng.normal(size=200_000), FRAME_RATE_HZ)
    assert frame_noise_sd(nu, FRAME_RATE_HZ) == pytest.approx(sigma, rel=0.01)
    g = 0.85
    assert minimum_spike_size(nu, FRAME_RATE_HZ, g, n_sds=2.0) == pytest.approx(
        2.0 * sigma * math.sqrt(1 - g * g), rel=0.01
    )


def test_resting_offset_of_a_percentile_baseline_matches_simulated_noise():
    rng = np.random.default_rng(13)
    sigma_f = 0.1  # relative noise of F
    f = 1000.0 * (1.0 + sigma_f * rng.normal(size=100_000))
    f0 = np.percentile(f, 8.0)
    dff = (f - f0) / f0
    nu = noise_level(dff, FRAME_RATE_HZ)
    assert resting_dff_offset(nu, FRAME_RATE_HZ, 8.0) == pytest.approx(dff.mean(), rel=0.02)


# --------------------------------------------------------------------------- accuracy


def _gcamp6f_traces(rng, n_cells, duration_s, event_rate_hz, mean_spikes_per_event):
    """Spike events (Poisson) of a geometric number of spikes 5 ms apart, convolved with the
    GCaMP6f kernel (difference of exponentials, peak-normalised, saturating) and sampled at
    the frame times. Returns (dF/F (T, n), frame times, spike times per cell)."""
    frame_times = np.arange(int(duration_s * FRAME_RATE_HZ)) / FRAME_RATE_HZ
    t_peak = (
        math.log(DECAY_TAU_S / RISE_TAU_S) * DECAY_TAU_S * RISE_TAU_S / (DECAY_TAU_S - RISE_TAU_S)
    )
    peak = math.exp(-t_peak / DECAY_TAU_S) - math.exp(-t_peak / RISE_TAU_S)
    dff = np.zeros((frame_times.size, n_cells))
    spike_times = []
    for cell in range(n_cells):
        n_events = rng.poisson(event_rate_hz * duration_s)
        onsets = rng.uniform(0, duration_s, n_events)
        counts = rng.geometric(1.0 / mean_spikes_per_event, n_events)
        times = np.sort(np.concatenate([o + 0.005 * np.arange(k) for o, k in zip(onsets, counts)]))
        age = frame_times[:, None] - times[None, :]
        kernel = np.where(
            age > 0,
            np.exp(-np.maximum(age, 0) / DECAY_TAU_S) - np.exp(-np.maximum(age, 0) / RISE_TAU_S),
            0.0,
        )
        x = DFF_PER_SPIKE * kernel.sum(1) / peak
        dff[:, cell] = x / (1 + x / DFF_MAX)
        spike_times.append(times)
    return dff, frame_times, spike_times


@pytest.mark.parametrize("nu", [1.0, 2.0, 3.0])
def test_bursting_gcamp6f_cells_correlate_with_ground_truth_up_to_noise_level_3(nu):
    # cortical pyramidal cells fire many of their spikes in bursts; here events at 0.5 Hz of
    # on average 3 spikes; white noise of the given CASCADE noise level; default s_min
    rng = np.random.default_rng(14)
    dff, frame_times, spike_times = _gcamp6f_traces(rng, 12, 120.0, 0.5, 3.0)
    g = ar1_decay_factor(DECAY_TAU_S, FRAME_RATE_HZ)
    y = dff + frame_noise_sd(nu, FRAME_RATE_HZ) * rng.normal(size=dff.shape)
    s_min = minimum_spike_size(nu, FRAME_RATE_HZ, g)
    online = OnlineOasis(dff.shape[1], g, s_min=s_min, spike_lag_frames=6)
    inferred = np.zeros_like(y)
    for t in range(y.shape[0]):
        inferred[t] = online.update(y[t].astype(np.float32))[1]
    inferred = np.roll(inferred, -6, axis=0)  # frame t holds the spike of frame t - 6
    inferred[-6:] = 0.0
    correlations = spike_correlation(inferred, frame_times, spike_times, smoothing_s=0.1)
    assert np.median(correlations) >= 0.7


def test_single_spike_poisson_cells_correlate_with_ground_truth_at_noise_level_1():
    rng = np.random.default_rng(15)
    dff, frame_times, spike_times = _gcamp6f_traces(rng, 12, 120.0, 1.0, 1.0)
    g = ar1_decay_factor(DECAY_TAU_S, FRAME_RATE_HZ)
    nu = 1.0
    y = dff + frame_noise_sd(nu, FRAME_RATE_HZ) * rng.normal(size=dff.shape)
    s_min = minimum_spike_size(nu, FRAME_RATE_HZ, g)
    inferred = np.stack([oasis_ar1(y[:, i], g, s_min=s_min)[1] for i in range(12)], 1)
    correlations = spike_correlation(inferred, frame_times, spike_times, smoothing_s=0.1)
    assert np.median(correlations) >= 0.7


# --------------------------------------------------------------------------- bad input


def test_bad_parameters_raise_errors_naming_them():
    with pytest.raises(ValueError, match=r"g \(the per-frame calcium decay\) must be in \(0, 1\)"):
        oasis_ar1(np.zeros(5), 1.0)
    with pytest.raises(ValueError, match="inf"):
        oasis_ar1(np.array([0.0, np.inf]), 0.9)
    with pytest.raises(ValueError, match="1-D"):
        oasis_ar1(np.zeros((2, 2)), 0.9)
    with pytest.raises(ValueError, match="s_min"):
        oasis_ar1(np.zeros(5), 0.9, s_min=-1.0)
    with pytest.raises(ValueError, match=r"pool_capacity must be an integer >= spike_lag_frames"):
        OnlineOasis(3, 0.9, spike_lag_frames=10, pool_capacity=8)
    online = OnlineOasis(3, 0.9)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        online.update(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="s_min must be finite"):
        online.set_s_min(np.array([0.1, np.nan, 0.1]))
    with pytest.raises(ValueError, match="decay_tau_s"):
        ar1_decay_factor(0.0, 30.0)
    with pytest.raises(ValueError, match="percentile"):
        resting_dff_offset(2.0, 30.0, 100.0)
