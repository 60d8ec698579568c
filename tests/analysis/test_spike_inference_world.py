"""Spike inference on the simulated world's own cells (its Poisson activity and GCaMP6f-like
indicator), through the online chain dF/F -> noise level -> OASIS, at 30 Hz (issue 3).

What the simulation shows (docs/PIPELINE.md has the table): single Poisson spikes of 0.15 dF/F
are hard to recover at noise levels 2-4, and the issue's 0.7 is not reached there; at a nominal
noise level of 4 (5.8 measured on the percentile-baseline dF/F) the default 3-SD s_min even
scores below the raw dF/F. These tests pin the facts that hold whatever the numbers: at noise
level 2 deconvolution beats the raw dF/F, accuracy falls with noise, and the noise-free limit
is near 1.
"""

import numpy as np
import pytest

from analysis.accuracy import spike_correlation
from analysis.deconvolution import frame_noise_sd, online_deconvolution
from analysis.dff import OnlineDff
from analysis.noise import OnlineNoiseLevel
from simulators.world.activity import ActivityEngine
from simulators.world.config import WorldConfig

FRAME_RATE_HZ = 30.0
LAG_FRAMES = 6


def _world_cells(n_cells: int, duration_s: float, seed: int):
    """The world's spikes (default Poisson rates) and its indicator's dF/F at the frames'
    sample (mid-scan) times."""
    config = WorldConfig()
    engine = ActivityEngine(
        config, n_cells, np.zeros(0, int), np.zeros(0, int), np.random.default_rng(seed)
    )
    block = np.zeros((1000, n_cells), np.float32)
    neuropil = np.zeros(1000, np.float32)
    for _ in range(int(round(duration_s / config.dt_s)) // 1000):
        engine.run(1000, block, neuropil)
    cells, steps = engine.spikes.arrays()
    times = steps * config.dt_s
    frame_times = (np.arange(int(duration_s * FRAME_RATE_HZ)) + 0.5) / FRAME_RATE_HZ
    dff = engine.indicator.dff_at(cells, times, n_cells, frame_times)
    return dff, frame_times, [times[cells == i] for i in range(n_cells)]


def _online_chain(F: np.ndarray, model: str) -> np.ndarray:
    """dF/F (8th percentile, 60 s), noise level (30 s), OASIS with s_min from the noise level,
    as rig/pipeline.py chains them; returns the spike estimates moved back by the lag."""
    n = F.shape[1]
    dff = OnlineDff(n, FRAME_RATE_HZ, 60.0, 8.0)
    noise = OnlineNoiseLevel(n, int(30 * FRAME_RATE_HZ), FRAME_RATE_HZ)
    solver = online_deconvolution(model, n, FRAME_RATE_HZ, 0.2, 0.02, LAG_FRAMES)
    row = np.zeros(n, np.float32)
    spikes = np.full(F.shape, np.nan)
    for t in range(F.shape[0]):
        dff.update(F[t], row)
        noise.update(row)
        solver.set_noise_level(noise.values, FRAME_RATE_HZ, 3.0, 8.0)
        spikes[t] = solver.update(row)[1]
    return np.concatenate([spikes[LAG_FRAMES:], np.full((LAG_FRAMES, n), np.nan)])


@pytest.mark.slow
def test_world_cells_deconvolved_beat_raw_dff_and_lose_accuracy_with_noise():
    dff, frame_times, spike_times = _world_cells(24, 150.0, seed=1)
    steady = slice(int(60 * FRAME_RATE_HZ), None)  # after the baseline window has filled
    rng = np.random.default_rng(2)
    medians = {}
    for nu in (2.0, 4.0):
        # shot noise: SD grows with sqrt(F); nu is the nominal level of the resting trace
        sigma = frame_noise_sd(nu, FRAME_RATE_HZ)
        F = (1.0 + dff + sigma * np.sqrt(1.0 + dff) * rng.normal(size=dff.shape)).astype(np.float32)
        for model in ("ar1", "ar2"):
            spikes = _online_chain(F, model)
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
    spikes = _online_chain((1.0 + dff).astype(np.float32), "ar2")
    corr = spike_correlation(spikes[steady], frame_times[steady], spike_times)
    assert np.nanmedian(corr) > 0.9
