"""Simulated resonant-galvo hardware behind the resonant contract: the real scanner drives it.

    SimulatedResonantHardware(world, clock, physics, seed)
        .io          ResonantScanIO: amplitude input, line-clock counter, frame clock,
                     slow galvo (drivers/daq/resonant_contract.py)
        .digitizer   Digitizer: one record of PMT samples per line-clock edge

The mirror (`ResonantPhysics`): x(t) = -A cos(2 pi (t - t_n - lag) / P_n) within period n,
which starts at line-clock edge t_n and lasts P_n = 1 / f_n. Its frequency drifts with
temperature and amplitude,

    f = natural_hz (1 + tempco_per_k dT) + amplitude_shift_hz (A / A_full)^2,
    d(dT)/dt = (heating_k (A / A_full)^2 - dT) / thermal_tau_s      (warms up while running)

(spring-steel torsion bars: Young's modulus falls by ~2.5e-4 per K, f ~ sqrt(E), hence
-1.25e-4 per K, about -1 Hz/K at 7.9 kHz), and the mirror lags the line clock by
lag = phase_lag_us + phase_lag_amplitude_us (A / A_full)^2. The slow galvo follows its AO
command (played from every frame-clock edge, holding its last value in between) with a
first-order lag. The line-clock counter measures periods on a `counter_timebase_hz` timebase
(NI X-series: 100 MHz): edge times are rounded to ticks, so measured periods sum to the true
elapsed time within one tick.

The digitizer, and why it runs at 2-3 % of the cost of one Poisson draw per sample
------------------------------------------------------------------------------
A 100 MS/s digitizer is 1e8 samples per device second. Drawing photons per sample, or even
asking the world about every sample, is far too slow (design.md). Instead:

1. Photons are drawn on sub-bins of `sub_bin_samples` consecutive samples (chosen so the
   beam moves at most `sub_bin_max_um` per sub-bin at its fastest, the mirror's centre):
   the world counts photons for the beam at the sub-bin's central instant over the sub-bin's
   duration (`World.sample_photons`, exponential gaps, cost per photon). Equivalence: the
   count of k samples is Poisson(sum_j mu_j); with mu constant over the sub-bin it equals
   Poisson(k mu(midpoint)) exactly. The world's intensity is constant on its rendering grid
   (0.5 um); a sub-bin spans at most sub_bin_max_um (default 0.75 um: below the default
   image pixel of 0.98 um and about the lateral two-photon PSF's FWHM, i.e. pixel-resolved
   sampling), so the two differ only where a sub-bin crosses a grid-cell boundary: there
   the midpoint's cell stands for the sub-bin, an error of zero mean whose position moves
   from line to line (the sub-bin grid is not locked to the mirror). Measured on the
   default rig (512 x 512, 100 MS/s, 2 shared cores): 0.5 um (3 samples) ran at 1.8-2.0x
   real time, 0.75 um (5) at 2.3-2.8x, 1.0 um (7) at 2.6-3.0x.
2. Each photon is placed on a uniformly random sample of its sub-bin (for a constant rate,
   arrival times are uniform), as one pulse of `pmt_counts_per_photon` x a gamma-distributed
   gain (relative SD pmt_gain_spread) on that sample.
3. The electronic baseline of every sample (offset + Gaussian read noise, rounded, clipped)
   is copied from a pre-drawn table at a random offset per record and channel: a memory
   copy per record instead of a normal draw per sample. Records are therefore random
   windows of one table of >= 2^20 values (noise within a record is independent; two
   records share values only where their windows overlap).

Records start at the first sample at or after their line-clock edge (trigger quantisation:
on average half a sample after the edge, which adds half a sample to the line phase an
image-based calibration finds). Samples between records (re-arm time) are simulated and
dropped, as in hardware.

Timing: samples are produced in blocks of about `block_s`; in realtime mode a block is
released no earlier than the wall clock would have acquired it (simulators/clock.py). The
world's clock continues across acquisitions; an acquisition's device clock starts at 0.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

import numba
import numpy as np

from drivers.daq.resonant_contract import (
    Digitizer,
    DigitizerConfig,
    ResonantIOConfig,
    ResonantScanIO,
)
from drivers.errors import DeviceStateError, DeviceTimeout, LimitError
from simulators.clock import SimClock

if TYPE_CHECKING:
    from simulators.world.world import World

#: baseline-noise table length (values), at least; see the module doc
NOISE_TABLE_MIN = 1 << 20
#: amplitude command below which the controller keeps the mirror stopped
MIN_RUNNING_AMPLITUDE_V = 0.01


@dataclass(frozen=True)
class ResonantPhysics:
    """The truth of the simulated resonant rig (what calibrations approximate).

    Mirror: natural_hz at ambient temperature and small amplitude; tempco_per_k,
    amplitude_shift_hz (at full amplitude), heating_k (temperature rise running at full
    amplitude), thermal_tau_s, phase_lag_us + phase_lag_amplitude_us (A/A_full)^2,
    period_jitter_s (white, RMS per period); amplitude_um_per_volt (true calibration of the
    controller's amplitude input) and full_amplitude_v (A_full = its amplitude at this
    command). line_clock_connected False: no edges at all.
    Slow galvo: galvo_um_per_volt, galvo_lag_s. Counter: counter_timebase_hz (None: exact).
    Detection: laser_power_mw, pmt_counts_per_photon, pmt_gain_spread, pmt_offset_counts,
    read_noise_counts, adc_bits. Simulation: sub_bin_max_um, block_s.
    """

    natural_hz: float = 7925.52
    tempco_per_k: float = -1.25e-4
    amplitude_shift_hz: float = -2.0
    heating_k: float = 4.0
    thermal_tau_s: float = 60.0
    phase_lag_us: float = 1.5
    phase_lag_amplitude_us: float = 0.8
    period_jitter_s: float = 0.0
    amplitude_um_per_volt: float = 62.5
    full_amplitude_v: float = 5.0
    line_clock_connected: bool = True
    galvo_um_per_volt: float = 50.0
    galvo_lag_s: float = 100e-6
    counter_timebase_hz: float | None = 100e6
    laser_power_mw: float = 40.0
    pmt_counts_per_photon: float = 2000.0
    pmt_gain_spread: float = 0.3
    pmt_offset_counts: float = 0.0
    read_noise_counts: float = 20.0
    adc_bits: int = 16
    sub_bin_max_um: float = 0.75
    block_s: float = 0.005

    def frequency_hz(self, temperature_rise_k: float, amplitude_fraction: float) -> float:
        """The mirror's frequency at a temperature rise and amplitude (A / A_full)."""
        return self.natural_hz * (1.0 + self.tempco_per_k * temperature_rise_k) + (
            self.amplitude_shift_hz * amplitude_fraction**2
        )

    def lag_s(self, amplitude_fraction: float) -> float:
        return (self.phase_lag_us + self.phase_lag_amplitude_us * amplitude_fraction**2) * 1e-6


@numba.njit(cache=True, nogil=True)
def mirror_periods(
    n: int,
    temperature_rise_k: float,
    amplitude_fraction: float,
    natural_hz: float,
    tempco_per_k: float,
    amplitude_shift_hz: float,
    heating_k: float,
    thermal_tau_s: float,
    jitter_s: np.ndarray,
    out_periods_s: np.ndarray,
) -> float:
    """Periods of the next n mirror cycles; returns the temperature rise after them.

    Per cycle: f from the temperature and amplitude (ResonantPhysics.frequency_hz), then the
    temperature relaxes towards heating_k (A/A_full)^2 over that period (exact exponential).
    """
    a2 = amplitude_fraction * amplitude_fraction
    target = heating_k * a2
    dt_k = temperature_rise_k
    for i in range(n):
        f = natural_hz * (1.0 + tempco_per_k * dt_k) + amplitude_shift_hz * a2
        period = 1.0 / f + jitter_s[i]
        out_periods_s[i] = period
        dt_k = target + (dt_k - target) * math.exp(-period / thermal_tau_s)
    return dt_k


@numba.njit(cache=True, nogil=True)
def beam_positions(
    first_sample: int,
    n_sub: int,
    k: int,
    sample_rate_hz: float,
    edges_s: np.ndarray,
    edge_frame_start_s: np.ndarray,
    lag_s: float,
    amplitude_um: float,
    galvo_v: np.ndarray,
    galvo_rate_hz: float,
    galvo_armed: bool,
    park_v: float,
    galvo_um_per_volt: float,
    decay_powers: np.ndarray,
    galvo_state_um: np.ndarray,
    x_out: np.ndarray,
    y_out: np.ndarray,
) -> None:
    """Beam (x, y) at the central instant of n_sub sub-bins of k samples from first_sample.

    edges_s: line-clock edges covering the sub-bins (edges_s[0] <= first instant < last
    edge); edge_frame_start_s[n]: start of the frame that edge n belongs to. x follows the
    mirror of the period containing the instant; y is the slow galvo, a first-order lag
    behind the AO command played from the frame start and held at its last value after the
    waveform ends (park_v if not armed): decay_powers[m] = exp(-m sub-bin / tau), m = 0..M.
    """
    n_edges = edges_s.shape[0]
    n_galvo = galvo_v.shape[0]
    y = galvo_state_um[0]
    two_pi = 2.0 * math.pi
    sub_s = k / sample_rate_hz
    galvo_step = sub_s * galvo_rate_hz  # AO samples per sub-bin
    centre = 0.5 * (k - 1)
    n = 0
    i = 0
    while i < n_sub:
        t_i = (first_sample + i * k + centre) / sample_rate_hz
        while n + 2 < n_edges and t_i >= edges_s[n + 1]:
            n += 1
        t_n = edges_s[n]
        period = edges_s[n + 1] - t_n
        if n + 2 < n_edges:  # sub-bins of this period: centre instant before the next edge
            i_end = math.ceil((edges_s[n + 1] * sample_rate_hz - first_sample - centre) / k)
            i_end = min(max(i_end, i + 1), n_sub)
        else:
            i_end = n_sub
        # the mirror angle advances by a fixed step per sub-bin within a period: Chebyshev's
        # recurrence cos(a + 4 h) = 2 cos(4 h) cos(a) - cos(a - 4 h), four chains interleaved
        # (one multiply-add per sub-bin; rounding grows ~ n eps / sin(4 h), < 1e-10 here)
        theta = two_pi * (t_i - t_n - lag_s) / period
        step = two_pi * sub_s / period
        n_here = i_end - i
        if n_here < 12:
            for ii in range(i, i_end):
                x_out[ii] = -amplitude_um * math.cos(theta + (ii - i) * step)
        else:
            for q in range(8):
                x_out[i + q] = -amplitude_um * math.cos(theta + q * step)
            twice_cos = 2.0 * math.cos(4.0 * step)
            for ii in range(i + 8, i_end):
                x_out[ii] = twice_cos * x_out[ii - 4] - x_out[ii - 8]
        # slow galvo: while the command c is held, y_m = c + (y_0 - c) d^m (decay_powers[m]),
        # i.e. y <- d y + (1 - d) c per sub-bin, but without a dependent chain
        ii = i
        while ii < i_end:
            if galvo_armed:
                at = (t_i - edge_frame_start_s[n]) * galvo_rate_hz
                j = int(at + (ii - i) * galvo_step)
                # sub-bins until the AO moves to its next sample (the last one is held)
                if j >= n_galvo - 1:
                    j = n_galvo - 1
                    seg_end = i_end
                else:
                    seg_end = i + math.ceil((j + 1 - at) / galvo_step)
                    seg_end = min(max(seg_end, ii + 1), i_end)
                command = galvo_v[j] * galvo_um_per_volt
            else:
                command = park_v * galvo_um_per_volt
                seg_end = i_end
            seg_end = min(seg_end, ii + decay_powers.shape[0] - 1)
            offset = y - command
            for m in range(seg_end - ii):
                y_out[ii + m] = command + offset * decay_powers[m + 1]
            y = command + offset * decay_powers[seg_end - ii]
            ii = seg_end
        i = i_end
    galvo_state_um[0] = y


@numba.njit(cache=True, nogil=True)
def fill_records(
    out: np.ndarray,
    noise_table: np.ndarray,
    offset_uniforms: np.ndarray,
) -> None:
    """Baseline of every sample: out[c, r, :] = noise_table[o : o + samples], with the
    offset o = floor(u (len(table) - samples)) from a uniform u per channel and record."""
    n_ch, n_rec, n_samples = out.shape
    span = noise_table.shape[0] - n_samples
    for c in range(n_ch):
        for r in range(n_rec):
            o = int(offset_uniforms[c, r] * span)
            out[c, r, :] = noise_table[o : o + n_samples]


@numba.njit(cache=True, nogil=True)
def place_photons(
    counts: np.ndarray,
    first_sample: int,
    k: int,
    record_start: np.ndarray,
    uniforms: np.ndarray,
    gains: np.ndarray,
    gain_offset: int,
    counts_per_photon: float,
    hi: int,
    out: np.ndarray,
) -> None:
    """Add each photon of sub-bin i at sample first + i k + floor(u k) (u uniform in [0, 1),
    one per photon) to the record holding that sample (if any), for every channel, clipped
    at hi; the pulse height is counts_per_photon x the next gain from the gain table.

    record_start: global first sample of each record in `out` (increasing).
    """
    n_ch, n_rec, n_samples = out.shape
    r = 0
    q = 0
    g = gain_offset
    n_gain = gains.shape[0]
    for i in range(counts.shape[0]):
        c = counts[i]
        for _ in range(c):
            s = first_sample + i * k + int(uniforms[q] * k)
            q += 1
            height = counts_per_photon * gains[g % n_gain]
            g += 1
            while r + 1 < n_rec and s >= record_start[r + 1]:
                r += 1
            j = s - record_start[r]
            if 0 <= j < n_samples:
                for ch in range(n_ch):
                    v = out[ch, r, j] + int(math.floor(height + 0.5))
                    out[ch, r, j] = hi if v > hi else v


class _EdgeStream:
    """Line-clock edges of one acquisition, generated on demand and shared by the digitizer
    (records) and the counter (periods); consumed edges are dropped."""

    def __init__(self) -> None:
        self.times_s = np.zeros(0)  # edges base .. base + len - 1, acquisition time
        self.base = 0
        self.frame_start_s = np.zeros(0)

    @property
    def end(self) -> int:
        return self.base + self.times_s.shape[0]


class SimulatedResonantHardware:
    """A resonant mirror, its controller, slow galvo, PMT and digitizer over a World."""

    def __init__(
        self,
        world: "World",
        clock: SimClock | None = None,
        physics: ResonantPhysics = ResonantPhysics(),
        *,
        seed: int = 0,
        line_clock_terminal: str = "PFI0",
    ) -> None:
        self.world = world
        self.clock = clock or SimClock("max")
        self.physics = physics
        self.line_clock_terminal = line_clock_terminal
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E5]))
        self._lock = threading.RLock()
        self.amplitude_v = 0.0
        self.temperature_rise_k = 0.0
        self.head_time_s = 0.0  # time the mirror has run (virtual)
        self._stops_at_s: float | None = None
        # scan state (set by the I/O)
        self.io_config: ResonantIOConfig | None = None
        self.galvo_waveform_v = np.zeros(1)
        self.galvo_armed = False
        self.galvo_park_v = 0.0
        self._galvo_state_um = np.zeros(1)
        # acquisition
        self._edges: _EdgeStream | None = None
        self._acquiring = False
        self._world_t0 = 0.0
        # z (um) of the imaged plane at a block's start time (world clock), e.g. a tunable
        # lens settling (rig/focus.py FocalPlaneFollower); None: the plane is left alone
        self.focus_z_source: Callable[[float], float] | None = None
        self.io = SimulatedResonantIO(self)
        self.digitizer = SimulatedDigitizer(self)

    # -- the mirror ------------------------------------------------------------------------
    @property
    def amplitude_um(self) -> float:
        return self.amplitude_v * self.physics.amplitude_um_per_volt

    @property
    def amplitude_fraction(self) -> float:
        return self.amplitude_v / self.physics.full_amplitude_v

    @property
    def running(self) -> bool:
        return self.amplitude_v >= MIN_RUNNING_AMPLITUDE_V

    @property
    def resonant_hz(self) -> float:
        """The mirror's frequency now (ground truth)."""
        return self.physics.frequency_hz(self.temperature_rise_k, self.amplitude_fraction)

    @property
    def lag_s(self) -> float:
        return self.physics.lag_s(self.amplitude_fraction)

    @property
    def scan_time_s(self) -> float:
        """Now on the acquisition's clock (s since record 0 of frame 0): the world's time
        since the digitizer started (realtime: the wall clock's, if later); NaN when not
        acquiring. For devices that share this clock (stimulus onsets, heating limits)."""
        if not self._acquiring:
            return math.nan
        t = self.world.t_s
        wall = self.clock.now_virtual_s()
        if wall is not None:
            t = max(t, wall + self._world_t0)
        return t - self._world_t0

    def stop_line_clock_at(self, acquisition_time_s: float | None) -> None:
        """Fault injection: no line-clock edges after this time of the next (or current)
        acquisition; None restores the clock."""
        self._stops_at_s = acquisition_time_s

    def _periods(self, n: int) -> np.ndarray:
        """Advance the running mirror n periods; return them (seconds)."""
        p = self.physics
        jitter = (
            self._rng.standard_normal(n) * p.period_jitter_s
            if p.period_jitter_s > 0
            else np.zeros(n)
        )
        out = np.empty(n)
        self.temperature_rise_k = mirror_periods(
            n,
            self.temperature_rise_k,
            self.amplitude_fraction,
            p.natural_hz,
            p.tempco_per_k,
            p.amplitude_shift_hz,
            p.heating_k,
            p.thermal_tau_s,
            jitter,
            out,
        )
        self.head_time_s += float(out.sum())
        return out

    def line_clock_available(self) -> bool:
        return self.physics.line_clock_connected and self.running

    # -- acquisition (used by the digitizer and the I/O) -----------------------------------
    def begin_acquisition(self) -> None:
        if not self.line_clock_available():
            self._edges = None
        else:
            self._edges = _EdgeStream()
            self._edges.times_s = np.zeros(1)  # edge 0 at time 0
            self._edges.frame_start_s = np.zeros(1)
        self._galvo_state_um[0] = self.galvo_park_v * self.physics.galvo_um_per_volt
        self._acquiring = True
        # the world's clock runs on across acquisitions; this acquisition's clock starts at 0
        self._world_t0 = self.world.t_s
        self.clock.start()

    def end_acquisition(self) -> None:
        self._acquiring = False
        self.galvo_armed = False

    def edges_until(self, index: int, timeout_s: float) -> _EdgeStream:
        """Make sure edges up to `index` exist; DeviceTimeout if the clock stopped first."""
        stream = self._edges
        if stream is None:
            raise DeviceTimeout(
                f"no line-clock edge on {self.line_clock_terminal} within {timeout_s:g} s: is "
                "the resonant controller on and its sync output wired?"
            )
        if index >= stream.end:
            n_new = index + 1 - stream.end + 256  # a little ahead, as a counter buffer holds
            new = np.cumsum(self._periods(n_new)) + stream.times_s[-1]
            per_frame = self.io_config.periods_per_frame if self.io_config else 1 << 62
            first_new = stream.end
            stream.times_s = np.concatenate((stream.times_s, new))
            # the frame each new edge belongs to starts at edge (index // per_frame) * per_frame
            start_index = np.arange(first_new, first_new + n_new) // per_frame * per_frame
            local = start_index - stream.base
            known = local >= 0  # else: a frame start already dropped, still the last one
            frame_starts = np.where(
                known, stream.times_s[np.maximum(local, 0)], stream.frame_start_s[-1]
            )
            stream.frame_start_s = np.concatenate((stream.frame_start_s, frame_starts))
        if self._stops_at_s is not None and stream.times_s[index - stream.base] > self._stops_at_s:
            last = stream.times_s[: index - stream.base + 1]
            alive = last[last <= self._stops_at_s]
            t_last = float(alive[-1]) if alive.size else 0.0
            self.clock.wait_until(t_last + timeout_s)
            raise DeviceTimeout(
                f"no line-clock edge on {self.line_clock_terminal} for {timeout_s:g} s after "
                f"t = {t_last:.6f} s: the resonant controller's line clock stopped"
            )
        return stream

    def edge_time_s(self, index: int) -> float:
        """Ground truth: time of line-clock edge `index` of the current acquisition (edge 0 is
        the first frame-clock pulse; frame 0's first record is edge skip_records)."""
        stream = self._edges
        if stream is None or not stream.base <= index < stream.end:
            raise IndexError(f"edge {index} is not (or no longer) held")
        return float(stream.times_s[index - stream.base])

    def drop_edges_before(self, index: int) -> None:
        """Forget edges both consumers are done with (keeps the current frame's start)."""
        stream = self._edges
        if stream is None:
            return
        keep_from = min(index, self.digitizer.next_record, self.io.next_period) - 1
        drop = keep_from - stream.base
        if drop > 4096:
            stream.times_s = stream.times_s[drop:].copy()
            stream.frame_start_s = stream.frame_start_s[drop:].copy()
            stream.base += drop


class SimulatedResonantIO(ResonantScanIO):
    """Amplitude input, line-clock counter, frame clock and slow galvo of the simulated rig."""

    def __init__(self, hardware: SimulatedResonantHardware, amplitude_range_v: float = 5.0):
        super().__init__("simulated resonant I/O")
        self.hw = hardware
        self.amplitude_range_v = amplitude_range_v
        self.config: ResonantIOConfig | None = None
        self.next_period = 0
        self.timeout_s = 1.0
        self._armed = False

    def set_amplitude_v(self, volts: float) -> None:
        self.require_open()
        if not (math.isfinite(volts) and 0.0 <= volts <= self.amplitude_range_v):
            raise LimitError(
                f"resonant amplitude = {volts!r} V is outside the controller's input range "
                f"[0, {self.amplitude_range_v:g}] V"
            )
        with self.hw._lock:
            self.hw.amplitude_v = float(volts)

    def measure_line_clock_hz(self, periods: int) -> float:
        self.require_open()
        if periods < 1:
            raise LimitError(f"periods = {periods} must be at least 1")
        with self.hw._lock:
            if not self.hw.line_clock_available():
                raise DeviceTimeout(
                    f"no line-clock edge on {self.hw.line_clock_terminal} within "
                    f"{self.timeout_s:g} s: is the resonant controller on and its sync wired?"
                )
            t0 = self.hw.head_time_s
            self.hw._periods(periods)
            total = self._ticks(self.hw.head_time_s) - self._ticks(t0)
        return periods / total

    def _ticks(self, t_s: float) -> float:
        """An edge time as the counter sees it: rounded to its timebase."""
        tb = self.hw.physics.counter_timebase_hz
        return t_s if tb is None else round(t_s * tb) / tb

    def configure_scan(self, config: ResonantIOConfig) -> None:
        self.require_open()
        if config.periods_per_frame < 1 or config.slow_galvo_samples < 1:
            raise LimitError(
                f"periods_per_frame = {config.periods_per_frame} and slow_galvo_samples = "
                f"{config.slow_galvo_samples} must be >= 1"
            )
        with self.hw._lock:
            self.config = config
            self.hw.io_config = config
            self.hw.galvo_waveform_v = np.zeros(config.slow_galvo_samples)
            self.hw.galvo_armed = False

    def write_slow_galvo(self, waveform_v: np.ndarray) -> None:
        cfg = self._require_config()
        w = np.ascontiguousarray(waveform_v, dtype=np.float64)
        if w.shape != (cfg.slow_galvo_samples,):
            raise LimitError(f"slow-galvo waveform shape {w.shape} != ({cfg.slow_galvo_samples},)")
        peak = float(np.abs(w).max())
        if not peak <= cfg.slow_galvo_range_v:
            raise LimitError(
                f"slow-galvo waveform reaches {peak:.3f} V, beyond +-{cfg.slow_galvo_range_v:g} V"
            )
        with self.hw._lock:
            self.hw.galvo_waveform_v = w.copy()

    def start_scan(self) -> None:
        self._require_config()
        with self.hw._lock:
            self.hw.galvo_armed = True
        # the counter's values are indexed by edge; period 0 is the first edge of frame 0,
        # which comes slow_galvo_lead_periods edges after the frame clock's first pulse
        self.next_period = self.config.slow_galvo_lead_periods if self.config else 0
        self._armed = True

    def read_line_periods(self, out: np.ndarray) -> int:
        self._require_config()
        if not self._armed or not self.hw._acquiring:
            raise DeviceStateError(
                "no line periods to read: the scan is not running (not started, or stopped "
                "by safe() or stop_scan())"
            )
        n = out.shape[0]
        first = self.next_period  # an edge index
        with self.hw._lock:
            stream = self.hw.edges_until(first + n, self.timeout_s)
            edges = stream.times_s[first - stream.base : first + n + 1 - stream.base]
            tb = self.hw.physics.counter_timebase_hz
            if tb is not None:
                edges = np.round(edges * tb) / tb
            np.subtract(edges[1:], edges[:-1], out=out)
            self.next_period = first + n
            self.hw.drop_edges_before(first + n)
        return first - self.config.slow_galvo_lead_periods

    def stop_scan(self) -> None:
        self._armed = False
        with self.hw._lock:
            self.hw.galvo_armed = False

    def park_slow_galvo(self, volts: float) -> None:
        self.require_open()
        self.stop_scan()
        with self.hw._lock:
            self.hw.galvo_park_v = float(volts)

    def _require_config(self) -> ResonantIOConfig:
        self.require_open()
        if self.config is None:
            raise DeviceStateError("configure_scan() first")
        return self.config

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        with self.hw._lock:
            self.hw.amplitude_v = 0.0

    def _safe(self) -> None:
        self.stop_scan()

    def _snapshot(self) -> dict[str, Any]:
        return {
            "physics": asdict(self.hw.physics),
            "amplitude_v": self.hw.amplitude_v,
            "true_resonant_hz": self.hw.resonant_hz,
            "true_lag_us": self.hw.lag_s * 1e6,
            "config": None if self.config is None else asdict(self.config),
        }


class SimulatedDigitizer(Digitizer):
    """PMT + digitizer: records of samples along the simulated beam path (module doc)."""

    def __init__(self, hardware: SimulatedResonantHardware, max_sample_rate_hz: float = 1e9):
        super().__init__("simulated digitizer")
        self.hw = hardware
        self.max_sample_rate_hz = max_sample_rate_hz
        self.config: DigitizerConfig | None = None
        self.next_record = 0
        self.timeout_s = 1.0
        self._running = False
        p = hardware.physics
        rng = hardware._rng
        spread = p.pmt_gain_spread
        shape = 1.0 / spread**2 if spread > 0 else 0.0
        self._gains = rng.gamma(shape, 1.0 / shape, 1 << 16) if spread > 0 else np.ones(1 << 16)
        self._noise_table = np.zeros(0, np.int16)
        self._next_free_sample = 0
        self._origin_s: float | None = None
        self._powers_key: tuple[float, float, float] | None = None
        self._powers = np.ones(1)
        self._x = self._y = np.zeros(0)
        self._counts = np.zeros(0, np.int32)
        self._uniforms = np.zeros(1 << 16)
        self._offsets = np.zeros((1, 1))

    @property
    def sample_rate_hz(self) -> float:
        return self.config.sample_rate_hz if self.config else math.nan

    @property
    def volts_per_count(self) -> float:
        rng = self.config.range_v if self.config else 1.0
        return rng / (1 << (self.hw.physics.adc_bits - 1))

    @property
    def sub_bin_samples(self) -> int:
        """Samples per photon sub-bin: the beam moves at most sub_bin_max_um per sub-bin at
        the mirror's fastest (2 pi f A per second) - module doc."""
        cfg = self._require_config()
        p = self.hw.physics
        speed_um_per_sample = (
            2.0 * math.pi * p.natural_hz * max(self.hw.amplitude_um, 1e-9) / cfg.sample_rate_hz
        )
        return max(1, int(p.sub_bin_max_um / speed_um_per_sample))

    def configure(self, config: DigitizerConfig) -> None:
        self.require_open()
        if not (0 < config.sample_rate_hz <= self.max_sample_rate_hz):
            raise LimitError(
                f"sample_rate_hz = {config.sample_rate_hz:g} is outside (0, "
                f"{self.max_sample_rate_hz:g}] Hz"
            )
        if config.samples_per_record < 1 or config.records_per_read < 1:
            raise LimitError(
                f"samples_per_record = {config.samples_per_record} and records_per_read = "
                f"{config.records_per_read} must be >= 1"
            )
        if not config.channels:
            raise LimitError("DigitizerConfig.channels is empty")
        self.config = config
        p = self.hw.physics
        size = max(NOISE_TABLE_MIN, 8 * config.samples_per_record)
        lo, hi = -(1 << (p.adc_bits - 1)), (1 << (p.adc_bits - 1)) - 1
        noise = p.pmt_offset_counts + self.hw._rng.standard_normal(size) * p.read_noise_counts
        self._noise_table = np.clip(np.floor(noise + 0.5), lo, hi).astype(np.int16)
        self._adc_hi = hi
        per_block = max(1, int(round(p.block_s * p.natural_hz)))
        self._offsets = np.zeros((len(config.channels), per_block))

    def start(self) -> None:
        self._require_config()
        if self._running:
            raise DeviceStateError("the digitizer is already acquiring")
        # records are indexed by edge: record 0 is edge skip_records (the first of frame 0)
        self.next_record = self.config.skip_records
        self._next_free_sample = 0
        self._origin_s = None
        self.hw.begin_acquisition()
        self._running = True

    def read_records(self, out: np.ndarray) -> int:
        cfg = self._require_config()
        if not self._running:
            raise DeviceStateError(
                "no records to read: the digitizer is not acquiring (not started, or stopped)"
            )
        spr = cfg.samples_per_record
        if (
            out.dtype != np.int16
            or out.ndim != 3
            or out.shape[0] != len(cfg.channels)
            or out.shape[2] != spr
        ):
            raise ValueError(
                f"out must be int16 of shape ({len(cfg.channels)}, n, {spr}); got "
                f"{out.dtype} {out.shape}"
            )
        first = self.next_record
        n = out.shape[1]
        hw = self.hw
        fs = cfg.sample_rate_hz
        with hw._lock:
            k = self.sub_bin_samples
            per_block = self._offsets.shape[1]
            done = 0
            while done < n:
                m = min(per_block, n - done)
                self._simulate_block(first + done, out[:, done : done + m], k, fs)
                done += m
            self.next_record = first + n
            hw.drop_edges_before(first + n)
        return first - cfg.skip_records

    def _simulate_block(self, first: int, out: np.ndarray, k: int, fs: float) -> None:
        """Records first .. first + m - 1 into out (channels, m, samples_per_record)."""
        hw = self.hw
        p = hw.physics
        m = out.shape[1]
        spr = out.shape[2]
        stream = hw.edges_until(first + m, self.timeout_s)
        i0 = first - stream.base
        edges = stream.times_s[i0 : i0 + m + 1]
        starts = np.ceil(edges[:m] * fs - 1e-6).astype(np.int64)  # first sample at/after edge
        if self._origin_s is None:  # the world's time of record 0 is its time at start()
            self._origin_s = float(starts[0]) / fs
        s0 = max(int(starts[0]), self._next_free_sample)  # the world never goes back in time
        s_end = int(starts[-1]) + spr
        n_sub = -(-(s_end - s0) // k)
        # edges around the sub-bins: the records' own, plus one past the last sub-bin
        last_t = (s0 + n_sub * k) / fs
        j_end = i0 + m + 1
        while stream.times_s[j_end - 1] <= last_t:
            stream = hw.edges_until(stream.base + j_end, self.timeout_s)
            j_end += 1
        edges_all = stream.times_s[i0:j_end]
        frame_start = stream.frame_start_s[i0:j_end]
        x, y, counts = self._buffers(n_sub)
        sub_s = k / fs
        galvo_rate = hw.io_config.slow_galvo_rate_hz if hw.io_config else 1.0
        beam_positions(
            s0, n_sub, k, fs, edges_all, frame_start, hw.lag_s, hw.amplitude_um,
            hw.galvo_waveform_v, galvo_rate, hw.galvo_armed, hw.galvo_park_v,
            p.galvo_um_per_volt, self._decay_powers(sub_s, galvo_rate), hw._galvo_state_um,
            x, y,
        )  # fmt: skip
        hw.clock.wait_until(s_end / fs)
        t0_world = hw._world_t0 + s0 / fs - self._origin_s
        if hw.focus_z_source is not None:
            z_um = hw.focus_z_source(t0_world)
            if z_um != hw.world.focus_z_um:
                hw.world.set_focus_z_um(z_um)
        hw.world.sample_photons(x, y, t0_world, sub_s, p.laser_power_mw, counts)
        self._next_free_sample = s0 + n_sub * k
        rng = hw._rng
        offsets = self._offsets[: out.shape[0], :m]
        rng.random(out=offsets)
        fill_records(out, self._noise_table, offsets)
        n_photons = int(counts.sum())
        if n_photons > self._uniforms.shape[0]:
            self._uniforms = np.empty(2 * n_photons)
        uniforms = self._uniforms[:n_photons]
        rng.random(out=uniforms)
        place_photons(
            counts, s0, k, starts, uniforms, self._gains,
            int(rng.integers(0, self._gains.shape[0])), p.pmt_counts_per_photon,
            self._adc_hi, out,
        )  # fmt: skip

    def _decay_powers(self, sub_s: float, galvo_rate_hz: float) -> np.ndarray:
        """exp(-m sub_s / galvo lag), m = 0 .. one AO hold in sub-bins (cached)."""
        lag = self.hw.physics.galvo_lag_s
        key = (sub_s, galvo_rate_hz, lag)
        if self._powers_key != key:
            n = max(256, math.ceil(1.0 / (galvo_rate_hz * sub_s)) + 2)
            m = np.arange(n)
            self._powers = np.exp(-m * sub_s / lag) if lag > 0 else (m == 0).astype(float)
            self._powers_key = key
        return self._powers

    def _buffers(self, n_sub: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views of preallocated beam-position and photon buffers (grown, rarely)."""
        if n_sub > self._x.shape[0]:
            size = int(1.25 * n_sub)
            self._x, self._y = np.empty(size), np.empty(size)
            self._counts = np.empty(size, np.int32)
        return self._x[:n_sub], self._y[:n_sub], self._counts[:n_sub]

    def stop(self) -> None:
        if self._running:
            self._running = False
            self.hw.end_acquisition()

    def _require_config(self) -> DigitizerConfig:
        self.require_open()
        if self.config is None:
            raise DeviceStateError("configure() first")
        return self.config

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        self.stop()

    def _safe(self) -> None:
        self.stop()

    def _snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"speed": self.hw.clock.speed}
        if self.config is not None:
            snap["config"] = asdict(self.config)
            snap["sub_bin_samples"] = self.sub_bin_samples
        return snap
