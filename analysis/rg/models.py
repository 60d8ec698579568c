"""Generative models with known answers, for tests and benchmarks (science.md section 4).

All take an explicit numpy Generator and return (neurons, frames) arrays.

- ``independent_neurons``: heterogeneous rates and amplitudes, independent in time and across
  neurons (white): beta = 1, alpha = 1, Q_K -> Gaussian, tau_c at the 0.632-frame floor.
- ``equicorrelated_gaussian``: unit-variance Gaussians with pairwise correlation c (plus an
  offset): M2(K) = K (1 + (K - 1) c) exactly in expectation.
- ``latent_field_model``: Morrell, Sederberg & Nemenman (PRL 2021): N_f Ornstein-Uhlenbeck
  fields drive sigmoidal spiking; non-critical, yet "critical-looking" exponents.
- ``place_cells``: independent place cells along a linear track driven by a running animal,
  smoothed with an indicator kernel (the paper's main control: scaling breaks).
"""

from __future__ import annotations

import numpy as np


def independent_neurons(
    n_neurons: int,
    n_frames: int,
    rng: np.random.Generator,
    *,
    rate_range: tuple[float, float] = (0.02, 0.3),
    amplitude_range: tuple[float, float] = (0.5, 5.0),
) -> np.ndarray:
    """Independent, temporally white activity with exact zeros.

    Neuron i is active in a frame with probability p_i (log-uniform in rate_range); an active
    frame has amplitude a_i * Exp(1) with a_i log-uniform in amplitude_range. float32.
    """
    rates = np.exp(rng.uniform(*np.log(rate_range), size=n_neurons))
    scales = np.exp(rng.uniform(*np.log(amplitude_range), size=n_neurons))
    active = rng.random((n_neurons, n_frames)) < rates[:, None]
    amplitude = rng.exponential(1.0, size=(n_neurons, n_frames)) * scales[:, None]
    return np.where(active, amplitude, 0.0).astype(np.float32)


def equicorrelated_gaussian(
    n_neurons: int,
    n_frames: int,
    correlation: float,
    rng: np.random.Generator,
    *,
    offset: float = 0.0,
) -> np.ndarray:
    """x_i(t) = offset + sqrt(c) g(t) + sqrt(1 - c) e_i(t): unit variance, correlation c."""
    if not 0 <= correlation < 1:
        raise ValueError(f"correlation must be in [0, 1), got {correlation}")
    common = rng.standard_normal(n_frames)
    own = rng.standard_normal((n_neurons, n_frames))
    return offset + np.sqrt(correlation) * common[None, :] + np.sqrt(1 - correlation) * own


def ornstein_uhlenbeck(
    n_fields: int, n_frames: int, tau_frames: float, rng: np.random.Generator
) -> np.ndarray:
    """Unit-variance OU processes sampled per frame: h(t+1) = a h(t) + sqrt(1 - a^2) xi,
    a = exp(-1 / tau), started in the stationary distribution (autocorrelation a^|lag|)."""
    a = np.exp(-1.0 / tau_frames)
    noise = rng.standard_normal((n_fields, n_frames))
    h = np.empty((n_fields, n_frames))
    h[:, 0] = noise[:, 0]
    s = np.sqrt(1 - a * a)
    for t in range(1, n_frames):
        h[:, t] = a * h[:, t - 1] + s * noise[:, t]
    return h


def latent_field_model(
    n_neurons: int,
    n_frames: int,
    rng: np.random.Generator,
    *,
    n_cells: int | None = None,
    n_fields: int = 10,
    tau_frames: float = 5.0,
    eta: float = 6.0,
    epsilon: float = -16.0 / 6.0,
    phi: float = 1.0,
) -> np.ndarray:
    """Binary spikes of the latent-field model at the defaults of science.md.

    Each of n_cells (default 2 n_neurons) is coupled to every field with J_ik ~ N(0, 1) *
    phi / sqrt(n_fields); spike probability sigmoid(eta (sum_k J_ik h_k(t) + epsilon)). Silent
    cells are dropped and the first n_neurons of the rest kept (ValueError if too few). float32.
    """
    n_cells = 2 * n_neurons if n_cells is None else n_cells
    fields = ornstein_uhlenbeck(n_fields, n_frames, tau_frames, rng)
    coupling = rng.standard_normal((n_cells, n_fields)) * (phi / np.sqrt(n_fields))
    spikes = np.empty((n_cells, n_frames), dtype=np.float32)
    chunk = 2048
    for start in range(0, n_frames, chunk):
        stop = min(start + chunk, n_frames)
        drive = eta * (coupling @ fields[:, start:stop] + epsilon)
        probability = 1.0 / (1.0 + np.exp(-drive))
        spikes[:, start:stop] = rng.random((n_cells, stop - start)) < probability
    active = np.flatnonzero(spikes.any(axis=1))
    if active.size < n_neurons:
        raise ValueError(
            f"only {active.size} of {n_cells} cells spiked; simulate more cells (n_cells)"
        )
    return spikes[active[:n_neurons]]


def place_cells(
    n_neurons: int,
    n_frames: int,
    rng: np.random.Generator,
    *,
    track_length_cm: float = 300.0,
    speed_cm_per_frame: float = 1.0,
    field_width_cm: float = 15.0,
    peak_rate_per_frame: float = 0.3,
    place_cell_fraction: float = 0.5,
    background_rate_per_frame: float = 0.002,
    indicator_tau_frames: float = 10.0,
) -> np.ndarray:
    """Independent place cells (the paper's control), nonnegative with exact zeros.

    The animal runs back and forth along the track at constant speed. A place cell fires with
    probability peak * exp(-(x - c)^2 / 2 w^2) (c uniform on the track), other cells at the
    background rate, independently given the position. Spikes are convolved with an
    exponential indicator kernel cut at 5 tau (so silence stays exactly zero). float32.
    """
    period = 2 * track_length_cm / speed_cm_per_frame
    phase = (np.arange(n_frames) % period) * speed_cm_per_frame
    position = np.where(phase <= track_length_cm, phase, 2 * track_length_cm - phase)
    centers = rng.uniform(0, track_length_cm, size=n_neurons)
    is_place = rng.random(n_neurons) < place_cell_fraction
    tuning = peak_rate_per_frame * np.exp(
        -0.5 * ((position[None, :] - centers[:, None]) / field_width_cm) ** 2
    )
    rate = np.where(is_place[:, None], tuning, 0.0) + background_rate_per_frame
    spikes = (rng.random((n_neurons, n_frames)) < rate).astype(np.float64)
    length = int(np.ceil(5 * indicator_tau_frames))
    kernel = np.exp(-np.arange(length) / indicator_tau_frames)
    out = np.empty((n_neurons, n_frames), dtype=np.float32)
    for i in range(n_neurons):
        out[i] = np.convolve(spikes[i], kernel)[:n_frames]
    return out
