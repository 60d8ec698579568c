"""One simulated world per session: specimen, activity, animal, stimulation, photons.

Simulated devices observe and act on it: the simulated DAQ hands over the beam position of
every PMT sample and gets photon counts back (`sample_photons`); the lens moves the imaged
plane (`set_focus_z_um`); the photostimulator drives opsin cells (`stimulate_spots`). The
world keeps a virtual clock (steps of config.dt_s), is deterministic for a seed, and keeps
ground truth (`ground_truth`) for tests and reports - never for the processing pipeline.

Random streams: the seed's SeedSequence spawns independent streams for the specimen, the
activity (incl. the animal), the photons, the neuropil texture and the brain motion, so e.g.
the laser power or the scan pattern never changes which spikes happen.

Brain motion (config.motion, model in motion.py): when enabled, the specimen is displaced
in-plane by d(t), a function of virtual time and of the animal's speed, computed per activity
step; every PMT sample sees the specimen point (beam - d) of its own step, and a
photostimulation spot at p reaches the cells at p - d (d at the step the stimulation is
queued in). The ground truth holds the displacement trace.

Threads: `sample_photons`, `advance_to` and `set_focus_z_um` run under one lock (the kernels
release the GIL). `stimulate_spots` only queues the stimulation under a second small lock, so
it can be called while a sampling call runs; the queue is read between chunks of at most
CHUNK_STEPS activity steps. A stimulation takes effect at the first step >= onset + latency
that has not been simulated yet; if that moment already passed (it was queued late), it
starts at the next simulated step and keeps its duration. The ground truth records both the
requested onset and the simulated evoked window.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simulators.world.activity import ActivityEngine
from simulators.world.config import WorldConfig
from simulators.world.indicator import Indicator
from simulators.world.kernels import (
    PHOTON_GAP_INDEX,
    PHOTON_PENDING_MU,
    sample_photon_counts,
)
from simulators.world.motion import BrainMotion
from simulators.world.specimen import PlaneMaps, Specimen

CHUNK_STEPS = 16
"""Activity steps simulated between looks at the stimulation queue (16 ms at dt = 1 ms)."""

GAP_BUFFER_SIZE = 1 << 16
"""Exp(1) photon gaps drawn per bulk refill."""

TIME_TOLERANCE_S = 1e-9
"""How far a sampling call may start before the end of the previous one (rounding)."""

MAX_CACHED_PLANES = 8
FOCUS_QUANTUM_UM = 0.01
"""Planes are rendered at z rounded to this (far below the axial PSF) and cached."""


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """A snapshot of what really happened in the world (for tests and reports only).

    Cells: positions_um (n, 3), radii_um, brightness, opsin (bool), sensory_cells and
    motor_cells (index arrays), base_rate_hz (spontaneous Poisson rate; for place cells the
    out-of-field rate; 0 in the latent model, whose rates come from the fields),
    place_field_centre_m (NaN for cells without a place field).
    Activity: spikes = (cell int32, time_s float64) of every spike so far (time = start of
    its step); stimulations = one dict per stimulate_spots call.
    Imaging: focus_z_um, in_focus_cells and footprints (flat grid indices, see PlaneMaps) of
    the current plane, and the grid geometry (grid_x0_um, grid_y0_um, grid_resolution_um,
    grid_shape).
    Animal: animal_times_s, animal_position_m, animal_speed_m_per_s (every
    animal.trace_interval_s), reward_times_s.
    Brain motion: motion_times_s and motion_um (n, 2) as (x, y), the specimen's displacement
    every animal.trace_interval_s (empty when motion is disabled); image content moves by +d.
    """

    t_s: float
    positions_um: np.ndarray
    radii_um: np.ndarray
    brightness: np.ndarray
    opsin: np.ndarray
    sensory_cells: np.ndarray
    motor_cells: np.ndarray
    base_rate_hz: np.ndarray
    place_field_centre_m: np.ndarray
    spikes: tuple[np.ndarray, np.ndarray]
    stimulations: list[dict[str, Any]]
    focus_z_um: float
    in_focus_cells: np.ndarray
    footprints: dict[int, np.ndarray]
    grid_x0_um: float
    grid_y0_um: float
    grid_resolution_um: float
    grid_shape: tuple[int, int]
    animal_times_s: np.ndarray
    animal_position_m: np.ndarray
    animal_speed_m_per_s: np.ndarray
    reward_times_s: np.ndarray
    motion_times_s: np.ndarray
    motion_um: np.ndarray
    indicator: Indicator = field(repr=False)

    @property
    def n_cells(self) -> int:
        return int(self.positions_um.shape[0])

    def calcium_at(self, times_s: np.ndarray) -> np.ndarray:
        """Expected dF/F, shape (len(times_s), n_cells), from the spikes so far.

        Equals the simulated relative fluorescence minus 1 at step starts (see indicator.py).
        """
        cells, times = self.spikes
        return self.indicator.dff_at(cells, times, self.n_cells, np.asarray(times_s))


@dataclass
class _Stimulation:
    serial: int
    start_step: int
    end_step: int
    cells: np.ndarray
    excitation: np.ndarray
    record: dict[str, Any]


class World:
    """The simulated specimen and its activity, observed through photons (see module doc)."""

    def __init__(
        self, config: WorldConfig, seed: int, max_cached_planes: int = MAX_CACHED_PLANES
    ) -> None:
        if not isinstance(config, WorldConfig):
            raise TypeError(f"config must be a WorldConfig, got {type(config).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed = {seed!r} must be a non-negative integer")
        self.config = config
        self.seed = int(seed)
        # rendered focal planes kept (volumetric imaging visits settled and settling planes)
        self.max_cached_planes = int(max_cached_planes)
        specimen_seed, activity_seed, photon_seed, neuropil_seed, motion_seed = \
            np.random.SeedSequence(self.seed).spawn(5)
        self.specimen = Specimen(config, np.random.default_rng(specimen_seed), neuropil_seed)
        self.n_cells: int = self.specimen.n_cells
        self.activity = ActivityEngine(config, self.n_cells, self.specimen.sensory_cells,
                                       self.specimen.motor_cells,
                                       np.random.default_rng(activity_seed))
        self._dt_s = config.dt_s
        self._inv_step_s = 1.0 / config.dt_s

        # photons: bulk Exp(1) gaps and the sampler's carried-over state
        self._photon_rng = np.random.default_rng(photon_seed)
        self._gaps = self._photon_rng.standard_exponential(GAP_BUFFER_SIZE)
        self._photon_state = np.array([-1.0, 0.0, -1.0, 0.0])
        self._cell_mu = np.zeros(self.n_cells)

        # fluorescence of the steps of the current chunk; row 0 = the last step before it
        self._fluor = np.ones((CHUNK_STEPS + 1, self.n_cells), dtype=np.float32)
        self._neuropil_rel = np.ones(CHUNK_STEPS + 1)
        # brain motion: the animal's speed and the displacement (um) of the same steps
        self.motion = BrainMotion.from_config(config.motion, config.dt_s,
                                              np.random.default_rng(motion_seed),
                                              config.animal.trace_interval_s)
        self._motion_enabled = config.motion.enabled
        self._speed = np.zeros(CHUNK_STEPS + 1)
        self._motion_x_um = np.zeros(CHUNK_STEPS + 1)
        self._motion_y_um = np.zeros(CHUNK_STEPS + 1)
        self._last_row = 0
        self._sampled_until_s = 0.0

        # stimulation
        self._excitation = np.zeros(self.n_cells)
        self._pending: list[_Stimulation] = []
        self._active: list[_Stimulation] = []
        self._active_ids: tuple[int, ...] = ()
        self._stimulation_records: list[dict[str, Any]] = []

        self._lock = threading.RLock()
        self._stim_lock = threading.Lock()
        self._excitation_cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._planes: OrderedDict[int, PlaneMaps] = OrderedDict()
        self._focus_z_um = 0.0
        self._plane = self._plane_at(0.0)

    # -- time --------------------------------------------------------------------------------
    @property
    def t_s(self) -> float:
        """Virtual time reached: the end of the last simulated activity step."""
        return self.activity.steps_done * self._dt_s

    def advance_to(self, t_s: float) -> None:
        """Simulate every step starting before t_s (no-op if already there)."""
        if not math.isfinite(t_s):
            raise ValueError(f"t_s = {t_s!r} must be finite")
        with self._lock:
            target = math.ceil(t_s * self._inv_step_s - 1e-9)
            while self.activity.steps_done < target:
                self._run_chunk(target - self.activity.steps_done)

    def _run_chunk(self, max_steps: int) -> int:
        """Simulate up to min(max_steps, CHUNK_STEPS) steps into rows 1..m; return m."""
        if self._last_row:
            self._fluor[0] = self._fluor[self._last_row]
            self._neuropil_rel[0] = self._neuropil_rel[self._last_row]
            self._motion_x_um[0] = self._motion_x_um[self._last_row]
            self._motion_y_um[0] = self._motion_y_um[self._last_row]
        m = self._apply_stimulation(min(max_steps, CHUNK_STEPS))
        first_step = self.activity.steps_done
        self.activity.run(m, self._fluor, self._neuropil_rel, out_row=1, speed_out=self._speed)
        if self._motion_enabled:
            self.motion.advance(first_step, self._speed[1:m + 1], self._motion_x_um[1:m + 1],
                                self._motion_y_um[1:m + 1])
        self._last_row = m
        return m

    # -- focus -------------------------------------------------------------------------------
    @property
    def focus_z_um(self) -> float:
        return self._focus_z_um

    def set_focus_z_um(self, z_um: float) -> None:
        """Move the imaged plane (rendered planes are cached)."""
        if not math.isfinite(z_um):
            raise ValueError(f"z_um = {z_um!r} must be finite")
        with self._lock:
            self._plane = self._plane_at(float(z_um))
            self._focus_z_um = float(z_um)

    def _plane_at(self, z_um: float) -> PlaneMaps:
        key = round(z_um / FOCUS_QUANTUM_UM)
        plane = self._planes.get(key)
        if plane is None:
            plane = self.specimen.render_plane(key * FOCUS_QUANTUM_UM)
            self._planes[key] = plane
            if len(self._planes) > self.max_cached_planes:
                self._planes.popitem(last=False)
        else:
            self._planes.move_to_end(key)
        self._flat_label = plane.label.ravel()
        self._flat_weight = plane.weight.ravel()
        self._flat_neuropil = plane.neuropil.ravel()
        return plane

    @property
    def plane(self) -> PlaneMaps:
        """The rendered maps of the current focal plane."""
        return self._plane

    # -- photons -----------------------------------------------------------------------------
    def sample_photons(self, x_um: np.ndarray, y_um: np.ndarray, t0_s: float, dt_s: float,
                       power_mw: float, out: np.ndarray) -> None:
        """Photon counts of n consecutive PMT samples (at t0_s + j dt_s) into out (int32).

        x_um, y_um: actual beam positions (float64, shape (n,)). Each sample sees the
        fluorescence of its own activity step; the expected count is
            mu = [cell_rate b_c F_c(t) w(x, y) + neuropil_rate N(x, y) Np(t)] (P/P_ref)^2 dt
                 + dark_rate dt
        (off the grid: dark only), and counts are Poisson (kernels.sample_photon_counts).
        Sampling calls must not go back in time: t0_s >= end of the previous call.
        """
        x = np.ascontiguousarray(x_um, dtype=np.float64)
        y = np.ascontiguousarray(y_um, dtype=np.float64)
        if x.ndim != 1 or y.shape != x.shape:
            raise ValueError(f"x_um {np.shape(x_um)} and y_um {np.shape(y_um)} must be 1-D "
                             "arrays of the same length")
        if not isinstance(out, np.ndarray) or out.dtype != np.int32 or out.shape != x.shape \
                or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous int32 array of shape {x.shape}, got "
                             f"{getattr(out, 'dtype', type(out))} {getattr(out, 'shape', '')}")
        if not (math.isfinite(t0_s) and t0_s >= 0.0):
            raise ValueError(f"t0_s = {t0_s!r} must be finite and >= 0")
        if not (math.isfinite(dt_s) and dt_s > 0.0):
            raise ValueError(f"dt_s = {dt_s!r} must be finite and > 0")
        if not (math.isfinite(power_mw) and power_mw >= 0.0):
            raise ValueError(f"power_mw = {power_mw!r} must be finite and >= 0")
        n = x.shape[0]
        cfg = self.config
        with self._lock:
            if t0_s < self._sampled_until_s - TIME_TOLERANCE_S:
                raise ValueError(
                    f"t0_s = {t0_s:.9g} s is before the end of the previous sampling call "
                    f"({self._sampled_until_s:.9g} s): the world cannot go back in time")
            first_step = int(t0_s * self._inv_step_s)
            if first_step < self.activity.steps_done - 1:
                raise ValueError(
                    f"t0_s = {t0_s:.9g} s lies in an activity step already simulated and "
                    f"discarded (world time {self.t_s:.9g} s, advanced with advance_to); "
                    f"sample at t0_s >= {(self.activity.steps_done - 1) * self._dt_s:.9g} s")
            if n == 0:
                return
            while self.activity.steps_done < first_step:
                self._run_chunk(first_step - self.activity.steps_done)
            power_factor = (power_mw / cfg.reference_power_mw) ** 2
            dt_us = dt_s * 1e6
            np.multiply(self.specimen.brightness, cfg.cell_photon_rate_mhz * power_factor * dt_us,
                        out=self._cell_mu)
            neuropil_mu = cfg.neuropil_photon_rate_mhz * power_factor * dt_us
            dark_mu = cfg.dark_rate_mhz * dt_us
            plane = self._plane
            ny, nx = plane.shape
            last_step = int((t0_s + (n - 1) * dt_s) * self._inv_step_s)
            base_step = self.activity.steps_done - 1 - self._last_row
            n_rows = self._last_row + 1
            j = 0
            while j < n:
                step = int((t0_s + j * dt_s) * self._inv_step_s)
                if step - base_step >= n_rows:
                    base_step = self.activity.steps_done - 1
                    n_rows = self._run_chunk(last_step - self.activity.steps_done + 1) + 1
                j = sample_photon_counts(
                    x, y, j, t0_s, dt_s, self._inv_step_s, base_step, n_rows,
                    plane.x0_um, plane.y0_um, 1.0 / plane.resolution_um, nx, ny,
                    self._flat_label, self._flat_weight, self._flat_neuropil, self._cell_mu,
                    self._fluor, self._neuropil_rel, self._motion_x_um, self._motion_y_um,
                    neuropil_mu, dark_mu, self._gaps,
                    self._photon_state, out)
                if self._photon_state[PHOTON_PENDING_MU] >= 0.0:
                    self._photon_rng.standard_exponential(out=self._gaps)
                    self._photon_state[PHOTON_GAP_INDEX] = 0.0
            self._sampled_until_s = t0_s + n * dt_s

    # -- stimulation -------------------------------------------------------------------------
    def stimulate_spots(self, xy_um: np.ndarray, radius_um: float, power_mw: float,
                        onset_s: float, duration_s: float) -> np.ndarray:
        """Two-photon photostimulation of spots (m, 2) in the current focal plane.

        power_mw is the power per spot. Opsin cells overlapping a spot laterally (distance <
        radius_um + soma radius) within half the spot's axial FWHM get the evoked rate of
        StimulationConfig from onset + latency for duration_s. Returns the driven cells
        (sorted indices; ground truth). Thread-safe: only queues the stimulation.
        """
        stim = self.config.stimulation
        xy = np.asarray(xy_um, dtype=np.float64)
        if xy.ndim == 1 and xy.shape == (2,):
            xy = xy[None, :]
        if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] == 0 or not np.isfinite(xy).all():
            raise ValueError(f"xy_um must be a finite array of shape (m, 2) with m >= 1, got "
                             f"shape {np.shape(xy_um)}")
        if not (math.isfinite(radius_um) and 0.0 < radius_um <= 1000.0):
            raise ValueError(f"radius_um = {radius_um!r} is outside the allowed range (0, 1000] um")
        if not (math.isfinite(power_mw) and 0.0 <= power_mw <= stim.max_spot_power_mw):
            raise ValueError(f"power_mw = {power_mw!r} is outside the allowed range "
                             f"[0, {stim.max_spot_power_mw:g}] mW (stimulation.max_spot_power_mw)")
        if not (math.isfinite(onset_s) and onset_s >= 0.0):
            raise ValueError(f"onset_s = {onset_s!r} must be finite and >= 0")
        if not (math.isfinite(duration_s) and duration_s > 0.0):
            raise ValueError(f"duration_s = {duration_s!r} must be finite and > 0")

        z_um = self._focus_z_um
        if self._motion_enabled:
            # the spots reach the specimen where it is now (read without the sampling lock, so
            # stimulation never waits for a sampling call: at worst the displacement of an
            # adjacent step); rounded to 0.1 um, far below a soma, so repeated spots still hit
            # the excitation cache
            displacement = np.array([self._motion_x_um[self._last_row],
                                     self._motion_y_um[self._last_row]])
            xy = xy - np.round(displacement, 1)
        cells, driven_excitation = self._spot_excitation(xy, radius_um, power_mw, z_um)

        latency = stim.latency_s
        start_step = math.ceil((onset_s + latency) * self._inv_step_s - 1e-9)
        end_step = math.ceil((onset_s + latency + duration_s) * self._inv_step_s - 1e-9)
        end_step = max(end_step, start_step + 1)
        record: dict[str, Any] = {
            "onset_s": float(onset_s), "duration_s": float(duration_s),
            "power_mw": float(power_mw), "radius_um": float(radius_um),
            "spots_um": xy.tolist(), "focus_z_um": z_um, "driven_cells": cells.copy(),
            "evoked_start_s": None, "evoked_stop_s": None,
        }
        with self._stim_lock:
            serial = len(self._stimulation_records)
            self._pending.append(_Stimulation(serial, start_step, end_step, cells,
                                              driven_excitation, record))
            self._stimulation_records.append(record)
        return cells

    def _spot_excitation(self, xy: np.ndarray, radius_um: float, power_mw: float,
                         z_um: float) -> tuple[np.ndarray, np.ndarray]:
        """Driven cells and their excitation for spots at a focus; cached, because a train
        visits the same few spots many times."""
        key = (xy.tobytes(), float(radius_um), float(power_mw), float(z_um))
        cached = self._excitation_cache.get(key)
        if cached is not None:
            return cached
        stim = self.config.stimulation
        sp = self.specimen
        dz = sp.positions_um[:, 2] - z_um
        axial = np.exp(-4.0 * math.log(2.0) * dz ** 2 / stim.spot_axial_fwhm_um ** 2)
        within_reach = (np.abs(dz) <= stim.spot_axial_fwhm_um / 2.0) & sp.opsin
        excitation = np.zeros(self.n_cells)
        relative_power2 = (power_mw / stim.half_power_mw) ** 2
        for sx, sy in xy:
            lateral = np.hypot(sp.positions_um[:, 0] - sx, sp.positions_um[:, 1] - sy)
            hit = within_reach & (lateral < radius_um + sp.radii_um)
            excitation[hit] += axial[hit] * relative_power2
        cells = np.flatnonzero(excitation > 0.0)
        result = (cells, excitation[cells])
        if len(self._excitation_cache) > 256:
            self._excitation_cache.clear()
        self._excitation_cache[key] = result
        return result

    def _apply_stimulation(self, max_steps: int) -> int:
        """Set the evoked rates for the next step; return how many steps they hold (<= max)."""
        k = self.activity.steps_done
        with self._stim_lock:
            while self._pending:
                st = self._pending.pop(0)
                if st.start_step < k:  # queued late: shift, keep the duration
                    st.end_step += k - st.start_step
                    st.start_step = k
                st.record["evoked_start_s"] = st.start_step * self._dt_s
                st.record["evoked_stop_s"] = st.end_step * self._dt_s
                self._active.append(st)
        self._active = [st for st in self._active if st.end_step > k]
        now = tuple(st.serial for st in self._active if st.start_step <= k)
        if now != self._active_ids:
            self._excitation[:] = 0.0
            for st in self._active:
                if st.start_step <= k:
                    self._excitation[st.cells] += st.excitation
            s = self._excitation
            np.multiply(self.config.stimulation.max_evoked_rate_hz, s / (1.0 + s),
                        out=self.activity.evoked_rate_hz)
            self._active_ids = now
        m = max_steps
        for st in self._active:
            event = st.start_step if st.start_step > k else st.end_step
            m = min(m, event - k)
        return m

    # -- ground truth ------------------------------------------------------------------------
    @property
    def ground_truth(self) -> GroundTruth:
        """A snapshot (copies) of the world's ground truth so far."""
        with self._lock:
            sp = self.specimen
            act = self.activity
            cells, steps = act.spikes.arrays()
            times, position, speed = act.animal.trace()
            motion_times, motion_um = self.motion.trace()
            with self._stim_lock:
                stimulations = [dict(r, driven_cells=r["driven_cells"].copy())
                                for r in self._stimulation_records]
            plane = self._plane
            return GroundTruth(
                t_s=self.t_s, positions_um=sp.positions_um.copy(), radii_um=sp.radii_um.copy(),
                brightness=sp.brightness.copy(), opsin=sp.opsin.copy(),
                sensory_cells=sp.sensory_cells.copy(), motor_cells=sp.motor_cells.copy(),
                base_rate_hz=act.base_rate_hz.copy(),
                place_field_centre_m=act.place_centre_m.copy(),
                spikes=(cells, steps * self._dt_s), stimulations=stimulations,
                focus_z_um=self._focus_z_um, in_focus_cells=plane.in_focus_cells.copy(),
                footprints={c: p.copy() for c, p in plane.footprints.items()},
                grid_x0_um=plane.x0_um, grid_y0_um=plane.y0_um,
                grid_resolution_um=plane.resolution_um, grid_shape=plane.shape,
                animal_times_s=times, animal_position_m=position, animal_speed_m_per_s=speed,
                reward_times_s=act.animal.reward_times_s(), motion_times_s=motion_times,
                motion_um=motion_um, indicator=act.indicator)
