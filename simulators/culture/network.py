"""Building a culture: neuron types and parameters, positions on the MEA, sparse synapses.

Neurons 0 .. n_inhibitory-1 are inhibitory fast-spiking cells, the rest excitatory regular
spiking cells (Izhikevich 2003 parameters, science.md section 6). The LSA code puts the
inhibitory neurons first; we do the same in every preset so indices mean the same thing.

Synapses are stored by presynaptic neuron (CSR): the synapses of neuron j are
syn_start[j] .. syn_start[j+1]-1, with target `syn_post`, weight `syn_weight` and whether
the synapse is plastic (excitatory -> excitatory). For STDP the plastic synapses are also
indexed by their postsynaptic neuron (`in_start`, `in_syn`).

Connectivity "random_targets" (LSA code): every neuron draws `targets_per_neuron` targets
with replacement among the other neurons (never itself); a target drawn several times is one
synapse (the code keeps a dense weight matrix). With `target_sigma_um` > 0 the draw prefers
near neighbours, probability proportional to exp(-d^2 / (2 sigma^2)) (cultured neurons
connect mostly locally). "input_output_pair": one synapse from every input neuron to every
output neuron, nothing else (the lsa_minimal preset).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulators.culture.config import CultureConfig, neuron_electrode
from simulators.culture.electrodes import electrode_positions_um

# Izhikevich (2003) parameters
RS = (0.02, 0.2, -65.0, 8.0)  # regular spiking (excitatory)
FS = (0.1, 0.2, -65.0, 2.0)  # fast spiking (inhibitory)

SOMA_DEPTH_SD_UM = 3.0
"""Somata of a monolayer culture lie within a few um of the glass (z ~ 0)."""


@dataclass(frozen=True)
class Network:
    inhibitory: np.ndarray  # bool (n,)
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    d: np.ndarray
    positions_um: np.ndarray  # (n, 3)
    syn_start: np.ndarray  # int64 (n + 1,)
    syn_post: np.ndarray  # int32 (m,)
    syn_weight: np.ndarray  # float64 (m,) initial weights
    syn_plastic: np.ndarray  # bool (m,)
    in_start: np.ndarray  # int64 (n + 1,) plastic synapses by postsynaptic neuron
    in_syn: np.ndarray  # int64

    @property
    def n_neurons(self) -> int:
        return int(self.inhibitory.size)

    @property
    def n_synapses(self) -> int:
        return int(self.syn_post.size)

    @property
    def syn_pre(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_neurons, dtype=np.int32), np.diff(self.syn_start))


def place_neurons(config: CultureConfig, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) soma positions in um: uniform over the MEA area plus `margin_um` (layout
    'uniform'), or on the electrodes: every neuron of a cluster within the electrode's
    radius, on a ring (layouts 'clusters' and 'pair'), so all of them are stimulated and
    recorded fully by their electrode."""
    n = config.n_neurons
    pos = np.zeros((n, 3))
    if config.layout == "uniform":
        half_x = (config.mea_cols - 1) * config.mea_pitch_um / 2 + config.margin_um
        half_y = (config.mea_rows - 1) * config.mea_pitch_um / 2 + config.margin_um
        pos[:, 0] = rng.uniform(-half_x, half_x, n)
        pos[:, 1] = rng.uniform(-half_y, half_y, n)
        pos[:, 2] = rng.normal(0.0, SOMA_DEPTH_SD_UM, n)
        return pos
    electrodes = electrode_positions_um(config)
    sites = np.array([neuron_electrode(config, i) for i in range(n)])
    for e in np.unique(sites):
        members = np.flatnonzero(sites == e)
        k = members.size
        ring = 0.0 if k == 1 else 0.6 * config.electrode_radius_um
        angle = 2 * np.pi * np.arange(k) / k
        pos[members, 0] = electrodes[e, 0] + ring * np.cos(angle)
        pos[members, 1] = electrodes[e, 1] + ring * np.sin(angle)
    return pos


def _targets(
    config: CultureConfig, positions_um: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    n = config.n_neurons
    out = []
    m = config.targets_per_neuron
    for i in range(n):
        others = np.delete(np.arange(n), i)
        if others.size == 0 or m == 0:
            out.append(np.zeros(0, np.int64))
            continue
        if config.target_sigma_um > 0:
            d2 = ((positions_um[others, :2] - positions_um[i, :2]) ** 2).sum(axis=1)
            p = np.exp(-d2 / (2 * config.target_sigma_um**2))
            p /= p.sum()
            drawn = others[rng.choice(others.size, size=m, replace=True, p=p)]
        else:
            drawn = others[rng.integers(0, others.size, size=m)]
        out.append(np.unique(drawn))
    return out


def build_network(config: CultureConfig, rng: np.random.Generator) -> Network:
    """Neurons, positions and synapses for a config; all randomness from `rng`, in a fixed
    order (positions, then targets)."""
    n = config.n_neurons
    inhibitory = np.arange(n) < config.n_inhibitory
    params = np.where(inhibitory[:, None], np.array(FS), np.array(RS))
    positions = place_neurons(config, rng)

    if config.connectivity == "input_output_pair":
        targets = [np.zeros(0, np.int64) for _ in range(n)]
        outputs = np.arange(*config.output_group)
        for i in range(*config.input_group):
            targets[i] = outputs[outputs != i]
    else:
        targets = _targets(config, positions, rng)

    counts = np.array([t.size for t in targets], dtype=np.int64)
    syn_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    syn_post = (np.concatenate(targets) if n else np.zeros(0)).astype(np.int32)
    pre = np.repeat(np.arange(n), counts)
    pre_inh = inhibitory[pre]
    syn_weight = np.where(pre_inh, config.inhibitory_weight, config.excitatory_weight)
    syn_plastic = (~pre_inh) & (~inhibitory[syn_post])
    if not config.stdp:
        syn_plastic[:] = False

    plastic_idx = np.flatnonzero(syn_plastic)
    order = plastic_idx[np.argsort(syn_post[plastic_idx], kind="stable")]
    in_counts = np.bincount(syn_post[plastic_idx], minlength=n)
    in_start = np.concatenate([[0], np.cumsum(in_counts)]).astype(np.int64)
    return Network(
        inhibitory=inhibitory,
        a=params[:, 0].copy(),
        b=params[:, 1].copy(),
        c=params[:, 2].copy(),
        d=params[:, 3].copy(),
        positions_um=positions,
        syn_start=syn_start,
        syn_post=syn_post,
        syn_weight=syn_weight.astype(np.float64),
        syn_plastic=syn_plastic,
        in_start=in_start,
        in_syn=order.astype(np.int64),
    )
