"""Deconvolution of calcium traces with exact zeros: OASIS, batch and online, for an AR(1)
indicator (below) and an AR(2) one with a rise time (``oasis_ar2``, ``OnlineOasisAR2``: see the
AR(2) notes further down); ``online_deconvolution`` picks one by the config's model name.

Model (Friedrich, Zhou & Paninski, PLoS Comput. Biol. 2017, "OASIS"; science.md section 3). The
denoised calcium c follows AR(1) dynamics driven by non-negative spikes s, starting from rest,

    s_t = c_t - g c_{t-1}  (c_{-1} = 0),   every s_t either 0 or >= s_min,

with g = exp(-1 / (decay_tau_s * frame_rate_hz)) the per-frame decay. Given a trace y (the
baseline-free fluorescence, e.g. dF/F minus its resting offset) the solver minimises

    1/2 sum_t (c_t - y_t)^2 + lam (1 - g) sum_t c_t

(lam (1 - g) sum c = lam sum_u s_u (1 - g^(T - u)): OASIS's L1 penalty lam |s|_1 in the form it
takes on a growing trace; the two differ only for spikes within a few decay times of the end,
and not at all for lam = 0, the default, where s_min alone makes the solution sparse).

Algorithm (OASIS, an extension of the pool-adjacent-violators algorithm). Frames are gathered
into pools of constant "spike-free" dynamics: pool j starting at frame t_j with length l_j has
c_{t_j + k} = v_j / w_j * g^k, where v_j = sum_k g^k y'_{t_j + k}, w_j = sum_k g^(2k) (the
least-squares fit of one exponential, y' = y - lam (1 - g)). Each new frame is a new pool; while
the previous pool's decayed value plus s_min exceeds the new pool's value (a spike smaller than
s_min, or negative), the two pools merge (v_i += v_j g^l_i, w_i += w_j g^(2 l_i)). For s_min = 0
this is the exact minimiser of the convex problem; for s_min > 0 it is OASIS's greedy solution of
the (non-convex) thresholded problem. A pool whose value is below s_min (or below 0) is set to 0;
by the merge rule this happens only to pools that follow such a pool from the start of the trace,
so every s_t of the result is 0 or >= s_min. The s_min rule also applies to the first pool
(the calcium at the first frame is its spike under c_{-1} = 0). oasis-deconv (the reference
implementation) differs in two conventions only: it clips its first pool at 0 rather than
s_min, and it reports s_0 = 0.

Exact zeros: s is exactly 0 except at pool starts (most frames), and c is exactly 0 until the
first inferred event. Between events c decays as g^k and never returns to exactly 0 (an AR(1)
calcium that rose cannot vanish: c_t >= g c_{t-1}); analyses that need exact silence (e.g. the
silence probability of the coarse-graining) should use s, or c of frames before the first event.

Online = batch. OASIS only ever merges backwards, so running it one frame at a time gives the
same pools as running it on the whole trace. ``OnlineOasis`` keeps one solver state per ROI (a
ring of the most recent ``pool_capacity`` pools) and is advanced one frame per call;
``oasis_ar1`` is the batch solver of the same problem. Both use the same arithmetic (the same
table of powers of g), so the online outputs equal the batch solution of the same trace bit for
bit. The only approximation is the bounded memory: a merge that would reach a pool already
dropped from the ring cannot happen online; such ROIs are flagged (``truncated``) and counted
(it needs a new frame lower than the calcium predicted since more than ``pool_capacity`` events
ago, i.e. a baseline error, not noise).

NaN frames (flagged frames) carry no data: they extend the current pool (no pool starts there).
In the solution they hold the model's value (c decaying, s = 0); the online per-frame outputs
that refer to a NaN frame are NaN, so a flagged frame stays visible. Frames before a trace's
first data frame are NaN.

s_min from the noise level. With the CASCADE noise level nu (% / sqrt(s), analysis.noise), white
per-frame noise has SD sigma = nu sqrt(frame_rate) / 95.4 (fractional dF/F). A spike's
amplitude is estimated from the pool that starts with it, an exponentially weighted mean of the
following frames, whose noise SD is at least sigma sqrt(1 - g^2) (the pool weight w tends to
1 / (1 - g^2)). ``minimum_spike_size`` sets s_min to ``n_sds`` times that SD: with the default
3, pure white noise gave about 0.5 false events per minute at 30 Hz and g = 0.85 (2 SDs: ~9 per
minute, as many as a sparse cell's real events).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numba
import numpy as np

from analysis.noise import WHITE_NOISE_FACTOR

DEFAULT_POOL_CAPACITY = 256  # pools kept per ROI online (~ events within the memory)
DEFAULT_S_MIN_SDS = 3.0  # s_min in SDs of a pooled spike-amplitude estimate
POWER_TABLE_LIMIT = 1 << 16  # powers of g tabulated; beyond, exp(k log g)


# --------------------------------------------------------------------------- parameters


def ar1_decay_factor(decay_tau_s: float, frame_rate_hz: float) -> float:
    """Per-frame decay g = exp(-1 / (decay_tau_s * frame_rate_hz)) of an AR(1) calcium kernel.

    GCaMP6f: decay_tau_s ~ 0.2 s (half-decay ~140 ms, Chen et al. 2013): g = 0.85 at 30 Hz."""
    decay_tau_s = float(decay_tau_s)
    frame_rate_hz = float(frame_rate_hz)
    if not (math.isfinite(decay_tau_s) and decay_tau_s > 0.0):
        raise ValueError(f"decay_tau_s must be a finite number > 0, got {decay_tau_s!r}")
    if not (math.isfinite(frame_rate_hz) and frame_rate_hz > 0.0):
        raise ValueError(f"frame_rate_hz must be a finite number > 0, got {frame_rate_hz!r}")
    return math.exp(-1.0 / (decay_tau_s * frame_rate_hz))


def frame_noise_sd(noise_level: float | np.ndarray, frame_rate_hz: float) -> np.ndarray | float:
    """Per-frame SD of white dF/F noise with CASCADE noise level nu (% / sqrt(s)):
    sigma = nu sqrt(frame_rate) / 95.4 (the white-noise oracle of analysis.noise, inverted)."""
    frame_rate_hz = float(frame_rate_hz)
    if not (math.isfinite(frame_rate_hz) and frame_rate_hz > 0.0):
        raise ValueError(f"frame_rate_hz must be a finite number > 0, got {frame_rate_hz!r}")
    scale = math.sqrt(frame_rate_hz) / WHITE_NOISE_FACTOR
    if np.ndim(noise_level):
        return np.asarray(noise_level, dtype=np.float64) * scale
    return float(noise_level) * scale


def minimum_spike_size(
    noise_level: float | np.ndarray,
    frame_rate_hz: float,
    g: float,
    n_sds: float = DEFAULT_S_MIN_SDS,
) -> np.ndarray | float:
    """s_min = n_sds * sigma * sqrt(1 - g^2), sigma = frame_noise_sd(noise_level, frame_rate_hz).

    sigma sqrt(1 - g^2) is the SD of a spike amplitude estimated from a long pool (see the module
    docstring); a noise-only pool rarely exceeds n_sds of it. NaN noise levels give NaN."""
    _check_g(g)
    n_sds = float(n_sds)
    if not (math.isfinite(n_sds) and n_sds >= 0.0):
        raise ValueError(f"n_sds must be a finite number >= 0, got {n_sds!r}")
    return n_sds * frame_noise_sd(noise_level, frame_rate_hz) * math.sqrt(1.0 - g * g)


def resting_dff_offset(
    noise_level: float | np.ndarray, frame_rate_hz: float, percentile: float
) -> np.ndarray | float:
    """Mean dF/F of a silent ROI whose F0 is the ``percentile``-th percentile of its own noisy F.

    With Gaussian noise of per-frame SD sigma (of dF/F), F0 sits z_q sigma below the mean of F
    (z_q = the standard normal quantile of q / 100; -1.405 for the 8th percentile), so the
    resting dF/F is -z_q sigma (+0.14 for sigma = 0.1), not 0. Subtract it before deconvolving,
    or the offset is read as calcium. Activity biases this little while the cell is silent more
    than (100 - q) % of the window."""
    return _resting_offset_sds(percentile) * frame_noise_sd(noise_level, frame_rate_hz)


def _resting_offset_sds(percentile: float) -> float:
    """-z_q: the mean of N(0, 1) above its q-th percentile, in SDs."""
    percentile = float(percentile)
    if not (math.isfinite(percentile) and 0.0 < percentile < 100.0):
        raise ValueError(f"percentile must be in (0, 100), got {percentile!r}")
    return -NormalDist().inv_cdf(percentile / 100.0)


def _check_g(g: float) -> float:
    g = float(g)
    if not (math.isfinite(g) and 0.0 < g < 1.0):
        raise ValueError(f"g (the per-frame calcium decay) must be in (0, 1), got {g!r}")
    return g


def decay_powers(g: float) -> np.ndarray:
    """g^k for k = 0, 1, ... until g^k < 1e-300 (at most POWER_TABLE_LIMIT entries)."""
    g = _check_g(g)
    n = min(POWER_TABLE_LIMIT, max(2, int(math.ceil(-300.0 * math.log(10.0) / math.log(g)))))
    return np.power(g, np.arange(n, dtype=np.float64))


# --------------------------------------------------------------------------- shared kernels


@numba.njit(cache=True, nogil=True)
def _power(powers: np.ndarray, log_g: float, k: int) -> float:
    """g^k from the table, or exp(k log g) beyond it (the same in batch and online)."""
    if k < powers.shape[0]:
        return powers[k]
    return math.exp(k * log_g)


@numba.njit(cache=True, nogil=True)
def _clipped(value: float, s_min: float) -> float:
    """A pool's calcium value: 0 if below s_min (see the module docstring), else itself."""
    return value if value >= s_min and value > 0.0 else 0.0


# --------------------------------------------------------------------------- batch


@numba.njit(cache=True, nogil=True)
def _oasis_ar1_kernel(
    y: np.ndarray,
    powers: np.ndarray,
    log_g: float,
    s_min: np.ndarray,
    lam_term: np.ndarray,
    pool_value: np.ndarray,
    pool_weight: np.ndarray,
    pool_start: np.ndarray,
    c: np.ndarray,
    s: np.ndarray,
) -> int:
    """OASIS on the whole trace y; writes c and s, returns the number of pools."""
    n_frames = y.shape[0]
    n_pools = 0
    for t in range(n_frames):
        x = y[t]
        if math.isnan(x):
            continue  # no data: the current pool (if any) extends over this frame
        pool_value[n_pools] = x - lam_term[t]
        pool_weight[n_pools] = 1.0
        pool_start[n_pools] = t
        n_pools += 1
        while n_pools > 1:
            i = n_pools - 1
            p = i - 1
            length = pool_start[i] - pool_start[p]
            decay = _power(powers, log_g, length)
            if pool_value[p] / pool_weight[p] * decay + s_min[t] > pool_value[i] / pool_weight[i]:
                pool_value[p] += pool_value[i] * decay
                pool_weight[p] += pool_weight[i] * _power(powers, log_g, 2 * length)
                n_pools -= 1
            else:
                break
    # reconstruct c and s from the pools (frames before the first data frame stay NaN)
    for t in range(n_frames):
        s[t] = np.nan
        c[t] = np.nan
    previous_end = 0.0  # clipped value of the previous pool decayed to the next pool's start
    for j in range(n_pools):
        start = pool_start[j]
        stop = pool_start[j + 1] if j + 1 < n_pools else n_frames
        value = _clipped(pool_value[j] / pool_weight[j], s_min[start])
        for k in range(stop - start):
            c[start + k] = value * _power(powers, log_g, k)
            s[start + k] = 0.0
        s[start] = value - previous_end
        previous_end = value * _power(powers, log_g, stop - start)
    return n_pools


def oasis_ar1(
    y: np.ndarray,
    g: float,
    s_min: float | np.ndarray = 0.0,
    lam: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Batch OASIS for an AR(1) indicator: (denoised calcium c, spikes s), float64 of y's length.

    y: 1-D trace (baseline-free: 0 = no calcium); NaN frames carry no data (see the module
    docstring). g: per-frame decay in (0, 1) (``ar1_decay_factor``). s_min: minimal spike size,
    a number or one value per frame (the value in force when each frame arrives, as online).
    lam: L1 penalty (see the module docstring). c = K s exactly up to rounding, K the AR(1)
    kernel from rest (s at the first data frame equals c there).
    """
    g = _check_g(g)
    trace = np.ascontiguousarray(y, dtype=np.float64)
    if trace.ndim != 1:
        raise ValueError(f"y must be a 1-D trace, got shape {trace.shape}")
    if np.isinf(trace).any():
        raise ValueError("y contains +/-inf; use NaN to mark frames without data")
    n_frames = trace.shape[0]
    s_min_t = _per_frame("s_min", s_min, n_frames)
    lam = float(lam)
    if not (math.isfinite(lam) and lam >= 0.0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    lam_term = np.full(n_frames, lam * (1.0 - g))
    powers = decay_powers(g)
    pool_value = np.empty(n_frames + 1)
    pool_weight = np.empty(n_frames + 1)
    pool_start = np.empty(n_frames + 1, dtype=np.int64)
    c = np.empty(n_frames)
    s = np.empty(n_frames)
    _oasis_ar1_kernel(
        trace, powers, math.log(g), s_min_t, lam_term, pool_value, pool_weight, pool_start, c, s
    )
    return c, s


def _per_frame(name: str, value: float | np.ndarray, n_frames: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(n_frames, float(array))
    if array.shape != (n_frames,):
        raise ValueError(f"{name} must be a number or have shape ({n_frames},), got {array.shape}")
    if not (np.isfinite(array).all() and (array >= 0.0).all()):
        raise ValueError(f"{name} must be finite and >= 0")
    return np.ascontiguousarray(array)


# --------------------------------------------------------------------------- online

# per-ROI integer state, columns of OnlineOasis._state
_HEAD = 0  # ring slot of the oldest retained pool
_COUNT = 1  # pools retained
_FIRST_RETAINED = 2  # 1 while the oldest retained pool is the trace's first pool
_DROPPED = 3  # 1 once a pool was dropped from the ring
_TRUNCATED = 4  # merges that needed a dropped pool (online may differ from batch since)
_N_STATE = 5
# per-ROI float state, columns of OnlineOasis._dropped_end
_DROPPED_RAW = 0  # unclipped value of the last dropped pool, decayed to the next pool's start
_DROPPED_CLIPPED = 1  # its clipped value decayed likewise (g times c just before that start)


@numba.njit(cache=True, nogil=True)
def _online_update(
    y_row: np.ndarray,
    offset: np.ndarray,
    t: int,
    powers: np.ndarray,
    log_g: float,
    s_min: np.ndarray,
    lam_term: np.ndarray,
    spike_lag: int,
    pool_value: np.ndarray,
    pool_weight: np.ndarray,
    pool_start: np.ndarray,
    pool_s_min: np.ndarray,
    state: np.ndarray,
    dropped_end: np.ndarray,
    nan_ring: np.ndarray,
    calcium_out: np.ndarray,
    spikes_out: np.ndarray,
) -> None:
    """Advance every ROI's OASIS state by frame t (sample y_row[r] - offset[r]); write outputs."""
    n_rois, capacity = pool_value.shape
    nan_slot = t % nan_ring.shape[1]
    for r in range(n_rois):
        x = np.float64(y_row[r]) - offset[r]
        nan_ring[r, nan_slot] = math.isnan(x)
        if not math.isnan(x):
            head = state[r, _HEAD]
            count = state[r, _COUNT]
            if count == capacity:  # drop the oldest pool, remember its end value
                nxt = head + 1 if head + 1 < capacity else 0
                length = pool_start[r, nxt] - pool_start[r, head]
                decay = _power(powers, log_g, length)
                raw = pool_value[r, head] / pool_weight[r, head]
                dropped_end[r, _DROPPED_RAW] = raw * decay
                dropped_end[r, _DROPPED_CLIPPED] = _clipped(raw, pool_s_min[r, head]) * decay
                head = nxt
                count -= 1
                state[r, _FIRST_RETAINED] = 0
                state[r, _DROPPED] = 1
            slot = head + count
            if slot >= capacity:
                slot -= capacity
            pool_value[r, slot] = x - lam_term[r]
            pool_weight[r, slot] = 1.0
            pool_start[r, slot] = t
            pool_s_min[r, slot] = s_min[r]
            count += 1
            while count > 1:
                i = head + count - 1
                if i >= capacity:
                    i -= capacity
                p = i - 1 if i > 0 else capacity - 1
                length = pool_start[r, i] - pool_start[r, p]
                decay = _power(powers, log_g, length)
                if (
                    pool_value[r, p] / pool_weight[r, p] * decay + s_min[r]
                    > pool_value[r, i] / pool_weight[r, i]
                ):
                    pool_value[r, p] += pool_value[r, i] * decay
                    pool_weight[r, p] += pool_weight[r, i] * _power(powers, log_g, 2 * length)
                    count -= 1
                else:
                    break
            if count == 1 and state[r, _DROPPED] == 1:
                if (
                    dropped_end[r, _DROPPED_RAW] + s_min[r]
                    > pool_value[r, head] / pool_weight[r, head]
                ):
                    state[r, _TRUNCATED] += 1
            state[r, _HEAD] = head
            state[r, _COUNT] = count
        _online_outputs(
            r, t, spike_lag, powers, log_g, pool_value, pool_weight, pool_start, pool_s_min,
            state, dropped_end, nan_ring, calcium_out, spikes_out,
        )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _online_outputs(
    r: int,
    t: int,
    spike_lag: int,
    powers: np.ndarray,
    log_g: float,
    pool_value: np.ndarray,
    pool_weight: np.ndarray,
    pool_start: np.ndarray,
    pool_s_min: np.ndarray,
    state: np.ndarray,
    dropped_end: np.ndarray,
    nan_ring: np.ndarray,
    calcium_out: np.ndarray,
    spikes_out: np.ndarray,
) -> None:
    """c at frame t and s at frame t - spike_lag of ROI r under the current pools."""
    capacity = pool_value.shape[1]
    head = state[r, _HEAD]
    count = state[r, _COUNT]
    if count == 0:
        calcium_out[r] = np.nan
        spikes_out[r] = np.nan
        return
    last = head + count - 1
    if last >= capacity:
        last -= capacity
    if nan_ring[r, t % nan_ring.shape[1]]:
        calcium_out[r] = np.nan
    else:
        value = _clipped(pool_value[r, last] / pool_weight[r, last], pool_s_min[r, last])
        calcium_out[r] = value * _power(powers, log_g, t - pool_start[r, last])
    # spikes at frame u = t - lag: nonzero only where a pool starts
    u = t - spike_lag
    if u < pool_start[r, head] and state[r, _FIRST_RETAINED] == 1:
        spikes_out[r] = np.nan  # before the first data frame
        return
    if nan_ring[r, u % nan_ring.shape[1]]:
        spikes_out[r] = np.nan  # frame u carried no data
        return
    k = count - 1
    j = last
    while k > 0 and pool_start[r, j] > u:
        j = j - 1 if j > 0 else capacity - 1
        k -= 1
    if pool_start[r, j] != u:
        spikes_out[r] = 0.0
        return
    value = _clipped(pool_value[r, j] / pool_weight[r, j], pool_s_min[r, j])
    if k == 0:  # the oldest retained pool: c before it is 0 or the last dropped pool's decay
        previous_end = dropped_end[r, _DROPPED_CLIPPED]
    else:
        p = j - 1 if j > 0 else capacity - 1
        previous = _clipped(pool_value[r, p] / pool_weight[r, p], pool_s_min[r, p])
        previous_end = previous * _power(powers, log_g, pool_start[r, j] - pool_start[r, p])
    spikes_out[r] = value - previous_end


@numba.njit(cache=True, nogil=True)
def _from_noise_level(
    noise_level: np.ndarray,
    sd_scale: float,
    s_min_factor: float,
    offset_factor: float,
    set_offset: bool,
    s_min: np.ndarray,
    offset: np.ndarray,
) -> None:
    """s_min = s_min_factor * sigma and (if set_offset) offset = offset_factor * sigma, with
    sigma = sd_scale * nu, for every ROI with a finite noise level (others keep theirs)."""
    for r in range(s_min.shape[0]):
        nu = noise_level[r]
        if math.isfinite(nu):
            sigma = sd_scale * nu
            s_min[r] = s_min_factor * sigma
            if set_offset:
                offset[r] = offset_factor * sigma


class _OnlineSolver:
    """What the online AR(1) and AR(2) solvers share: argument checks, per-ROI s_min and offset,
    the lag ring, reset, s_min from the noise level, and the frame-input checks. A subclass sets
    its model constants, ``_lam_term``, its pool arrays, ``_state`` and ``_dropped_end``, and
    provides ``_pooled_spike_sd_factor()`` and ``_advance(y_row)`` (its numba kernel)."""

    _state: np.ndarray
    _dropped_end: np.ndarray

    def _init_common(
        self,
        n_rois: int,
        s_min: float | np.ndarray,
        lam: float | np.ndarray,
        spike_lag_frames: int,
        pool_capacity: int,
    ) -> None:
        if isinstance(n_rois, bool) or not isinstance(n_rois, (int, np.integer)) or n_rois < 0:
            raise ValueError(f"n_rois must be an integer >= 0, got {n_rois!r}")
        self.n_rois = int(n_rois)
        if (
            isinstance(spike_lag_frames, bool)
            or not isinstance(spike_lag_frames, (int, np.integer))
            or spike_lag_frames < 0
        ):
            raise ValueError(f"spike_lag_frames must be an integer >= 0, got {spike_lag_frames!r}")
        self.spike_lag_frames = int(spike_lag_frames)
        if (
            isinstance(pool_capacity, bool)
            or not isinstance(pool_capacity, (int, np.integer))
            or pool_capacity < self.spike_lag_frames + 2
        ):
            raise ValueError(
                f"pool_capacity must be an integer >= spike_lag_frames + 2 = "
                f"{self.spike_lag_frames + 2}, got {pool_capacity!r}"
            )
        self.pool_capacity = int(pool_capacity)
        self.s_min = np.zeros(self.n_rois, dtype=np.float64)
        self.set_s_min(s_min)
        self.offset = np.zeros(self.n_rois, dtype=np.float64)
        lam_array = np.broadcast_to(np.asarray(lam, dtype=np.float64), (self.n_rois,))
        if not (np.isfinite(lam_array).all() and (lam_array >= 0.0).all()):
            raise ValueError(f"lam must be finite and >= 0, got {lam!r}")
        self.lam = lam_array.copy()
        self._state = np.zeros((self.n_rois, _N_STATE), dtype=np.int64)
        self._nan_ring = np.zeros((self.n_rois, self.spike_lag_frames + 1), dtype=np.bool_)
        self.calcium = np.full(self.n_rois, np.nan, dtype=np.float32)
        self.spikes = np.full(self.n_rois, np.nan, dtype=np.float32)
        self.frames_seen = 0

    def reset(self) -> None:
        """Forget every trace (e.g. after new ROIs or a baseline jump); keeps the parameters."""
        self._state[:] = 0
        self._state[:, _FIRST_RETAINED] = 1
        self._dropped_end[:] = 0.0
        self._nan_ring[:] = False
        self.calcium[:] = np.nan
        self.spikes[:] = np.nan
        self.frames_seen = 0

    def set_s_min(self, s_min: float | np.ndarray) -> None:
        """Minimal spike size per ROI from the next frame on (a number or shape (n_rois,)).
        NaN (e.g. a noise level not known yet) is not allowed: pass 0 or a default."""
        values = np.broadcast_to(np.asarray(s_min, dtype=np.float64), (self.n_rois,))
        if not (np.isfinite(values).all() and (values >= 0.0).all()):
            raise ValueError(f"s_min must be finite and >= 0 for every ROI, got {s_min!r}")
        self.s_min[:] = values

    def _pooled_spike_sd_factor(self) -> float:  # pragma: no cover - defined by each model
        raise NotImplementedError

    def set_noise_level(
        self,
        noise_level: np.ndarray,
        frame_rate_hz: float,
        n_sds: float = DEFAULT_S_MIN_SDS,
        percentile: float | None = None,
    ) -> None:
        """From CASCADE noise levels (n_rois,) (% / sqrt(s)): s_min = n_sds SDs of a pooled
        spike estimate (``minimum_spike_size`` / ``minimum_spike_size_ar2``) and, if
        ``percentile`` (of the dF/F baseline) is given, offset = ``resting_dff_offset``. ROIs
        whose noise level is NaN (not known yet) keep their values. No allocation."""
        if noise_level.shape != (self.n_rois,):
            raise ValueError(
                f"noise_level must have shape ({self.n_rois},), got {noise_level.shape}"
            )
        sd_scale = float(frame_noise_sd(1.0, frame_rate_hz))
        s_min_factor = float(n_sds) * self._pooled_spike_sd_factor()
        if not (math.isfinite(s_min_factor) and s_min_factor >= 0.0):
            raise ValueError(f"n_sds must be a finite number >= 0, got {n_sds!r}")
        offset_factor = 0.0 if percentile is None else _resting_offset_sds(percentile)
        _from_noise_level(
            noise_level, sd_scale, s_min_factor, offset_factor, percentile is not None,
            self.s_min, self.offset,
        )  # fmt: skip

    @property
    def truncated(self) -> np.ndarray:
        """Per ROI, frames on which a merge needed a pool dropped from the ring (0 = exact)."""
        return self._state[:, _TRUNCATED].copy()

    def _advance(self, y_row: np.ndarray) -> None:  # pragma: no cover - defined by each model
        raise NotImplementedError

    def update(self, y_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add one frame (float32 or float64, shape (n_rois,); NaN = no data); ``offset`` is
        subtracted first. Returns (calcium, spikes), updated in place."""
        if not isinstance(y_row, np.ndarray) or y_row.shape != (self.n_rois,):
            raise ValueError(
                f"y_row must be a numpy array of shape ({self.n_rois},), got "
                f"{getattr(y_row, 'shape', type(y_row).__name__)}"
            )
        if y_row.dtype not in (np.float32, np.float64):
            raise ValueError(f"y_row must be float32 or float64, got {y_row.dtype}")
        self._advance(y_row)
        self.frames_seen += 1
        return self.calcium, self.spikes

    def _retained_slots(self, roi: int) -> list[int]:
        """Ring slots of ROI ``roi``'s retained pools, oldest first (checks roi)."""
        if not 0 <= roi < self.n_rois:
            raise ValueError(f"roi must be in 0..{self.n_rois - 1}, got {roi!r}")
        head, count = int(self._state[roi, _HEAD]), int(self._state[roi, _COUNT])
        return [(head + k) % self.pool_capacity for k in range(count)]


class OnlineOasis(_OnlineSolver):
    """OASIS AR(1) for every ROI, advanced one frame per ``update`` (see the module docstring).

    After ``update(y_row)`` for frames 0..t of a trace y (one value per ROI and frame):

    - ``calcium[r]`` equals ``oasis_ar1(y[: t + 1, r], ...)[0][t]``: the denoised calcium at
      the newest frame (causal, for closed-loop use);
    - ``spikes[r]`` equals ``oasis_ar1(y[: t + 1, r], ...)[1][t - spike_lag_frames]``: the spike
      estimate ``spike_lag_frames`` frames back. A new pool at the newest frame is often merged
      back when the next frames arrive, so a lag of a few frames (~ the rise plus one decay
      time) gives estimates that rarely change later; lag 0 is the filtered estimate;
    - ``solution(r)`` returns (c, s) of ROI r over the retained pools, equal to the batch
      solution on the same frames.

    Equalities are exact (same arithmetic) while ``truncated[r]`` is 0 (see the module doc).

    Per-ROI ``s_min`` and ``offset`` (subtracted from every sample: the resting dF/F of a
    percentile baseline, ``resting_dff_offset``) may change between frames, e.g. from the online
    noise level with ``set_noise_level`` once per frame; the batch solver then needs the same
    per-frame s_min and offset-corrected trace to agree exactly. State: pool_capacity pools per
    ROI (32 bytes each), allocated once; ``update`` and ``set_noise_level`` do not allocate.
    """

    def __init__(
        self,
        n_rois: int,
        g: float,
        s_min: float | np.ndarray = 0.0,
        lam: float | np.ndarray = 0.0,
        spike_lag_frames: int = 0,
        pool_capacity: int = DEFAULT_POOL_CAPACITY,
    ) -> None:
        self.g = _check_g(g)
        self._init_common(n_rois, s_min, lam, spike_lag_frames, pool_capacity)
        self._lam_term = self.lam * (1.0 - self.g)
        self._powers = decay_powers(self.g)
        self._log_g = math.log(self.g)
        shape = (self.n_rois, self.pool_capacity)
        self._pool_value = np.zeros(shape, dtype=np.float64)
        self._pool_weight = np.ones(shape, dtype=np.float64)
        self._pool_start = np.zeros(shape, dtype=np.int64)
        self._pool_s_min = np.zeros(shape, dtype=np.float64)
        self._dropped_end = np.zeros((self.n_rois, 2), dtype=np.float64)
        self.reset()

    def _pooled_spike_sd_factor(self) -> float:
        return math.sqrt(1.0 - self.g * self.g)

    def _advance(self, y_row: np.ndarray) -> None:
        _online_update(
            y_row, self.offset, self.frames_seen, self._powers, self._log_g, self.s_min,
            self._lam_term, self.spike_lag_frames, self._pool_value, self._pool_weight,
            self._pool_start, self._pool_s_min, self._state, self._dropped_end, self._nan_ring,
            self.calcium, self.spikes,
        )  # fmt: skip

    def solution(self, roi: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(first_frame, c, s) of ROI ``roi`` from the start of its oldest retained pool to the
        newest frame, under the current pools (float64; frames without data hold the model's
        values, as in the batch solution). Equals the batch solution of the whole trace on those
        frames while ``truncated[roi]`` is 0. Allocates: for tests and replays, not per frame."""
        slots = self._retained_slots(roi)
        count = len(slots)
        t_end = self.frames_seen
        if count == 0:
            return t_end, np.zeros(0), np.zeros(0)
        first_frame = int(self._pool_start[roi, slots[0]])
        n = t_end - first_frame
        c = np.empty(n)
        s = np.zeros(n)
        previous_end = float(self._dropped_end[roi, _DROPPED_CLIPPED])
        for k, slot in enumerate(slots):
            start = int(self._pool_start[roi, slot]) - first_frame
            stop = (int(self._pool_start[roi, slots[k + 1]]) - first_frame) if k + 1 < count else n
            value = _clipped(
                self._pool_value[roi, slot] / self._pool_weight[roi, slot],
                self._pool_s_min[roi, slot],
            )
            for i in range(stop - start):
                c[start + i] = value * _power(self._powers, self._log_g, i)
            s[start] = value - previous_end
            previous_end = value * _power(self._powers, self._log_g, stop - start)
        return first_frame, c, s


# =========================================================================== AR(2)
#
# OASIS for an AR(2) indicator (Friedrich, Zhou & Paninski 2017, section "AR(2)"; the reference
# implementation is oasis-deconv's oasisAR2). The calcium follows
#
#     c_t = g1 c_{t-1} + g2 c_{t-2} + s_t,   g1 = d + r,  g2 = -d r,
#
# d = exp(-1 / (decay_tau_s f)), r = exp(-1 / (rise_tau_s f)) (the roots of z^2 = g1 z + g2), so a
# spike's impulse response h_k = (d^(k+1) - r^(k+1)) / (d - r) is the sampled difference of
# exponentials of the indicator (rise and decay). A pool i starting at frame t_i with first value
# v_i continues as c_{t_i + k} = v_i h_k + w_i g2 h_{k-1} (h_{-1} = 0), where w_i = c_{t_i - 1} is
# the last value of the previous pool (0 for the trace's first pool: the calcium starts from rest).
# v_i is the least-squares fit over the pool's data frames:
#
#     v_i = (sum_k h_k y'_k - w_i g2 sum_k h_k h_{k-1}) / sum_k h_k^2.
#
# oasis-deconv recomputes these dot products over the pool's samples at every merge (cost grows
# with the pool length, and the samples must be kept). Here h_k is split into its two exponentials,
# so every sum is a combination of five per-pool sums, A = sum d^k y', B = sum r^k y',
# P = sum d^2k, Q = sum (d r)^k, R = sum r^2k (over the pool's data frames, k from its start), and
# merging pool j into pool i (L frames earlier) is O(1): A_i += d^L A_j, B_i += r^L B_j,
# P_i += d^2L P_j, Q_i += (d r)^L Q_j, R_i += r^2L R_j. NaN frames add nothing to the sums (they
# carry no data). The merge rule is OASIS's: the new pool merges back while the previous pool's
# continuation at the new pool's start plus s_min exceeds the new pool's first value (a spike
# below s_min). The trace's first pool (no predecessor) is clipped to 0 when its value is below
# s_min (as in the AR(1) solver; oasis-deconv instead fits a pure decay to its first pool and
# clips at 0): the clipped value is the one later pools continue from, so c = K s holds exactly.
# Spike units: s_t is the innovation of the AR(2) process; one indicator spike of peak dF/F A gives
# s ~ A / max_k h_k at the sample after it (max h_k = 1.04 at 30 Hz for 20 / 200 ms).


def ar2_coefficients(
    decay_tau_s: float, rise_tau_s: float, frame_rate_hz: float
) -> tuple[float, float]:
    """(g1, g2) = (d + r, -d r) of the AR(2) process whose impulse response is the difference of
    exponentials with the given decay and rise time constants sampled at frame_rate_hz
    (d = exp(-1 / (decay_tau_s f)), r = exp(-1 / (rise_tau_s f))). GCaMP6f (rise 20 ms, decay
    0.2 s, Chen et al. 2013) at 30 Hz: g1 = 1.035, g2 = -0.160."""
    rise_tau_s = float(rise_tau_s)
    if not (math.isfinite(rise_tau_s) and rise_tau_s > 0.0):
        raise ValueError(f"rise_tau_s must be a finite number > 0, got {rise_tau_s!r}")
    decay = ar1_decay_factor(decay_tau_s, frame_rate_hz)
    if not float(decay_tau_s) > rise_tau_s:
        raise ValueError(
            f"decay_tau_s ({decay_tau_s!r} s) must exceed rise_tau_s ({rise_tau_s!r} s)"
        )
    rise = math.exp(-1.0 / (rise_tau_s * float(frame_rate_hz)))
    return decay + rise, -decay * rise


def ar2_roots(g1: float, g2: float) -> tuple[float, float]:
    """(d, r), the decay and rise factors per frame: the roots of z^2 = g1 z + g2. They must be
    real and 0 <= r < d < 1 (a rising then decaying, never oscillating response)."""
    g1, g2 = float(g1), float(g2)
    discriminant = g1 * g1 + 4.0 * g2
    if not (math.isfinite(g1) and math.isfinite(g2) and discriminant > 0.0):
        raise ValueError(
            f"AR(2) coefficients g1 = {g1!r}, g2 = {g2!r} must be finite with g1^2 + 4 g2 > 0 "
            "(real roots); use ar2_coefficients(decay_tau_s, rise_tau_s, frame_rate_hz)"
        )
    d = (g1 + math.sqrt(discriminant)) / 2.0
    r = (g1 - math.sqrt(discriminant)) / 2.0
    if not (0.0 < d < 1.0 and 0.0 <= r < d):
        raise ValueError(
            f"AR(2) coefficients g1 = {g1!r}, g2 = {g2!r} give roots d = {d:.6g}, r = {r:.6g}; "
            "need 0 <= r < d < 1 (decay slower than rise, both decaying)"
        )
    return d, r


def ar2_impulse_response(g1: float, g2: float, n_frames: int) -> np.ndarray:
    """h_k = (d^(k+1) - r^(k+1)) / (d - r), k = 0..n_frames-1: c for a unit spike at frame 0."""
    d, r = ar2_roots(g1, g2)
    k = np.arange(1, int(n_frames) + 1, dtype=np.float64)
    return (d**k - r**k) / (d - r)


def ar2_pooled_spike_sd_factor(g1: float, g2: float) -> float:
    """1 / sqrt(sum_k h_k^2): the SD of a spike amplitude fitted from a long pool, per unit of
    per-frame noise SD (for AR(1), h_k = g^k, this is sqrt(1 - g^2), as in minimum_spike_size)."""
    d, r = ar2_roots(g1, g2)
    # sum_{k>=0} (d^(k+1) - r^(k+1))^2 / (d - r)^2, three geometric series
    energy = (d * d / (1.0 - d * d) - 2.0 * d * r / (1.0 - d * r) + r * r / (1.0 - r * r)) / (
        (d - r) ** 2
    )
    return 1.0 / math.sqrt(energy)


def minimum_spike_size_ar2(
    noise_level: float | np.ndarray,
    frame_rate_hz: float,
    g1: float,
    g2: float,
    n_sds: float = DEFAULT_S_MIN_SDS,
) -> np.ndarray | float:
    """s_min = n_sds * sigma / sqrt(sum_k h_k^2) for the AR(2) model (see minimum_spike_size)."""
    n_sds = float(n_sds)
    if not (math.isfinite(n_sds) and n_sds >= 0.0):
        raise ValueError(f"n_sds must be a finite number >= 0, got {n_sds!r}")
    return n_sds * frame_noise_sd(noise_level, frame_rate_hz) * ar2_pooled_spike_sd_factor(g1, g2)


def _ar2_powers(g1: float, g2: float) -> tuple[float, float, np.ndarray, np.ndarray]:
    d, r = ar2_roots(g1, g2)
    rise_powers = decay_powers(r) if r > 0.0 else np.array([1.0, 0.0])
    return d, r, decay_powers(d), rise_powers


@numba.njit(cache=True, nogil=True)
def _rise_power(powers: np.ndarray, log_r: float, k: int) -> float:
    """r^k from the table, beyond it exp(k log r) (0 when r = 0, k > 0)."""
    if k < powers.shape[0]:
        return powers[k]
    if log_r == -np.inf:
        return 0.0
    return math.exp(k * log_r)


@numba.njit(cache=True, nogil=True)
def _impulse(
    d_powers: np.ndarray, log_d: float, r_powers: np.ndarray, log_r: float, inv_dr: float, k: int
) -> float:
    """h_k = (d^(k+1) - r^(k+1)) / (d - r); 0 for k < 0."""
    if k < 0:
        return 0.0
    return (_power(d_powers, log_d, k + 1) - _rise_power(r_powers, log_r, k + 1)) * inv_dr


@numba.njit(cache=True, nogil=True)
def _continuation(
    v: float,
    w: float,
    k: int,
    g2: float,
    d_powers: np.ndarray,
    log_d: float,
    r_powers: np.ndarray,
    log_r: float,
    inv_dr: float,
) -> float:
    """c at offset k of a pool with first value v after a previous value w: v h_k + w g2 h_{k-1}."""
    return v * _impulse(d_powers, log_d, r_powers, log_r, inv_dr, k) + w * g2 * _impulse(
        d_powers, log_d, r_powers, log_r, inv_dr, k - 1
    )


@numba.njit(cache=True, nogil=True)
def _ar2_fit(
    a: float, b: float, p: float, q: float, rr: float, w: float, d: float, r: float, g2: float,
    inv_dr: float,
) -> float:  # fmt: skip
    """Least-squares first value of a pool from its sums (see the AR(2) notes above)."""
    h_y = (d * a - r * b) * inv_dr
    h_h1 = g2 * (d * p - (d + r) * q + r * rr) * inv_dr * inv_dr
    h_h = (d * d * p - 2.0 * d * r * q + r * r * rr) * inv_dr * inv_dr
    return (h_y - w * h_h1) / h_h


# pool fields, last axis of the pool arrays
_A, _B, _P, _Q, _R, _V, _W = 0, 1, 2, 3, 4, 5, 6
_N_FIELDS = 7


@numba.njit(cache=True, nogil=True)
def _ar2_merge_into(
    pools: np.ndarray,
    p: int,
    i: int,
    length: int,
    d_powers: np.ndarray,
    log_d: float,
    r_powers: np.ndarray,
    log_r: float,
) -> None:
    """Add pool i's sums to pool p, which starts ``length`` frames earlier."""
    dl = _power(d_powers, log_d, length)
    rl = _rise_power(r_powers, log_r, length)
    pools[p, _A] += dl * pools[i, _A]
    pools[p, _B] += rl * pools[i, _B]
    pools[p, _P] += _power(d_powers, log_d, 2 * length) * pools[i, _P]
    pools[p, _Q] += dl * rl * pools[i, _Q]
    pools[p, _R] += _rise_power(r_powers, log_r, 2 * length) * pools[i, _R]


@numba.njit(cache=True, nogil=True)
def _ar2_new_pool(pools: np.ndarray, i: int, x: float, w: float) -> None:
    pools[i, _A] = x
    pools[i, _B] = x
    pools[i, _P] = 1.0
    pools[i, _Q] = 1.0
    pools[i, _R] = 1.0
    pools[i, _W] = w


@numba.njit(cache=True, nogil=True)
def _ar2_refit(
    pools: np.ndarray, i: int, first: bool, s_min: float, d: float, r: float, g2: float,
    inv_dr: float,
) -> None:  # fmt: skip
    """Refit pool i's first value; the trace's first pool is clipped (see the notes above)."""
    v = _ar2_fit(
        pools[i, _A], pools[i, _B], pools[i, _P], pools[i, _Q], pools[i, _R], pools[i, _W],
        d, r, g2, inv_dr,
    )  # fmt: skip
    pools[i, _V] = _clipped(v, s_min) if first else v


@numba.njit(cache=True, nogil=True)
def _oasis_ar2_kernel(
    y: np.ndarray,
    g2: float,
    d: float,
    r: float,
    d_powers: np.ndarray,
    log_d: float,
    r_powers: np.ndarray,
    log_r: float,
    s_min: np.ndarray,
    lam_term: float,
    pools: np.ndarray,
    pool_start: np.ndarray,
    c: np.ndarray,
    s: np.ndarray,
) -> int:
    """AR(2) OASIS on the whole trace y; writes c and s, returns the number of pools."""
    inv_dr = 1.0 / (d - r)
    n_frames = y.shape[0]
    n_pools = 0
    for t in range(n_frames):
        x = y[t]
        if math.isnan(x):
            continue
        w = 0.0
        if n_pools > 0:
            last = n_pools - 1
            w = _continuation(
                pools[last, _V], pools[last, _W], t - 1 - pool_start[last], g2,
                d_powers, log_d, r_powers, log_r, inv_dr,
            )  # fmt: skip
        _ar2_new_pool(pools, n_pools, x - lam_term, w)
        pool_start[n_pools] = t
        _ar2_refit(pools, n_pools, n_pools == 0, s_min[t], d, r, g2, inv_dr)
        n_pools += 1
        while n_pools > 1:
            i = n_pools - 1
            p = i - 1
            length = pool_start[i] - pool_start[p]
            predicted = _continuation(
                pools[p, _V], pools[p, _W], length, g2, d_powers, log_d, r_powers, log_r, inv_dr
            )
            if predicted + s_min[t] > pools[i, _V]:
                _ar2_merge_into(pools, p, i, length, d_powers, log_d, r_powers, log_r)
                _ar2_refit(pools, p, p == 0, s_min[t], d, r, g2, inv_dr)
                n_pools -= 1
            else:
                break
    for t in range(n_frames):
        c[t] = np.nan
        s[t] = np.nan
    predicted = 0.0  # the calcium from rest before the first pool
    for j in range(n_pools):
        start = pool_start[j]
        stop = pool_start[j + 1] if j + 1 < n_pools else n_frames
        v, w = pools[j, _V], pools[j, _W]
        for k in range(stop - start):
            c[start + k] = _continuation(v, w, k, g2, d_powers, log_d, r_powers, log_r, inv_dr)
            s[start + k] = 0.0
        s[start] = v - predicted
        predicted = _continuation(v, w, stop - start, g2, d_powers, log_d, r_powers, log_r, inv_dr)
    return n_pools


def oasis_ar2(
    y: np.ndarray,
    g1: float,
    g2: float,
    s_min: float | np.ndarray = 0.0,
    lam: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Batch OASIS for an AR(2) indicator: (denoised calcium c, spikes s), float64 of y's length.

    y: 1-D baseline-free trace, NaN = no data. (g1, g2): ``ar2_coefficients``. s_min: minimal
    spike size (a number or one per frame, as online). lam: L1 penalty, applied as OASIS does,
    y' = y - lam (1 - g1 - g2). c = K s exactly up to rounding, K the AR(2) kernel from rest.
    """
    d, r, d_powers, r_powers = _ar2_powers(g1, g2)
    trace = np.ascontiguousarray(y, dtype=np.float64)
    if trace.ndim != 1:
        raise ValueError(f"y must be a 1-D trace, got shape {trace.shape}")
    if np.isinf(trace).any():
        raise ValueError("y contains +/-inf; use NaN to mark frames without data")
    n_frames = trace.shape[0]
    s_min_t = _per_frame("s_min", s_min, n_frames)
    lam = float(lam)
    if not (math.isfinite(lam) and lam >= 0.0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    pools = np.empty((n_frames + 1, _N_FIELDS))
    pool_start = np.empty(n_frames + 1, dtype=np.int64)
    c = np.empty(n_frames)
    s = np.empty(n_frames)
    _oasis_ar2_kernel(
        trace, -d * r, d, r, d_powers, math.log(d), r_powers, _log_or_minus_inf(r), s_min_t,
        lam * (1.0 - d) * (1.0 - r), pools, pool_start, c, s,
    )  # fmt: skip
    return c, s


def _log_or_minus_inf(x: float) -> float:
    return math.log(x) if x > 0.0 else -math.inf


@numba.njit(cache=True, nogil=True)
def _online_ar2_update(
    y_row: np.ndarray,
    offset: np.ndarray,
    t: int,
    g2: float,
    d: float,
    r: float,
    d_powers: np.ndarray,
    log_d: float,
    r_powers: np.ndarray,
    log_r: float,
    s_min: np.ndarray,
    lam_term: np.ndarray,
    spike_lag: int,
    pools: np.ndarray,
    pool_start: np.ndarray,
    state: np.ndarray,
    dropped_end: np.ndarray,
    nan_ring: np.ndarray,
    calcium_out: np.ndarray,
    spikes_out: np.ndarray,
) -> None:
    """Advance every ROI's AR(2) OASIS state by frame t (same steps as _oasis_ar2_kernel, pools in
    a ring per ROI); write the outputs. dropped_end[r, 0] holds the continuation of the last
    dropped pool at the next pool's start (the calcium the next spike is measured against)."""
    n_rois, capacity = pool_start.shape
    inv_dr = 1.0 / (d - r)
    nan_slot = t % nan_ring.shape[1]
    for roi in range(n_rois):
        x = np.float64(y_row[roi]) - offset[roi]
        nan_ring[roi, nan_slot] = math.isnan(x)
        roi_pools = pools[roi]
        starts = pool_start[roi]
        if not math.isnan(x):
            head = state[roi, _HEAD]
            count = state[roi, _COUNT]
            if count == capacity:  # drop the oldest pool, remember where it was heading
                nxt = head + 1 if head + 1 < capacity else 0
                dropped_end[roi, 0] = _continuation(
                    roi_pools[head, _V], roi_pools[head, _W], starts[nxt] - starts[head], g2,
                    d_powers, log_d, r_powers, log_r, inv_dr,
                )  # fmt: skip
                head = nxt
                count -= 1
                state[roi, _FIRST_RETAINED] = 0
                state[roi, _DROPPED] = 1
            w = 0.0
            if count > 0:
                last = head + count - 1
                if last >= capacity:
                    last -= capacity
                w = _continuation(
                    roi_pools[last, _V], roi_pools[last, _W], t - 1 - starts[last], g2,
                    d_powers, log_d, r_powers, log_r, inv_dr,
                )  # fmt: skip
            slot = head + count
            if slot >= capacity:
                slot -= capacity
            _ar2_new_pool(roi_pools, slot, x - lam_term[roi], w)
            starts[slot] = t
            first = count == 0 and state[roi, _FIRST_RETAINED] == 1
            _ar2_refit(roi_pools, slot, first, s_min[roi], d, r, g2, inv_dr)
            count += 1
            while count > 1:
                i = head + count - 1
                if i >= capacity:
                    i -= capacity
                p = i - 1 if i > 0 else capacity - 1
                length = starts[i] - starts[p]
                predicted = _continuation(
                    roi_pools[p, _V], roi_pools[p, _W], length, g2,
                    d_powers, log_d, r_powers, log_r, inv_dr,
                )  # fmt: skip
                if predicted + s_min[roi] > roi_pools[i, _V]:
                    _ar2_merge_into(roi_pools, p, i, length, d_powers, log_d, r_powers, log_r)
                    first = count == 2 and state[roi, _FIRST_RETAINED] == 1
                    _ar2_refit(roi_pools, p, first, s_min[roi], d, r, g2, inv_dr)
                    count -= 1
                else:
                    break
            if count == 1 and state[roi, _DROPPED] == 1:
                if dropped_end[roi, 0] + s_min[roi] > roi_pools[head, _V]:
                    state[roi, _TRUNCATED] += 1
            state[roi, _HEAD] = head
            state[roi, _COUNT] = count
        _online_ar2_outputs(
            roi, t, spike_lag, g2, d_powers, log_d, r_powers, log_r, inv_dr, roi_pools, starts,
            state, dropped_end, nan_ring, calcium_out, spikes_out,
        )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _online_ar2_outputs(
    roi: int,
    t: int,
    spike_lag: int,
    g2: float,
    d_powers: np.ndarray,
    log_d: float,
    r_powers: np.ndarray,
    log_r: float,
    inv_dr: float,
    roi_pools: np.ndarray,
    starts: np.ndarray,
    state: np.ndarray,
    dropped_end: np.ndarray,
    nan_ring: np.ndarray,
    calcium_out: np.ndarray,
    spikes_out: np.ndarray,
) -> None:
    """c at frame t and s at frame t - spike_lag of one ROI under its current pools."""
    capacity = starts.shape[0]
    head = state[roi, _HEAD]
    count = state[roi, _COUNT]
    if count == 0:
        calcium_out[roi] = np.nan
        spikes_out[roi] = np.nan
        return
    last = head + count - 1
    if last >= capacity:
        last -= capacity
    if nan_ring[roi, t % nan_ring.shape[1]]:
        calcium_out[roi] = np.nan
    else:
        calcium_out[roi] = _continuation(
            roi_pools[last, _V], roi_pools[last, _W], t - starts[last], g2,
            d_powers, log_d, r_powers, log_r, inv_dr,
        )  # fmt: skip
    u = t - spike_lag
    if u < starts[head] and state[roi, _FIRST_RETAINED] == 1:
        spikes_out[roi] = np.nan
        return
    if nan_ring[roi, u % nan_ring.shape[1]]:
        spikes_out[roi] = np.nan
        return
    k = count - 1
    j = last
    while k > 0 and starts[j] > u:
        j = j - 1 if j > 0 else capacity - 1
        k -= 1
    if starts[j] != u:
        spikes_out[roi] = 0.0
        return
    if k == 0:  # the oldest retained pool: from rest, or after the last dropped pool
        predicted = dropped_end[roi, 0] if state[roi, _DROPPED] == 1 else 0.0
    else:
        p = j - 1 if j > 0 else capacity - 1
        predicted = _continuation(
            roi_pools[p, _V], roi_pools[p, _W], starts[j] - starts[p], g2,
            d_powers, log_d, r_powers, log_r, inv_dr,
        )  # fmt: skip
    spikes_out[roi] = roi_pools[j, _V] - predicted


class OnlineOasisAR2(_OnlineSolver):
    """OASIS AR(2) for every ROI, advanced one frame per ``update``: the AR(1) ``OnlineOasis``
    with a rise time (see the AR(2) notes above). Same interface and guarantees: after frames
    0..t, ``calcium[r]`` equals ``oasis_ar2(y[: t + 1, r], ...)[0][t]`` and ``spikes[r]`` equals
    its ``[1][t - spike_lag_frames]``, exactly (same arithmetic) while ``truncated[r]`` is 0;
    ``solution(r)`` gives the retained pools' (c, s). State: pool_capacity pools per ROI
    (64 bytes each), allocated once; ``update`` and ``set_noise_level`` do not allocate.
    """

    def __init__(
        self,
        n_rois: int,
        g1: float,
        g2: float,
        s_min: float | np.ndarray = 0.0,
        lam: float | np.ndarray = 0.0,
        spike_lag_frames: int = 0,
        pool_capacity: int = DEFAULT_POOL_CAPACITY,
    ) -> None:
        self.d, self.r, self._d_powers, self._r_powers = _ar2_powers(g1, g2)
        self.g1, self.g2 = self.d + self.r, -self.d * self.r
        self._log_d, self._log_r = math.log(self.d), _log_or_minus_inf(self.r)
        self._init_common(n_rois, s_min, lam, spike_lag_frames, pool_capacity)
        self._lam_term = self.lam * (1.0 - self.d) * (1.0 - self.r)
        self._pools = np.zeros((self.n_rois, self.pool_capacity, _N_FIELDS), dtype=np.float64)
        self._pool_start = np.zeros((self.n_rois, self.pool_capacity), dtype=np.int64)
        self._dropped_end = np.zeros((self.n_rois, 1), dtype=np.float64)
        self.reset()

    def _pooled_spike_sd_factor(self) -> float:
        return ar2_pooled_spike_sd_factor(self.g1, self.g2)

    def _advance(self, y_row: np.ndarray) -> None:
        _online_ar2_update(
            y_row, self.offset, self.frames_seen, self.g2, self.d, self.r, self._d_powers,
            self._log_d, self._r_powers, self._log_r, self.s_min, self._lam_term,
            self.spike_lag_frames, self._pools, self._pool_start, self._state,
            self._dropped_end, self._nan_ring, self.calcium, self.spikes,
        )  # fmt: skip

    def solution(self, roi: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(first_frame, c, s) of ROI ``roi`` over the retained pools (see OnlineOasis.solution).
        Allocates: for tests and replays, not per frame."""
        slots = self._retained_slots(roi)
        count = len(slots)
        t_end = self.frames_seen
        if count == 0:
            return t_end, np.zeros(0), np.zeros(0)
        starts = self._pool_start[roi]
        first_frame = int(starts[slots[0]])
        n = t_end - first_frame
        c = np.empty(n)
        s = np.zeros(n)
        inv_dr = 1.0 / (self.d - self.r)
        args = (self.g2, self._d_powers, self._log_d, self._r_powers, self._log_r, inv_dr)
        predicted = float(self._dropped_end[roi, 0]) if self._state[roi, _DROPPED] else 0.0
        for k, slot in enumerate(slots):
            start = int(starts[slot]) - first_frame
            stop = (int(starts[slots[k + 1]]) - first_frame) if k + 1 < count else n
            v, w = self._pools[roi, slot, _V], self._pools[roi, slot, _W]
            for i in range(stop - start):
                c[start + i] = _continuation(v, w, i, *args)
            s[start] = v - predicted
            predicted = _continuation(v, w, stop - start, *args)
        return first_frame, c, s


DECONVOLUTION_MODELS = ("ar1", "ar2")


def online_deconvolution(
    model: str,
    n_rois: int,
    frame_rate_hz: float,
    decay_tau_s: float,
    rise_tau_s: float,
    spike_lag_frames: int = 0,
    pool_capacity: int = DEFAULT_POOL_CAPACITY,
) -> OnlineOasis | OnlineOasisAR2:
    """The online solver of config ``deconvolution.model``: "ar1" (decay only) or "ar2" (rise and
    decay, ``ar2_coefficients``). Both share update / set_noise_level / calcium / spikes."""
    if model == "ar1":
        return OnlineOasis(
            n_rois, ar1_decay_factor(decay_tau_s, frame_rate_hz),
            spike_lag_frames=spike_lag_frames, pool_capacity=pool_capacity,
        )  # fmt: skip
    if model == "ar2":
        g1, g2 = ar2_coefficients(decay_tau_s, rise_tau_s, frame_rate_hz)
        return OnlineOasisAR2(
            n_rois, g1, g2, spike_lag_frames=spike_lag_frames, pool_capacity=pool_capacity
        )
    raise ValueError(f"deconvolution model must be one of {DECONVOLUTION_MODELS}, got {model!r}")
