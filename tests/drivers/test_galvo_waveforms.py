"""Galvo-galvo raster geometry: frame rate, limits, waveform smoothness, pixel map."""

import numpy as np
import pytest

from drivers.errors import LimitError
from drivers.scanning.galvo_waveforms import (
    GalvoScanSettings,
    build_waveforms,
    pixel_centres_um,
    pixel_sample_starts,
    plan_raster,
)


def test_frame_rate_follows_from_settings():
    s = GalvoScanSettings(
        pixels_per_line=256,
        lines=256,
        sample_rate_hz=2e6,
        ai_oversample=4,
        turnaround_us=400,
        flyback_lines=2,
        bidirectional=True,
    )
    r = plan_raster(s)
    ao_rate = 2e6 / 4
    turnaround = 400e-6 * ao_rate  # 200 AO samples
    expected = ao_rate / ((256 + turnaround) * (256 + 2))
    assert r.frame_rate_hz == pytest.approx(expected, rel=1e-12)
    assert r.pixel_dwell_s == pytest.approx(2e-6)
    assert r.pixel_size_um == pytest.approx((300 / 256, 300 / 256))


def test_bidirectional_frame_has_even_line_count():
    r = plan_raster(GalvoScanSettings(lines=255, flyback_lines=2, bidirectional=True))
    assert r.total_lines % 2 == 0  # the next frame starts with a forward line again
    r = plan_raster(GalvoScanSettings(lines=255, flyback_lines=2, bidirectional=False))
    assert r.total_lines == 257


def test_zoom_halves_the_field():
    r = plan_raster(GalvoScanSettings(fov_um=(300, 200), zoom=2.0))
    assert r.field_um == (150.0, 100.0)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"zoom": 0.3}, ["max_volts", "zoom"]),
        ({"fov_um": (2000.0, 300.0)}, ["x scan", "max_volts"]),
        ({"ai_oversample": 1}, ["max_ao_rate_hz", "ai_oversample"]),
        ({"line_phase_us": 500.0}, ["line_phase_us", "turnaround"]),
        ({"turnaround_us": 1.0}, ["turnaround_us"]),
        ({"pixels_per_line": 1}, ["pixels_per_line"]),
        ({"flyback_lines": 0}, ["flyback_lines"]),
        ({"park_um": (400.0, 0.0)}, ["park_um"]),
    ],
)
def test_impossible_settings_are_refused_with_the_setting_named(changes, words):
    settings = GalvoScanSettings(**changes)
    with pytest.raises(LimitError) as err:
        plan_raster(settings)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_waveforms_stay_in_range_and_have_no_jumps(bidirectional):
    s = GalvoScanSettings(bidirectional=bidirectional)
    r = plan_raster(s)
    w = build_waveforms(r)
    assert w.shape == (2, r.frame_samples)
    assert np.abs(w).max() <= s.max_volts
    step_v = r.field_um[0] / s.pixels_per_line / s.um_per_volt[0]
    dx = np.abs(np.diff(np.concatenate([w[0], w[0][:1]])))  # frame wraps onto the next
    if bidirectional:
        # the turnaround reverses the galvo without ever moving much faster than the ramp
        assert dx.max() <= step_v * 1.5
    else:
        # the flyback is fast but smooth: no sample-to-sample jump beyond a few ramp steps
        assert dx.max() < 5 * step_v * s.pixels_per_line / r.turnaround_samples
    dy = np.abs(np.diff(np.concatenate([w[1], w[1][:1]])))
    line_step_v = r.field_um[1] / s.lines / s.um_per_volt[1]
    assert dy.max() < line_step_v  # y steps are spread over the turnaround


@pytest.mark.parametrize("bidirectional", [True, False])
def test_pixel_map_reads_each_pixel_where_the_command_is_at_its_centre(bidirectional):
    s = GalvoScanSettings(
        bidirectional=bidirectional,
        line_phase_us=0.0,
        pixels_per_line=64,
        lines=32,
        fov_um=(64.0, 32.0),
    )
    r = plan_raster(s)
    w = build_waveforms(r)
    starts = pixel_sample_starts(r)
    ao_index = starts // s.ai_oversample
    x_um = w[0][ao_index] * s.um_per_volt[0]
    y_um = w[1][ao_index] * s.um_per_volt[1]
    xs = pixel_centres_um(64, r.field_um[0])
    ys = pixel_centres_um(32, r.field_um[1])
    np.testing.assert_allclose(x_um, np.broadcast_to(xs, (32, 64)), atol=1e-9)
    np.testing.assert_allclose(y_um, np.broadcast_to(ys[:, None], (32, 64)), atol=1e-9)


def test_line_phase_delays_every_pixel_by_the_same_number_of_samples():
    base = pixel_sample_starts(plan_raster(GalvoScanSettings(line_phase_us=0.0)))
    shifted = pixel_sample_starts(plan_raster(GalvoScanSettings(line_phase_us=50.0)))
    assert np.all(shifted - base == round(50e-6 * 2e6))
