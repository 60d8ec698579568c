"""Spike inference on the simulated world's own cells (its Poisson activity and GCaMP6f-like
indicator), through the online chain dF/F -> noise level -> OASIS, at 30 Hz (issue 3).

What the simulation shows (docs/PIPELINE.md has the tables): single Poisson spikes of 0.15 dF/F
are hard to recover at noise levels 2-4, and the issue's 0.7 is not reached there - not even by
the Bayes-optimal estimate with the true model known (rig/spike_ceiling.py). These tests pin the
facts that hold whatever the numbers: at noise level 2 deconvolution beats the raw dF/F,
accuracy falls with noise, the noise-free limit is near 1, and at noise level 3 the optimum
stays below 0.7 with the pipeline below the optimum."""

import math

import numpy as np
import pytest

from analysis.accuracy import spike_correlation
from analysis.deconvolution import frame_noise_sd
from analysis.spike_posterior import posterior_spike_counts
from rig.spike_ceiling import model_amplitudes, online_chain, world_cells

FRAME_RATE_HZ = 30.0
STEADY = slice(int(60 * FRAME_RATE_HZ), None)  # after the baseline window has filled


@pytest.mark.slow
def test_world_cells_deconvolved_beat_raw_dff_and_lose_accuracy_with_noise():
    dff, frame_times, spike_times, _ = world_cells(24, 150.0, seed=1)
    steady = STEADY
    rng = np.random.default_rng(2)
    medians = {}
    for nu in (2.0, 4.0):
        # shot noise: SD grows with sqrt(F); nu is the nominal level of the resting trace
        sigma = frame_noise_sd(nu, FRAME_RATE_HZ)
        F = (1.0 + dff + sigma * np.sqrt(1.0 + dff) * rng.normal(size=dff.shape)).astype(np.float32)
        for model in ("ar1", "ar2"):
            spikes = online_chain(F, model, 3.0)
            corr = spike_correlation(
                spikes[steady], frame_times[steady], spike_times, inferred_offset_s=-0.5 / 30
            )
            medians[nu, model] = np.nanmedian(corr)
        if nu == 2.0:
            raw = spike_correlation(F[steady] - 1.0, frame_times[steady], spike_times)
            assert medians[nu, "ar1"] > np.nanmedian(raw) + 0.05
            assert medians[nu, "ar2"] > np.nanmedian(raw) + 0.05
    assert medians[2.0, "ar1"] > medians[4.0, "ar1"] + 0.1
    assert medians[2.0, "ar2"] > medians[4.0, "ar2"] + 0.1
    # noise-free, the same chain recovers the world's spikes almost perfectly
    spikes = online_chain((1.0 + dff).astype(np.float32), "ar2", 3.0)
    corr = spike_correlation(spikes[steady], frame_times[steady], spike_times)
    assert np.nanmedian(corr) > 0.9


def test_world_amplitudes_reflect_the_rise():
    amplitudes = model_amplitudes(FRAME_RATE_HZ, 0.2)
    first, _ = amplitudes["ar1_first"]
    a, b = amplitudes["two_amplitude"]
    # a spike shows ~0.09 dF/F at the first sample (still rising), ~0.14 at the next one
    assert a == first
    assert 0.05 < a < 0.12
    assert 0.13 < b < 0.16
    assert 0.13 < amplitudes["ar1_fit"][0] < 0.17


@pytest.mark.slow
def test_even_the_bayes_optimal_estimate_stays_below_0_7_at_noise_level_3():
    """The issue asks for 0.7 at noise level up to 3. With the true model known (baseline,
    noise SD, each cell's rate, the indicator's sampled response), the posterior mean - the
    estimate with the highest correlation any method can reach - falls short on the world's
    single-spike cells; the pipeline's online chain stays below it."""
    dff, frame_times, spike_times, rates_hz = world_cells(24, 150.0, seed=1)
    sigma = frame_noise_sd(3.0, FRAME_RATE_HZ)
    rng = np.random.default_rng(2)
    F = 1.0 + dff + sigma * np.sqrt(1.0 + dff) * rng.normal(size=dff.shape)
    a, b = model_amplitudes(FRAME_RATE_HZ, 0.2)["two_amplitude"]
    g = math.exp(-1.0 / (0.2 * FRAME_RATE_HZ))
    oracle = np.stack(
        [
            posterior_spike_counts(F[:, i] - 1.0, g, a, sigma, rates_hz[i] / FRAME_RATE_HZ, 3,
                                   next_amplitude=b, shot_noise=True, n_bins=200)  # fmt: skip
            for i in range(F.shape[1])
        ],
        axis=1,
    )
    offset = -0.5 / FRAME_RATE_HZ
    best = np.nanmedian(
        spike_correlation(
            oracle[STEADY], frame_times[STEADY], spike_times, inferred_offset_s=offset
        )
    )
    pipeline = np.nanmedian(
        spike_correlation(
            online_chain(F.astype(np.float32), "ar1", 0.5)[STEADY], frame_times[STEADY],
            spike_times, inferred_offset_s=offset,
        )  # fmt: skip
    )
    assert best < 0.7
    assert pipeline < best
