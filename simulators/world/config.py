"""Configuration of the simulated world: frozen, validated, serialisable dataclasses.

Every number has a unit in its name and a physically motivated default. Construction
validates ranges (so a config can never hold nonsense), and `WorldConfig.from_dict` accepts
the nested dict a rig file or a session's summary.json holds, rejecting unknown keys by name.

Photon budget (why `cell_photon_rate_mhz` = 0.6 and `neuropil_photon_rate_mhz` = 0.12)
--------------------------------------------------------------------------------------
Shot noise sets the standardized noise level (science.md section 1). For an ROI of n_px
pixels with dwell time d per pixel at frame rate f, the ROI collects per second
    N_cell = F_cell * n_px * d * f   signal photons,   N_tot = (F_cell + F_np) * n_px * d * f,
so the per-frame relative noise is sigma = sqrt(N_tot / f) / (N_cell / f) and
    nu = 95.4 * sigma / sqrt(f) = 95.4 * sqrt(N_tot) / N_cell      (independent of f).
An in-focus soma ROI averages about 0.8 of the cytosol rate (nucleus darker, edges dimmer):
F_cell = 0.8 * 0.6 = 0.48 photons/us, F_np = 0.12 photons/us (neuropil is dimmer than somata
and is displaced inside them, so this overestimates its share). Then
    100 px, 2.0 us,  7 Hz:  N_cell = 672,  N_tot = 840,  nu = 4.1
    100 px, 1.5 us, 15 Hz:  N_cell = 1080, N_tot = 1350, nu = 3.3
    100 px, 1.0 us, 30 Hz:  N_cell = 1440, N_tot = 1800, nu = 2.8
which is the "decent" range 2-4 of CASCADE (activity inflates nu a little). Brightness is
lognormal across cells, so dim cells are noisier, as in real data. Checked by simulation
(default world, 208 x 208 raster over 240 um, 1.5 us dwell, 15.4 Hz, 30 mW, 30 s, ROIs = the
~93-pixel ground-truth footprints, F0 = 20th percentile): median nu 3.4, quartiles 2.9-4.7.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar


class WorldConfigError(ValueError):
    """A world configuration value is out of range, of the wrong kind, or an unknown key."""


def _check(section: str, name: str, value: float, low: float, high: float, unit: str = "",
           low_open: bool = False) -> None:
    """Raise WorldConfigError naming the parameter, its value and the allowed range."""
    full = f"{section}.{name}" if section else name
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WorldConfigError(f"{full} = {value!r} must be a number")
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok or math.isnan(value):
        u = f" {unit}" if unit else ""
        bracket = "(" if low_open else "["
        raise WorldConfigError(
            f"{full} = {value:g}{u} is outside the allowed range {bracket}{low:g}, {high:g}]{u}")


def _pair(section: str, name: str, value: Any, length: int) -> tuple[float, ...]:
    """Coerce a list/tuple of numbers to a tuple of floats of the given length."""
    full = f"{section}.{name}" if section else name
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise WorldConfigError(f"{full} = {value!r} must be a sequence of {length} numbers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise WorldConfigError(f"{full} = {value!r} must hold {length} finite numbers")
    return tuple(float(v) for v in value)


class _Section:
    """Shared dict conversion for the config dataclasses."""

    _section: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        if not isinstance(d, dict):
            raise WorldConfigError(f"section {cls._section or 'world'!r} must be a dict, got {d!r}")
        valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        for key in d:
            if key not in valid:
                where = f" in section {cls._section!r}" if cls._section else ""
                raise WorldConfigError(
                    f"unknown key {key!r}{where}; valid keys: {', '.join(valid)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, _Section):
                out[f.name] = v.to_dict()
            elif isinstance(v, tuple):
                out[f.name] = list(v)
            else:
                out[f.name] = v
        return out


@dataclass(frozen=True)
class IndicatorConfig(_Section):
    """GCaMP6f-like calcium indicator (Chen et al., Nature 2013).

    Chen et al. report for GCaMP6f in L2/3 of mouse V1 in vivo single-action-potential
    transients of roughly 10-20 % dF/F, a time to peak of a few tens of ms and a half-decay
    of about 140-150 ms (a single-exponential tau of ~0.2 s = t_half / ln 2); individual spikes
    in a burst were resolvable when 50-75 ms apart. The kernel is a difference of exponentials
    c(t) = (exp(-t/decay) - exp(-t/rise)) / peak, peak-normalised, so one isolated spike gives
    an unsaturated dF/F of `dff_per_spike` at t_peak = ln(decay/rise) rise decay/(decay - rise)
    (51 ms with the defaults). Saturation: dF/F = x / (1 + x / dff_max) with x = dff_per_spike
    * sum of kernels: linear for a few spikes, bounded by dff_max for long bursts (GCaMP's
    sigmoidal calcium binding, simplified).
    """

    _section: ClassVar[str] = "indicator"

    rise_tau_s: float = 0.02
    decay_tau_s: float = 0.2
    dff_per_spike: float = 0.15
    dff_max: float = 3.0

    def __post_init__(self) -> None:
        s = self._section
        _check(s, "rise_tau_s", self.rise_tau_s, 0.0, 1.0, "s", low_open=True)
        _check(s, "decay_tau_s", self.decay_tau_s, 0.0, 10.0, "s", low_open=True)
        if self.decay_tau_s <= self.rise_tau_s:
            raise WorldConfigError(
                f"indicator.decay_tau_s = {self.decay_tau_s:g} s must exceed "
                f"indicator.rise_tau_s = {self.rise_tau_s:g} s")
        _check(s, "dff_per_spike", self.dff_per_spike, 0.0, 10.0)
        _check(s, "dff_max", self.dff_max, 0.0, 100.0, low_open=True)


ACTIVITY_MODELS = ("poisson", "latent", "place")


@dataclass(frozen=True)
class ActivityConfig(_Section):
    """Spontaneous activity model of every cell.

    poisson: independent Poisson cells, rates lognormal across cells (median `rate_median_hz`,
      log-SD `rate_log_sd`, capped at `rate_max_hz`): cortical L2/3 rates are sparse and heavy
      tailed, median below 1 Hz.
    latent: the latent-field model of Morrell, Sederberg & Nemenman (PRL 2021), science.md
      section 4: `latent_n_fields` independent unit-variance Ornstein-Uhlenbeck fields with time
      constant `latent_tau_bins` bins of `latent_bin_s`; couplings J_ik ~ N(0,1) * phi /
      sqrt(n_fields); per-bin spike probability p = sigmoid(eta (sum_k J_ik h_k + eps)).
      Mapping to the world's step dt: the fields are advanced exactly every step
      (h <- a h + sqrt(1 - a^2) xi, a = exp(-dt / tau)), and the per-step probability is the
      one that makes "at least one spike in a bin" equal p: p_step = 1 - (1 - p)^(dt / bin)
      = 1 - exp(-(dt / bin) softplus(eta (J h + eps))).
    place: a fraction `place_cell_fraction` of place cells with Gaussian fields (centre
      uniform on the track, SD `place_field_sd_m`, peak `place_peak_rate_hz` above
      `place_baseline_rate_hz`). Choice: the in-field rate is gated by running (speed above
      `place_running_threshold_m_per_s`), as place-field firing is largely confined to
      locomotion; at rest place cells fire at the baseline rate. Other cells are Poisson as
      in the poisson model.
    """

    _section: ClassVar[str] = "activity"

    model: str = "poisson"
    rate_median_hz: float = 0.5
    rate_log_sd: float = 1.0
    rate_max_hz: float = 20.0
    latent_n_fields: int = 10
    latent_bin_s: float = 0.033
    latent_tau_bins: float = 5.0
    latent_eta: float = 6.0
    latent_eps: float = -16.0 / 6.0
    latent_phi: float = 1.0
    place_cell_fraction: float = 0.3
    place_field_sd_m: float = 0.12
    place_peak_rate_hz: float = 15.0
    place_baseline_rate_hz: float = 0.1
    place_running_threshold_m_per_s: float = 0.05

    def __post_init__(self) -> None:
        s = self._section
        if self.model not in ACTIVITY_MODELS:
            raise WorldConfigError(
                f"activity.model = {self.model!r} is not one of {', '.join(ACTIVITY_MODELS)}")
        _check(s, "rate_median_hz", self.rate_median_hz, 0.0, 200.0, "Hz")
        _check(s, "rate_log_sd", self.rate_log_sd, 0.0, 3.0)
        _check(s, "rate_max_hz", self.rate_max_hz, 0.0, 500.0, "Hz")
        if isinstance(self.latent_n_fields, bool) or not isinstance(self.latent_n_fields, int):
            raise WorldConfigError(
                f"activity.latent_n_fields = {self.latent_n_fields!r} must be an integer")
        _check(s, "latent_n_fields", self.latent_n_fields, 1, 1000)
        _check(s, "latent_bin_s", self.latent_bin_s, 0.0, 10.0, "s", low_open=True)
        _check(s, "latent_tau_bins", self.latent_tau_bins, 0.0, 1e6, low_open=True)
        _check(s, "latent_eta", self.latent_eta, 0.0, 1000.0, low_open=True)
        _check(s, "latent_eps", self.latent_eps, -1000.0, 1000.0)
        _check(s, "latent_phi", self.latent_phi, 0.0, 100.0)
        _check(s, "place_cell_fraction", self.place_cell_fraction, 0.0, 1.0)
        _check(s, "place_field_sd_m", self.place_field_sd_m, 0.0, 100.0, "m", low_open=True)
        _check(s, "place_peak_rate_hz", self.place_peak_rate_hz, 0.0, 500.0, "Hz")
        _check(s, "place_baseline_rate_hz", self.place_baseline_rate_hz, 0.0, 500.0, "Hz")
        _check(s, "place_running_threshold_m_per_s", self.place_running_threshold_m_per_s,
               0.0, 10.0, "m/s")


@dataclass(frozen=True)
class AnimalConfig(_Section):
    """A head-fixed mouse running on a linear track (treadmill or virtual corridor).

    Running bouts and rests alternate as a two-state Markov process (mean durations
    `run_bout_mean_s`, `rest_mean_s`). While running, the target speed is an Ornstein-Uhlenbeck
    process (mean `run_speed_mean_m_per_s`, SD `run_speed_sd_m_per_s`, time constant
    `speed_fluctuation_tau_s`); the actual speed follows the target (or 0 at rest) with time
    constant `speed_response_tau_s` (the mouse does not stop instantly). At the end of the track
    the animal is rewarded, teleported to 0 and pauses `reward_pause_s` (licking).
    """

    _section: ClassVar[str] = "animal"

    track_length_m: float = 1.8
    run_speed_mean_m_per_s: float = 0.25
    run_speed_sd_m_per_s: float = 0.06
    speed_fluctuation_tau_s: float = 1.0
    speed_response_tau_s: float = 0.3
    run_bout_mean_s: float = 8.0
    rest_mean_s: float = 3.0
    reward_pause_s: float = 2.0
    trace_interval_s: float = 0.01

    def __post_init__(self) -> None:
        s = self._section
        _check(s, "track_length_m", self.track_length_m, 0.0, 1000.0, "m", low_open=True)
        _check(s, "run_speed_mean_m_per_s", self.run_speed_mean_m_per_s, 0.0, 10.0, "m/s")
        _check(s, "run_speed_sd_m_per_s", self.run_speed_sd_m_per_s, 0.0, 10.0, "m/s")
        _check(s, "speed_fluctuation_tau_s", self.speed_fluctuation_tau_s, 0.0, 1000.0, "s",
               low_open=True)
        _check(s, "speed_response_tau_s", self.speed_response_tau_s, 0.0, 100.0, "s",
               low_open=True)
        _check(s, "run_bout_mean_s", self.run_bout_mean_s, 0.0, 1e6, "s", low_open=True)
        _check(s, "rest_mean_s", self.rest_mean_s, 0.0, 1e6, "s", low_open=True)
        _check(s, "reward_pause_s", self.reward_pause_s, 0.0, 1000.0, "s")
        _check(s, "trace_interval_s", self.trace_interval_s, 0.0, 10.0, "s", low_open=True)


@dataclass(frozen=True)
class StimulationConfig(_Section):
    """Two-photon holographic photostimulation of opsin-expressing somata.

    A spot of lateral radius r drives an opsin cell whose lateral centre lies within
    r + soma radius (the spot overlaps the soma) and whose centre is within half the spot's
    axial FWHM of the spot plane (holographic 2P spots: ~10-20 um FWHM axially). The
    two-photon excitation is s = e(dz) (P / half_power)^2 with the axial profile
    e(dz) = exp(-4 ln2 dz^2 / fwhm^2) (so 0.5 at the reach), summed over simultaneous spots;
    the evoked rate saturates, r = max_evoked_rate * s / (1 + s) (half the maximum at the
    half-power on the spot plane). Spikes start `latency_s` after the light (opsin kinetics and
    membrane charging: a few ms).

    max_evoked_rate_hz = 200: somatic two-photon photostimulation with ms-long spiral or
    holographic pulses evokes about one action potential per 5-10 ms pulse at saturating
    power (Packer et al. 2015; Marshel et al. 2019, ChRmine), i.e. a rate of the order of
    100-200 Hz while the light is on; with r = 200 s / (1 + s) a 5 ms pulse at twice the half
    power gives 0.8 expected spikes.
    """

    _section: ClassVar[str] = "stimulation"

    opsin_fraction: float = 1.0
    spot_axial_fwhm_um: float = 20.0
    max_evoked_rate_hz: float = 200.0
    half_power_mw: float = 10.0
    latency_s: float = 0.005
    max_spot_power_mw: float = 100.0

    def __post_init__(self) -> None:
        s = self._section
        _check(s, "opsin_fraction", self.opsin_fraction, 0.0, 1.0)
        _check(s, "spot_axial_fwhm_um", self.spot_axial_fwhm_um, 0.0, 1000.0, "um",
               low_open=True)
        _check(s, "max_evoked_rate_hz", self.max_evoked_rate_hz, 0.0, 1000.0, "Hz")
        _check(s, "half_power_mw", self.half_power_mw, 0.0, 10000.0, "mW", low_open=True)
        _check(s, "latency_s", self.latency_s, 0.0, 1.0, "s")
        _check(s, "max_spot_power_mw", self.max_spot_power_mw, 0.0, 10000.0, "mW",
               low_open=True)


@dataclass(frozen=True)
class CouplingConfig(_Section):
    """A feed-forward pathway from a "sensory" to a "motor" group of cells.

    Groups: cells whose lateral centre is within `radius_um` of the group centre and whose
    depth satisfies |z| < `group_depth_um` (so they are visible and stimulable from the nominal
    focal plane z = 0). Mechanism: every sensory spike adds an excitatory drive of `weight_hz`
    to every motor cell's rate after `delay_s` (axonal + synaptic delay), decaying with
    `tau_syn_s` (an exponential synaptic current, summed over the sensory population, i.e. a
    rate-coded all-to-all projection). With ~5-10 sensory cells driven at 20-30 Hz the motor
    drive settles at n * rate * weight * tau_syn ~ 20-60 Hz: several spikes per motor cell in
    0.2-0.5 s. Spontaneous sensory firing (~4 spikes/s in total) adds only ~1 Hz. `enabled`
    False (or weight 0) gives the control world without the pathway.
    """

    _section: ClassVar[str] = "coupling"

    enabled: bool = True
    sensory_centre_um: tuple[float, float] = (-70.0, -60.0)
    motor_centre_um: tuple[float, float] = (70.0, 60.0)
    radius_um: float = 30.0
    group_depth_um: float = 10.0
    weight_hz: float = 4.0
    tau_syn_s: float = 0.05
    delay_s: float = 0.01

    def __post_init__(self) -> None:
        s = self._section
        if not isinstance(self.enabled, bool):
            raise WorldConfigError(f"coupling.enabled = {self.enabled!r} must be true or false")
        object.__setattr__(self, "sensory_centre_um",
                           _pair(s, "sensory_centre_um", self.sensory_centre_um, 2))
        object.__setattr__(self, "motor_centre_um",
                           _pair(s, "motor_centre_um", self.motor_centre_um, 2))
        _check(s, "radius_um", self.radius_um, 0.0, 10000.0, "um")
        _check(s, "group_depth_um", self.group_depth_um, 0.0, 10000.0, "um")
        _check(s, "weight_hz", self.weight_hz, 0.0, 1000.0, "Hz")
        _check(s, "tau_syn_s", self.tau_syn_s, 0.0, 10.0, "s", low_open=True)
        _check(s, "delay_s", self.delay_s, 0.0, 1.0, "s")
        separation = math.dist(self.sensory_centre_um, self.motor_centre_um)
        if separation < 2.0 * self.radius_um:
            raise WorldConfigError(
                f"coupling groups overlap: centres {separation:g} um apart < 2 * radius_um = "
                f"{2.0 * self.radius_um:g} um; move the centres apart or shrink radius_um")


@dataclass(frozen=True)
class MotionConfig(_Section):
    """Rigid in-plane brain motion of the head-fixed, running mouse (model: world/motion.py).

    Imaging in running mice shows in-plane brain displacements of a few micrometres that grow
    with locomotion (Dombeck et al., Neuron 2007), up to ~10 um in the worst frames. The brain
    follows the animal's speed with a lag (`response_tau_s`): at `reference_speed_m_per_s`
    (the animal's mean running speed by default) it is pushed by `run_shift_um` along a
    direction drawn from the seed, plus a stride-locked oscillation of amplitude
    `stride_shift_um` per axis at `stride_frequency_hz` (mouse stride rates are a few Hz), both
    proportional to the low-passed speed. The tissue also settles slowly by `drift_um` with
    time constant `drift_tau_s` in another seeded direction. The total is clipped to
    `max_shift_um`. `enabled` false keeps the specimen still.
    """

    _section: ClassVar[str] = "motion"

    enabled: bool = False
    run_shift_um: float = 5.0
    reference_speed_m_per_s: float = 0.25
    response_tau_s: float = 0.3
    stride_shift_um: float = 1.5
    stride_frequency_hz: float = 3.0
    drift_um: float = 3.0
    drift_tau_s: float = 600.0
    max_shift_um: float = 10.0

    def __post_init__(self) -> None:
        s = self._section
        if not isinstance(self.enabled, bool):
            raise WorldConfigError(f"motion.enabled = {self.enabled!r} must be true or false")
        _check(s, "run_shift_um", self.run_shift_um, 0.0, 100.0, "um")
        _check(s, "reference_speed_m_per_s", self.reference_speed_m_per_s, 0.0, 10.0, "m/s",
               low_open=True)
        _check(s, "response_tau_s", self.response_tau_s, 0.0, 100.0, "s", low_open=True)
        _check(s, "stride_shift_um", self.stride_shift_um, 0.0, 100.0, "um")
        _check(s, "stride_frequency_hz", self.stride_frequency_hz, 0.0, 100.0, "Hz")
        _check(s, "drift_um", self.drift_um, 0.0, 100.0, "um")
        _check(s, "drift_tau_s", self.drift_tau_s, 0.0, 1e6, "s", low_open=True)
        _check(s, "max_shift_um", self.max_shift_um, 0.0, 100.0, "um", low_open=True)


@dataclass(frozen=True)
class WorldConfig(_Section):
    """The specimen, its optics and photon budget, and the nested model sections.

    Geometry: `extent_um` (x, y, z) is a box centred on 0; z = 0 is the nominal focal plane.
    Cells: mouse L2/3 holds roughly 1e5 neurons per mm^3 (cortical neuron densities of
    0.9-1.2e5 / mm^3 from stereological counts); 90,000 / mm^3 gives ~2,900 cells in the
    default 0.032 mm^3 volume, 13 um somata (radius 6.5 +- 1.0 um) filling ~10 % of it.
    GCaMP is cytosolic: the nucleus (radius `nucleus_radius_fraction` * soma radius) is
    `nucleus_brightness_fraction` as bright as the cytosol. Expression varies: per-cell
    brightness is lognormal with median 1 and log-SD `brightness_log_sd`.
    Optics: laterally the PSF (~0.5 um FWHM) is below the rendering grid and ignored; axially
    the two-photon excitation is Gaussian with SD `axial_psf_sigma_um` (~2 um, ~4.7 um FWHM).
    Photons (see the module docstring for the noise arithmetic): `cell_photon_rate_mhz`
    photons per microsecond from in-focus cytosol of a brightness-1 cell at rest (dF/F = 0) at
    `reference_power_mw`; two-photon excitation scales the rate with (P / P_ref)^2.
    `neuropil_photon_rate_mhz` is the mean neuropil rate, textured with relative SD
    `neuropil_contrast` at the `neuropil_texture_um` scale and modulated by the population's
    mean dF/F times `neuropil_activity_gain`; `dark_rate_mhz` is PMT dark counts plus stray
    light, independent of the laser. Plane maps are rendered at `grid_resolution_um`;
    activity advances in steps of `dt_s`. A cell is "in focus" in a plane when its peak
    weight there is at least `in_focus_min_peak_weight` (0.5: the plane cuts the soma).
    """

    _section: ClassVar[str] = ""

    extent_um: tuple[float, float, float] = (400.0, 400.0, 200.0)
    cell_density_per_mm3: float = 90_000.0
    soma_radius_mean_um: float = 6.5
    soma_radius_sd_um: float = 1.0
    nucleus_radius_fraction: float = 0.5
    nucleus_brightness_fraction: float = 0.3
    brightness_log_sd: float = 0.35
    cell_photon_rate_mhz: float = 0.6
    reference_power_mw: float = 30.0
    neuropil_photon_rate_mhz: float = 0.12
    neuropil_texture_um: float = 8.0
    neuropil_contrast: float = 0.25
    neuropil_activity_gain: float = 0.5
    dark_rate_mhz: float = 0.002
    axial_psf_sigma_um: float = 2.0
    grid_resolution_um: float = 0.5
    in_focus_min_peak_weight: float = 0.5
    dt_s: float = 0.001
    indicator: IndicatorConfig = field(default_factory=IndicatorConfig)
    activity: ActivityConfig = field(default_factory=ActivityConfig)
    animal: AnimalConfig = field(default_factory=AnimalConfig)
    stimulation: StimulationConfig = field(default_factory=StimulationConfig)
    coupling: CouplingConfig = field(default_factory=CouplingConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)

    _sections: ClassVar[dict[str, type]] = {
        "indicator": IndicatorConfig,
        "activity": ActivityConfig,
        "animal": AnimalConfig,
        "stimulation": StimulationConfig,
        "coupling": CouplingConfig,
        "motion": MotionConfig,
    }

    def __post_init__(self) -> None:
        extent = _pair("", "extent_um", self.extent_um, 3)
        object.__setattr__(self, "extent_um", extent)
        for axis, v in zip("xyz", extent):
            _check("", f"extent_um[{axis}]", v, 0.0, 10000.0, "um", low_open=True)
        _check("", "cell_density_per_mm3", self.cell_density_per_mm3, 0.0, 500_000.0, "/mm^3")
        _check("", "soma_radius_mean_um", self.soma_radius_mean_um, 1.0, 50.0, "um")
        _check("", "soma_radius_sd_um", self.soma_radius_sd_um, 0.0,
               self.soma_radius_mean_um / 3.0, "um")
        _check("", "nucleus_radius_fraction", self.nucleus_radius_fraction, 0.0, 0.95)
        _check("", "nucleus_brightness_fraction", self.nucleus_brightness_fraction, 0.0, 1.0)
        _check("", "brightness_log_sd", self.brightness_log_sd, 0.0, 2.0)
        _check("", "cell_photon_rate_mhz", self.cell_photon_rate_mhz, 0.0, 1000.0, "MHz")
        _check("", "reference_power_mw", self.reference_power_mw, 0.0, 10000.0, "mW",
               low_open=True)
        _check("", "neuropil_photon_rate_mhz", self.neuropil_photon_rate_mhz, 0.0, 1000.0,
               "MHz")
        _check("", "neuropil_texture_um", self.neuropil_texture_um, 0.5, 1000.0, "um")
        _check("", "neuropil_contrast", self.neuropil_contrast, 0.0, 2.0)
        _check("", "neuropil_activity_gain", self.neuropil_activity_gain, 0.0, 100.0)
        _check("", "dark_rate_mhz", self.dark_rate_mhz, 0.0, 1000.0, "MHz")
        _check("", "axial_psf_sigma_um", self.axial_psf_sigma_um, 0.1, 50.0, "um")
        _check("", "grid_resolution_um", self.grid_resolution_um, 0.05, 10.0, "um")
        n_grid = (extent[0] / self.grid_resolution_um) * (extent[1] / self.grid_resolution_um)
        if n_grid > 64e6:
            raise WorldConfigError(
                f"grid_resolution_um = {self.grid_resolution_um:g} um over a "
                f"{extent[0]:g} x {extent[1]:g} um extent gives {n_grid:.3g} grid points "
                f"(limit 6.4e7); use a coarser grid or a smaller extent")
        _check("", "in_focus_min_peak_weight", self.in_focus_min_peak_weight, 0.0, 1.0,
               low_open=True)
        _check("", "dt_s", self.dt_s, 1e-5, 0.1, "s")
        for name, cls in self._sections.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, cls.from_dict(value))
            elif not isinstance(value, cls):
                raise WorldConfigError(f"{name} must be a {cls.__name__} or a dict, got {value!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        """Build from a nested dict (keys = field names; sections as nested dicts)."""
        if not isinstance(d, dict):
            raise WorldConfigError(f"world config must be a dict, got {d!r}")
        valid = [f.name for f in dataclasses.fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in valid:
                raise WorldConfigError(f"unknown key {key!r}; valid keys: {', '.join(valid)}")
            if key in cls._sections:
                kwargs[key] = cls._sections[key].from_dict(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Nested dict of plain Python values (tuples as lists), the inverse of from_dict."""
        return super().to_dict()

    @property
    def volume_mm3(self) -> float:
        x, y, z = self.extent_um
        return x * y * z * 1e-9
