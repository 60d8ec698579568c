"""The calcium indicator: spikes -> calcium kernel -> saturating dF/F.

Model (IndicatorConfig documents the GCaMP6f numbers): each spike at t_s adds the
peak-normalised difference of exponentials
    k(t) = (exp(-(t - t_s)/tau_decay) - exp(-(t - t_s)/tau_rise)) / k_peak,   t >= t_s,
    k_peak = the unnormalised kernel at t_peak = ln(tau_d / tau_r) tau_d tau_r / (tau_d - tau_r),
and dF/F = x / (1 + x / dff_max) with x = dff_per_spike * sum_s k(t - t_s).
In discrete time the two exponentials are two state variables per cell multiplied by
exp(-dt / tau) each step and incremented by 1 at a spike: at step starts this equals the
continuous kernel exactly, which is why `dff` of ground-truth spikes matches the simulation.
"""

from __future__ import annotations

import math

import numpy as np

from simulators.world.config import IndicatorConfig
from simulators.world.kernels import dff_at_times


class Indicator:
    """Coefficients of the indicator model for a given activity step."""

    def __init__(self, config: IndicatorConfig, dt_s: float) -> None:
        self.config = config
        self.dt_s = dt_s
        tau_r, tau_d = config.rise_tau_s, config.decay_tau_s
        self.decay_factor = math.exp(-dt_s / tau_d)
        self.rise_factor = math.exp(-dt_s / tau_r)
        self.t_peak_s = math.log(tau_d / tau_r) * tau_d * tau_r / (tau_d - tau_r)
        peak = math.exp(-self.t_peak_s / tau_d) - math.exp(-self.t_peak_s / tau_r)
        self.kernel_norm = 1.0 / peak

    def kernel(self, age_s: np.ndarray) -> np.ndarray:
        """Unsaturated calcium kernel k(age) (peak 1 at t_peak; 0 for negative ages)."""
        age = np.asarray(age_s, dtype=np.float64)
        safe = np.maximum(age, 0.0)
        k = (np.exp(-safe / self.config.decay_tau_s)
             - np.exp(-safe / self.config.rise_tau_s)) * self.kernel_norm
        return np.where(age >= 0.0, k, 0.0)

    def dff_from_calcium(self, calcium: np.ndarray) -> np.ndarray:
        """Saturating dF/F of summed kernels."""
        x = self.config.dff_per_spike * np.asarray(calcium, dtype=np.float64)
        return x / (1.0 + x / self.config.dff_max)

    def dff_at(self, spike_cells: np.ndarray, spike_times_s: np.ndarray, n_cells: int,
               times_s: np.ndarray) -> np.ndarray:
        """Expected dF/F, shape (len(times_s), n_cells), of cells firing the given spikes."""
        cells = np.ascontiguousarray(spike_cells, dtype=np.int64)
        times = np.ascontiguousarray(spike_times_s, dtype=np.float64)
        if cells.shape != times.shape:
            raise ValueError(f"spike_cells {cells.shape} and spike_times_s {times.shape} "
                             "must have the same shape")
        order = np.argsort(times, kind="stable")
        query = np.ascontiguousarray(np.atleast_1d(times_s), dtype=np.float64)
        out = np.zeros((query.shape[0], n_cells), dtype=np.float64)
        c = self.config
        dff_at_times(cells[order], times[order], n_cells, query, c.rise_tau_s, c.decay_tau_s,
                     self.kernel_norm, c.dff_per_spike, c.dff_max, out)
        return out
