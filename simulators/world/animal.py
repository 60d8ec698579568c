"""The running animal: position on a linear track, speed, rewards (model in AnimalConfig).

Randomness (one normal and one uniform per step) is drawn in bulk by the activity engine
from its generator, so the animal's path depends only on the world's seed.
"""

from __future__ import annotations

import math

import numpy as np

from simulators.world.config import AnimalConfig
from simulators.world.kernels import animal_steps


class Animal:
    """State and per-step coefficients of the running animal, plus its subsampled trace."""

    def __init__(self, config: AnimalConfig, dt_s: float, block_steps: int) -> None:
        self.config = config
        self.dt_s = dt_s
        self.target_decay = math.exp(-dt_s / config.speed_fluctuation_tau_s)
        self.speed_response = 1.0 - math.exp(-dt_s / config.speed_response_tau_s)
        # a two-state Markov chain: leave a state of mean duration T with probability
        # 1 - exp(-dt / T) per step (exponential durations)
        self.p_stop = 1.0 - math.exp(-dt_s / config.run_bout_mean_s)
        self.p_start = 1.0 - math.exp(-dt_s / config.rest_mean_s)
        speed = config.run_speed_mean_m_per_s
        # [position_m, speed_m_per_s, target_speed_m_per_s, running (1/0), reward pause left s]:
        # the session starts with the animal running from the start of the track
        self.state = np.array([0.0, speed, speed, 1.0, 0.0])
        self.position_m = np.zeros(block_steps)
        self.speed_m_per_s = np.zeros(block_steps)
        self._reward = np.zeros(block_steps, dtype=np.bool_)
        self.trace_interval_steps = max(1, round(config.trace_interval_s / dt_s))
        self._trace_steps = np.zeros(1024, dtype=np.int64)
        self._trace_position = np.zeros(1024)
        self._trace_speed = np.zeros(1024)
        self._n_trace = 0
        self._reward_steps: list[int] = []

    def advance(self, first_step: int, n_steps: int, normals: np.ndarray, uniforms: np.ndarray,
                rand_row: int) -> None:
        """Advance n_steps (<= block_steps); self.position_m[:n] / speed_m_per_s[:n] hold them."""
        c = self.config
        animal_steps(n_steps, normals, uniforms, rand_row, self.state, self.dt_s,
                     c.track_length_m, c.run_speed_mean_m_per_s, c.run_speed_sd_m_per_s,
                     self.target_decay, self.speed_response, self.p_stop, self.p_start,
                     c.reward_pause_s, self.position_m, self.speed_m_per_s, self._reward)
        self._record(first_step, n_steps)

    def _record(self, first_step: int, n_steps: int) -> None:
        interval = self.trace_interval_steps
        offset = (-first_step) % interval
        for s in range(offset, n_steps, interval):
            if self._n_trace == self._trace_steps.shape[0]:
                self._trace_steps = np.concatenate([self._trace_steps, self._trace_steps])
                self._trace_position = np.concatenate([self._trace_position,
                                                       self._trace_position])
                self._trace_speed = np.concatenate([self._trace_speed, self._trace_speed])
            self._trace_steps[self._n_trace] = first_step + s
            self._trace_position[self._n_trace] = self.position_m[s]
            self._trace_speed[self._n_trace] = self.speed_m_per_s[s]
            self._n_trace += 1
        if self._reward[:n_steps].any():
            self._reward_steps.extend(int(first_step + s)
                                      for s in np.flatnonzero(self._reward[:n_steps]))

    def trace(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times_s, position_m, speed_m_per_s) every trace_interval_s so far (copies)."""
        n = self._n_trace
        return (self._trace_steps[:n] * self.dt_s, self._trace_position[:n].copy(),
                self._trace_speed[:n].copy())

    def reward_times_s(self) -> np.ndarray:
        return np.asarray(self._reward_steps, dtype=np.float64) * self.dt_s
