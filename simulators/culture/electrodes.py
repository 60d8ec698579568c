"""The culture's MEA: where the electrodes are, what they stimulate and what they record.

Geometry: a rows x cols grid with `mea_pitch_um` pitch centred on (0, 0); electrode index
e = row * cols + col, labelled "<col+1><row+1>" as on Multi Channel Systems MEAs (e.g. "45").

Falloff (stimulation and recording alike): an electrode is an equipotential disc of radius
r_e, so neurons over its surface (d <= r_e) get the full effect; beyond the edge the effect
decays as exp(-(d - r_e) / length) and is cut to 0 beyond `max_distance`:

    falloff(d) = 1                          d <= r_e
               = exp(-(d - r_e) / length)   r_e < d <= max_distance
               = 0                          d > max_distance

Stimulation: a pulse whose leading phase carries Q nC adds stim_current_per_nc * Q *
falloff(d) to a neuron's input in the 1 ms step the pulse lands in (leading-phase charge:
the phase that depolarises first sets the response; the balancing phase is not counted).

Recording: a spike of a neuron at distance d appears on the electrode as an extracellular
waveform with negative peak spike_amplitude_uv * falloff_rec(d) (the template below). The
spike stream reports it when that peak reaches the channel's threshold (RHX's
SpikeThresholdMicroVolts, default -70 uV): an ideal detector, no false positives from noise.
Each (electrode, neuron) pair gets a unit id 1, 2, ... in order of decreasing amplitude, as
an ideal spike sorter would (RHX itself sends id 1 for every threshold crossing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from simulators.culture.config import CultureConfig


def electrode_positions_um(config: CultureConfig) -> np.ndarray:
    """(n_electrodes, 2) x, y of every electrode, grid centred on (0, 0)."""
    rows, cols, pitch = config.mea_rows, config.mea_cols, config.mea_pitch_um
    r, c = np.divmod(np.arange(rows * cols), cols)
    return np.column_stack([(c - (cols - 1) / 2) * pitch, (r - (rows - 1) / 2) * pitch])


def electrode_labels(config: CultureConfig) -> list[str]:
    """MCS-style labels "<col><row>" (1-based); with more than 9 rows or columns the two
    numbers are joined by a dot ("10.3")."""
    rows, cols = config.mea_rows, config.mea_cols
    sep = "." if max(rows, cols) > 9 else ""
    return [f"{e % cols + 1}{sep}{e // cols + 1}" for e in range(rows * cols)]


def falloff(
    distance_um: np.ndarray, radius_um: float, length_um: float, max_distance_um: float
) -> np.ndarray:
    """Relative effect at distance d from an electrode centre (see module docstring)."""
    d = np.asarray(distance_um, dtype=np.float64)
    out = np.exp(-np.maximum(d - radius_um, 0.0) / length_um)
    out[d > max_distance_um] = 0.0
    return out


@dataclass(frozen=True)
class ElectrodeCoupling:
    """Sparse electrode -> neuron map: for electrode e, neurons[start[e]:start[e+1]] with
    their per-nC input (stimulation) or peak amplitude in uV (recording)."""

    start: np.ndarray  # int64 (n_electrodes + 1,)
    neurons: np.ndarray  # int32
    values: np.ndarray  # float64

    def of(self, electrode: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.start[electrode], self.start[electrode + 1]
        return self.neurons[a:b], self.values[a:b]


def _coupling(
    config: CultureConfig,
    positions_um: np.ndarray,
    scale: float,
    length_um: float,
    max_distance_um: float,
) -> ElectrodeCoupling:
    electrodes = electrode_positions_um(config)
    start = [0]
    neurons: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for ex, ey in electrodes:
        d = np.hypot(positions_um[:, 0] - ex, positions_um[:, 1] - ey)
        f = falloff(d, config.electrode_radius_um, length_um, max_distance_um) * scale
        idx = np.flatnonzero(f > 0.0)
        idx = idx[np.argsort(-f[idx], kind="stable")]  # strongest first
        neurons.append(idx.astype(np.int32))
        values.append(f[idx])
        start.append(start[-1] + idx.size)
    return ElectrodeCoupling(
        np.asarray(start, dtype=np.int64),
        np.concatenate(neurons) if neurons else np.zeros(0, np.int32),
        np.concatenate(values) if values else np.zeros(0),
    )


def stimulation_coupling(config: CultureConfig, positions_um: np.ndarray) -> ElectrodeCoupling:
    """Input per nC of leading-phase charge, per (electrode, neuron)."""
    return _coupling(
        config,
        positions_um,
        config.stim_current_per_nc,
        config.stim_length_um,
        config.stim_max_distance_um,
    )


def recording_coupling(config: CultureConfig, positions_um: np.ndarray) -> ElectrodeCoupling:
    """Peak spike amplitude (uV, magnitude of the negative peak) per (electrode, neuron),
    strongest first (so the position in the list + 1 is the unit id)."""
    return _coupling(
        config,
        positions_um,
        config.spike_amplitude_uv,
        config.recording_length_um,
        config.recording_max_distance_um,
    )


@dataclass(frozen=True)
class NeuronRecording:
    """The recording map inverted: for neuron n, the electrodes that see it,
    electrodes[start[n]:start[n+1]], with amplitude (uV) and unit id on each."""

    start: np.ndarray  # int64 (n_neurons + 1,)
    electrodes: np.ndarray  # int32
    amplitude_uv: np.ndarray  # float64
    unit_id: np.ndarray  # int32, 1-based, per electrode


def neuron_recording(rec: ElectrodeCoupling, n_neurons: int) -> NeuronRecording:
    n_el = rec.start.size - 1
    electrode = np.repeat(np.arange(n_el, dtype=np.int32), np.diff(rec.start))
    unit = (
        np.concatenate([np.arange(1, rec.start[e + 1] - rec.start[e] + 1) for e in range(n_el)])
        if rec.neurons.size
        else np.zeros(0, np.int64)
    )
    order = np.lexsort((electrode, rec.neurons))
    counts = np.bincount(rec.neurons, minlength=n_neurons)
    start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return NeuronRecording(
        start, electrode[order], rec.values[order], np.minimum(unit[order], 255).astype(np.int32)
    )


# -- waveforms --------------------------------------------------------------------------------

SPIKE_TEMPLATE_MS = 2.0


def spike_template(sample_rate_hz: float) -> np.ndarray:
    """Extracellular action potential sampled at the data rate, negative peak = -1 at 0.3 ms:
    a Gaussian trough (sd 0.1 ms) followed by a slower positive rebound (peak 0.3 at 0.75 ms,
    sd 0.25 ms), the typical shape recorded by planar electrodes under a soma."""
    t_ms = np.arange(int(round(SPIKE_TEMPLATE_MS * sample_rate_hz / 1000))) * 1000 / sample_rate_hz
    w = -np.exp(-0.5 * ((t_ms - 0.3) / 0.1) ** 2) + 0.3 * np.exp(-0.5 * ((t_ms - 0.75) / 0.25) ** 2)
    return w / -w.min()


@numba.njit(cache=True, nogil=True)
def add_spike_waveforms(
    out_uv: np.ndarray,
    first_sample: int,
    spike_samples: np.ndarray,
    spike_columns: np.ndarray,
    spike_amplitudes_uv: np.ndarray,
    template: np.ndarray,
) -> None:
    """out_uv[s - first_sample, col] += amplitude * template[s - onset] for every spike whose
    template overlaps the frames of out_uv (spikes that started in earlier blocks too)."""
    n_frames = out_uv.shape[0]
    n_t = template.shape[0]
    for k in range(spike_samples.shape[0]):
        onset = spike_samples[k] - first_sample
        col = spike_columns[k]
        amp = spike_amplitudes_uv[k]
        lo = max(0, -onset)
        hi = min(n_t, n_frames - onset)
        for j in range(lo, hi):
            out_uv[onset + j, col] += amp * template[j]


def quantize_amplifier_uv(signal_uv: np.ndarray, out: np.ndarray) -> None:
    """RHX amplifier words: x = 32768 + round(uV / 0.195), clipped to uint16 (the inverse of
    the documented scaling uV = 0.195 (x - 32768))."""
    np.clip(np.rint(signal_uv / 0.195) + 32768.0, 0.0, 65535.0, out=signal_uv)
    out[...] = signal_uv


def leading_phase_charge_nc(amplitude_ua: float, duration_us: float) -> float:
    """uA x us = pC; / 1000 = nC."""
    return amplitude_ua * duration_us * 1e-3


def half_distance_um(config: CultureConfig) -> float:
    """Distance at which stimulation falls to half (for documentation and tests)."""
    return config.electrode_radius_um + config.stim_length_um * math.log(2.0)
