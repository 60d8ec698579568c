"""The simulated resonant hardware: mirror physics, line clock, digitizer statistics, and
line-phase recovery through the whole chain (mirror -> digitizer -> scanner -> analysis)."""

import math

import numpy as np
import pytest

from analysis.line_phase import LinePhaseTable, estimate_line_phase_error
from drivers.daq.resonant_contract import DigitizerConfig, ResonantIOConfig
from drivers.errors import DeviceTimeout
from drivers.scanning.resonant import ResonantGalvoScanner, ResonantScanSettings
from simulators.resonant import ResonantPhysics, SimulatedResonantHardware
from simulators.world.config import WorldConfig
from simulators.world.world import World

FS = 100e6
COLD = dict(heating_k=0.0, amplitude_shift_hz=0.0, phase_lag_amplitude_us=0.0)


class UniformWorld:
    """Every position emits rate_per_us photons per microsecond: counts Poisson(rate dt)."""

    def __init__(self, rate_per_us, seed=0):
        self.rate, self.rng, self.t_s = rate_per_us, np.random.default_rng(seed), 0.0

    def sample_photons(self, x_um, y_um, t0_s, dt_s, power_mw, out):
        out[:] = self.rng.poisson(self.rate * dt_s * 1e6, size=out.shape)


class Slit:
    """Photons only where the beam is within 1 um of x = 0 (deterministic)."""

    t_s = 0.0

    def sample_photons(self, x_um, y_um, t0_s, dt_s, power_mw, out):
        out[:] = (np.abs(x_um) < 1.0) * 500


class BeadGridWorld:
    def __init__(self, pitch_um=25.0, sd_um=1.2, peak_mhz=400.0, seed=0):
        self.pitch, self.sd, self.peak = pitch_um, sd_um, peak_mhz
        self.rng, self.t_s = np.random.default_rng(seed), 0.0

    def sample_photons(self, x_um, y_um, t0_s, dt_s, power_mw, out):
        dx = (x_um + self.pitch / 2) % self.pitch - self.pitch / 2
        dy = (y_um + self.pitch / 2) % self.pitch - self.pitch / 2
        rate = 0.5 + self.peak * np.exp(-(dx * dx + dy * dy) / (2 * self.sd**2))
        out[:] = self.rng.poisson(rate * dt_s * 1e6)


def open_hardware(world, amplitude_v=3.5, **physics):
    hw = SimulatedResonantHardware(world, physics=ResonantPhysics(**physics), seed=1)
    hw.io.open()
    hw.digitizer.open()
    hw.io.set_amplitude_v(amplitude_v)
    return hw


def read_records(hw, n_records, samples=12400):
    hw.digitizer.configure(DigitizerConfig(("ai0",), FS, samples, n_records))
    hw.io.configure_scan(ResonantIOConfig(n_records, 200e3, 1000))
    hw.io.write_slow_galvo(np.zeros(1000))
    hw.io.start_scan()
    hw.digitizer.start()
    out = np.zeros((1, n_records, samples), np.int16)
    hw.digitizer.read_records(out)
    return out[0]


# -- the mirror ------------------------------------------------------------------------------
def test_frequency_shifts_with_amplitude_squared():
    """f = natural + amplitude_shift_hz (A / A_full)^2 on a cold mirror."""
    hw = open_hardware(None, amplitude_v=1.0, **{**COLD, "amplitude_shift_hz": -3.0})
    low = hw.io.measure_line_clock_hz(2000)
    hw.io.set_amplitude_v(5.0)
    high = hw.io.measure_line_clock_hz(2000)
    assert high - low == pytest.approx(-3.0 * (1.0 - 0.2**2), abs=1e-3)
    assert low == pytest.approx(7925.52 - 3.0 * 0.2**2, abs=1e-3)


def test_a_running_mirror_warms_up_exponentially_and_slows_down():
    """dT/dt = (H (A/A_full)^2 - dT) / tau, f = natural (1 + tempco dT): after running one
    tau at full amplitude, f has fallen by tempco natural H (1 - 1/e)."""
    physics = {**COLD, "heating_k": 4.0, "thermal_tau_s": 2.0, "tempco_per_k": -1.25e-4}
    hw = open_hardware(None, amplitude_v=5.0, **physics)
    cold = hw.io.measure_line_clock_hz(10)
    periods = int(2.0 * 7925.52)
    hw.io.measure_line_clock_hz(periods)  # run ~ one time constant
    warm = hw.io.measure_line_clock_hz(10)
    expected = -1.25e-4 * 7925.52 * 4.0 * (1 - math.exp(-1.0))
    assert warm - cold == pytest.approx(expected, rel=0.02)


def test_no_line_clock_without_a_running_mirror_or_a_wired_sync():
    hw = open_hardware(None, amplitude_v=0.0, **COLD)
    with pytest.raises(DeviceTimeout, match="line-clock"):
        hw.io.measure_line_clock_hz(100)
    hw = open_hardware(None, **{**COLD, "line_clock_connected": False})
    with pytest.raises(DeviceTimeout, match="sync"):
        hw.io.measure_line_clock_hz(100)


def test_counter_periods_sum_to_the_true_elapsed_time_within_one_tick():
    """The counter counts 100 MHz ticks between edges: every period within a tick, and
    their sum within a tick of the true time - errors do not accumulate."""
    hw = open_hardware(UniformWorld(0.0), **{**COLD, "period_jitter_s": 2e-9})
    read_records(hw, 500)
    periods = np.zeros(500)
    first = hw.io.read_line_periods(periods)
    assert first == 0
    truth = np.array([hw.edge_time_s(i) for i in range(501)])
    assert np.abs(periods - np.diff(truth)).max() <= 1.0001e-8
    assert abs(periods.sum() - (truth[-1] - truth[0])) <= 1.0001e-8


# -- the digitizer ---------------------------------------------------------------------------
def test_shot_noise_per_sample_is_poisson():
    """Photons drawn per sub-bin and spread uniformly over its samples are, per sample,
    Poisson(rate / fs) (uniform thinning of a Poisson count): P(no photon) = exp(-mu),
    and a record's total has variance = mean (Fano factor 1)."""
    rate = 20.0  # photons / us -> mu = 0.2 per 10 ns sample
    physics = {**COLD, "read_noise_counts": 0.0, "pmt_gain_spread": 0.0}
    hw = open_hardware(UniformWorld(rate), **physics)
    raw = read_records(hw, 200)
    photons = raw / hw.physics.pmt_counts_per_photon
    assert np.allclose(photons, np.round(photons))  # one pulse height per photon
    mu = rate * 1e6 / FS
    assert np.mean(photons == 0) == pytest.approx(math.exp(-mu), abs=0.002)
    assert photons.mean() == pytest.approx(mu, rel=0.005)
    totals = photons.sum(axis=1)
    assert totals.var() / totals.mean() == pytest.approx(1.0, abs=0.25)


def test_baseline_is_offset_plus_gaussian_read_noise():
    physics = {**COLD, "read_noise_counts": 20.0, "pmt_offset_counts": -100.0}
    hw = open_hardware(UniformWorld(0.0), **physics)
    raw = read_records(hw, 50).astype(float)
    assert raw.mean() == pytest.approx(-100.0, abs=0.2)
    assert raw.std() == pytest.approx(20.0, rel=0.01)


def test_records_start_at_the_first_sample_after_their_line_clock_edge():
    """The beam crosses x = 0 at edge + lag + 1/(4 f); in the record that is sample
    (lag - delta + 1/(4 f)) fs, delta = the record's trigger latency (< 1 sample)."""
    physics = {**COLD, "read_noise_counts": 0.0, "pmt_gain_spread": 0.0, "phase_lag_us": 1.5}
    hw = open_hardware(Slit(), **physics)
    raw = read_records(hw, 80)
    f = hw.physics.natural_hz
    offsets = []
    for n in range(80):
        forward = raw[n, :6000].astype(float)
        centroid = (forward * np.arange(6000)).sum() / forward.sum()
        t_n = hw.edge_time_s(n)
        delta_s = math.ceil(t_n * FS - 1e-6) / FS - t_n
        offsets.append(centroid - (1.5e-6 - delta_s + 0.25 / f) * FS)
    assert abs(np.mean(offsets)) < 0.2  # samples


# -- line phase through the whole chain ------------------------------------------------------
SETTINGS = dict(
    resonant_hz=7910.0,
    fov_um=(400.0, 200.0),
    pixels_per_line=400,
    lines=200,
    sample_rate_hz=FS,
    galvo_um_per_volt=50.0,
)


def frames_from(world, physics, n_frames, **settings):
    hw = SimulatedResonantHardware(world, physics=ResonantPhysics(**physics), seed=2)
    scanner = ResonantGalvoScanner(hw.digitizer, hw.io, ResonantScanSettings(**settings))
    frames = np.zeros((n_frames,) + scanner.frame_shape, np.int16)
    with scanner:
        scanner.start()
        for i in range(n_frames):
            scanner.read_frame(frames[i])
        lag_s = hw.lag_s
    return frames, scanner, lag_s


def centre_px(error_s, scanner):
    """A phase error in centre pixels: omega e N / (2 Fs) (analysis/line_phase.py)."""
    s = scanner.settings
    omega = 2 * math.pi * scanner.raster.resonant_hz
    return omega * error_s * s.pixels_per_line / (2 * s.fill_fraction)


@pytest.mark.parametrize("method", ["search", "correlation"])
def test_a_phase_error_injected_in_the_mirror_is_recovered_within_a_tenth_of_a_pixel(method):
    """The simulated mirror lags 2.3 us; the scanner assumes 2.0 us: the images' comb gives
    the 0.3 us error (4.3 centre pixels) back to within 0.1 pixel."""
    physics = {**COLD, "phase_lag_us": 2.3}
    frames, scanner, lag_s = frames_from(BeadGridWorld(), physics, 4, **SETTINGS, line_phase_us=2.0)
    estimate = estimate_line_phase_error(
        frames, scanner.settings.fill_fraction, scanner.raster.resonant_hz, method=method
    )
    truth_s = lag_s - 2.0e-6
    assert abs(centre_px(estimate.error_s - truth_s, scanner)) < 0.1
    assert abs(estimate.error_centre_px - centre_px(truth_s, scanner)) < 0.1


def test_phase_recovery_on_the_simulated_cortex():
    """Same on the simulated cortex (cells, neuropil; photon-starved frames averaged), with
    the default estimator (coherence-weighted phase correlation)."""
    world = World(WorldConfig(extent_um=(420.0, 220.0, 40.0)), seed=4)
    physics = {**COLD, "phase_lag_us": 2.3}
    frames, scanner, lag_s = frames_from(world, physics, 30, **SETTINGS, line_phase_us=2.0)
    estimate = estimate_line_phase_error(
        frames, scanner.settings.fill_fraction, scanner.raster.resonant_hz
    )
    assert abs(centre_px(estimate.error_s - (lag_s - 2.0e-6), scanner)) < 0.1


def test_a_per_zoom_table_predicts_the_phase_at_an_uncalibrated_zoom():
    """The lag grows with amplitude (1.5 + 0.8 (A/A_full)^2 us); calibrating at zooms 1,
    1.25, 1.6 and 2 and interpolating linearly in amplitude predicts zoom 1.4 within 0.1
    centre pixel there."""
    physics = {**COLD, "phase_lag_us": 1.5, "phase_lag_amplitude_us": 0.8}
    table = LinePhaseTable()
    for zoom in (1.0, 1.25, 1.6, 2.0):
        frames, scanner, _ = frames_from(
            BeadGridWorld(pitch_um=25.0 / zoom, sd_um=1.2 / zoom), physics, 3,
            **SETTINGS, zoom=zoom, line_phase_us=1.5,
        )  # fmt: skip
        estimate = estimate_line_phase_error(
            frames, scanner.settings.fill_fraction, scanner.raster.resonant_hz
        )
        table = table.with_measurement(zoom, 1.5 + estimate.error_us)
    frames, scanner, lag_s = frames_from(
        BeadGridWorld(pitch_um=18.0, sd_um=0.9), physics, 1, **SETTINGS, zoom=1.4
    )
    predicted_s = table.phase_us_at(1.4) * 1e-6
    assert abs(centre_px(predicted_s - lag_s, scanner)) < 0.1
    # and the lag really differs between the zooms by more than that
    assert abs(centre_px(table.phase_us_at(1.0) * 1e-6 - lag_s, scanner)) > 0.5
