"""The resonant-galvo scanner on simulated resonant hardware, imaging a bead grid.

The bead grid (a stand-in with the World's `sample_photons` signature) has beads at known
positions, so image geometry can be checked pixel by pixel: where beads appear in x (the
sinusoidal pixel map), in y (the slow galvo's ramp), and whether forward and backward lines
agree (the line phase).
"""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from drivers.errors import DeviceError, DeviceTimeout, LimitError
from drivers.scanning.resonant import ResonantGalvoScanner, ResonantScanSettings
from simulators.resonant import ResonantPhysics, SimulatedResonantHardware


class BeadGridWorld:
    """Gaussian beads (SD sd_um) on a square grid of pitch_um with a node at (0, 0), on a
    dim background; photon counts Poisson(rate x dt) from a seeded Generator."""

    def __init__(self, pitch_um=25.0, sd_um=1.2, peak_mhz=400.0, background_mhz=0.5, seed=0):
        self.pitch, self.sd = pitch_um, sd_um
        self.peak, self.background = peak_mhz, background_mhz
        self.rng = np.random.default_rng(seed)
        self.t_s = 0.0

    def sample_photons(self, x_um, y_um, t0_s, dt_s, power_mw, out):
        dx = (x_um + self.pitch / 2) % self.pitch - self.pitch / 2
        dy = (y_um + self.pitch / 2) % self.pitch - self.pitch / 2
        rate = self.background + self.peak * np.exp(-(dx * dx + dy * dy) / (2 * self.sd**2))
        out[:] = self.rng.poisson(rate * dt_s * 1e6)
        self.t_s = t0_s + len(x_um) * dt_s


#: a drift-free mirror lagging 1.5 us at every amplitude, an ideal slow galvo model match
STEADY = dict(heating_k=0.0, amplitude_shift_hz=0.0, phase_lag_us=1.5, phase_lag_amplitude_us=0.0)
FS = 100e6
SMALL = dict(
    resonant_hz=7910.0,
    fov_um=(400.0, 200.0),
    pixels_per_line=400,
    lines=200,
    sample_rate_hz=FS,
    galvo_lag_us=100.0,
    galvo_um_per_volt=50.0,
)
#: the phase that aligns the lines is the mirror's lag: a record starts at the first sample
#: after its edge (half a sample late on average) and round(t fs) edges read sample j as the
#: instant (j + 1/2) / fs (sinusoidal.py): the two half samples cancel
ALIGNED_US = 1.5


def make_scanner(world=None, seed=0, **changes):
    physics = ResonantPhysics(**{**STEADY, **changes.pop("physics", {})})
    hw = SimulatedResonantHardware(world or BeadGridWorld(seed=seed), physics=physics, seed=seed)
    settings = ResonantScanSettings(**{**SMALL, "line_phase_us": ALIGNED_US, **changes})
    return ResonantGalvoScanner(hw.digitizer, hw.io, settings), hw


def acquire(scanner, n_frames):
    frames = np.zeros((n_frames,) + scanner.frame_shape, np.int16)
    with scanner:
        scanner.start()
        infos = [scanner.read_frame(frames[i]) for i in range(n_frames)]
        scanner.stop()
    return frames, infos


def bead_centroids(image, scanner, rows):
    """(x, y) centroids in pixels of every bead fully inside the field, using `rows` only,
    with the expected (x, y) pixel coordinates from the bead positions."""
    s = scanner.settings
    field_x, field_y = scanner.raster.field_um
    py_um, px_um = scanner.pixel_size_um
    pitch = 25.0
    found, expected = [], []
    for bx in np.arange(-pitch * 7, pitch * 7 + 1, pitch):
        for by in np.arange(-pitch * 3, pitch * 3 + 1, pitch):
            ex = (bx + field_x / 2) / px_um - 0.5
            ey = (by + field_y / 2) / py_um - 0.5
            half = int(pitch / px_um / 3)
            x0, y0 = int(round(ex)) - half, int(round(ey)) - half
            if x0 < 0 or y0 < 0 or x0 + 2 * half >= s.pixels_per_line or y0 + 2 * half >= s.lines:
                continue
            yy, xx = np.mgrid[y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1]
            keep = np.isin(yy[:, 0], rows)
            patch = image[y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1][keep].astype(float)
            patch = np.clip(patch - np.median(image), 0, None)
            w = patch.sum()
            found.append(((patch * xx[keep]).sum() / w, (patch * yy[keep]).sum() / w))
            expected.append((ex, ey))
    return np.array(found), np.array(expected)


def comb_px(frames, scanner):
    """Mean x displacement, forward rows minus backward rows, over all beads."""
    image = frames.astype(float).mean(axis=0)
    lines = np.arange(scanner.settings.lines)
    forward, _ = bead_centroids(image, scanner, lines[0::2])
    backward, _ = bead_centroids(image, scanner, lines[1::2])
    return forward[:, 0] - backward[:, 0]


def test_bead_grid_columns_are_straight_in_bidirectional_mode():
    """With the calibrated line phase forward and backward lines put every bead at the same
    x (no comb); 0.3 us off, a comb of 2 omega e N / (2 Fs) = 8.4 centre pixels appears."""
    scanner, _ = make_scanner()
    frames, _ = acquire(scanner, 3)
    comb = comb_px(frames, scanner)
    assert abs(comb.mean()) < 0.1 and np.sqrt(np.mean(comb**2)) < 0.2

    wrong, _ = make_scanner(line_phase_us=ALIGNED_US + 0.3)
    frames, _ = acquire(wrong, 3)
    comb = comb_px(frames, wrong)
    centre_comb = 2 * math.pi * wrong.raster.resonant_hz * 0.3e-6 * 400 / 0.9
    assert np.abs(comb).max() == pytest.approx(centre_comb, rel=0.1)
    assert np.abs(comb).min() < 0.75 * centre_comb  # smaller towards the edges, slower mirror


@pytest.mark.parametrize("bidirectional", [True, False])
def test_beads_appear_at_their_positions_across_the_field(bidirectional):
    """Equal-width pixels in space: a bead at x um shows at pixel (x + field/2)/px - 1/2 from
    the centre to the edges of the sinusoid (a linear-in-time map would be off by tens of
    pixels at the edges), and the slow galvo's ramp puts it at its row."""
    scanner, _ = make_scanner(bidirectional=bidirectional)
    frames, _ = acquire(scanner, 3)
    image = frames.astype(float).mean(axis=0)
    found, expected = bead_centroids(image, scanner, np.arange(scanner.settings.lines))
    assert len(found) >= 60
    error = found - expected
    assert np.abs(error.mean(axis=0)).max() < 0.1  # x, y: no offset
    assert np.sqrt(np.mean(error**2, axis=0)).max() < 0.2  # nor a distortion anywhere
    assert np.abs(error).max() < 0.5
    assert expected[:, 0].min() < 30 and expected[:, 0].max() > 370  # edges were checked


def test_a_line_clock_that_never_arrives_is_a_timeout_at_open():
    scanner, hw = make_scanner(physics={"line_clock_connected": False})
    with pytest.raises(DeviceTimeout, match="line-clock"):
        scanner.open()
    assert not scanner.is_open
    assert hw.amplitude_v == 0.0  # the mirror was switched off again


def test_a_line_clock_that_stops_mid_run_raises_from_read_frame_keeping_earlier_frames():
    scanner, hw = make_scanner()
    frame_s = 1 / scanner.frame_rate_hz
    hw.stop_line_clock_at(2.5 * frame_s)
    kept = np.zeros((2,) + scanner.frame_shape, np.int16)
    failed = np.full(scanner.frame_shape, -7, np.int16)
    with scanner:
        scanner.start()
        scanner.read_frame(kept[0])
        scanner.read_frame(kept[1])
        before = kept.copy()
        with pytest.raises(DeviceTimeout, match="line clock stopped"):
            scanner.read_frame(failed)
        assert np.all(failed == -7)  # the failed read wrote nothing
        np.testing.assert_array_equal(kept, before)
        assert kept.std() > 0  # real frames
        scanner.safe()
    assert hw.amplitude_v == 0.0 and not hw.galvo_armed


def test_frequency_is_measured_before_and_tracked_during_acquisition():
    """Warm-up drift (f falls with temperature): the frequency measured at start is the
    mirror's within the counter's resolution, the frame rate is 2 f / lines per frame, and
    each frame's device time is the true time of its first line-clock edge."""
    warming = dict(heating_k=4.0, thermal_tau_s=0.2, tempco_per_k=-1.25e-4)
    scanner, hw = make_scanner(physics=warming, measure_periods=100)
    out = np.zeros(scanner.frame_shape, np.int16)
    with scanner:
        scanner.start()
        measured = scanner.measured_resonant_hz
        # the mean over the last measurement (100 periods) of a mirror drifting ~1 Hz/s
        assert measured == pytest.approx(hw.resonant_hz, rel=1e-5)
        total = scanner.raster.total_lines
        assert scanner.frame_rate_hz == pytest.approx(2 * measured / total, rel=1e-12)
        infos = [scanner.read_frame(out) for _ in range(8)]
        lead = scanner.raster.slow_galvo_lead_periods
        ppf = scanner.raster.periods_per_frame
        edges = [hw.edge_time_s(lead + i * ppf) for i in range(9)]
        tracked = scanner.tracked_resonant_hz
    truth = np.array(edges[:8]) - edges[0]
    np.testing.assert_allclose([i.device_time_s for i in infos], truth, atol=2e-8)  # 2 ticks
    last_frame_hz = ppf / (edges[8] - edges[7])
    assert tracked == pytest.approx(last_frame_hz, rel=2e-8 / (edges[8] - edges[7]))  # 2 ticks
    assert tracked < measured - 0.2  # warming: tempco < 0


@pytest.mark.parametrize(
    "jump, message",
    [
        (-0.02, "drifted to .* Hz, outside resonant_hz = 7910 Hz"),  # beyond the tolerance
        (+0.004, "sped up .* the slow galvo's waveform would overrun"),  # within it, too fast
    ],
)
def test_a_mirror_frequency_jump_during_acquisition_stops_the_run(jump, message):
    scanner, hw = make_scanner()
    out = np.zeros(scanner.frame_shape, np.int16)
    with scanner:
        scanner.start()
        scanner.read_frame(out)
        hw.physics = replace(hw.physics, natural_hz=hw.physics.natural_hz * (1 + jump))
        with pytest.raises(DeviceError, match=message):
            for _ in range(5):
                scanner.read_frame(out)


def test_measured_frequency_outside_the_nominal_tolerance_is_refused_at_open():
    scanner, _ = make_scanner(resonant_hz=12000.0)
    with pytest.raises(DeviceError, match="set resonant_hz to the scanner's frequency"):
        scanner.open()


def test_line_phase_changes_take_effect_and_are_recorded():
    scanner, _ = make_scanner(line_phase_us=ALIGNED_US + 0.3)
    frames = np.zeros((3,) + scanner.frame_shape, np.int16)
    with scanner:
        scanner.start()
        scanner.read_frame(frames[0])
        scanner.set_line_phase_us(ALIGNED_US)
        for i in range(3):
            scanner.read_frame(frames[i])
        with pytest.raises(LimitError, match="line_phase_us"):
            scanner.set_line_phase_us(40.0)
        snap = json.loads(json.dumps(scanner.snapshot()))
    assert abs(comb_px(frames, scanner).mean()) < 0.1
    assert snap["line_phase_us"] == pytest.approx(ALIGNED_US)
    assert snap["line_phase_changes"] == [{"frame": 1.0, "line_phase_us": ALIGNED_US}]


def test_safe_stops_the_mirror_and_parks_the_slow_galvo():
    scanner, hw = make_scanner(park_um=20.0)
    out = np.zeros(scanner.frame_shape, np.int16)
    with scanner:
        scanner.start()
        scanner.read_frame(out)
        assert hw.amplitude_v > 0 and hw.galvo_armed
        scanner.safe()
        assert hw.amplitude_v == 0.0 and not hw.galvo_armed
        assert hw.galvo_park_v == pytest.approx(20.0 / SMALL["galvo_um_per_volt"])


def test_snapshot_records_the_measured_frequency_and_the_pixel_map():
    scanner, hw = make_scanner()
    with scanner:
        snap = json.loads(json.dumps(scanner.snapshot()))
    assert snap["measured_resonant_hz"] == pytest.approx(hw.physics.natural_hz, rel=1e-6)
    lo, hi = snap["samples_per_pixel_centre_edge"]
    assert lo < hi  # more samples at the slow edges
    assert snap["amplitude_v"] == pytest.approx(400 / (2 * 0.9) / 62.5)
