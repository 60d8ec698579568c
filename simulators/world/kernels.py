"""Numba kernels of the simulated world: the hot loops, and nothing else.

Every kernel is `njit(cache=True, nogil=True)` so a sampling thread never holds the GIL while
it computes. No kernel draws random numbers: randomness comes in as arrays drawn in bulk from
numpy Generators by the calling classes (numba's own RNG is per thread, hence not
reproducible across threads). The classes that call these (specimen, activity, animal,
world) document the models; the comments here say what each loop computes.
"""

from __future__ import annotations

import math

import numba
import numpy as np

MODEL_POISSON = 0
MODEL_LATENT = 1
MODEL_PLACE = 2

# photon-sampler state vector layout (float64 array of length 4)
PHOTON_REMAINING = 0   # expected count still to accumulate before the next photon
PHOTON_GAP_INDEX = 1   # next unused Exp(1) gap in the gap buffer
PHOTON_PENDING_MU = 2  # expected count left in a sample interrupted by a gap refill (-1: none)
PHOTON_PENDING_COUNT = 3  # photons already counted in that interrupted sample


@numba.njit(cache=True, nogil=True)
def place_somata(candidates_um: np.ndarray, radii_um: np.ndarray, positions_um: np.ndarray,
                 n_placed: int) -> int:
    """Random sequential addition of non-overlapping spheres.

    Cell n_placed gets radius radii_um[n_placed]; each candidate centre is accepted when the
    sphere overlaps no sphere accepted before (centre distance >= r_i + r_j). Returns the new
    number of placed cells (stops when all radii are placed or candidates run out).
    """
    n_total = radii_um.shape[0]
    for c in range(candidates_um.shape[0]):
        if n_placed >= n_total:
            break
        x = candidates_um[c, 0]
        y = candidates_um[c, 1]
        z = candidates_um[c, 2]
        r = radii_um[n_placed]
        free = True
        for j in range(n_placed):
            dx = x - positions_um[j, 0]
            dy = y - positions_um[j, 1]
            dz = z - positions_um[j, 2]
            min_d = r + radii_um[j]
            if dx * dx + dy * dy + dz * dz < min_d * min_d:
                free = False
                break
        if free:
            positions_um[n_placed, 0] = x
            positions_um[n_placed, 1] = y
            positions_um[n_placed, 2] = z
            n_placed += 1
    return n_placed


@numba.njit(cache=True, nogil=True)
def _column_fraction(dz_um: float, half_chord_um: float, inv_sigma_sqrt2: float) -> float:
    """Fraction of a unit-area axial Gaussian (centred 0) inside [dz - h, dz + h]."""
    return 0.5 * (math.erf((dz_um + half_chord_um) * inv_sigma_sqrt2)
                  - math.erf((dz_um - half_chord_um) * inv_sigma_sqrt2))


@numba.njit(cache=True, nogil=True)
def render_cells(z_um: float, positions_um: np.ndarray, radii_um: np.ndarray,
                 nucleus_radii_um: np.ndarray, brightness: np.ndarray,
                 nucleus_brightness_fraction: float, axial_sigma_um: float,
                 x0_um: float, y0_um: float, resolution_um: float,
                 label: np.ndarray, weight: np.ndarray, occupancy: np.ndarray,
                 score: np.ndarray, peak_weight: np.ndarray) -> None:
    """Render every cell's weight in the plane z_um onto the grid (pixel centres).

    weight = integral over the soma column at (x, y) of density x axial Gaussian:
        w = Phi((dz + h)/s) - Phi((dz - h)/s) - (1 - b_n) [Phi((dz + h_n)/s) - Phi((dz - h_n)/s)]
    with dz = z_cell - z_plane, h = sqrt(R^2 - rho^2) the soma half chord, h_n the nucleus
    half chord, b_n the nucleus brightness. occupancy is the same without the nucleus term
    (the fraction of the excitation column inside the soma, where there is no neuropil).
    A pixel is labelled by the cell with the largest brightness * weight. Callers reset
    label to -1 and weight, occupancy, score, peak_weight to 0.
    """
    ny, nx = label.shape
    inv_s = 1.0 / (axial_sigma_um * math.sqrt(2.0))
    reach = 6.0 * axial_sigma_um
    for i in range(radii_um.shape[0]):
        r = radii_um[i]
        dz = positions_um[i, 2] - z_um
        if abs(dz) > r + reach:
            continue
        xc = positions_um[i, 0]
        yc = positions_um[i, 1]
        rn = nucleus_radii_um[i]
        ix0 = max(0, math.floor((xc - r - x0_um) / resolution_um))
        ix1 = min(nx - 1, math.floor((xc + r - x0_um) / resolution_um))
        iy0 = max(0, math.floor((yc - r - y0_um) / resolution_um))
        iy1 = min(ny - 1, math.floor((yc + r - y0_um) / resolution_um))
        for iy in range(iy0, iy1 + 1):
            dy = y0_um + (iy + 0.5) * resolution_um - yc
            for ix in range(ix0, ix1 + 1):
                dx = x0_um + (ix + 0.5) * resolution_um - xc
                rho2 = dx * dx + dy * dy
                if rho2 >= r * r:
                    continue
                occ = _column_fraction(dz, math.sqrt(r * r - rho2), inv_s)
                w = occ
                if rho2 < rn * rn:
                    w -= (1.0 - nucleus_brightness_fraction) * _column_fraction(
                        dz, math.sqrt(rn * rn - rho2), inv_s)
                peak_weight[i] = max(peak_weight[i], w)
                s = w * brightness[i]
                if s > score[iy, ix]:
                    score[iy, ix] = s
                    label[iy, ix] = i
                    weight[iy, ix] = w
                    occupancy[iy, ix] = occ


@numba.njit(cache=True, nogil=True)
def animal_steps(n_steps: int, normals: np.ndarray, uniforms: np.ndarray, rand_row: int,
                 state: np.ndarray, dt_s: float, track_length_m: float,
                 speed_mean_m_per_s: float, speed_sd_m_per_s: float, target_decay: float,
                 speed_response: float, p_stop: float, p_start: float, reward_pause_s: float,
                 position_out: np.ndarray, speed_out: np.ndarray, reward_out: np.ndarray) -> None:
    """Advance the running animal n_steps; state = [position_m, speed, target, running, pause].

    Per step: the target speed follows an exact OU update; running stops with probability
    p_stop, starts with p_start (not during a reward pause); the speed relaxes towards the
    target (running) or 0 (rest); position integrates the speed; at the track end the animal
    is rewarded, teleported to 0 and pauses.
    """
    position = state[0]
    speed = state[1]
    target = state[2]
    running = state[3] > 0.5
    pause_left = state[4]
    noise_scale = speed_sd_m_per_s * math.sqrt(1.0 - target_decay * target_decay)
    for s in range(n_steps):
        target = speed_mean_m_per_s + (target - speed_mean_m_per_s) * target_decay \
            + noise_scale * normals[rand_row + s]
        u = uniforms[rand_row + s]
        if running:
            if u < p_stop:
                running = False
        elif pause_left > 0.0:
            pause_left -= dt_s
        elif u < p_start:
            running = True
        goal = max(target, 0.0) if running else 0.0
        speed += (goal - speed) * speed_response
        position += speed * dt_s
        rewarded = False
        if position >= track_length_m:
            position = 0.0
            running = False
            pause_left = reward_pause_s
            rewarded = True
        position_out[s] = position
        speed_out[s] = speed
        reward_out[s] = rewarded
    state[0] = position
    state[1] = speed
    state[2] = target
    state[3] = 1.0 if running else 0.0
    state[4] = pause_left


@numba.njit(cache=True, nogil=True)
def latent_field_steps(n_steps: int, normals: np.ndarray, rand_row: int, fields: np.ndarray,
                       decay: float, fields_out: np.ndarray) -> None:
    """Exact OU update of unit-variance fields: h <- a h + sqrt(1 - a^2) xi, per step."""
    scale = math.sqrt(1.0 - decay * decay)
    for s in range(n_steps):
        for k in range(fields.shape[0]):
            fields[k] = decay * fields[k] + scale * normals[rand_row + s, k]
            fields_out[s, k] = fields[k]


@numba.njit(cache=True, nogil=True)
def _spike_probability(hazard: float) -> float:
    """1 - exp(-hazard); cubic Taylor series for small hazards (error < hazard^4 / 24)."""
    if hazard < 1e-2:
        return hazard * (1.0 - hazard * (0.5 - hazard / 6.0))
    return -math.expm1(-hazard)


@numba.njit(cache=True, nogil=True)
def _softplus(z: float) -> float:
    """log(1 + exp(z)) without overflow; exp(z) below z = -12 (relative error < 3e-6)."""
    if z < -12.0:
        return math.exp(z) if z > -700.0 else 0.0
    if z > 0.0:
        return z + math.log1p(math.exp(-z))
    return math.log1p(math.exp(z))


@numba.njit(cache=True, nogil=True)
def neuron_steps(n_steps: int, first_step: int, uniforms: np.ndarray, rand_row: int,
                 model: int, dt_s: float, base_rate_hz: np.ndarray, evoked_rate_hz: np.ndarray,
                 latent_coupling: np.ndarray, fields_per_step: np.ndarray, latent_eta: float,
                 latent_eps: float, latent_bin_ratio: float,
                 place_centre_m: np.ndarray, place_inv_2var: float, place_peak_rate_hz: float,
                 running_threshold_m_per_s: float, position_m: np.ndarray,
                 speed_m_per_s: np.ndarray,
                 is_sensory: np.ndarray, is_motor: np.ndarray, coupling_ring: np.ndarray,
                 coupling_state: np.ndarray, coupling_weight_hz: float, coupling_decay: float,
                 coupling_delay_steps: int,
                 calcium_decay: np.ndarray, calcium_rise: np.ndarray, decay_factor: float,
                 rise_factor: float, kernel_norm: float, dff_per_spike: float, dff_max: float,
                 neuropil_gain: float, fluor_out: np.ndarray, out_row: int,
                 neuropil_rel_out: np.ndarray, spike_cells_out: np.ndarray,
                 spike_steps_out: np.ndarray) -> int:
    """Advance every cell n_steps: rates -> spikes -> calcium -> relative fluorescence.

    Per step k (absolute index first_step + s):
    1. coupling drive g <- g * decay + weight * (sensory spikes at step k - delay);
    2. per cell a hazard (expected spikes in the step): (base + evoked [+ g if motor]
       [+ place field if place cell and running]) * dt, plus for the latent model
       (dt / bin) * softplus(eta (J h + eps)); spike if uniform < 1 - exp(-hazard);
    3. calcium: D <- D a_d + spike, R <- R a_r + spike, c = (D - R) * norm (difference of
       exponentials, peak 1); dF/F = x / (1 + x / dff_max), x = dff_per_spike * c;
    4. fluor_out[out_row + s, i] = 1 + dF/F; neuropil 1 + gain * mean dF/F.
    Returns the number of spikes written to spike_cells_out / spike_steps_out.
    """
    n_cells = base_rate_hz.shape[0]
    n_fields = fields_per_step.shape[1]
    ring_len = coupling_ring.shape[0]
    g = coupling_state[0]
    n_spikes = 0
    for s in range(n_steps):
        k = first_step + s
        g = g * coupling_decay + coupling_weight_hz * coupling_ring[(k - coupling_delay_steps)
                                                                    % ring_len]
        running = speed_m_per_s[s] > running_threshold_m_per_s
        x_animal = position_m[s]
        sensory_spikes = 0
        sum_dff = 0.0
        row = rand_row + s
        for i in range(n_cells):
            rate = base_rate_hz[i] + evoked_rate_hz[i]
            if is_motor[i]:
                rate += g
            if model == MODEL_PLACE and running:
                c = place_centre_m[i]
                if not math.isnan(c):  # a place cell
                    d = x_animal - c
                    rate += place_peak_rate_hz * math.exp(-d * d * place_inv_2var)
            hazard = rate * dt_s
            if model == MODEL_LATENT:
                drive = 0.0
                for f in range(n_fields):
                    drive += latent_coupling[i, f] * fields_per_step[s, f]
                hazard += latent_bin_ratio * _softplus(latent_eta * (drive + latent_eps))
            decay_i = calcium_decay[i] * decay_factor
            rise_i = calcium_rise[i] * rise_factor
            if uniforms[row, i] < _spike_probability(hazard):
                decay_i += 1.0
                rise_i += 1.0
                spike_cells_out[n_spikes] = i
                spike_steps_out[n_spikes] = k
                n_spikes += 1
                if is_sensory[i]:
                    sensory_spikes += 1
            calcium_decay[i] = decay_i
            calcium_rise[i] = rise_i
            x = dff_per_spike * (decay_i - rise_i) * kernel_norm
            dff = x / (1.0 + x / dff_max)
            fluor_out[out_row + s, i] = 1.0 + dff
            sum_dff += dff
        coupling_ring[k % ring_len] = sensory_spikes
        neuropil_rel_out[out_row + s] = 1.0 + neuropil_gain * (sum_dff / n_cells
                                                               if n_cells > 0 else 0.0)
    coupling_state[0] = g
    return n_spikes


@numba.njit(cache=True, nogil=True)
def sample_photon_counts(x_um: np.ndarray, y_um: np.ndarray, j_start: int, t0_s: float,
                         sample_dt_s: float, inv_step_s: float, base_step: int, n_rows: int,
                         x0_um: float, y0_um: float, inv_resolution: float, nx: int, ny: int,
                         label: np.ndarray, weight: np.ndarray, neuropil: np.ndarray,
                         cell_mu: np.ndarray, fluor: np.ndarray, neuropil_rel: np.ndarray,
                         motion_x_um: np.ndarray, motion_y_um: np.ndarray,
                         neuropil_mu: float, dark_mu: float, gaps: np.ndarray,
                         state: np.ndarray, out: np.ndarray) -> int:
    """Photon counts of consecutive PMT samples as an inhomogeneous Poisson process.

    Sample j at time t0 + j dt belongs to activity step floor((t0 + j dt) / step) and row
    step - base_step of fluor/neuropil_rel. Its expected count is
        mu_j = cell_mu[c] F[row, c] weight[p] + neuropil_mu neuropil[p] Np[row] + dark_mu
    (c = label of the beam's pixel p; only dark_mu off the grid). The specimen is displaced by
    (motion_x_um[row], motion_y_um[row]) (brain motion), so the beam at (x, y) sees the specimen
    point (x - motion_x, y - motion_y). Photons are the points where
    the cumulative expected count crosses the running sum of Exp(1) gaps: the count in a
    sample is Poisson(mu_j) and counts of different samples are independent, while the work
    per sample is one lookup plus work per photon. Returns the index of the first sample not
    done: n (all done), a sample of a step beyond the rows given, or - when the gaps ran out -
    the interrupted sample (its partial state is kept in `state`; the caller refills `gaps`,
    sets state[PHOTON_GAP_INDEX] = 0 and calls again). state[PHOTON_REMAINING] < 0 means
    "start with a fresh gap".
    """
    n = x_um.shape[0]
    n_gaps = gaps.shape[0]
    remaining = state[PHOTON_REMAINING]
    g = int(state[PHOTON_GAP_INDEX])
    if remaining < 0.0:  # a photon was just emitted when the gaps ran out: take a fresh gap
        remaining = gaps[g]
        g += 1
    j = j_start
    while j < n:
        if state[PHOTON_PENDING_MU] >= 0.0:
            mu = state[PHOTON_PENDING_MU]
            count = int(state[PHOTON_PENDING_COUNT])
            state[PHOTON_PENDING_MU] = -1.0
        else:
            row = int((t0_s + j * sample_dt_s) * inv_step_s) - base_step
            if row >= n_rows:
                break
            mu = dark_mu
            fx = (x_um[j] - motion_x_um[row] - x0_um) * inv_resolution
            fy = (y_um[j] - motion_y_um[row] - y0_um) * inv_resolution
            if fx >= 0.0 and fx < nx and fy >= 0.0 and fy < ny:
                p = int(fy) * nx + int(fx)
                mu += neuropil_mu * neuropil[p] * neuropil_rel[row]
                c = label[p]
                if c >= 0:
                    mu += cell_mu[c] * fluor[row, c] * weight[p]
            count = 0
        interrupted = False
        while mu >= remaining:
            mu -= remaining
            count += 1
            if g >= n_gaps:
                state[PHOTON_PENDING_MU] = mu
                state[PHOTON_PENDING_COUNT] = count
                interrupted = True
                break
            remaining = gaps[g]
            g += 1
        if interrupted:
            state[PHOTON_REMAINING] = -1.0
            state[PHOTON_GAP_INDEX] = g
            return j
        remaining -= mu
        out[j] = count
        j += 1
    state[PHOTON_REMAINING] = remaining
    state[PHOTON_GAP_INDEX] = g
    return j


@numba.njit(cache=True, nogil=True)
def dff_at_times(spike_cells: np.ndarray, spike_times_s: np.ndarray, n_cells: int,
                 times_s: np.ndarray, rise_tau_s: float, decay_tau_s: float,
                 kernel_norm: float, dff_per_spike: float, dff_max: float,
                 out: np.ndarray) -> None:
    """Expected dF/F (n_times, n_cells) from spikes: saturating sum of double exponentials.

    Spikes must be sorted by time. Spikes older than 30 decay time constants are skipped
    (their kernel is below exp(-30)); a spike at exactly t contributes 0 (the kernel starts
    at 0), as in the stepped simulation.
    """
    horizon = 30.0 * decay_tau_s
    calcium = np.zeros(n_cells)
    for ti in range(times_s.shape[0]):
        t = times_s[ti]
        calcium[:] = 0.0
        first = np.searchsorted(spike_times_s, t - horizon)
        last = np.searchsorted(spike_times_s, t, side="right")
        for q in range(first, last):
            age = t - spike_times_s[q]
            calcium[spike_cells[q]] += (math.exp(-age / decay_tau_s)
                                        - math.exp(-age / rise_tau_s)) * kernel_norm
        for i in range(n_cells):
            x = dff_per_spike * calcium[i]
            out[ti, i] = x / (1.0 + x / dff_max)
