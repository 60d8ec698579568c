"""Numba kernel of the culture: the 1 ms step loop, and nothing else.

No random numbers are drawn here: the Gaussian noise arrives as a block of standard normals
drawn by the Culture from its own numpy Generator (numba's RNG is per thread, hence not
reproducible). The model is documented in config.py; the order of one step t is:

 1. input I_i = syn_i (weights of the spikes of step t-1) + noise_sd * N(0, 1)
                + stimulation (persistent drive + pulses landing in step t)
 2. v += 0.5 (0.04 v^2 + 5 v + 140 - u + I), twice (the second half-step is skipped once v
    is past the threshold: the spike is certain and the quadratic term would overflow for
    large inputs); u += a (b v - u)
 3. v > threshold: spike at t; v <- c, u <- u + d
 4. STDP for every spike of step t (LTP on incoming, LTD on outgoing plastic synapses, each
    against every spike of the partner dt = 1 .. window-1 steps earlier), then the decay of
    all plastic weights by `decay` (kept as one global factor `scale`: true weight = stored
    weight x scale for plastic synapses, so the per-ms decay costs nothing per synapse)
 5. every spike of step t adds its synapses' weights (times the short-term efficacy) to the
    targets' input of step t+1.
"""

from __future__ import annotations

import math

import numba
import numpy as np

STOP_DONE = 0  # all requested steps simulated
STOP_WATCH = 1  # the watched neurons fired (at least watch_min of them in one step)
STOP_NOISE = 2  # the noise block is used up: refill and call again

RENORMALISE_BELOW = 0.5
"""When the global decay factor falls below this, it is folded into the stored weights."""


@numba.njit(cache=True, nogil=True)
def _stdp_sum(
    recent: np.ndarray, head: np.ndarray, count: np.ndarray, j: int, t: int, table: np.ndarray
) -> float:
    """sum over the spikes of neuron j at t - dt, 1 <= dt < window, of table[dt]."""
    window = recent.shape[1]
    total = 0.0
    n = count[j] if count[j] < window else window
    h = head[j]
    for r in range(n):
        dt = t - recent[j, (h - r + window) % window]
        if dt >= window:
            break
        if dt >= 1:
            total += table[dt]
    return total


@numba.njit(cache=True, nogil=True)
def run_steps(
    n_steps: int,
    step0: int,
    v: np.ndarray,
    u: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    d: np.ndarray,
    threshold: float,
    noise: np.ndarray,
    noise_row: np.ndarray,
    noise_sd: float,
    syn_in: np.ndarray,
    syn_start: np.ndarray,
    syn_post: np.ndarray,
    syn_pre: np.ndarray,
    w: np.ndarray,
    plastic: np.ndarray,
    in_start: np.ndarray,
    in_syn: np.ndarray,
    scale: np.ndarray,
    decay: float,
    stdp_on: bool,
    stdp_table: np.ndarray,
    w_max: float,
    recent: np.ndarray,
    recent_head: np.ndarray,
    recent_count: np.ndarray,
    stp_mask: np.ndarray,
    stp_u: np.ndarray,
    stp_x: np.ndarray,
    stp_last: np.ndarray,
    stp_big_u: float,
    stp_tau_d: float,
    stp_tau_f: float,
    stp_norm: float,
    drive_input: np.ndarray,
    pulse_step: np.ndarray,
    pulse_electrode: np.ndarray,
    pulse_charge_nc: np.ndarray,
    pulse_cursor: np.ndarray,
    el_start: np.ndarray,
    el_neuron: np.ndarray,
    el_coupling: np.ndarray,
    ext: np.ndarray,
    watch: np.ndarray,
    watch_min: int,
    out_neuron: np.ndarray,
    out_step: np.ndarray,
    out_count: np.ndarray,
) -> tuple[int, int]:
    """Simulate up to n_steps steps from absolute step step0. Returns (steps simulated,
    STOP_* reason). Spikes are appended to out_neuron/out_step (capacity checked by the
    caller: at least n_neurons per step)."""
    n = v.shape[0]
    window = recent.shape[1]
    done = 0
    while done < n_steps:
        row = noise_row[0]
        if row >= noise.shape[0]:
            return done, STOP_NOISE
        t = step0 + done
        # 1. external input: persistent drive + pulses landing in this step
        for i in range(n):
            ext[i] = drive_input[i]
        k = pulse_cursor[0]
        while k < pulse_step.shape[0] and pulse_step[k] <= t:
            e = pulse_electrode[k]
            q = pulse_charge_nc[k]
            for m in range(el_start[e], el_start[e + 1]):
                ext[el_neuron[m]] += q * el_coupling[m]
            k += 1
        pulse_cursor[0] = k
        # 2-3. integrate and detect
        first = out_count[0]
        oc = first
        n_watch = 0
        for i in range(n):
            current = syn_in[i] + noise_sd * noise[row, i] + ext[i]
            syn_in[i] = 0.0
            vi = v[i]
            ui = u[i]
            vi += 0.5 * (0.04 * vi * vi + 5.0 * vi + 140.0 - ui + current)
            if vi <= threshold:
                vi += 0.5 * (0.04 * vi * vi + 5.0 * vi + 140.0 - ui + current)
            ui += a[i] * (b[i] * vi - ui)
            if vi > threshold:
                out_neuron[oc] = i
                out_step[oc] = t
                oc += 1
                vi = c[i]
                ui += d[i]
                if watch[i]:
                    n_watch += 1
                h = (recent_head[i] + 1) % window
                recent_head[i] = h
                recent[i, h] = t
                recent_count[i] += 1
            v[i] = vi
            u[i] = ui
        out_count[0] = oc
        noise_row[0] = row + 1
        # 4. STDP, then decay
        sc = scale[0]
        if stdp_on:
            for s_idx in range(first, oc):
                i = out_neuron[s_idx]
                for m in range(in_start[i], in_start[i + 1]):  # LTP: w(j -> i)
                    s = in_syn[m]
                    if w[s] <= 0.0:
                        continue
                    dw = _stdp_sum(recent, recent_head, recent_count, syn_pre[s], t, stdp_table)
                    if dw > 0.0:
                        wt = w[s] * sc + dw
                        if wt > w_max:
                            wt = w_max
                        w[s] = wt / sc
                for s in range(syn_start[i], syn_start[i + 1]):  # LTD: w(i -> j)
                    if not plastic[s] or w[s] <= 0.0:
                        continue
                    dw = _stdp_sum(recent, recent_head, recent_count, syn_post[s], t, stdp_table)
                    if dw > 0.0:
                        wt = w[s] * sc - dw
                        if wt <= 0.0:
                            wt = 0.0
                        w[s] = wt / sc
        sc *= decay
        if sc < RENORMALISE_BELOW:
            for s in range(w.shape[0]):
                if plastic[s]:
                    w[s] *= sc
            sc = 1.0
        scale[0] = sc
        # 5. deliver this step's spikes to the next step's input
        for s_idx in range(first, oc):
            i = out_neuron[s_idx]
            eff = 1.0
            if stp_mask[i]:
                elapsed = float(t - stp_last[i])
                uu = stp_big_u + (stp_u[i] - stp_big_u) * math.exp(-elapsed / stp_tau_f)
                xx = 1.0 + (stp_x[i] - 1.0) * math.exp(-elapsed / stp_tau_d)
                uu += stp_big_u * (1.0 - uu)
                eff = uu * xx * stp_norm
                xx -= uu * xx
                stp_u[i] = uu
                stp_x[i] = xx
                stp_last[i] = t
            for s in range(syn_start[i], syn_start[i + 1]):
                wt = w[s] * sc if plastic[s] else w[s]
                syn_in[syn_post[s]] += wt * eff
        done += 1
        if watch_min > 0 and n_watch >= watch_min:
            return done, STOP_WATCH
    return done, STOP_DONE
