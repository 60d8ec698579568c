"""The ceiling of spike inference on the simulated world's own cells (issue 3, item 5).

``python -m rig.spike_ceiling`` prints, per noise level, the median correlation with the true
spikes (analysis.accuracy.spike_correlation, Gaussian SD 100 ms) of the Bayes-optimal estimate
(analysis.spike_posterior, the true model known) and of the pipeline's own online chain on the
same traces; docs/PIPELINE.md has the table. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from analysis.accuracy import spike_correlation
from analysis.deconvolution import frame_noise_sd, online_deconvolution
from analysis.dff import OnlineDff
from analysis.noise import OnlineNoiseLevel, noise_level
from analysis.spike_posterior import posterior_spike_counts
from simulators.world.activity import ActivityEngine
from simulators.world.config import WorldConfig
from simulators.world.indicator import Indicator

TABLE_FRAME_RATE_HZ = 30.0
TABLE_LAG_FRAMES = 6
TABLE_N_BINS = 200  # h ~ 0.01 dF/F; 400 bins gave the same correlations to 3 decimals


def sampled_response(frame_rate_hz: float, n_frames: int = 60,
                     n_phases: int = 1000) -> np.ndarray:
    """a_n, n = 0 .. n_frames-1: the world indicator's mean dF/F at the n-th frame sample after
    an isolated spike, the spike's arrival uniform over the frame period before sample 0 (the
    sample of the frame the spike is assigned to). dF/F of one spike, saturation included."""
    config = WorldConfig()
    indicator = Indicator(config.indicator, config.dt_s)
    period = 1.0 / frame_rate_hz
    ages = (np.arange(n_phases) + 0.5) / n_phases * period
    return np.array([indicator.dff_from_calcium(indicator.kernel(ages + n * period)).mean()
                     for n in range(n_frames)])


def model_amplitudes(frame_rate_hz: float, decay_tau_s: float) -> dict[str, tuple[float, float]]:
    """(A, B) of the oracle's models of the world's indicator (a_n = ``sampled_response``):

    'ar1_first': A = a_0, the mean sampled response in the frame of the spike, B = g A (the
        plain AR(1) with that A; it misses the rise: a_1 > a_0 for a 20 ms rise at 30 Hz).
    'ar1_fit': plain AR(1) with A = the least-squares fit of A g^n to a_n over all n.
    'two_amplitude': A = a_0, B = the least-squares fit of B g^(n-1) to a_n, n >= 1.
    """
    g = math.exp(-1.0 / (decay_tau_s * frame_rate_hz))
    a = sampled_response(frame_rate_hz)
    n = np.arange(a.size)
    fit = float((a * g ** n).sum() / (g ** (2 * n)).sum())
    tail = float((a[1:] * g ** n[:-1]).sum() / (g ** (2 * n[:-1])).sum())
    return {"ar1_first": (float(a[0]), g * float(a[0])), "ar1_fit": (fit, g * fit),
            "two_amplitude": (float(a[0]), tail)}


def world_cells(n_cells: int, duration_s: float, seed: int):
    """The world's default cells (its Poisson activity) and its indicator's dF/F at the
    mid-scan times of 30 Hz frames: (dff (T, n), frame_times_s, spike times per cell, each
    cell's rate in Hz)."""
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
    frame_times = (np.arange(int(duration_s * TABLE_FRAME_RATE_HZ)) + 0.5) / TABLE_FRAME_RATE_HZ
    dff = engine.indicator.dff_at(cells, times, n_cells, frame_times)
    spike_times = [times[cells == i] for i in range(n_cells)]
    return dff, frame_times, spike_times, engine.base_rate_hz.copy()


def online_chain(F: np.ndarray, model: str, n_sds: float) -> np.ndarray:
    """The pipeline's online chain as rig/pipeline.py runs it: dF/F (8th percentile, 60 s),
    noise level (30 s), OASIS (``model`` ar1 | ar2) with s_min = n_sds SDs from the noise level
    and the resting offset subtracted; spike estimates moved back by the lag."""
    rate, lag = TABLE_FRAME_RATE_HZ, TABLE_LAG_FRAMES
    n = F.shape[1]
    dff = OnlineDff(n, rate, 60.0, 8.0)
    noise = OnlineNoiseLevel(n, int(30 * rate), rate)
    solver = online_deconvolution(model, n, rate, 0.2, 0.02, lag)
    row = np.zeros(n, np.float32)
    spikes = np.full(F.shape, np.nan)
    for t in range(F.shape[0]):
        dff.update(F[t], row)
        noise.update(row)
        solver.set_noise_level(noise.values, rate, n_sds, 8.0)
        spikes[t] = solver.update(row)[1]
    return np.concatenate([spikes[lag:], np.full((lag, n), np.nan)])


def _model_trace(counts: np.ndarray, g: float, a: float, b: float) -> np.ndarray:
    """Noise-free trace of the two-amplitude model: x_t + a s_t, x_t = g x_{t-1} + b s_{t-1}."""
    out = np.empty(counts.shape[0])
    x = 0.0
    for t, s in enumerate(counts):
        out[t] = x + a * s
        x = g * x + b * s
    return out


def ceiling_table(noise_levels=(1.5, 2.0, 2.5, 3.0, 4.0), n_cells: int = 60,
                  duration_s: float = 300.0, seed: int = 1, max_spikes: int = 3,
                  n_bins: int = TABLE_N_BINS, n_threads: int = 2) -> list[dict]:
    """Median correlation over the world's cells (analysis.accuracy.spike_correlation, Gaussian
    SD 100 ms, inferred spikes half a frame before their frame's sample time, first 60 s left
    out) of, per nominal noise level nu (sigma = frame_noise_sd(nu, 30 Hz)):

    a_*: the oracle on the world's traces F - 1 = dF/F + sigma sqrt(1 + dF/F) N(0, 1) (shot
        noise, as in the test file), knowing baseline, sigma (shot-noise likelihood), each
        cell's rate, g = exp(-1 / (30 * 0.2)) and the amplitudes of ``model_amplitudes`` (one
        column per model). The indicator (20 ms rise, sub-frame spike times) is not the
        oracle's model, so these are achievable numbers, lower bounds of the world's ceiling.
    b_*: the oracle on data of its own model: the world's spikes counted per frame (between
        consecutive samples), that model's trace plus white noise of SD sigma: the strict
        ceiling for that model with these rates, amplitudes and noise.
    pipe_*: the online chain (dF/F -> noise level -> online OASIS AR(1)) with s_min = 3 SDs
        (the default) and 0.5 SD (about the best in docs/PIPELINE.md) on the a_* traces.
    """
    rate = TABLE_FRAME_RATE_HZ
    g = math.exp(-1.0 / (rate * 0.2))
    amplitudes = model_amplitudes(rate, 0.2)
    dff, frame_times, spike_times, rates_hz = world_cells(n_cells, duration_s, seed)
    lam = rates_hz / rate
    counts = np.zeros(dff.shape)
    for i, times in enumerate(spike_times):
        frames = np.searchsorted(frame_times, times, side="left")
        np.add.at(counts[:, i], frames[frames < frame_times.size], 1.0)
    steady = slice(int(60 * rate), None)
    offset = -0.5 / rate
    rng = np.random.default_rng(2)
    rng_model = np.random.default_rng(3)

    def median_corr(estimates: np.ndarray) -> float:
        corr = spike_correlation(estimates[steady], frame_times[steady], spike_times,
                                 inferred_offset_s=offset)
        return float(np.nanmedian(corr))

    def oracle(traces: np.ndarray, a: float, b: float, sigma: float, shot: bool) -> np.ndarray:
        def one(i: int) -> np.ndarray:
            return posterior_spike_counts(traces[:, i], g, a, sigma, lam[i], max_spikes,
                                          next_amplitude=b, shot_noise=shot, n_bins=n_bins)
        with ThreadPoolExecutor(n_threads) as pool:
            return np.stack(list(pool.map(one, range(traces.shape[1]))), axis=1)

    rows = []
    for nu in noise_levels:
        sigma = frame_noise_sd(nu, rate)
        F = (1.0 + dff + sigma * np.sqrt(1.0 + dff) * rng.normal(size=dff.shape))
        y = F - 1.0
        row = {"nu": nu, "measured_nu": float(np.median(noise_level(y.T, rate)))}
        for name, (a, b) in amplitudes.items():
            row["a_" + name] = median_corr(oracle(y, a, b, sigma, True))
        for name in ("ar1_fit", "two_amplitude"):
            a, b = amplitudes[name]
            clean = np.stack([_model_trace(counts[:, i], g, a, b) for i in range(n_cells)], 1)
            noisy = clean + sigma * rng_model.normal(size=clean.shape)
            row["b_" + name] = median_corr(oracle(noisy, a, b, sigma, False))
        F32 = F.astype(np.float32)
        for n_sds in (3.0, 0.5):
            row[f"pipe_{n_sds:g}sd"] = median_corr(online_chain(F32, "ar1", n_sds))
        rows.append(row)
        print(" ".join(f"{k}={v:.3f}" for k, v in row.items()), flush=True)
    return rows


if __name__ == "__main__":
    # nice .venv/bin/python -m rig.spike_ceiling
    print("amplitudes (A, B):", {k: tuple(round(v, 4) for v in ab)
                                 for k, ab in model_amplitudes(30.0, 0.2).items()})
    table = ceiling_table()
    keys = list(table[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in table:
        print("| " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |")
