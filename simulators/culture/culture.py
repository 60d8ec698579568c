"""The simulated culture: an Izhikevich network with STDP on an MEA, advanced in 1 ms steps.

    culture = Culture(preset_config("lsa_minimal"), seed=3)
    culture.set_drive([culture.electrode_of("input")], charge_nc_per_ms=1.0)  # stimulation on
    culture.run(10_000, stop_on=culture.group("output"))   # until the output neuron fires
    culture.clear_drive()
    culture.weight(0, 1)                                      # ground truth

Stimulation reaches the neurons through the electrodes (electrodes.py): a persistent drive
(charge per ms on some electrodes, "stimulation on") and single pulses queued for a given
step. Recording is not done here: the RHX simulator turns spikes into electrode signals.

Determinism: the network (positions, synapses) comes from the seed's first SeedSequence
child, the noise from the second (or, with `noise_stream` = k > 0, from an independent
"sister" stream: same wiring, other noise - what a yoked control culture needs, because a
yoked run with the seed's own noise and the same stimuli would replay the original run
exactly). Noise is drawn in blocks of NOISE_BLOCK_STEPS rows, so results never depend on
how callers chunk time. Not thread-safe: callers serialise access (the RHX server does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from simulators.culture.config import CultureConfig, group_electrodes
from simulators.culture.electrodes import (
    ElectrodeCoupling,
    NeuronRecording,
    electrode_labels,
    electrode_positions_um,
    neuron_recording,
    recording_coupling,
    stimulation_coupling,
)
from simulators.culture.kernels import STOP_WATCH, run_steps
from simulators.culture.network import Network, build_network

NOISE_BLOCK_STEPS = 256
"""Steps of noise drawn per block (rows of standard normals, one per neuron)."""


class PulseLog:
    """Every pulse as (requested step, step it acted in, electrode, leading charge nC), in a
    growing structured array (one object, whatever the number of pulses)."""

    DTYPE = np.dtype(
        [("step_requested", "i8"), ("step", "i8"), ("electrode", "i4"), ("charge_nc", "f8")]
    )

    def __init__(self) -> None:
        self._rows = np.zeros(1024, self.DTYPE)
        self.n = 0

    def append(self, step_requested: int, step: int, electrode: int, charge_nc: float) -> None:
        if self.n == self._rows.shape[0]:
            self._rows = np.resize(self._rows, 2 * self.n)
        self._rows[self.n] = (step_requested, step, electrode, charge_nc)
        self.n += 1

    def array(self) -> np.ndarray:
        return self._rows[: self.n].copy()


class SpikeLog:
    """Every spike so far as (neuron, step), in growing arrays (capacity doubles)."""

    def __init__(self, capacity: int = 1 << 14) -> None:
        self._neurons = np.zeros(capacity, dtype=np.int32)
        self._steps = np.zeros(capacity, dtype=np.int64)
        self.n = 0

    def append(self, neurons: np.ndarray, steps: np.ndarray) -> None:
        k = neurons.shape[0]
        if self.n + k > self._neurons.shape[0]:
            capacity = max(2 * self._neurons.shape[0], self.n + k)
            self._neurons = np.resize(self._neurons, capacity)
            self._steps = np.resize(self._steps, capacity)
        self._neurons[self.n : self.n + k] = neurons
        self._steps[self.n : self.n + k] = steps
        self.n += k

    def since(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Views (neurons, steps) of the spikes logged from `index` on (valid until the next
        append)."""
        return self._neurons[index : self.n], self._steps[index : self.n]


@dataclass(frozen=True, eq=False)
class CultureGroundTruth:
    """A snapshot of what really is and happened (for tests and reports, never for the
    pipeline). Times in seconds from the culture's step 0."""

    t_s: float
    positions_um: np.ndarray  # (n, 3)
    inhibitory: np.ndarray  # bool (n,)
    electrode_positions_um: np.ndarray  # (n_electrodes, 2)
    electrode_labels: list[str]
    synapse_pre: np.ndarray
    synapse_post: np.ndarray
    weights: np.ndarray  # true weights now
    plastic: np.ndarray
    spikes: tuple[np.ndarray, np.ndarray]  # (neuron int32, time_s float64)
    stimulations: list[dict[str, Any]]  # drive changes ("stimulation on/off")
    pulses: np.ndarray  # PulseLog.DTYPE: step_requested, step, electrode, charge_nc
    groups: dict[str, np.ndarray]  # "input", "output", "dummy" neuron indices
    group_electrodes: dict[str, int]


class Culture:
    """A simulated culture on an MEA (see the module docstring and config.py)."""

    dt_ms = 1.0

    def __init__(self, config: CultureConfig, seed: int) -> None:
        if not isinstance(config, CultureConfig):
            raise TypeError(f"config must be a CultureConfig, got {type(config).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed = {seed!r} must be a non-negative integer")
        self.config = config
        self.seed = int(seed)
        root = np.random.SeedSequence(self.seed)
        network_seq = root.spawn(1)[0]
        noise_key = (1,) if config.noise_stream == 0 else (1, config.noise_stream)
        noise_seq = np.random.SeedSequence(self.seed, spawn_key=noise_key)
        self.network: Network = build_network(config, np.random.default_rng(network_seq))
        self._noise_rng = np.random.default_rng(noise_seq)
        net = self.network
        n = net.n_neurons
        self.n_neurons = n
        self.n_electrodes = config.n_electrodes
        self.electrode_positions_um = electrode_positions_um(config)
        self.electrode_labels = electrode_labels(config)
        self.stim_coupling: ElectrodeCoupling = stimulation_coupling(config, net.positions_um)
        self.recording: ElectrodeCoupling = recording_coupling(config, net.positions_um)
        self.neuron_recording: NeuronRecording = neuron_recording(self.recording, n)

        # neuron state: v starts at c, u at d (the LSA code)
        self._v = net.c.copy()
        self._u = net.d.copy()
        self._syn_in = np.zeros(n)
        self._ext = np.zeros(n)
        self._syn_pre = net.syn_pre
        self._w = net.syn_weight.copy()
        self._scale = np.ones(1)
        window = config.stdp_window_ms
        self._stdp_table = config.stdp_amplitude * config.stdp_base ** np.arange(window)
        self._stdp_table[0] = 0.0
        self._recent = np.full((n, window), -(1 << 40), dtype=np.int64)
        self._recent_head = np.zeros(n, dtype=np.int64)
        self._recent_count = np.zeros(n, dtype=np.int64)
        # short-term plasticity of excitatory synapses (Mongillo et al. 2008)
        big_u = config.stp_u
        self._stp_mask = (~net.inhibitory) & config.stp
        self._stp_u = np.full(n, big_u)
        self._stp_x = np.ones(n)
        self._stp_last = np.full(n, -(1 << 40), dtype=np.int64)
        self._stp_norm = 1.0 / (big_u * (2.0 - big_u))
        # noise
        self._noise = np.zeros((NOISE_BLOCK_STEPS, n))
        self._noise_row = np.array([NOISE_BLOCK_STEPS], dtype=np.int64)
        # stimulation
        self._drive_nc = np.zeros(self.n_electrodes)
        self._drive_input = np.zeros(n)
        self._pulses: list[tuple[int, int, float]] = []  # (step, electrode, charge nC)
        self._pulse_arrays = self._empty_pulses()
        self._pulse_cursor = np.zeros(1, dtype=np.int64)
        self._stimulations: list[dict[str, Any]] = []  # drive changes
        self.pulse_log = PulseLog()
        # spikes
        self._out_neuron = np.zeros(n * NOISE_BLOCK_STEPS, dtype=np.int32)
        self._out_step = np.zeros(n * NOISE_BLOCK_STEPS, dtype=np.int64)
        self._out_count = np.zeros(1, dtype=np.int64)
        self._no_watch = np.zeros(n, dtype=np.bool_)
        self.spike_log = SpikeLog()
        self._run_start = 0
        self.steps_done = 0

    # -- identity ------------------------------------------------------------------------------
    @property
    def t_s(self) -> float:
        return self.steps_done * self.dt_ms * 1e-3

    def group(self, name: str) -> np.ndarray:
        """Neuron indices of group 'input', 'output' or 'dummy' (empty if the preset has none)."""
        groups = {
            "input": self.config.input_group,
            "output": self.config.output_group,
            "dummy": self.config.dummy_group,
        }
        if name not in groups:
            raise KeyError(f"group {name!r}: choose input, output or dummy")
        return np.arange(*groups[name])

    def electrode_of(self, group: str) -> int:
        """The electrode a group sits on (LSA presets)."""
        electrodes = group_electrodes(self.config)
        if group not in electrodes:
            raise KeyError(f"preset {self.config.preset!r} has no electrode for group {group!r}")
        return electrodes[group]

    # -- stimulation -----------------------------------------------------------------------------
    def _check_electrode(self, electrode: int) -> int:
        e = int(electrode)
        if not 0 <= e < self.n_electrodes:
            raise ValueError(
                f"electrode {electrode!r} does not exist: the MEA has electrodes "
                f"0 .. {self.n_electrodes - 1}"
            )
        return e

    def set_drive(self, electrodes: Sequence[int], charge_nc_per_ms: float) -> None:
        """Stimulation on: every following step, each electrode delivers `charge_nc_per_ms` of
        leading-phase charge (one pulse per ms). Replaces the drive on these electrodes."""
        if not np.isfinite(charge_nc_per_ms) or charge_nc_per_ms < 0:
            raise ValueError(f"charge_nc_per_ms = {charge_nc_per_ms!r} must be finite and >= 0")
        for e in electrodes:
            self._drive_nc[self._check_electrode(e)] = charge_nc_per_ms
        self._update_drive()
        self._stimulations.append(
            {
                "kind": "drive",
                "step": self.steps_done,
                "electrodes": [int(e) for e in electrodes],
                "charge_nc_per_ms": float(charge_nc_per_ms),
            }
        )

    def clear_drive(self) -> None:
        """Stimulation off on every electrode."""
        if self._drive_nc.any():
            self._drive_nc[:] = 0.0
            self._update_drive()
            self._stimulations.append(
                {
                    "kind": "drive",
                    "step": self.steps_done,
                    "electrodes": [],
                    "charge_nc_per_ms": 0.0,
                }
            )

    @property
    def drive_nc(self) -> np.ndarray:
        return self._drive_nc.copy()

    def _update_drive(self) -> None:
        self._drive_input[:] = 0.0
        for e in np.flatnonzero(self._drive_nc):
            neurons, coupling = self.stim_coupling.of(e)
            self._drive_input[neurons] += self._drive_nc[e] * coupling

    def queue_pulse(self, electrode: int, charge_nc: float, step: int) -> int:
        """A single pulse of leading-phase charge `charge_nc` on `electrode`, landing in
        `step`; a step already simulated is replaced by the next one. Returns the step it
        will act in (ground truth records both)."""
        e = self._check_electrode(electrode)
        if not np.isfinite(charge_nc) or charge_nc < 0:
            raise ValueError(f"charge_nc = {charge_nc!r} must be finite and >= 0")
        applied = max(int(step), self.steps_done)
        self._pulses.append((applied, e, float(charge_nc)))
        self._pulse_arrays = None
        self.pulse_log.append(int(step), applied, e, float(charge_nc))
        return applied

    @staticmethod
    def _empty_pulses() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0)

    def _prepare_pulses(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._pulse_arrays is None:
            self._pulses.sort()
            if self._pulses:
                steps, electrodes, charges = zip(*self._pulses)
                self._pulse_arrays = (
                    np.array(steps, np.int64),
                    np.array(electrodes, np.int32),
                    np.array(charges, np.float64),
                )
            else:
                self._pulse_arrays = self._empty_pulses()
            self._pulse_cursor[0] = 0
        return self._pulse_arrays

    # -- running ---------------------------------------------------------------------------------
    def run(
        self,
        n_steps: int,
        *,
        stop_on: Sequence[int] | np.ndarray | None = None,
        stop_count: int = 1,
    ) -> int:
        """Simulate up to `n_steps` 1 ms steps. With `stop_on` (neuron indices), stop after the
        first step in which at least `stop_count` of them fired. Returns the steps simulated;
        the spikes of this call are `last_run_spikes()`."""
        if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 0:
            raise ValueError(f"n_steps = {n_steps!r} must be an integer >= 0")
        watch = self._no_watch
        watch_min = 0
        if stop_on is not None:
            watch = np.zeros(self.n_neurons, dtype=np.bool_)
            watch[np.asarray(stop_on, dtype=np.int64)] = True
            watch_min = int(stop_count)
            if watch_min < 1:
                raise ValueError(f"stop_count = {stop_count!r} must be >= 1")
        self._run_start = self.spike_log.n
        net, cfg = self.network, self.config
        pulse_steps, pulse_el, pulse_q = self._prepare_pulses()
        total = 0
        while total < n_steps:
            if self._noise_row[0] >= NOISE_BLOCK_STEPS:
                self._noise_rng.standard_normal(out=self._noise)
                self._noise_row[0] = 0
            self._out_count[0] = 0
            done, reason = run_steps(
                n_steps - total,
                self.steps_done,
                self._v,
                self._u,
                net.a,
                net.b,
                net.c,
                net.d,
                cfg.threshold_mv,
                self._noise,
                self._noise_row,
                cfg.noise_sd,
                self._syn_in,
                net.syn_start,
                net.syn_post,
                self._syn_pre,
                self._w,
                net.syn_plastic,
                net.in_start,
                net.in_syn,
                self._scale,
                cfg.weight_decay_per_ms,
                cfg.stdp,
                self._stdp_table,
                cfg.weight_max,
                self._recent,
                self._recent_head,
                self._recent_count,
                self._stp_mask,
                self._stp_u,
                self._stp_x,
                self._stp_last,
                cfg.stp_u,
                cfg.stp_tau_d_ms,
                cfg.stp_tau_f_ms,
                self._stp_norm,
                self._drive_input,
                pulse_steps,
                pulse_el,
                pulse_q,
                self._pulse_cursor,
                self.stim_coupling.start,
                self.stim_coupling.neurons,
                self.stim_coupling.values,
                self._ext,
                watch,
                watch_min,
                self._out_neuron,
                self._out_step,
                self._out_count,
            )
            k = int(self._out_count[0])
            if k:
                self.spike_log.append(self._out_neuron[:k], self._out_step[:k])
            total += done
            self.steps_done += done
            if reason == STOP_WATCH:
                break
        if self._pulses and self._pulse_cursor[0] > 0:
            self._pulses = self._pulses[int(self._pulse_cursor[0]) :]
            self._pulse_arrays = None
        return total

    def spikes_in_steps(self, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(neurons, steps) of the spikes in steps first .. stop-1 (copies): for a second
        observer of the same culture (e.g. the two-photon world imaging it while the RHX
        server streams it), which reads what the other one has already simulated."""
        neurons, steps = self.spike_log.since(0)
        a, b = np.searchsorted(steps, [first, stop], side="left")
        return neurons[a:b].copy(), steps[a:b].copy()

    def last_run_spikes(self) -> tuple[np.ndarray, np.ndarray]:
        """(neurons, steps) of the spikes of the last `run` call (views, valid until the next)."""
        return self.spike_log.since(self._run_start)

    def short_term_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(u, x) of every neuron's outgoing synapses as of each neuron's last spike
        (Mongillo et al. 2008: utilisation u, available resources x); copies."""
        return self._stp_u.copy(), self._stp_x.copy()

    # -- ground truth ----------------------------------------------------------------------------
    def true_weights(self) -> np.ndarray:
        """Weight of every synapse now (plastic ones including the accumulated decay)."""
        w = self._w.copy()
        w[self.network.syn_plastic] *= self._scale[0]
        return w

    def weight(self, pre: int, post: int) -> float:
        """Weight of the synapse pre -> post now; KeyError if there is none."""
        net = self.network
        a, b = net.syn_start[pre], net.syn_start[pre + 1]
        hit = np.flatnonzero(net.syn_post[a:b] == post)
        if hit.size == 0:
            raise KeyError(f"there is no synapse {pre} -> {post}")
        s = a + hit[0]
        return float(self._w[s] * (self._scale[0] if net.syn_plastic[s] else 1.0))

    def mean_weight(
        self, pre: Sequence[int] | np.ndarray, post: Sequence[int] | np.ndarray
    ) -> float:
        """Mean weight of all synapses created from `pre` to `post` neurons (pruned ones count
        as 0, so the mean does not jump when a synapse is pruned); NaN if there are none."""
        net = self.network
        pre_mask = np.zeros(self.n_neurons, bool)
        pre_mask[np.asarray(pre, dtype=np.int64)] = True
        post_mask = np.zeros(self.n_neurons, bool)
        post_mask[np.asarray(post, dtype=np.int64)] = True
        sel = pre_mask[self._syn_pre] & post_mask[net.syn_post]
        if not sel.any():
            return float("nan")
        return float(self.true_weights()[sel].mean())

    def ground_truth(self) -> CultureGroundTruth:
        net = self.network
        neurons, steps = self.spike_log.since(0)
        groups = {g: self.group(g) for g in ("input", "output", "dummy")}
        return CultureGroundTruth(
            t_s=self.t_s,
            positions_um=net.positions_um.copy(),
            inhibitory=net.inhibitory.copy(),
            electrode_positions_um=self.electrode_positions_um.copy(),
            electrode_labels=list(self.electrode_labels),
            synapse_pre=self._syn_pre.copy(),
            synapse_post=net.syn_post.copy(),
            weights=self.true_weights(),
            plastic=net.syn_plastic.copy(),
            spikes=(neurons.copy(), steps * (self.dt_ms * 1e-3)),
            stimulations=[dict(s) for s in self._stimulations],
            pulses=self.pulse_log.array(),
            groups=groups,
            group_electrodes=group_electrodes(self.config),
        )
