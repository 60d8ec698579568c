"""Configuration of the simulated culture: one frozen, validated dataclass and three presets.

The neuron model, its numbers and the plasticity rules follow science.md section 6 (the
"learning by stimulation avoidance" code of Sinapayen, Masumori & Ikegami 2017):

- Izhikevich neurons, excitatory regular spiking (a=0.02, b=0.2, c=-65, d=8), inhibitory
  fast spiking (a=0.1, b=0.2, c=-65, d=2); u starts at d, v at c; a spike when v > 20 mV;
  v integrated as two 0.5 ms half-steps per 1 ms step; Gaussian noise of SD 3 each ms.
- A spike adds the synapse's weight (+5 excitatory, -5 inhibitory) to the target's input in
  the next step.
- STDP on existing excitatory-to-excitatory synapses: when neuron i fires, for every spike of
  a neuron j dt = 1..19 ms before, w(j->i) += 0.1 * 0.95^dt and w(i->j) -= 0.1 * 0.95^dt;
  weights clipped to [0, 10], a weight that reaches 0 stays 0 (pruning); plastic weights decay
  x 0.9999995 per ms.
- Optional short-term plasticity (Mongillo, Barak & Tsodyks 2008): tau_d 200 ms, tau_f 600 ms,
  U 0.2.

Presets (`preset_config(name)`):

lsa_minimal  an input neuron and an output neuron (both excitatory) joined by one plastic
             synapse of weight 5, each on its own electrode (no other synapse).
lsa_paper    the 100-neuron network of the LSA code: neurons 0-19 inhibitory, 20-99
             excitatory; each neuron draws 100 targets with replacement (no self-connection;
             a target drawn twice is one synapse, as in the code's dense weight matrix); ten
             clusters of 10 neurons, each cluster on its own electrode; input cluster 20-29,
             output 50-59, dummy 60-69.
culture      the large MEA culture: 1,000 neurons (200 inhibitory) spread over an 8 x 8 MEA
             with 200 um pitch, 100 targets per neuron chosen with a Gaussian distance
             preference (sigma 250 um), STDP and short-term plasticity; it bursts
             spontaneously (see docs/devices/culture.md for the measured burst statistics).

Stimulation and recording physics (both in electrodes.py): an electrode of radius
`electrode_radius_um` acts fully on (and records fully from) neurons over its surface, and
falls off exponentially beyond its edge with length `stim_length_um` / `recording_length_um`,
cut at `*_max_distance_um`. A pulse of leading-phase charge Q (nC) injects
`stim_current_per_nc * Q * falloff(d)` into a neuron's input in the step it lands in. In the
LSA presets `stim_current_per_nc` = 3, so one 1 nC pulse per ms (for example 10 uA x 100 us,
level-triggered at 1 kHz) is the paper's "+3 every ms while stimulation is on".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


class CultureConfigError(ValueError):
    """A culture configuration value is out of range, of the wrong kind, or an unknown key."""


PRESETS = ("lsa_minimal", "lsa_paper", "culture")
CONNECTIVITY = ("random_targets", "input_output_pair")
LAYOUTS = ("uniform", "clusters", "pair")


def _number(
    name: str,
    value: Any,
    low: float,
    high: float,
    unit: str = "",
    low_open: bool = False,
    integer: bool = False,
) -> None:
    """Raise CultureConfigError naming the key, its value and the allowed range."""
    kind = "an integer" if integer else "a number"
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    ):
        raise CultureConfigError(f"culture.{name} = {value!r} must be {kind}")
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok or (isinstance(value, float) and math.isnan(value)):
        u = f" {unit}" if unit else ""
        bracket = "(" if low_open else "["
        raise CultureConfigError(
            f"culture.{name} = {value:g}{u} is outside the allowed range "
            f"{bracket}{low:g}, {high:g}]{u}"
        )


def _group(name: str, value: Any, n: int) -> tuple[int, int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise CultureConfigError(
            f"culture.{name} = {value!r} must be [first, stop) neuron indices, e.g. [20, 30]"
        )
    first, stop = value
    if not 0 <= first <= stop <= n:
        raise CultureConfigError(
            f"culture.{name} = {list(value)} must satisfy 0 <= first <= stop <= {n} neurons"
        )
    return int(first), int(stop)


@dataclass(frozen=True)
class CultureConfig:
    """Every number of the simulated culture, with its unit (see the module docstring)."""

    preset: str = "custom"
    # -- neurons -------------------------------------------------------------------------
    n_excitatory: int = 800
    n_inhibitory: int = 200  # neurons 0 .. n_inhibitory-1 are inhibitory (as in the LSA code)
    threshold_mv: float = 20.0
    noise_sd: float = 3.0  # SD of the Gaussian input drawn for every neuron each ms
    # -- synapses ------------------------------------------------------------------------
    connectivity: str = "random_targets"
    targets_per_neuron: int = 100  # draws with replacement; duplicates are one synapse
    target_sigma_um: float = 250.0  # Gaussian distance preference; 0 = uniform choice
    excitatory_weight: float = 5.0
    inhibitory_weight: float = -5.0
    # -- long-term plasticity (STDP) -----------------------------------------------------
    stdp: bool = True
    stdp_amplitude: float = 0.1
    stdp_base: float = 0.95  # change = amplitude * base^dt for dt = 1 .. stdp_window_ms - 1
    stdp_window_ms: int = 20
    weight_max: float = 10.0
    weight_decay_per_ms: float = 0.9999995
    # -- short-term plasticity (Mongillo et al. 2008) ------------------------------------
    stp: bool = False
    stp_tau_d_ms: float = 200.0
    stp_tau_f_ms: float = 600.0
    stp_u: float = 0.2
    # -- layout on the MEA ---------------------------------------------------------------
    layout: str = "uniform"
    mea_rows: int = 8
    mea_cols: int = 8
    mea_pitch_um: float = 200.0
    electrode_radius_um: float = 15.0
    margin_um: float = 100.0  # culture extends this far beyond the outer electrodes
    cluster_size: int = 10  # layout "clusters": neurons per electrode
    # -- stimulation physics -------------------------------------------------------------
    stim_current_per_nc: float = (
        60.0  # input added per nC of leading-phase charge, on the electrode
    )
    stim_length_um: float = 30.0
    stim_max_distance_um: float = 150.0
    # -- recording physics ---------------------------------------------------------------
    spike_amplitude_uv: float = 200.0  # negative peak of a neuron's spike on its electrode
    recording_length_um: float = 30.0
    recording_max_distance_um: float = 150.0
    electrode_noise_uv: float = 5.0  # rms noise of the wideband signal
    # -- groups the protocols use ([first, stop) neuron indices; [0, 0] = none) -------------
    input_group: tuple[int, int] = (0, 0)
    output_group: tuple[int, int] = (0, 0)
    dummy_group: tuple[int, int] = (0, 0)
    # -- randomness ----------------------------------------------------------------------
    noise_stream: int = 0  # 0: the seed's own noise; k > 0: an independent "sister" stream

    def __post_init__(self) -> None:
        if self.preset not in PRESETS + ("custom",):
            raise CultureConfigError(
                f"culture.preset = {self.preset!r} must be one of {', '.join(PRESETS)}"
            )
        _number("n_excitatory", self.n_excitatory, 0, 100_000, integer=True)
        _number("n_inhibitory", self.n_inhibitory, 0, 100_000, integer=True)
        if self.n_neurons < 1:
            raise CultureConfigError(
                "culture needs at least one neuron (n_excitatory + n_inhibitory >= 1)"
            )
        _number("threshold_mv", self.threshold_mv, -60.0, 100.0, "mV")
        _number("noise_sd", self.noise_sd, 0.0, 100.0)
        if self.connectivity not in CONNECTIVITY:
            raise CultureConfigError(
                f"culture.connectivity = {self.connectivity!r} must be one "
                f"of {', '.join(CONNECTIVITY)}"
            )
        _number("targets_per_neuron", self.targets_per_neuron, 0, 100_000, integer=True)
        _number("target_sigma_um", self.target_sigma_um, 0.0, 1e6, "um")
        _number("excitatory_weight", self.excitatory_weight, 0.0, 1000.0)
        _number("inhibitory_weight", self.inhibitory_weight, -1000.0, 0.0)
        if not isinstance(self.stdp, bool) or not isinstance(self.stp, bool):
            raise CultureConfigError("culture.stdp and culture.stp must be true or false")
        _number("stdp_amplitude", self.stdp_amplitude, 0.0, 100.0)
        _number("stdp_base", self.stdp_base, 0.0, 1.0, low_open=True)
        _number("stdp_window_ms", self.stdp_window_ms, 2, 1000, "ms", integer=True)
        _number("weight_max", self.weight_max, 0.0, 1000.0, low_open=True)
        if self.excitatory_weight > self.weight_max:
            raise CultureConfigError(
                f"culture.excitatory_weight = {self.excitatory_weight:g} exceeds "
                f"culture.weight_max = {self.weight_max:g}"
            )
        _number("weight_decay_per_ms", self.weight_decay_per_ms, 0.9, 1.0)
        _number("stp_tau_d_ms", self.stp_tau_d_ms, 0.0, 1e6, "ms", low_open=True)
        _number("stp_tau_f_ms", self.stp_tau_f_ms, 0.0, 1e6, "ms", low_open=True)
        _number("stp_u", self.stp_u, 0.0, 1.0, low_open=True)
        if self.layout not in LAYOUTS:
            raise CultureConfigError(
                f"culture.layout = {self.layout!r} must be one of {', '.join(LAYOUTS)}"
            )
        _number("mea_rows", self.mea_rows, 1, 64, integer=True)
        _number("mea_cols", self.mea_cols, 1, 64, integer=True)
        if self.mea_rows * self.mea_cols > 128:
            raise CultureConfigError(
                f"culture.mea_rows x culture.mea_cols = {self.mea_rows * self.mea_cols} "
                "electrodes exceed the 128 amplifier channels of an RHS controller (ports A-D)"
            )
        _number("mea_pitch_um", self.mea_pitch_um, 10.0, 10_000.0, "um")
        _number("electrode_radius_um", self.electrode_radius_um, 1.0, self.mea_pitch_um / 2, "um")
        _number("margin_um", self.margin_um, 0.0, 10_000.0, "um")
        _number("cluster_size", self.cluster_size, 1, 10_000, integer=True)
        _number("stim_current_per_nc", self.stim_current_per_nc, 0.0, 1e6)
        _number("stim_length_um", self.stim_length_um, 0.0, 10_000.0, "um", low_open=True)
        _number("stim_max_distance_um", self.stim_max_distance_um, 0.0, 10_000.0, "um")
        _number("spike_amplitude_uv", self.spike_amplitude_uv, 0.0, 6000.0, "uV")
        _number("recording_length_um", self.recording_length_um, 0.0, 10_000.0, "um", low_open=True)
        _number("recording_max_distance_um", self.recording_max_distance_um, 0.0, 10_000.0, "um")
        _number("electrode_noise_uv", self.electrode_noise_uv, 0.0, 1000.0, "uV")
        n = self.n_neurons
        object.__setattr__(self, "input_group", _group("input_group", self.input_group, n))
        object.__setattr__(self, "output_group", _group("output_group", self.output_group, n))
        object.__setattr__(self, "dummy_group", _group("dummy_group", self.dummy_group, n))
        _number("noise_stream", self.noise_stream, 0, 2**31 - 1, integer=True)
        if self.connectivity == "input_output_pair" and (
            self.input_group[1] - self.input_group[0] < 1
            or self.output_group[1] - self.output_group[0] < 1
        ):
            raise CultureConfigError(
                "culture.connectivity = 'input_output_pair' needs non-empty input_group and "
                "output_group"
            )
        if self.layout == "clusters" and n > self.cluster_size * self.n_electrodes:
            raise CultureConfigError(
                f"layout 'clusters' puts culture.cluster_size = {self.cluster_size} neurons on "
                f"each of {self.n_electrodes} electrodes: at most "
                f"{self.cluster_size * self.n_electrodes} neurons, not {n}"
            )

    # -- derived -------------------------------------------------------------------------
    @property
    def n_neurons(self) -> int:
        return self.n_excitatory + self.n_inhibitory

    @property
    def n_electrodes(self) -> int:
        return self.mea_rows * self.mea_cols

    def replace(self, **changes: Any) -> CultureConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CultureConfig:
        """Build from a dict (a rig file's [culture] table): `preset` picks the starting point,
        every other key overrides it. Unknown keys are refused by name."""
        if not isinstance(d, dict):
            raise CultureConfigError(f"culture config must be a table (dict), got {d!r}")
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in valid:
                raise CultureConfigError(
                    f"unknown key culture.{key}; valid keys: {', '.join(valid)}"
                )
        values = dict(d)
        name = values.pop("preset", "culture")
        return preset_config(name, **values)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


def electrode_order(rows: int, cols: int) -> list[int]:
    """Electrodes in the order the LSA layouts fill them: the inner block (rows and columns
    2 .. n-3, away from the edges) row by row first, then the rest row by row."""
    inner = [
        r * cols + c
        for r in range(rows)
        for c in range(cols)
        if 2 <= r <= rows - 3 and 2 <= c <= cols - 3
    ]
    rest = [e for e in range(rows * cols) if e not in set(inner)]
    return inner + rest


def preset_config(name: str, **overrides: Any) -> CultureConfig:
    """The named preset with `overrides` applied (validated)."""
    base: dict[str, Any]
    if name == "lsa_minimal":
        base = dict(
            n_excitatory=2,
            n_inhibitory=0,
            connectivity="input_output_pair",
            layout="pair",
            targets_per_neuron=0,
            stim_current_per_nc=3.0,
            stim_max_distance_um=100.0,
            recording_max_distance_um=100.0,
            input_group=(0, 1),
            output_group=(1, 2),
        )
    elif name == "lsa_paper":
        base = dict(
            n_excitatory=80,
            n_inhibitory=20,
            connectivity="random_targets",
            layout="clusters",
            targets_per_neuron=100,
            target_sigma_um=0.0,
            cluster_size=10,
            stim_current_per_nc=3.0,
            stim_max_distance_um=100.0,
            recording_max_distance_um=100.0,
            input_group=(20, 30),
            output_group=(50, 60),
            dummy_group=(60, 70),
        )
    elif name == "culture":
        base = dict(stp=True, stp_u=0.5, stp_tau_d_ms=800.0, stp_tau_f_ms=1.0)
    else:
        raise CultureConfigError(f"culture.preset = {name!r} must be one of {', '.join(PRESETS)}")
    base.update(overrides)
    return CultureConfig(preset=name, **base)


def group_electrodes(config: CultureConfig) -> dict[str, int]:
    """Electrode index of the input, output and dummy groups of the LSA presets (the
    electrode their neurons sit on); empty for layouts without groups on electrodes."""
    if config.layout == "uniform":
        return {}
    out = {}
    for label, (first, stop) in (
        ("input", config.input_group),
        ("output", config.output_group),
        ("dummy", config.dummy_group),
    ):
        if stop > first:
            out[label] = neuron_electrode(config, first)
    return out


def neuron_electrode(config: CultureConfig, neuron: int) -> int:
    """Electrode a neuron sits on in the 'pair' and 'clusters' layouts: cluster k (neurons
    k*cluster_size ...) on electrode_order[k]; in 'pair', the input group on electrode_order[2]
    and the output group on electrode_order[5] (where clusters 2 and 5 of lsa_paper sit)."""
    order = electrode_order(config.mea_rows, config.mea_cols)
    if config.layout == "pair":
        if config.input_group[0] <= neuron < config.input_group[1]:
            return order[2 % len(order)]
        if config.output_group[0] <= neuron < config.output_group[1]:
            return order[5 % len(order)]
        return order[(7 + neuron) % len(order)]
    if config.layout == "clusters":
        return order[(neuron // config.cluster_size) % len(order)]
    raise CultureConfigError(f"layout {config.layout!r} does not put neurons on electrodes")
