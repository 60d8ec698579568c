"""Physics of the simulated tunable lens: membrane dynamics and temperature.

Focal power of the lens at time t (hardware.md section 1, "Lens physics"):

    P(t) = m(t) + P0 + drift * (T_lens(t) - T_ref) - c(t)

- m(t): the membrane's deflection in dpt, a damped second-order system driven by
  dpt_per_ma * I (the drive current):  m'' + 2 sigma m' + omega_n^2 (m - drive) = 0, with
  ringing at omega_d = 2 pi ringing_hz and decay sigma = 4 / settling_time_s (the 2 % envelope
  e^(-sigma t) reaches 0.018 at settling_time_s). EL-10-30: about 15 ms, ringing near 150 Hz.
  Constant drive between commands is solved exactly (no integration step); a signal
  generator's periodic drive uses its steady-state response (Fourier series through the
  transfer function H = omega_n^2 / (omega_n^2 - w^2 + 2 j sigma w)); the start-up transient
  of a periodic drive is not modelled.
- P0: focal power at 0 mA at T_ref; drift: about +0.036 dpt/K at constant current (one
  published EL-10-30 calibration: 0.41 dpt at 30 C, 0.95 dpt at 45 C).
- T_lens(t) = ambient + warming * (1 - e^(-t/tau_w)): a lens slowly warming after power-on.
  The driver's sensor follows it through a first-order lag tau_s and reads in 1/16 degC
  steps, so it is too slow to follow heating (ohmic heating by the current is not modelled).
- c(t): in focal power mode the driver compensates with its sensor reading,
  c = drift * (T_sensor(t) - T_ref); the compensation changes slowly and is applied
  directly, not through the membrane dynamics. What remains is drift * (T_lens - T_sensor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

SENSOR_STEP_C = 0.0625
WAVEFORMS = ("sinusoidal", "triangular", "rectangular")


@dataclass(frozen=True)
class LensModel:
    """Parameters of the simulated lens (defaults: an EL-10-30-like lens on a Lens Driver 4)."""

    dpt_per_ma: float = 0.05  # about 0.05-0.065 dpt/mA near zero
    focal_power_at_zero_ma_dpt: float = 0.41  # at reference_temperature_c
    reference_temperature_c: float = 30.0
    drift_dpt_per_k: float = 0.036  # +0.03 .. +0.046 dpt/K published
    ringing_hz: float = 150.0
    settling_time_s: float = 0.015  # 2 % envelope
    ambient_c: float = 25.0
    warming_k: float = 10.0
    warming_time_constant_s: float = 900.0
    sensor_time_constant_s: float = 30.0

    def __post_init__(self) -> None:
        positive = (
            "dpt_per_ma",
            "ringing_hz",
            "settling_time_s",
            "warming_time_constant_s",
            "sensor_time_constant_s",
        )
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value):
                raise ValueError(f"{f.name} = {value!r} must be finite")
            if f.name in positive and value <= 0:
                raise ValueError(f"{f.name} = {value!r} must be > 0")
        if self.warming_k < 0:
            raise ValueError(f"warming_k = {self.warming_k!r} must be >= 0")

    @property
    def decay_rate_per_s(self) -> float:
        """sigma = 4 / settling time (2 % envelope)."""
        return 4.0 / self.settling_time_s

    @property
    def damped_angular_hz(self) -> float:
        return 2.0 * math.pi * self.ringing_hz

    @property
    def natural_angular_hz(self) -> float:
        return math.hypot(self.damped_angular_hz, self.decay_rate_per_s)

    @property
    def damping_ratio(self) -> float:
        return self.decay_rate_per_s / self.natural_angular_hz

    def transfer(self, frequency_hz: np.ndarray | float) -> np.ndarray:
        """H(j w) = omega_n^2 / (omega_n^2 - w^2 + 2 j sigma w) of the membrane."""
        w = 2.0 * np.pi * np.asarray(frequency_hz, dtype=np.float64)
        wn2 = self.natural_angular_hz**2
        return wn2 / (wn2 - w * w + 2j * self.decay_rate_per_s * w)

    # -- temperature ----------------------------------------------------------------------
    def lens_temperature_c(self, t_s: np.ndarray | float) -> np.ndarray:
        """T_lens at t_s after power-on."""
        t = np.maximum(np.asarray(t_s, dtype=np.float64), 0.0)
        return self.ambient_c + self.warming_k * -np.expm1(-t / self.warming_time_constant_s)

    def sensor_temperature_c(self, t_s: np.ndarray | float) -> np.ndarray:
        """The sensor: T_lens through a first-order lag tau_s (exact for the exponential
        warming), before quantisation."""
        t = np.maximum(np.asarray(t_s, dtype=np.float64), 0.0)
        tw, ts = self.warming_time_constant_s, self.sensor_time_constant_s
        if math.isclose(tw, ts, rel_tol=1e-9):
            lagged = 1.0 - (1.0 + t / tw) * np.exp(-t / tw)
        else:
            lagged = 1.0 - (tw * np.exp(-t / tw) - ts * np.exp(-t / ts)) / (tw - ts)
        return self.ambient_c + self.warming_k * lagged

    def sensor_reading_c(self, t_s: np.ndarray | float) -> np.ndarray:
        """What the sensor reports: 1/16 degC steps."""
        return np.round(self.sensor_temperature_c(t_s) / SENSOR_STEP_C) * SENSOR_STEP_C

    def thermal_offset_dpt(self, temperature_c: np.ndarray | float) -> np.ndarray:
        return self.drift_dpt_per_k * (np.asarray(temperature_c) - self.reference_temperature_c)


def model_fields() -> dict[str, Any]:
    return {f.name: f.type for f in fields(LensModel)}


# -- membrane dynamics ---------------------------------------------------------------------------
class _Step:
    """Constant drive `target` from start_s with initial deflection x0 and velocity v0."""

    def __init__(
        self, model: LensModel, start_s: float, x0: float, v0: float, target: float, tag: float
    ) -> None:
        self.start_s, self.x0, self.v0, self.target, self.tag = start_s, x0, v0, target, tag
        self.sigma = model.decay_rate_per_s
        self.wd = model.damped_angular_hz
        self.wn2 = model.natural_angular_hz**2

    def evaluate(self, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = self.x0 - self.target
        env = np.exp(-self.sigma * tau)
        c, s = np.cos(self.wd * tau), np.sin(self.wd * tau)
        x = self.target + env * (e * c + (self.v0 + self.sigma * e) / self.wd * s)
        v = env * (self.v0 * c - (self.sigma * self.v0 + self.wn2 * e) / self.wd * s)
        return x, v

    def drive(self, tau: np.ndarray) -> np.ndarray:
        return np.full(np.shape(tau), self.target)


class _Periodic:
    """Steady-state response to a periodic drive between low and high at frequency_hz."""

    MAX_HARMONIC = 399

    def __init__(
        self,
        model: LensModel,
        start_s: float,
        waveform: str,
        low: float,
        high: float,
        frequency_hz: float,
        tag: float,
    ) -> None:
        if waveform not in WAVEFORMS:
            raise ValueError(f"waveform = {waveform!r}: choose one of {WAVEFORMS}")
        if not frequency_hz > 0:
            raise ValueError(f"frequency_hz = {frequency_hz!r} must be > 0")
        self.start_s, self.tag = start_s, tag
        self.waveform, self.frequency_hz = waveform, frequency_hz
        self.mid, self.amplitude = (high + low) / 2.0, (high - low) / 2.0
        if waveform == "sinusoidal":
            n = np.array([1.0])
            b = np.array([1.0])
        else:
            top = max(1, min(self.MAX_HARMONIC, int(20.0 * model.ringing_hz / frequency_hz)))
            n = np.arange(1, top + 1, 2, dtype=np.float64)
            if waveform == "rectangular":  # square wave: (4/pi) sum sin(n w t) / n
                b = 4.0 / (np.pi * n)
            else:  # triangle rising through mid at t = 0: (8/pi^2) sum (-1)^k sin(n w t)/n^2
                b = 8.0 / np.pi**2 * (-1.0) ** ((n - 1) / 2) / n**2
        h = model.transfer(n * frequency_hz)
        self.n, self.coeff, self.phase = n, self.amplitude * b * np.abs(h), np.angle(h)
        self.w = 2.0 * np.pi * frequency_hz

    def evaluate(self, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        arg = np.multiply.outer(tau, self.n * self.w) + self.phase
        x = self.mid + np.sin(arg) @ self.coeff
        v = np.cos(arg) @ (self.coeff * self.n * self.w)
        return x, v

    def drive(self, tau: np.ndarray) -> np.ndarray:
        phase = self.w * np.asarray(tau)
        if self.waveform == "sinusoidal":
            shape = np.sin(phase)
        elif self.waveform == "rectangular":
            shape = np.where(np.sin(phase) >= 0.0, 1.0, -1.0)
        else:
            shape = 2.0 / np.pi * np.arcsin(np.sin(phase))
        return self.mid + self.amplitude * shape


class LensMechanics:
    """The membrane's deflection (dpt) as a history of drive segments, each starting at a
    command. Any time from the oldest kept segment on can be evaluated, also earlier than the
    latest command (a simulated scanner may ask about the past)."""

    def __init__(
        self,
        model: LensModel,
        start_s: float = 0.0,
        rest_dpt: float = 0.0,
        max_segments: int = 4096,
    ) -> None:
        self.model = model
        self.max_segments = int(max_segments)
        self._segments: list[_Step | _Periodic] = [
            _Step(model, start_s, rest_dpt, 0.0, rest_dpt, 0.0)
        ]
        self._starts: list[float] = [start_s]
        self._trimmed = False

    @property
    def earliest_s(self) -> float:
        return self._starts[0]

    @property
    def last_start_s(self) -> float:
        return self._starts[-1]

    def step(
        self, t_s: float, target_dpt: float, tag: float = 0.0, state_shift_dpt: float = 0.0
    ) -> None:
        """From t_s on, a constant drive of target_dpt (commands cannot act before the
        previous one: an earlier t_s is moved to the last command's time).

        state_shift_dpt moves the bookkeeping origin of the deflection when the meaning of
        the drive changes (entering or leaving focal power mode, where a compensation is
        kept outside the dynamics), so the physical deflection stays continuous."""
        t = max(float(t_s), self._starts[-1])
        x, v = self.state_at(t)
        self._append(_Step(self.model, t, x + state_shift_dpt, v, float(target_dpt), tag))

    def periodic(
        self,
        t_s: float,
        waveform: str,
        low_dpt: float,
        high_dpt: float,
        frequency_hz: float,
        tag: float = 0.0,
    ) -> None:
        t = max(float(t_s), self._starts[-1])
        self._append(_Periodic(self.model, t, waveform, low_dpt, high_dpt, frequency_hz, tag))

    def _append(self, segment: _Step | _Periodic) -> None:
        if segment.start_s == self._starts[-1] and len(self._segments) > 1:
            self._segments[-1] = segment  # two commands at one instant: the later one wins
        else:
            self._segments.append(segment)
            self._starts.append(segment.start_s)
        excess = len(self._segments) - self.max_segments
        if excess > 0:
            del self._segments[:excess]
            del self._starts[:excess]
            self._trimmed = True

    def state_at(self, t_s: float) -> tuple[float, float]:
        x, v, _, _ = self.evaluate(np.array([float(t_s)]))
        return float(x[0]), float(v[0])

    def evaluate(
        self, times_s: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(deflection dpt, velocity dpt/s, drive dpt, tag) at each time."""
        t = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
        if self._trimmed and t.size and float(t.min()) < self._starts[0]:
            raise ValueError(
                f"t_s = {float(t.min()):.9g} s is before the oldest kept lens history "
                f"({self._starts[0]:.9g} s)"
            )
        x = np.empty_like(t)
        v = np.empty_like(t)
        drive = np.empty_like(t)
        tag = np.empty_like(t)
        # before the first segment the lens rested (tau clamped to 0 of the rest segment)
        idx = np.maximum(np.searchsorted(np.asarray(self._starts), t, side="right") - 1, 0)
        for i in np.unique(idx):
            sel = idx == i
            seg = self._segments[int(i)]
            tau = np.maximum(t[sel] - seg.start_s, 0.0)
            x[sel], v[sel] = seg.evaluate(tau)
            drive[sel] = seg.drive(tau)
            tag[sel] = seg.tag
        return x, v, drive, tag
