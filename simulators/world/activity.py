"""Activity of every cell, step by step: spikes, calcium, relative fluorescence.

The models (poisson / latent / place) are documented in ActivityConfig, the indicator in
indicator.py, the coupling pathway in CouplingConfig; the per-step arithmetic is
kernels.neuron_steps. Stimulation enters as `evoked_rate_hz` (per cell, set by the world
between chunks of steps).

Determinism: all random numbers of step k come from row k % BLOCK_STEPS of block
k // BLOCK_STEPS, drawn in bulk from the activity generator in a fixed order (uniforms for
spikes, field normals, animal normals, animal uniforms). So a world's activity depends on its
seed and on what was done to it (stimulation), never on how callers chunk time.
"""

from __future__ import annotations

import math

import numpy as np

from simulators.world.animal import Animal
from simulators.world.config import WorldConfig
from simulators.world.indicator import Indicator
from simulators.world.kernels import (
    MODEL_LATENT,
    MODEL_PLACE,
    MODEL_POISSON,
    latent_field_steps,
    neuron_steps,
)

BLOCK_STEPS = 128
"""Steps per block of bulk-drawn random numbers."""

_MODEL_CODES = {"poisson": MODEL_POISSON, "latent": MODEL_LATENT, "place": MODEL_PLACE}


class SpikeLog:
    """Every spike so far as (cell, step), in growing arrays (capacity doubles when full)."""

    def __init__(self, capacity: int = 1 << 14) -> None:
        self._cells = np.zeros(capacity, dtype=np.int32)
        self._steps = np.zeros(capacity, dtype=np.int64)
        self.n = 0

    def append(self, cells: np.ndarray, steps: np.ndarray) -> None:
        k = cells.shape[0]
        if self.n + k > self._cells.shape[0]:
            capacity = max(2 * self._cells.shape[0], self.n + k)
            self._cells = np.resize(self._cells, capacity)
            self._steps = np.resize(self._steps, capacity)
        self._cells[self.n:self.n + k] = cells
        self._steps[self.n:self.n + k] = steps
        self.n += k

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(cells int32, steps int64), copies, in time order."""
        return self._cells[:self.n].copy(), self._steps[:self.n].copy()


class ActivityEngine:
    """State of every cell and of the animal; advances them in steps of config.dt_s."""

    def __init__(self, config: WorldConfig, n_cells: int, sensory_cells: np.ndarray,
                 motor_cells: np.ndarray, rng: np.random.Generator) -> None:
        self.config = config
        self.n_cells = n_cells
        self.dt_s = config.dt_s
        self._rng = rng
        a = config.activity
        self.model = _MODEL_CODES[a.model]

        # per-cell parameters, drawn in a fixed order
        rates = a.rate_median_hz * np.exp(rng.normal(0.0, a.rate_log_sd, n_cells))
        self.base_rate_hz = np.minimum(rates, a.rate_max_hz)
        self.place_centre_m = np.full(n_cells, np.nan)
        n_fields = a.latent_n_fields if self.model == MODEL_LATENT else 0
        self.latent_coupling = np.zeros((n_cells, n_fields))
        self.fields = np.zeros(n_fields)
        if self.model == MODEL_PLACE:
            is_place = rng.random(n_cells) < a.place_cell_fraction
            centres = rng.uniform(0.0, config.animal.track_length_m, n_cells)
            self.place_centre_m[is_place] = centres[is_place]
            self.base_rate_hz[is_place] = a.place_baseline_rate_hz
        elif self.model == MODEL_LATENT:
            self.base_rate_hz[:] = 0.0
            self.latent_coupling[:] = rng.standard_normal((n_cells, n_fields)) \
                * (a.latent_phi / math.sqrt(n_fields))
            self.fields[:] = rng.standard_normal(n_fields)  # stationary start
        self.latent_decay = math.exp(-self.dt_s / (a.latent_tau_bins * a.latent_bin_s))
        self.latent_bin_ratio = self.dt_s / a.latent_bin_s
        self.place_inv_2var = 1.0 / (2.0 * a.place_field_sd_m ** 2)

        # stimulation (set by the world) and the coupling pathway
        self.evoked_rate_hz = np.zeros(n_cells)
        self.is_sensory = np.zeros(n_cells, dtype=np.bool_)
        self.is_sensory[sensory_cells] = True
        self.is_motor = np.zeros(n_cells, dtype=np.bool_)
        self.is_motor[motor_cells] = True
        c = config.coupling
        self.coupling_weight_hz = c.weight_hz if c.enabled else 0.0
        self.coupling_decay = math.exp(-self.dt_s / c.tau_syn_s)
        # a delay below one step still acts on the next step (causality within a step)
        self.coupling_delay_steps = max(1, round(c.delay_s / self.dt_s))
        self.coupling_ring = np.zeros(self.coupling_delay_steps + 1, dtype=np.int64)
        self.coupling_state = np.zeros(1)

        # calcium: the two exponential state variables of the indicator, per cell
        self.indicator = Indicator(config.indicator, self.dt_s)
        self.calcium_decay = np.zeros(n_cells)
        self.calcium_rise = np.zeros(n_cells)

        self.animal = Animal(config.animal, self.dt_s, BLOCK_STEPS)

        # bulk random numbers and scratch buffers (allocated once)
        self._uniforms = np.zeros((BLOCK_STEPS, n_cells), dtype=np.float32)
        self._field_normals = np.zeros((BLOCK_STEPS, n_fields))
        self._animal_normals = np.zeros(BLOCK_STEPS)
        self._animal_uniforms = np.zeros(BLOCK_STEPS)
        self._fields_per_step = np.zeros((BLOCK_STEPS, n_fields))
        self._rand_row = BLOCK_STEPS  # forces a draw at the first step
        self._spike_cells = np.zeros(BLOCK_STEPS * max(n_cells, 1), dtype=np.int32)
        self._spike_steps = np.zeros(BLOCK_STEPS * max(n_cells, 1), dtype=np.int64)
        self.spikes = SpikeLog()
        self.steps_done = 0

    def _draw_block(self) -> None:
        rng = self._rng
        rng.random(dtype=np.float32, out=self._uniforms)
        if self._field_normals.size:
            rng.standard_normal(out=self._field_normals)
        rng.standard_normal(out=self._animal_normals)
        rng.random(out=self._animal_uniforms)
        self._rand_row = 0

    def run(self, n_steps: int, fluor_out: np.ndarray, neuropil_rel_out: np.ndarray,
            out_row: int = 0, speed_out: np.ndarray | None = None) -> None:
        """Advance n_steps; relative fluorescence of step s goes to fluor_out[out_row + s]
        (float32, shape (rows, n_cells)), the neuropil's relative brightness to
        neuropil_rel_out[out_row + s] and, if given, the animal's speed to
        speed_out[out_row + s]."""
        if n_steps < 0 or out_row < 0 or out_row + n_steps > fluor_out.shape[0]:
            raise ValueError(f"n_steps = {n_steps} at out_row = {out_row} does not fit "
                             f"fluor_out with {fluor_out.shape[0]} rows")
        a = self.config.activity
        ind = self.indicator
        while n_steps > 0:
            if self._rand_row == BLOCK_STEPS:
                self._draw_block()
            m = min(n_steps, BLOCK_STEPS - self._rand_row)
            k = self.steps_done
            self.animal.advance(k, m, self._animal_normals, self._animal_uniforms,
                                self._rand_row)
            if speed_out is not None:
                speed_out[out_row:out_row + m] = self.animal.speed_m_per_s[:m]
            if self.model == MODEL_LATENT:
                latent_field_steps(m, self._field_normals, self._rand_row, self.fields,
                                   self.latent_decay, self._fields_per_step)
            n_spikes = neuron_steps(
                m, k, self._uniforms, self._rand_row, self.model, self.dt_s,
                self.base_rate_hz, self.evoked_rate_hz,
                self.latent_coupling, self._fields_per_step, a.latent_eta, a.latent_eps,
                self.latent_bin_ratio,
                self.place_centre_m, self.place_inv_2var, a.place_peak_rate_hz,
                a.place_running_threshold_m_per_s, self.animal.position_m,
                self.animal.speed_m_per_s,
                self.is_sensory, self.is_motor, self.coupling_ring, self.coupling_state,
                self.coupling_weight_hz, self.coupling_decay, self.coupling_delay_steps,
                self.calcium_decay, self.calcium_rise, ind.decay_factor, ind.rise_factor,
                ind.kernel_norm, ind.config.dff_per_spike, ind.config.dff_max,
                self.config.neuropil_activity_gain, fluor_out, out_row, neuropil_rel_out,
                self._spike_cells, self._spike_steps)
            if n_spikes:
                self.spikes.append(self._spike_cells[:n_spikes], self._spike_steps[:n_spikes])
            self._rand_row += m
            self.steps_done += m
            out_row += m
            n_steps -= m
