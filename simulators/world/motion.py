"""Brain motion of the simulated mouse: rigid in-plane shifts that follow running, plus drift.

Head-fixed mice imaged through a cranial window move the brain under the objective, most when
they run: two-photon imaging in running mice shows in-plane displacements of a few micrometres
that grow with locomotion (Dombeck et al., Neuron 2007), up to ~10 um in the worst frames. The
model (MotionConfig documents the defaults) is a function of virtual time t and of the animal's
speed v(t):

    u(t)      speed low-passed with time constant response_tau_s (the brain follows the body
              with a lag): u <- u + (v - u) (1 - exp(-dt / tau)) per step
    s(t)      = u(t) / reference_speed_m_per_s (1 at the typical running speed)
    d_run     = run_shift_um * s * e_run                       sustained push along e_run
    d_stride  = stride_shift_um * s * (cos(2 pi f t + phi_x), cos(2 pi f t + phi_y))
                                                               stride-locked oscillation
    d_drift   = drift_um * (1 - exp(-t / drift_tau_s)) * e_drift   slow settling of the tissue
    d         = d_run + d_stride + d_drift, clipped to |d| <= max_shift_um (radially)

e_run, e_drift (unit vectors) and phi_x, phi_y are drawn once from the generator given (four
uniform numbers, in that order), so the motion depends only on the world's seed and the
animal's path. The displacement d = (x, y) um is where the specimen sits relative to its rest
position: the beam at field position p sees the specimen point p - d, so the image content moves
by +d. Motion is in-plane only (no axial motion: the focal plane does not move).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numba
import numpy as np

if TYPE_CHECKING:
    from simulators.world.config import MotionConfig


@numba.njit(cache=True, nogil=True)
def brain_motion_steps(
    n_steps: int,
    first_step: int,
    dt_s: float,
    speed_m_per_s: np.ndarray,
    state: np.ndarray,
    response: float,
    inverse_reference_speed: float,
    run_x_um: float,
    run_y_um: float,
    stride_shift_um: float,
    stride_omega: float,
    stride_phase_x: float,
    stride_phase_y: float,
    drift_x_um: float,
    drift_y_um: float,
    drift_tau_s: float,
    max_shift_um: float,
    out_x_um: np.ndarray,
    out_y_um: np.ndarray,
) -> None:
    """Displacement of steps first_step .. first_step + n_steps - 1 (time = step start) into
    out_x_um[s], out_y_um[s]; state[0] is the low-passed speed u, updated in place."""
    u = state[0]
    for s in range(n_steps):
        t = (first_step + s) * dt_s
        u += (speed_m_per_s[s] - u) * response
        scale = u * inverse_reference_speed
        settled = 1.0 - math.exp(-t / drift_tau_s) if drift_tau_s > 0.0 else 1.0
        x = scale * run_x_um + drift_x_um * settled
        y = scale * run_y_um + drift_y_um * settled
        if stride_shift_um != 0.0:
            x += stride_shift_um * scale * math.cos(stride_omega * t + stride_phase_x)
            y += stride_shift_um * scale * math.cos(stride_omega * t + stride_phase_y)
        radius = math.sqrt(x * x + y * y)
        if radius > max_shift_um:
            x *= max_shift_um / radius
            y *= max_shift_um / radius
        out_x_um[s] = x
        out_y_um[s] = y
    state[0] = u


class BrainMotion:
    """State of the brain-motion model (module docstring) and its subsampled trace.

    ``advance(first_step, speed_m_per_s, out_x_um, out_y_um)`` computes the displacement of
    len(speed_m_per_s) consecutive activity steps; calls must follow each other without gaps
    (the result does not depend on how the steps are split into calls).
    """

    def __init__(
        self,
        dt_s: float,
        rng: np.random.Generator,
        run_shift_um: float = 5.0,
        reference_speed_m_per_s: float = 0.25,
        response_tau_s: float = 0.3,
        stride_shift_um: float = 1.5,
        stride_frequency_hz: float = 3.0,
        drift_um: float = 3.0,
        drift_tau_s: float = 600.0,
        max_shift_um: float = 10.0,
        trace_interval_s: float = 0.01,
    ) -> None:
        for name, value in (("dt_s", dt_s), ("reference_speed_m_per_s", reference_speed_m_per_s),
                            ("response_tau_s", response_tau_s), ("max_shift_um", max_shift_um),
                            ("trace_interval_s", trace_interval_s)):  # fmt: skip
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name} = {value!r} must be a finite number > 0")
        for name, value in (("run_shift_um", run_shift_um), ("stride_shift_um", stride_shift_um),
                            ("stride_frequency_hz", stride_frequency_hz), ("drift_um", drift_um),
                            ("drift_tau_s", drift_tau_s)):  # fmt: skip
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} = {value!r} must be a finite number >= 0")
        self.dt_s = float(dt_s)
        run_angle, drift_angle, phase_x, phase_y = rng.uniform(0.0, 2.0 * math.pi, 4)
        self.run_direction = (math.cos(run_angle), math.sin(run_angle))
        self.drift_direction = (math.cos(drift_angle), math.sin(drift_angle))
        self._response = 1.0 - math.exp(-dt_s / response_tau_s)
        self._inverse_reference_speed = 1.0 / reference_speed_m_per_s
        self._run_xy = (run_shift_um * self.run_direction[0], run_shift_um * self.run_direction[1])
        self._stride = (float(stride_shift_um), 2.0 * math.pi * stride_frequency_hz,
                        float(phase_x), float(phase_y))  # fmt: skip
        self._drift_xy = (drift_um * self.drift_direction[0], drift_um * self.drift_direction[1])
        self._drift_tau_s = float(drift_tau_s)
        self.max_shift_um = float(max_shift_um)
        self._state = np.zeros(1)
        self._next_step = 0
        self.trace_interval_steps = max(1, round(trace_interval_s / dt_s))
        self._trace_steps = np.zeros(1024, dtype=np.int64)
        self._trace_xy = np.zeros((1024, 2))
        self._n_trace = 0

    @classmethod
    def from_config(
        cls, config: MotionConfig, dt_s: float, rng: np.random.Generator, trace_interval_s: float
    ) -> BrainMotion:
        """From the world's ``motion`` section."""
        return cls(
            dt_s, rng, run_shift_um=config.run_shift_um,
            reference_speed_m_per_s=config.reference_speed_m_per_s,
            response_tau_s=config.response_tau_s, stride_shift_um=config.stride_shift_um,
            stride_frequency_hz=config.stride_frequency_hz, drift_um=config.drift_um,
            drift_tau_s=config.drift_tau_s, max_shift_um=config.max_shift_um,
            trace_interval_s=trace_interval_s,
        )  # fmt: skip

    def advance(
        self,
        first_step: int,
        speed_m_per_s: np.ndarray,
        out_x_um: np.ndarray,
        out_y_um: np.ndarray,
    ) -> None:
        """Displacement (um) of steps first_step .. first_step + n - 1 into out_x_um[:n],
        out_y_um[:n], n = len(speed_m_per_s) (the animal's speed during those steps)."""
        if first_step != self._next_step:
            raise ValueError(
                f"first_step = {first_step}: brain motion continues at step {self._next_step} "
                "(steps must be advanced in order, without gaps)"
            )
        n = speed_m_per_s.shape[0]
        if out_x_um.shape[0] < n or out_y_um.shape[0] < n:
            raise ValueError(f"out_x_um and out_y_um must hold at least {n} steps")
        stride_shift, omega, phase_x, phase_y = self._stride
        brain_motion_steps(
            n, first_step, self.dt_s, speed_m_per_s, self._state, self._response,
            self._inverse_reference_speed, self._run_xy[0], self._run_xy[1], stride_shift, omega,
            phase_x, phase_y, self._drift_xy[0], self._drift_xy[1], self._drift_tau_s,
            self.max_shift_um, out_x_um, out_y_um,
        )  # fmt: skip
        self._record(first_step, n, out_x_um, out_y_um)
        self._next_step = first_step + n

    def _record(self, first_step: int, n: int, x_um: np.ndarray, y_um: np.ndarray) -> None:
        interval = self.trace_interval_steps
        for s in range((-first_step) % interval, n, interval):
            if self._n_trace == self._trace_steps.shape[0]:
                self._trace_steps = np.concatenate([self._trace_steps, self._trace_steps])
                self._trace_xy = np.concatenate([self._trace_xy, self._trace_xy])
            self._trace_steps[self._n_trace] = first_step + s
            self._trace_xy[self._n_trace, 0] = x_um[s]
            self._trace_xy[self._n_trace, 1] = y_um[s]
            self._n_trace += 1

    def trace(self) -> tuple[np.ndarray, np.ndarray]:
        """(times_s, displacement_um (n, 2) as (x, y)) every trace interval so far (copies)."""
        n = self._n_trace
        return self._trace_steps[:n] * self.dt_s, self._trace_xy[:n].copy()
