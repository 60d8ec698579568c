"""A simulated DAQ behind the ScanDAQ contract: the real scan engine drives it.

AO galvo commands go in; the simulated galvos follow them with a first-order lag
(tau = galvo_lag_s, per sample, after the DAC's zero-order hold); the beam position of every
AI sample is handed to the simulated world, which returns photon counts (shot noise
included); the PMT and preamplifier turn photons into ADC codes (gain per photon, offset,
Gaussian electronic noise, clipping at the ADC range). Pulse outputs (laser power and
photostimulation galvos) become photostimulation of the world's cells.

It keeps the contract's timing: AI sample j belongs to AO sample j // ai_oversample, the first
sample is time 0, and in realtime mode samples are released no earlier than the wall clock
would have acquired them.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

import numba
import numpy as np

from drivers.daq.contract import PulseTaskConfig, ScanDAQ, ScanTaskConfig
from drivers.errors import DeviceStateError, DeviceTimeout, LimitError
from simulators.clock import SimClock

if TYPE_CHECKING:
    from simulators.world.world import World


@dataclass(frozen=True)
class SimulatedOptics:
    """Physical constants of the simulated rig (the 'truth' that calibrations approximate).

    galvo_um_per_volt: true scan-galvo calibration (x, y).
    galvo_lag_s: first-order time constant of the scan galvos (typical 50-300 us).
    laser_power_mw: excitation power at the sample.
    pmt_counts_per_photon: mean ADC codes one detected photon adds to one AI sample.
    pmt_gain_spread: relative SD of single-photon pulse heights (PMT gain noise).
    pmt_offset_counts / read_noise_counts: ADC offset and Gaussian electronic noise (codes).
    stim_mw_per_volt / stim_um_per_volt: photostimulation path calibration.
    stim_spot_radius_um: lateral radius of a photostimulation spot.
    """

    galvo_um_per_volt: tuple[float, float] = (30.0, 30.0)
    galvo_lag_s: float = 50e-6
    laser_power_mw: float = 40.0
    pmt_counts_per_photon: float = 120.0
    pmt_gain_spread: float = 0.3
    pmt_offset_counts: float = 0.0
    read_noise_counts: float = 2.0
    stim_mw_per_volt: float = 10.0
    stim_um_per_volt: tuple[float, float] = (30.0, 30.0)
    stim_spot_radius_um: float = 8.0
    adc_bits: int = 16
    focus_channel: str = "ao5"  # static AO that drives the objective piezo
    piezo_um_per_volt: float = 40.0
    piezo_zero_um: float = -200.0  # focus z at 0 V relative to the world's nominal plane
    ai_block_s: float = 0.005  # samples are simulated (and released in realtime) in blocks


@numba.njit(cache=True, nogil=True)
def _galvo_follow(
    cmd_v: np.ndarray,
    k: int,
    decay: float,
    mean_factor: float,
    state_v: float,
    out_um: np.ndarray,
    um_per_volt: float,
) -> float:
    """First-order galvo (time constant tau) driven by a zero-order-held AO command.

    Exact per AI sample of length dt: with the command c held, p(end) = c + (p0 - c) * decay
    (decay = exp(-dt/tau)), and the position averaged over the sample - what an integrating
    PMT sample sees - is c + (p0 - c) * mean_factor (mean_factor = tau/dt * (1 - decay)).
    """
    pos = state_v
    for i in range(cmd_v.shape[0]):
        target = cmd_v[i]
        for j in range(k):
            out_um[i * k + j] = (target + (pos - target) * mean_factor) * um_per_volt
            pos = target + (pos - target) * decay
    return pos


@numba.njit(cache=True, nogil=True)
def _photons_to_codes(
    photons: np.ndarray,
    gain_noise: np.ndarray,
    gain_start: int,
    counts_per_photon: float,
    offset: float,
    read_noise: np.ndarray,
    lo: int,
    hi: int,
    out: np.ndarray,
) -> None:
    """ADC code = offset + sum of single-photon pulse heights + electronic noise, clipped."""
    g = gain_start
    for i in range(photons.shape[0]):
        n = photons[i]
        signal = 0.0
        for _ in range(n):
            signal += counts_per_photon * gain_noise[g % gain_noise.shape[0]]
            g += 1
        v = offset + signal + read_noise[i]
        iv = int(np.floor(v + 0.5))
        if iv < lo:
            iv = lo
        elif iv > hi:
            iv = hi
        out[i] = iv


class SimulatedDAQ(ScanDAQ):
    """Simulated galvo scanning + PMT + photostimulation outputs over a simulated World."""

    def __init__(
        self,
        world: "World",
        clock: SimClock | None = None,
        optics: SimulatedOptics = SimulatedOptics(),
        *,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(name or "simulated DAQ")
        self.world = world
        self.clock = clock or SimClock("max")
        self.optics = optics
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 0xDA0]))
        self._scan: ScanTaskConfig | None = None
        self._pulse: PulseTaskConfig | None = None
        self._ao_queue: deque[np.ndarray] = deque()
        self._running = False
        self._samples_read = 0
        self._galvo_v = np.zeros(2)
        self._lock = threading.Lock()
        self._stim_log: list[dict[str, Any]] = []
        self.static_outputs: dict[str, float] = {}
        self.scan_time_source: Any = None  # callable giving another scanner's clock
        # z (um) of the imaged plane at a block's start time (world clock), e.g. a tunable
        # lens settling (rig/focus.py FocalPlaneFollower); None: the plane moves only by the
        # piezo's static AO
        self.focus_z_source: Callable[[float], float] | None = None
        self._world_t0 = 0.0
        # gain noise is a fixed, seeded table cycled through (one entry per photon)
        spread = optics.pmt_gain_spread
        shape = 1.0 / spread**2 if spread > 0 else 0.0
        self._gain_table = (
            self._rng.gamma(shape, 1.0 / shape, 1 << 16) if spread > 0 else np.ones(1 << 16)
        )

    # -- scanning --------------------------------------------------------------------------
    def configure_scan(self, config: ScanTaskConfig) -> None:
        self.require_open()
        if len(config.ao_channels) != 2:
            raise LimitError(
                f"the simulated rig has two scan galvos (x, y); got "
                f"{len(config.ao_channels)} AO channels {config.ao_channels}"
            )
        if config.ai_oversample < 1:
            raise LimitError(f"ai_oversample = {config.ai_oversample} must be >= 1")
        self._scan = config
        self._ao_queue.clear()
        n_ai = len(config.ai_channels)
        block = max(1, int(round(self.optics.ai_block_s * config.ao_rate_hz)))
        self._block_ao = block
        k = config.ai_oversample
        self._x_um = np.zeros(block * k)
        self._y_um = np.zeros(block * k)
        self._photons = np.zeros(block * k, np.int32)
        self._noise = np.zeros(block * k)
        self._n_ai = n_ai
        self._ao_pos = 0  # AO samples consumed from the head of the queue
        self._adc_lo, self._adc_hi = (
            -(1 << (self.optics.adc_bits - 1)),
            (1 << (self.optics.adc_bits - 1)) - 1,
        )

    def write_ao(self, waveform_v: np.ndarray) -> None:
        cfg = self._require_scan()
        w = np.asarray(waveform_v, dtype=np.float64)
        if w.shape != (2, cfg.ao_samples_per_frame):
            raise LimitError(f"AO waveform shape {w.shape} != (2, {cfg.ao_samples_per_frame})")
        peak = float(np.abs(w).max())
        if peak > cfg.ao_range_v:
            raise LimitError(
                f"AO waveform reaches {peak:.3f} V, beyond the range +-{cfg.ao_range_v:g} V"
            )
        self._ao_queue.append(w.copy())

    def start_scan(self) -> None:
        self._require_scan()
        if not self._ao_queue:
            raise DeviceStateError("write at least one frame of AO before start_scan()")
        self._samples_read = 0
        self._ao_pos = 0
        self._running = True
        # the world's clock runs on across acquisitions; each scan's device clock starts at 0
        self._world_t0 = self.world.t_s
        self.clock.start()

    def read_ai(self, out: np.ndarray) -> int:
        cfg = self._require_scan()
        if not self._running:
            raise DeviceStateError("read_ai() before start_scan()")
        k = cfg.ai_oversample
        n = out.shape[-1]
        if n % k:
            raise LimitError(
                f"read of {n} AI samples is not a whole number of AO samples (k = {k})"
            )
        first = self._samples_read
        done = 0
        opt = self.optics
        dt = 1.0 / cfg.ai_rate_hz
        if opt.galvo_lag_s > 0:
            decay = float(np.exp(-dt / opt.galvo_lag_s))
            mean_factor = opt.galvo_lag_s / dt * (1.0 - decay)
        else:
            decay = mean_factor = 0.0
        while done < n:
            if not self._ao_queue:
                raise DeviceTimeout(
                    "simulated DAQ: AO buffer ran empty (non-regenerating output "
                    "underflow): write AO frames ahead of the beam"
                )
            head = self._ao_queue[0]
            m_ao = min(self._block_ao, (n - done) // k, head.shape[1] - self._ao_pos)
            m = m_ao * k
            seg = head[:, self._ao_pos : self._ao_pos + m_ao]
            x_um, y_um = self._x_um[:m], self._y_um[:m]
            self._galvo_v[0] = _galvo_follow(
                seg[0], k, decay, mean_factor, self._galvo_v[0], x_um, opt.galvo_um_per_volt[0]
            )
            self._galvo_v[1] = _galvo_follow(
                seg[1], k, decay, mean_factor, self._galvo_v[1], y_um, opt.galvo_um_per_volt[1]
            )
            t0 = (first + done) * dt
            self.clock.wait_until(t0 + m * dt)
            t0 += self._world_t0
            photons = self._photons[:m]
            z_um = self.focus_z_source(t0) if self.focus_z_source is not None else None
            with self._lock:
                if z_um is not None and z_um != self.world.focus_z_um:
                    self.world.set_focus_z_um(z_um)
                self.world.sample_photons(x_um, y_um, t0, dt, opt.laser_power_mw, photons)
            noise = self._noise[:m]
            if opt.read_noise_counts > 0:
                noise[:] = self._rng.standard_normal(m) * opt.read_noise_counts
            else:
                noise[:] = 0.0
            gain_offset = int(self._rng.integers(0, self._gain_table.shape[0]))
            for c in range(self._n_ai):
                # one PMT channel in the simulated specimen; further channels see the same light
                _photons_to_codes(
                    photons,
                    self._gain_table,
                    gain_offset,
                    opt.pmt_counts_per_photon,
                    opt.pmt_offset_counts,
                    noise,
                    self._adc_lo,
                    self._adc_hi,
                    out[c, done : done + m],
                )
            done += m
            self._ao_pos += m_ao
            if self._ao_pos >= head.shape[1]:
                self._ao_queue.popleft()
                self._ao_pos = 0
        self._samples_read += n
        return first

    def stop_scan(self) -> None:
        self._running = False

    def park(self, volts: tuple[float, ...]) -> None:
        self.require_open()
        self._galvo_v[:] = volts[:2]

    @property
    def ai_volts_per_count(self) -> float:
        rng = self._scan.ai_range_v if self._scan else 1.0
        return rng / (1 << (self.optics.adc_bits - 1))

    @property
    def scan_time_s(self) -> float:
        """Virtual time on the scan clock: the world's time (realtime: the wall clock's, if
        later) since the scan started; NaN before any scan. When another device scans (a
        resonant scanner), its clock is the scan clock (`scan_time_source`)."""
        if self.scan_time_source is not None and not self._running:
            return float(self.scan_time_source())
        if self._scan is None or not self._running and self._samples_read == 0:
            return float("nan")
        t = self.world.t_s
        wall = self.clock.now_virtual_s()
        if wall is not None:
            t = max(t, wall + self._world_t0)
        return t - self._world_t0

    # -- static outputs --------------------------------------------------------------------
    def write_static_ao(self, channel: str, volts: float, range_v: float = 10.0) -> None:
        """The focus channel moves the world's imaged plane (piezo treated as settled at
        once); other channels just hold their voltage."""
        self.require_open()
        if not abs(volts) <= range_v:
            raise LimitError(f"static AO {channel} = {volts:g} V is outside +-{range_v:g} V")
        self.static_outputs[channel] = float(volts)
        if channel == self.optics.focus_channel:
            with self._lock:
                self.world.set_focus_z_um(
                    self.optics.piezo_zero_um + self.optics.piezo_um_per_volt * volts
                )

    # -- stimulation pulses ----------------------------------------------------------------
    def configure_pulses(self, config: PulseTaskConfig) -> None:
        self.require_open()
        if len(config.channels) != 3:
            raise LimitError(
                f"the simulated light path has three outputs (power, x, y); got {config.channels}"
            )
        self._pulse = config

    def write_pulses(self, waveform_v: np.ndarray) -> float:
        """Turn a (power, x, y) waveform into photostimulation of the world's cells.

        The onset is the virtual time of the next sample not yet simulated (max speed: the
        start of the next block, deterministic), or the wall clock's virtual time if later
        (realtime)."""
        self.require_open()
        cfg = self._pulse
        if cfg is None:
            raise DeviceStateError("configure_pulses() first")
        w = np.asarray(waveform_v, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] != 3:
            raise LimitError(f"pulse waveform shape {w.shape}: expected (3, n) for power, x, y")
        if np.abs(w).max(initial=0.0) > cfg.range_v:
            raise LimitError(f"pulse waveform exceeds +-{cfg.range_v:g} V")
        opt = self.optics
        with self._lock:
            onset = self.world.t_s
            wall = self.clock.now_virtual_s()
            if wall is not None:
                onset = max(onset, wall + self._world_t0)
            driven: list[int] = []
            for a, b in _lit_segments(w):
                power = float(w[0, a]) * opt.stim_mw_per_volt
                xy = np.array(
                    [[w[1, a] * opt.stim_um_per_volt[0], w[2, a] * opt.stim_um_per_volt[1]]]
                )
                cells = self.world.stimulate_spots(
                    xy,
                    opt.stim_spot_radius_um,
                    power,
                    onset + a / cfg.rate_hz,
                    (b - a) / cfg.rate_hz,
                )
                driven.extend(int(c) for c in cells)
            self._stim_log.append({"onset_s": onset, "cells": sorted(set(driven))})
        return onset - self._world_t0  # on the scan clock

    def zero_pulses(self) -> None:
        # pulses are delivered to the world at write time; nothing is pending here
        return None

    # -- Device hooks ----------------------------------------------------------------------
    def _require_scan(self) -> ScanTaskConfig:
        self.require_open()
        if self._scan is None:
            raise DeviceStateError("configure_scan() first")
        return self._scan

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        self._running = False

    def _safe(self) -> None:
        self._running = False
        self.zero_pulses()

    def _snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"optics": asdict(self.optics), "speed": self.clock.speed}
        if self._scan is not None:
            snap["scan"] = asdict(self._scan)
        return snap


def _lit_segments(w: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) sample ranges where the light is on with constant power and position."""
    n = w.shape[1]
    on = w[0] > 0
    changed = np.concatenate(([True], np.any(w[:, 1:] != w[:, :-1], axis=0)))
    starts = np.flatnonzero(on & (changed | np.concatenate(([True], ~on[:-1]))))
    segments = []
    for a in starts:
        later = np.flatnonzero(changed[a + 1 :] | ~on[a + 1 :])
        b = a + 1 + int(later[0]) if later.size else n
        segments.append((int(a), int(b)))
    return segments
