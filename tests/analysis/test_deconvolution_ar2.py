"""OASIS AR(2): the indicator's rise and decay, the oasis-deconv oracle, online == batch."""

import math

import numpy as np
import pytest

from analysis.deconvolution import (
    OnlineOasis,
    OnlineOasisAR2,
    ar2_coefficients,
    ar2_impulse_response,
    ar2_pooled_spike_sd_factor,
    ar2_roots,
    minimum_spike_size_ar2,
    oasis_ar2,
    online_deconvolution,
    resting_dff_offset,
)
from simulators.world.config import IndicatorConfig
from simulators.world.indicator import Indicator

FRAME_RATE_HZ = 30.0
RISE_TAU_S = 0.02  # GCaMP6f-like (Chen et al. 2013; the world's IndicatorConfig)
DECAY_TAU_S = 0.2
G1, G2 = ar2_coefficients(DECAY_TAU_S, RISE_TAU_S, FRAME_RATE_HZ)


def _ar2_trace(rng, n_frames, rate, sd, leading_zeros=0):
    """Sparse spikes of random size through the AR(2) kernel, white noise; optionally exact
    zeros first (where oasis-deconv's first-pool convention and ours agree)."""
    spikes = (rng.random(n_frames) < rate) * rng.uniform(0.5, 1.5, n_frames)
    spikes[:leading_zeros] = 0.0
    calcium = np.convolve(spikes, ar2_impulse_response(G1, G2, n_frames))[:n_frames]
    y = calcium + sd * rng.normal(size=n_frames)
    y[:leading_zeros] = 0.0
    return y


def _kernel_matrix(n_frames):
    h = ar2_impulse_response(G1, G2, n_frames)
    lags = np.arange(n_frames)[:, None] - np.arange(n_frames)[None, :]
    return np.where(lags >= 0, h[np.maximum(lags, 0)], 0.0)


def test_impulse_response_is_the_worlds_indicator_kernel_sampled_at_the_frames():
    # a spike just after sample -1 is seen at ages 1, 2, 3 ... frames: the difference of
    # exponentials exp(-t / decay) - exp(-t / rise) of the simulated indicator, up to a scale
    indicator = Indicator(IndicatorConfig(rise_tau_s=RISE_TAU_S, decay_tau_s=DECAY_TAU_S), 1e-3)
    ages = np.arange(1, 61) / FRAME_RATE_HZ
    ratio = ar2_impulse_response(G1, G2, 60) / indicator.kernel(ages)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
    d, r = ar2_roots(G1, G2)
    assert d == pytest.approx(math.exp(-1 / (DECAY_TAU_S * FRAME_RATE_HZ)))
    assert r == pytest.approx(math.exp(-1 / (RISE_TAU_S * FRAME_RATE_HZ)))


def test_pooled_spike_sd_factor_is_one_over_the_impulse_response_energy():
    h = ar2_impulse_response(G1, G2, 2000)
    assert ar2_pooled_spike_sd_factor(G1, G2) == pytest.approx(1 / math.sqrt(np.sum(h**2)))
    assert minimum_spike_size_ar2(3.0, FRAME_RATE_HZ, G1, G2, n_sds=2.0) == pytest.approx(
        2.0 * 3.0 * math.sqrt(FRAME_RATE_HZ) / 95.39 / math.sqrt(np.sum(h**2)), rel=1e-3
    )


@pytest.mark.parametrize("seed", [5, 6, 7])
@pytest.mark.parametrize("s_min", [0.0, 0.2, 0.6])
def test_batch_equals_the_oasis_deconv_package(s_min, seed):
    oasis = pytest.importorskip("oasis")
    rng = np.random.default_rng(seed)
    y = _ar2_trace(rng, 3000, rate=0.03, sd=0.25, leading_zeros=100)
    c, s = oasis_ar2(y, G1, G2, s_min=s_min)
    c_ref, s_ref = oasis.oasisAR2(y, G1, G2, 0.0, s_min)
    # the conventions differ only in the first pool's shape (ours from rest, theirs a pure
    # decay), which the leading exact zeros make (nearly) irrelevant
    np.testing.assert_allclose(c, c_ref, atol=1e-7)
    np.testing.assert_allclose(s[2:], s_ref[2:], atol=1e-7)  # oasis-deconv reports s_0,1 = 0


def test_batch_with_l1_penalty_equals_oasis_deconv_away_from_the_end():
    # oasis-deconv uses OASIS's finite-horizon |s|_1 for the last two frames; we apply
    # lam (1 - g1 - g2) to every frame (as for AR(1)): the solutions agree until the end
    oasis = pytest.importorskip("oasis")
    rng = np.random.default_rng(8)
    y = _ar2_trace(rng, 2000, rate=0.04, sd=0.3, leading_zeros=50)
    lam = 0.4
    c, _ = oasis_ar2(y, G1, G2, lam=lam)
    c_ref, _ = oasis.oasisAR2(y, G1, G2, lam, 0.0)
    np.testing.assert_allclose(c[:1900], c_ref[:1900], atol=1e-7)


def test_solution_follows_the_ar2_model_with_spikes_zero_or_at_least_s_min():
    rng = np.random.default_rng(9)
    y = _ar2_trace(rng, 800, rate=0.04, sd=0.2)
    s_min = 0.4
    c, s = oasis_ar2(y, G1, G2, s_min=s_min)
    np.testing.assert_allclose(_kernel_matrix(800) @ s, c, atol=1e-9)  # c = K s from rest
    nonzero = s != 0.0
    assert (s[nonzero] >= s_min - 1e-12).all()
    assert 0 < nonzero.mean() < 0.1
    quiet = np.flatnonzero(~nonzero)
    quiet = quiet[quiet >= 2]
    np.testing.assert_allclose(c[quiet], G1 * c[quiet - 1] + G2 * c[quiet - 2], atol=1e-12)


def test_no_feasible_perturbation_lowers_the_objective_with_s_min_0():
    # s_min = 0: min 1/2 |K s - y|^2 over s >= 0 is convex; OASIS's pools should reach the
    # optimum, so no random non-negative perturbation of s lowers the objective
    rng = np.random.default_rng(10)
    y = _ar2_trace(rng, 150, rate=0.08, sd=0.2)
    _, s = oasis_ar2(y, G1, G2)
    K = _kernel_matrix(150)

    def objective(sp):
        return 0.5 * np.sum((K @ sp - y) ** 2)

    best = objective(s)
    for _ in range(300):
        trial = np.maximum(s + 0.01 * rng.normal(size=150) * (rng.random(150) < 0.1), 0)
        assert objective(trial) >= best - 1e-9


def test_online_outputs_equal_the_batch_solution_of_every_prefix_exactly():
    rng = np.random.default_rng(11)
    n_frames, lag = 240, 4
    traces = np.stack([_ar2_trace(rng, n_frames, 0.06, sd) for sd in (0.05, 0.2, 0.5)], 1)
    traces[[30, 31, 100], 1] = np.nan  # flagged frames carry no data
    s_min = np.array([0.0, 0.3, 0.8])
    online = OnlineOasisAR2(3, G1, G2, s_min=s_min, spike_lag_frames=lag)
    for t in range(n_frames):
        calcium, spikes = online.update(traces[t])
        for r in range(3):
            c, s = oasis_ar2(traces[: t + 1, r], G1, G2, s_min=s_min[r])
            if np.isnan(traces[t, r]):
                assert np.isnan(calcium[r])
            else:
                assert calcium[r] == np.float32(c[t])
            if t < lag or np.isnan(traces[t - lag, r]):
                assert np.isnan(spikes[r])
            else:
                assert spikes[r] == np.float32(s[t - lag])
    for r in range(3):
        first, c_online, s_online = online.solution(r)
        c, s = oasis_ar2(traces[:, r], G1, G2, s_min=s_min[r])
        assert first == 0
        np.testing.assert_array_equal(c_online, c)
        np.testing.assert_array_equal(s_online, s)
    assert (online.truncated == 0).all()


def test_noise_level_sets_s_min_and_offset_and_bounded_memory_stays_exact():
    rng = np.random.default_rng(12)
    y = _ar2_trace(rng, 3000, 0.05, 0.1) + 0.2  # a resting offset, ~150 events
    online = OnlineOasisAR2(1, G1, G2, pool_capacity=16)
    online.set_noise_level(np.array([2.0]), FRAME_RATE_HZ, n_sds=3.0, percentile=8.0)
    assert online.s_min[0] == pytest.approx(minimum_spike_size_ar2(2.0, FRAME_RATE_HZ, G1, G2))
    assert online.offset[0] == pytest.approx(resting_dff_offset(2.0, FRAME_RATE_HZ, 8.0))
    for t in range(y.size):
        online.update(y[t : t + 1])
    first, c_online, s_online = online.solution(0)
    c, s = oasis_ar2(y - online.offset[0], G1, G2, s_min=online.s_min[0])
    assert first > 0 and online.truncated[0] == 0
    np.testing.assert_array_equal(c_online, c[first:])
    np.testing.assert_array_equal(s_online, s[first:])


def test_a_merge_into_a_dropped_pool_is_flagged():
    # a 40-frame ramp (one pool per frame) then a deep drop: the batch solution merges back
    # further than the 8 pools the ring keeps; the online solver flags it instead of hiding it
    ramp = np.concatenate([np.linspace(0.0, 3.0, 40), np.full(400, -20.0)])
    online = OnlineOasisAR2(1, G1, G2, pool_capacity=8)
    for t in range(ramp.size):
        online.update(ramp[t : t + 1])
    first, c_online, _ = online.solution(0)
    c, _ = oasis_ar2(ramp, G1, G2)
    assert online.truncated[0] > 0
    assert not np.allclose(c_online, c[first:])


def test_config_model_selects_the_solver():
    assert isinstance(online_deconvolution("ar1", 4, 30.0, 0.2, 0.02), OnlineOasis)
    ar2 = online_deconvolution("ar2", 4, 30.0, 0.2, 0.02, spike_lag_frames=6)
    assert isinstance(ar2, OnlineOasisAR2) and ar2.spike_lag_frames == 6
    assert (ar2.g1, ar2.g2) == pytest.approx((G1, G2))
    with pytest.raises(ValueError, match=r"model must be one of \('ar1', 'ar2'\), got 'ar3'"):
        online_deconvolution("ar3", 4, 30.0, 0.2, 0.02)


def test_bad_parameters_raise_errors_naming_them():
    with pytest.raises(ValueError, match="decay_tau_s .* must exceed rise_tau_s"):
        ar2_coefficients(0.02, 0.2, 30.0)
    with pytest.raises(ValueError, match="rise_tau_s must be a finite number > 0"):
        ar2_coefficients(0.2, 0.0, 30.0)
    with pytest.raises(ValueError, match="real roots"):
        oasis_ar2(np.zeros(5), 1.0, -0.5)
    with pytest.raises(ValueError, match="need 0 <= r < d < 1"):
        oasis_ar2(np.zeros(5), 1.9, -0.8)
    with pytest.raises(ValueError, match="inf"):
        oasis_ar2(np.array([0.0, np.inf]), G1, G2)
    with pytest.raises(ValueError, match="s_min"):
        oasis_ar2(np.zeros(5), G1, G2, s_min=-1.0)
    with pytest.raises(ValueError, match="pool_capacity must be an integer >= spike_lag_frames"):
        OnlineOasisAR2(3, G1, G2, spike_lag_frames=10, pool_capacity=8)
    online = OnlineOasisAR2(3, G1, G2)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        online.update(np.zeros(4, np.float32))
