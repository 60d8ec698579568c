"""Bayes-optimal spike inference for a known AR(1) indicator model: the ceiling of any method.

Model (frames t = 0 .. T-1; everything known: baseline subtracted, decay, amplitudes, noise,
spike rate):

    s_t ~ Poisson(lambda_t) truncated at max_spikes   (P(s = k) proportional to lambda^k / k!)
    c_t = g c_{t-1} + A s_t                            (calcium, in dF/F units)
    y_t = c_t + sigma_t eps_t,  eps_t ~ N(0, 1)        (y: the baseline-free trace, dF/F)

with sigma_t = sigma (white noise) or sigma sqrt(1 + c_t) (``shot_noise``: the SD of F = 1 + dF/F
grows with sqrt(F), as in the world's traces). ``posterior_spike_counts`` returns E[s_t | y_0..T-1]
for every frame. For any function f of the data and any linear smoothing L of the spike train,
L E[s | y] = E[L s | y] is the least-squares predictor of L s, and its correlation with L s is the
largest any f(y) reaches (population version of the statement); so, with the true model, the
posterior mean is the ceiling of spike inference by the correlation of analysis/accuracy.py.

Rise within the first frames (``next_amplitude``). A fast-rising indicator sampled once per frame
shows a spike partly in the frame it arrives in and fully only in the next one. The model then
generalises to a response a_0 = A in the spike's own frame and a_n = B g^(n-1) at n >= 1 frames
later (B = ``next_amplitude``; B = g A is the plain AR(1) above):

    x_t = g x_{t-1} + B s_{t-1}  (calcium of the spikes before frame t),  y_t = x_t + A s_t + noise.

Method: forward-backward (HMM smoothing) with x_t on a grid of ``n_bins`` values 0 .. x_max
(spacing h). The decay-and-spike step x -> g x + B k rarely lands on a grid value; its mass is
split linearly between the two neighbouring values, which keeps the mean exactly and adds a
variance of at most h^2 / 4 per frame (x_max = n_bins h; mass beyond x_max stays in the top bin).
The spike count s_t is summed exactly (0 .. max_spikes). With 400 bins over the reachable range
(x <= B max_spikes / (1 - g), or less when the data bound it) h is a few % of one spike, far
below the noise; tests/analysis/test_spike_posterior.py checks the grid against brute-force
enumeration. Cost: O(T n_bins (max_spikes + 1)), ~0.25 s for 9000 frames, 400 bins, 3 spikes.

Recursions (pi_t(i) = P(x_t = i | y_0..t-1), e_t(i, k) = the Gaussian density of y_t given
x_t = i and s_t = k, p_t(k) the prior of s_t, T_k(i, j) the split weights of i -> j with k spikes):

    forward   pi_{t+1}(j) ~ sum_{i,k} pi_t(i) p_t(k) e_t(i, k) T_k(i, j)   (normalised per frame)
    backward  beta_t(i) ~ sum_k p_t(k) e_t(i, k) sum_j T_k(i, j) beta_{t+1}(j),   beta_T = 1
    posterior P(s_t = k | y) ~ sum_i pi_t(i) p_t(k) e_t(i, k) sum_j T_k(i, j) beta_{t+1}(j).

``python -m rig.spike_ceiling`` measures the ceiling on the simulated world's own cells.
"""

from __future__ import annotations

import math

import numba
import numpy as np

DEFAULT_N_BINS = 400
DEFAULT_MAX_SPIKES = 2
DATA_BOUND_SDS = 8.0  # x_max need not exceed max(y) + this many noise SDs (likelihood ~e^-32)


# --------------------------------------------------------------------------- kernels


@numba.njit(cache=True, nogil=True)
def _emission(y: float, grid: np.ndarray, amplitude: float, sigma: float, shot_noise: bool,
              out: np.ndarray) -> None:
    """out[i, k] = Gaussian density of y given x = grid[i], s = k, divided by its maximum over
    (i, k) (a per-frame constant, which the normalisations remove); 1 everywhere for NaN y."""
    n_bins, n_counts = out.shape
    if math.isnan(y):
        out[:, :] = 1.0
        return
    best = -np.inf
    for i in range(n_bins):
        for k in range(n_counts):
            mean = grid[i] + amplitude * k
            if shot_noise:
                sd = sigma * math.sqrt(1.0 + mean)
                z = (y - mean) / sd
                value = -0.5 * z * z - math.log(sd)
            else:
                z = (y - mean) / sigma
                value = -0.5 * z * z
            out[i, k] = value
            if value > best:
                best = value
    for i in range(n_bins):
        for k in range(n_counts):
            out[i, k] = math.exp(out[i, k] - best)


@numba.njit(cache=True, nogil=True)
def _forward_backward(y: np.ndarray, grid: np.ndarray, lower: np.ndarray, upper_weight: np.ndarray,
                      prior: np.ndarray, initial: np.ndarray, amplitude: float, sigma: float,
                      shot_noise: bool, predicted: np.ndarray, beta: np.ndarray,
                      emission: np.ndarray, mean_spikes: np.ndarray) -> None:
    """Fill mean_spikes[t] = E[s_t | y]. lower[i, k], upper_weight[i, k]: the grid bin just
    below g grid[i] + B k and the share of mass that goes to the bin above it. prior: (T, K+1)
    P(s_t = k). predicted: (T, n_bins) scratch for pi_t; beta, emission: scratch."""
    n_frames = y.shape[0]
    n_bins, n_counts = lower.shape
    predicted[0, :] = initial
    for t in range(n_frames - 1):
        _emission(y[t], grid, amplitude, sigma, shot_noise, emission)
        nxt = predicted[t + 1]
        nxt[:] = 0.0
        for i in range(n_bins):
            p = predicted[t, i]
            if p == 0.0:
                continue
            for k in range(n_counts):
                mass = p * prior[t, k] * emission[i, k]
                j = lower[i, k]
                w = upper_weight[i, k]
                nxt[j] += mass * (1.0 - w)
                nxt[j + 1] += mass * w
        total = nxt.sum()
        if not total > 0.0:
            raise FloatingPointError("no probability left: the data are impossible under "
                                     "the model (check sigma, amplitude, baseline)")
        nxt /= total
    beta[:] = 1.0
    for t in range(n_frames - 1, -1, -1):
        _emission(y[t], grid, amplitude, sigma, shot_noise, emission)
        total = 0.0
        weighted = 0.0
        for i in range(n_bins):
            p = predicted[t, i]
            for k in range(n_counts):
                j = lower[i, k]
                w = upper_weight[i, k]
                ahead = (1.0 - w) * beta[j] + w * beta[j + 1]
                term = prior[t, k] * emission[i, k] * ahead
                emission[i, k] = term  # reuse: sum over k below gives beta_t(i)
                joint = p * term
                total += joint
                weighted += k * joint
        if not total > 0.0:
            raise FloatingPointError("no probability left: the data are impossible under "
                                     "the model (check sigma, amplitude, baseline)")
        mean_spikes[t] = weighted / total
        scale = 0.0
        for i in range(n_bins):
            b = 0.0
            for k in range(n_counts):
                b += emission[i, k]
            beta[i] = b
            scale += b
        beta /= scale


# --------------------------------------------------------------------------- public API


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def spike_count_prior(spike_prob_per_frame: np.ndarray, max_spikes: int) -> np.ndarray:
    """P(s = k), k = 0 .. max_spikes, of a Poisson count of mean lambda truncated at max_spikes
    (renormalised); lambda: shape (T,), returns (T, max_spikes + 1)."""
    lam = np.asarray(spike_prob_per_frame, dtype=np.float64)
    k = np.arange(max_spikes + 1)
    log_factorial = np.array([math.lgamma(v + 1.0) for v in k])
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 log 0, reset below
        log_p = k[None, :] * np.log(lam)[:, None] - log_factorial[None, :]
    log_p[:, 0] = 0.0  # lambda^0 = 1, also for lambda = 0
    p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _split_weights(grid: np.ndarray, g: float, next_amplitude: float, max_spikes: int):
    """(lower bin, share of the upper bin) of g grid[i] + next_amplitude k on the grid."""
    step = grid[1] - grid[0]
    n_bins = grid.shape[0]
    target = g * grid[:, None] + next_amplitude * np.arange(max_spikes + 1)[None, :]
    position = np.minimum(target / step, n_bins - 1.0)
    lower = np.minimum(np.floor(position).astype(np.int64), n_bins - 2)
    return lower, position - lower


def _initial_distribution(kind: str, n_bins: int, lower: np.ndarray, weight: np.ndarray,
                          prior_row: np.ndarray) -> np.ndarray:
    """'rest': all mass at x = 0; 'stationary': the prior's steady state of the grid chain."""
    start = np.zeros(n_bins)
    start[0] = 1.0
    if kind == "rest":
        return start
    if kind != "stationary":
        raise ValueError(f"initial must be 'stationary' or 'rest', got {kind!r}")
    for _ in range(100_000):
        nxt = np.zeros(n_bins)
        for k, pk in enumerate(prior_row):
            np.add.at(nxt, lower[:, k], start * pk * (1.0 - weight[:, k]))
            np.add.at(nxt, lower[:, k] + 1, start * pk * weight[:, k])
        if np.abs(nxt - start).sum() < 1e-12:
            return nxt
        start = nxt
    return start


def posterior_spike_counts(
    y: np.ndarray,
    decay_per_frame: float,
    amplitude: float,
    sigma: float,
    spike_prob_per_frame: float | np.ndarray,
    max_spikes_per_frame: int = DEFAULT_MAX_SPIKES,
    *,
    next_amplitude: float | None = None,
    shot_noise: bool = False,
    n_bins: int = DEFAULT_N_BINS,
    calcium_max: float | None = None,
    initial: str = "stationary",
) -> np.ndarray:
    """E[s_t | y_0..T-1], float64 of y's length: the posterior mean spike count of every frame.

    y: 1-D baseline-free trace (dF/F, 0 = no calcium); NaN frames carry no data.
    decay_per_frame: g in (0, 1) (exp(-1 / (decay_tau_s frame_rate_hz))).
    amplitude: A > 0, the trace's jump (dF/F) in the frame of a spike.
    sigma: noise SD per frame (dF/F) > 0; with shot_noise the SD is sigma sqrt(1 + c_t).
    spike_prob_per_frame: lambda >= 0, the Poisson mean spike count per frame (rate_hz /
        frame_rate_hz; about the probability of a spike in a frame when small), a number or one
        value per frame.
    max_spikes_per_frame: the count's truncation (>= 1).
    next_amplitude: B, the response one frame after a spike (then decaying by g per frame);
        None = g A (plain AR(1)). See the module docstring.
    n_bins: calcium grid size (>= 10). calcium_max: the grid's top (x above it is held there);
        None = min(B max_spikes / (1 - g), max(y) + 8 noise SDs), at least A.
    initial: 'stationary' (the calcium of a cell that has been firing at lambda_0 for ever) or
        'rest' (no calcium before frame 0).
    """
    trace = np.ascontiguousarray(y, dtype=np.float64)
    if trace.ndim != 1 or trace.shape[0] < 1:
        raise ValueError(f"y must be a non-empty 1-D trace, got shape {trace.shape}")
    if np.isinf(trace).any():
        raise ValueError("y contains +/-inf; use NaN to mark frames without data")
    n_frames = trace.shape[0]
    g = float(decay_per_frame)
    if not (math.isfinite(g) and 0.0 < g < 1.0):
        raise ValueError(f"decay_per_frame must be in (0, 1), got {decay_per_frame!r}")
    amplitude = _positive("amplitude", amplitude)
    sigma = _positive("sigma", sigma)
    b = g * amplitude if next_amplitude is None else _positive("next_amplitude", next_amplitude)
    if isinstance(max_spikes_per_frame, bool) or int(max_spikes_per_frame) != max_spikes_per_frame \
            or max_spikes_per_frame < 1:
        raise ValueError(f"max_spikes_per_frame must be an integer >= 1, "
                         f"got {max_spikes_per_frame!r}")
    max_spikes = int(max_spikes_per_frame)
    lam = np.asarray(spike_prob_per_frame, dtype=np.float64)
    if lam.ndim == 0:
        lam = np.full(n_frames, float(lam))
    if lam.shape != (n_frames,):
        raise ValueError(f"spike_prob_per_frame must be a number or have shape ({n_frames},), "
                         f"got shape {lam.shape}")
    if not (np.isfinite(lam).all() and (lam >= 0.0).all()):
        raise ValueError("spike_prob_per_frame must be finite and >= 0")
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 10:
        raise ValueError(f"n_bins must be an integer >= 10, got {n_bins!r}")
    n_bins = int(n_bins)
    if calcium_max is None:
        reachable = b * max_spikes / (1.0 - g)
        finite = trace[np.isfinite(trace)]
        if finite.size:
            top = float(finite.max())
            sd_top = sigma * math.sqrt(1.0 + max(top, 0.0)) if shot_noise else sigma
            reachable = min(reachable, top + DATA_BOUND_SDS * sd_top)
        calcium_max = max(reachable, amplitude)
    calcium_max = _positive("calcium_max", calcium_max)

    grid = np.linspace(0.0, calcium_max, n_bins)
    lower, weight = _split_weights(grid, g, b, max_spikes)
    prior = spike_count_prior(lam, max_spikes)
    start = _initial_distribution(initial, n_bins, lower, weight, prior[0])
    mean_spikes = np.empty(n_frames)
    _forward_backward(trace, grid, lower, weight, prior, start, amplitude, sigma,
                      bool(shot_noise), np.empty((n_frames, n_bins)), np.empty(n_bins),
                      np.empty((n_bins, max_spikes + 1)), mean_spikes)
    return mean_spikes
