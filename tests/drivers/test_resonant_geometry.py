"""Sinusoidal scan geometry and binning (hardware.md section 2), no hardware involved."""

import math

import numpy as np
import pytest

from drivers.errors import LimitError
from drivers.scanning.resonant import ResonantScanSettings, plan_resonant, slow_galvo_waveform
from drivers.scanning.sinusoidal import (
    bin_frame,
    build_line_map,
    samples_per_pixel,
    spatial_fill_fraction,
    temporal_fill_fraction,
)

#: ScanImage recording header (hardware.md section 2); Fs = 0.9 is ScanImage's default
#: spatial fill fraction (fillFractionSpatial), temporal 0.712
GOLDEN = dict(
    resonant_hz=7925.52,
    bidirectional=True,
    pixels_per_line=512,
    lines=512,
    sample_rate_hz=100e6,
    flyback_ms=1.0,
    fill_fraction=0.9,
)


def test_fill_fractions_follow_the_arcsine_law():
    """Ft = (2/pi) asin(Fs); Fs = 0.7 -> Ft = 0.4936 (hardware.md)."""
    assert temporal_fill_fraction(0.7) == pytest.approx(0.4936, abs=5e-5)
    assert spatial_fill_fraction(temporal_fill_fraction(0.3)) == pytest.approx(0.3)
    assert spatial_fill_fraction(0.712) == pytest.approx(0.9, abs=1e-3)  # ScanImage's pair


def test_scanimage_golden_case_frame_rate_and_line_period():
    raster = plan_resonant(ResonantScanSettings(**GOLDEN))
    assert 1e6 / raster.line_rate_hz == pytest.approx(63.09, abs=0.005)  # line period, us
    assert raster.flyback_lines == 16  # 1 ms / 63.09 us, rounded up to whole lines
    assert round(raster.frame_rate_hz, 2) == 30.02
    assert raster.periods_per_frame == (512 + 16) // 2


def test_scanimage_golden_case_7_to_16_samples_per_pixel_centre_to_edge():
    counts = samples_per_pixel(512, 0.9, 7925.52, 100e6)
    assert counts.min() == 7 and counts.max() == 16
    centre = counts[256 - 8 : 256 + 8]
    edges = np.concatenate((counts[:4], counts[-4:]))
    assert centre.max() <= 8 and edges.min() >= 15  # slow at the edges, fast in the middle
    raster = plan_resonant(ResonantScanSettings(**GOLDEN))
    forward = raster.line_map.samples_per_pixel()
    assert forward.min() == 7 and forward.max() == 16


@pytest.mark.parametrize("bidirectional", [True, False])
def test_pixels_are_equal_in_space_for_the_sinusoidal_mirror(bidirectional):
    """Every sample binned into pixel k saw the mirror inside pixel k's spatial bounds
    b_k .. b_k+1 (equal widths), give or take the mirror's travel in half a sample."""
    f, fs, fill, n_px, phase = 7925.52, 100e6, 0.9, 512, 1.7e-6
    line_map = build_line_map(n_px, fill, f, fs, phase, bidirectional)
    bounds = np.linspace(-fill, fill, n_px + 1)
    half_sample_travel = 2 * math.pi * f * 0.5 / fs  # at most, in units of the amplitude
    directions = [(line_map.forward_edges, 1)]
    if bidirectional:
        directions.append((line_map.backward_edges[::-1], -1))
    for edges, sign in directions:
        for k in range(n_px):
            a, e = sorted((edges[k], edges[k + 1]))
            pixel = k if sign > 0 else n_px - 1 - k
            t = np.arange(a, e) / fs
            x = -np.cos(2 * math.pi * f * (t - phase))  # mirror position, units of A
            assert x.min() >= bounds[pixel] - half_sample_travel - 1e-12
            assert x.max() <= bounds[pixel + 1] + half_sample_travel + 1e-12


def test_backward_line_uses_the_mirrored_map():
    line_map = build_line_map(256, 0.8, 7910.0, 50e6, 0.0, True)
    forward = np.diff(line_map.forward_edges)
    backward = -np.diff(line_map.backward_edges)  # per spatial pixel, left to right
    assert np.abs(forward - backward).max() <= 1  # rounding only
    assert line_map.backward_edges[0] > line_map.forward_edges[-1]  # second half period


def reference_bin(raw, line_map, n_lines):
    """Pixel = round-half-up mean of its samples, one line at a time, in plain numpy."""
    out = np.zeros((n_lines, line_map.pixels), np.int64)
    per_record = line_map.lines_per_record
    for line in range(n_lines):
        record, half = divmod(line, per_record)
        row = raw[record].astype(np.int64)
        for k in range(line_map.pixels):
            if half == 0:
                a, e = line_map.forward_edges[k], line_map.forward_edges[k + 1]
            else:
                a, e = line_map.backward_edges[k + 1], line_map.backward_edges[k]
            out[line, k] = math.floor(row[a:e].sum() / (e - a) + 0.5)
    return out


@pytest.mark.parametrize("bidirectional, n_lines", [(True, 37), (True, 40), (False, 19)])
def test_binning_kernel_equals_the_mean_of_each_pixels_samples(bidirectional, n_lines):
    """Odd line counts and counts that are not multiples of 8 records included."""
    line_map = build_line_map(64, 0.85, 7910.0, 20e6, 0.5e-6, bidirectional)
    records = -(-n_lines // line_map.lines_per_record) + 3  # flyback records are not read
    rng = np.random.default_rng(5)
    raw = rng.integers(-3000, 30000, size=(records, line_map.end_sample + 50)).astype(np.int16)
    out = np.full((n_lines, 64), -1, np.int16)
    bin_frame(raw, line_map, out)
    np.testing.assert_array_equal(out, reference_bin(raw, line_map, n_lines))


def test_more_pixels_than_samples_allow_is_refused_with_the_limit():
    """The centre pixel lasts (2 Fs / N) / (2 pi f): one sample at 20 MS/s needs
    N <= fs Fs / (pi f), for the fastest mirror the tolerance allows (+1 %): 715 pixels."""
    limit = math.floor(20e6 * 0.9 / (math.pi * 7925.52 * 1.01))
    too_many = {**GOLDEN, "pixels_per_line": 2048, "sample_rate_hz": 20e6}
    with pytest.raises(LimitError, match=f"pixels_per_line = 2048.*at most {limit}") as info:
        plan_resonant(ResonantScanSettings(**too_many))
    assert "sample_rate_hz" in str(info.value)
    raster = plan_resonant(ResonantScanSettings(**{**too_many, "pixels_per_line": limit}))
    assert raster.line_map.samples_per_pixel().min() >= 1


@pytest.mark.parametrize("fill", [0.0, 1.0, 1.2, -0.5])
def test_fill_fraction_outside_0_1_is_refused(fill):
    with pytest.raises(LimitError, match=r"fill_fraction = .*inside \(0, 1\)"):
        plan_resonant(ResonantScanSettings(**{**GOLDEN, "fill_fraction": fill}))


def test_zoom_beyond_the_scan_range_names_the_smallest_zoom():
    """500 um at Fs 0.9 needs 277.8 um of amplitude = 4.44 V at 62.5 um/V; zoom 0.5 would
    need 8.9 V > 5 V, so the smallest zoom is 0.889."""
    settings = ResonantScanSettings(
        **{**GOLDEN, "fov_um": (500.0, 500.0), "resonant_um_per_volt": 62.5, "zoom": 0.5}
    )
    with pytest.raises(LimitError, match=r"zoom = 0.5 is beyond the scan range.*zoom >= 0.889"):
        plan_resonant(settings)


def test_a_line_phase_that_leaves_the_record_is_refused():
    with pytest.raises(LimitError, match="line_phase_us = 20"):
        plan_resonant(ResonantScanSettings(**{**GOLDEN, "line_phase_us": 20.0}))
    with pytest.raises(LimitError, match="line phase"):
        plan_resonant(ResonantScanSettings(**{**GOLDEN, "line_phase_us": -20.0}))


def test_unidirectional_frames_take_one_line_per_period():
    settings = ResonantScanSettings(**{**GOLDEN, "bidirectional": False})
    raster = plan_resonant(settings)
    assert raster.flyback_lines == math.ceil(1e-3 * 7925.52)  # 8 periods
    assert raster.frame_rate_hz == pytest.approx(7925.52 / (512 + 8))
    assert not raster.line_map.bidirectional


def test_bidirectional_frames_are_whole_mirror_periods():
    """0.5 ms of flyback = 7.93 lines -> 8 lines; 511 + 8 is odd -> 9 (the frame must end
    where the next begins, after a backward line)."""
    settings = ResonantScanSettings(**{**GOLDEN, "lines": 511, "flyback_ms": 0.5})
    raster = plan_resonant(settings)
    assert raster.flyback_lines == 9 and raster.total_lines % 2 == 0


def galvo_follow(command_v, rate_hz, lag_s, start_v):
    """A first-order galvo driven by a zero-order-held AO command, exact per sample."""
    decay = math.exp(-1.0 / (rate_hz * lag_s))
    out = np.empty_like(command_v)
    v = start_v
    for i, c in enumerate(command_v):
        v = c + (v - c) * decay
        out[i] = v
    return out


@pytest.mark.parametrize("lag_us", [0.0, 100.0])
def test_slow_galvo_beam_crosses_each_line_centre_at_its_pixel_row(lag_us):
    """Three frames of the retriggered waveform (the AO holds its last value until the next
    frame clock) through a first-order galvo with the lag the scanner assumes: at the centre
    of every imaged line of the third frame the beam is within 3 % of a row of the row's
    centre, and each waveform ends before the next frame clock."""
    settings = ResonantScanSettings(**{**GOLDEN, "lines": 128, "galvo_lag_us": lag_us})
    r = plan_resonant(settings)
    volts = slow_galvo_waveform(r)
    rate = 10 * settings.galvo_rate_hz  # resample the held command finely
    frame_n = int(round(r.periods_per_frame / r.resonant_hz * rate))
    assert volts.size / settings.galvo_rate_hz < frame_n / rate
    held = np.repeat(volts, 10)
    frame = np.concatenate((held, np.full(frame_n - held.size, held[-1])))
    command = np.tile(frame, 3)
    beam = command if lag_us == 0 else galvo_follow(command, rate, lag_us * 1e-6, command[0])
    line_s = 1 / r.line_rate_hz
    lines = np.arange(128)
    centres = (
        2 * frame_n / rate
        + r.slow_galvo_lead_periods / r.resonant_hz
        + settings.line_phase_us * 1e-6
        + 0.25 / r.resonant_hz
        + lines * line_s
    )
    beam_y = np.interp(centres, np.arange(command.size) / rate, beam) * settings.galvo_um_per_volt
    pitch = r.field_um[1] / 128
    row_centres = -r.field_um[1] / 2 + (lines + 0.5) * pitch
    # without a lag the beam is the held staircase itself: half an AO step off at most
    half_step = 0.5 * pitch * r.line_rate_hz / settings.galvo_rate_hz
    assert np.abs(beam_y - row_centres).max() < 0.03 * pitch + (half_step if lag_us == 0 else 0)


def test_flyback_too_short_for_the_galvo_names_the_minimum():
    settings = ResonantScanSettings(**{**GOLDEN, "flyback_ms": 0.5, "galvo_lag_us": 150.0})
    with pytest.raises(LimitError, match=r"flyback_ms = 0.5 is too short.*flyback_ms >= "):
        plan_resonant(settings)
