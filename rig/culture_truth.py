"""Ground-truth metrics of a simulated culture for MEA protocols (never used to decide a
stimulus): which neurons an electrode reaches, and mean synaptic weights between groups, read
from `Culture` ground-truth snapshots. Shared by stimulus_avoidance and pong."""

from __future__ import annotations

from typing import Any

import numpy as np


def electrode_neurons(culture: Any, electrode: int, coupling: str) -> np.ndarray:
    """Neurons within half-effect distance of an electrode (falloff >= 0.5) for stimulation
    (`coupling` = "stim") or recording ("rec"): ground truth, for metrics only."""
    c = culture.stim_coupling if coupling == "stim" else culture.recording
    neurons, values = c.of(electrode)
    if values.size == 0:
        return neurons
    return neurons[values >= 0.5 * values.max()] if values.max() > 0 else neurons[:0]


def synapse_mean(
    snapshot: Any, pre: np.ndarray, post: np.ndarray | None, plastic_only: bool
) -> float | None:
    """Mean weight of the synapses from `pre` to `post` neurons (None: to any neuron) in a
    culture ground-truth snapshot (pruned synapses count as 0); None if there is none."""
    sel = np.isin(snapshot.synapse_pre, pre)
    if post is not None:
        sel &= np.isin(snapshot.synapse_post, post)
    if plastic_only:
        sel &= snapshot.plastic
    return float(snapshot.weights[sel].mean()) if sel.any() else None


def weight_metrics(
    snapshot: Any, groups: dict[str, np.ndarray], neighbourhoods: dict[str, tuple]
) -> dict[str, float | None]:
    """`in_out` over the preset's input and output groups (all synapses, as
    Culture.mean_weight) when it has them; each neighbourhood entry name -> (pre, post or
    None) over plastic synapses only."""
    out: dict[str, float | None] = {}
    if groups["input"].size and groups["output"].size:
        out["in_out"] = synapse_mean(snapshot, groups["input"], groups["output"], False)
    for name, (pre, post) in neighbourhoods.items():
        out[name] = synapse_mean(snapshot, pre, post, True)
    return out
