"""Photon counting of the simulated world: Poisson statistics, two-photon power law, images."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from simulators.world.config import WorldConfig
from simulators.world.world import World

SAMPLE_DT_S = 0.5e-6  # a 2 MS/s PMT digitiser


def uniform_world(**overrides: object) -> World:
    """No cells, untextured neuropil: every point inside the extent is equally bright."""
    d: dict[str, object] = {"extent_um": [100.0, 100.0, 40.0], "cell_density_per_mm3": 0.0,
                            "neuropil_contrast": 0.0, "neuropil_photon_rate_mhz": 1.0,
                            "dark_rate_mhz": 0.01}
    d.update(overrides)
    return World(WorldConfig.from_dict(d), seed=1)


def park(world: World, n: int, t0_s: float, power_mw: float, x_um: float = 0.0,
         y_um: float = 0.0) -> np.ndarray:
    out = np.zeros(n, dtype=np.int32)
    world.sample_photons(np.full(n, x_um), np.full(n, y_um), t0_s, SAMPLE_DT_S, power_mw, out)
    return out


def test_counts_are_poisson_with_the_configured_mean():
    world = uniform_world()
    cfg = world.config
    power = 0.8 * cfg.reference_power_mw
    n = 2_000_000  # 1 s at 2 MS/s; ~0.33 photons per sample, > 1 gap-buffer refill
    counts = park(world, n, 0.0, power)
    dt_us = SAMPLE_DT_S * 1e6
    expected = (cfg.neuropil_photon_rate_mhz * (power / cfg.reference_power_mw) ** 2
                + cfg.dark_rate_mhz) * dt_us
    mean, var = counts.mean(), counts.var()
    assert mean == pytest.approx(expected, abs=5 * math.sqrt(expected / n))
    # Fano factor 1; its standard error for Poisson counts is about sqrt((1 + 2 mu) / (n mu))
    fano_se = math.sqrt((1 + 2 * expected) / (n * expected))
    assert var / mean == pytest.approx(1.0, abs=5 * fano_se)
    # and the distribution itself: P(0) = exp(-mu), P(1) = mu exp(-mu)
    assert np.mean(counts == 0) == pytest.approx(math.exp(-mean), abs=2e-3)
    assert np.mean(counts == 1) == pytest.approx(mean * math.exp(-mean), abs=2e-3)
    # consecutive samples are independent
    assert abs(np.corrcoef(counts[:-1], counts[1:])[0, 1]) < 5 / math.sqrt(n)


def test_counts_quadruple_when_the_power_doubles():
    world = uniform_world(dark_rate_mhz=0.0)
    n = 1_000_000
    low = park(world, n, 0.0, 10.0).mean()
    high = park(world, n, n * SAMPLE_DT_S, 20.0).mean()
    ratio_se = 4.0 * math.sqrt(1 / (low * n) + 1 / (high * n))
    assert high / low == pytest.approx(4.0, abs=5 * ratio_se)


def test_beam_outside_the_extent_sees_only_dark_counts():
    world = uniform_world(dark_rate_mhz=0.05)
    n = 1_000_000
    counts = park(world, n, 0.0, 30.0, x_um=500.0)
    expected = world.config.dark_rate_mhz * SAMPLE_DT_S * 1e6
    assert counts.mean() == pytest.approx(expected, abs=5 * math.sqrt(expected / n))
    m = 100_000  # a beam position that is not a number (e.g. a glitch) is nowhere, too
    nan_beam = park(world, m, n * SAMPLE_DT_S, 30.0, x_um=float("nan"))
    assert nan_beam.mean() == pytest.approx(expected, abs=5 * math.sqrt(expected / m))
    inside = park(world, m, (n + m) * SAMPLE_DT_S, 30.0)  # neuropil: 20x the dark rate
    assert inside.mean() > 10 * expected


def raster(half_width_um: float, pixel_um: float, samples_per_pixel: int,
           centre: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, int]:
    edges = np.arange(-half_width_um, half_width_um, pixel_um) + pixel_um / 2
    n_px = len(edges)
    x = np.repeat(centre[0] + edges, samples_per_pixel)
    xs = np.tile(x, n_px)
    ys = np.repeat(centre[1] + edges, n_px * samples_per_pixel)
    return xs, ys, n_px


def test_a_bright_cell_appears_at_its_position_in_a_raster_scan():
    cfg = WorldConfig.from_dict({"extent_um": [200.0, 200.0, 60.0], "dark_rate_mhz": 0.0})
    world = World(cfg, 9)
    gt = world.ground_truth
    p = gt.positions_um
    inner = (np.abs(p[:, :2]) < 70).all(axis=1)
    candidates = [c for c in gt.in_focus_cells if inner[c]]
    cell = max(candidates, key=lambda c: gt.brightness[c] * world.plane.peak_weight[c])
    cx, cy = p[cell, 0], p[cell, 1]
    xs, ys, n_px = raster(15.0, 0.5, 8, (cx, cy))
    image = np.zeros(xs.size, dtype=np.int32)
    t0 = 0.0
    for _ in range(10):  # ten frames at high power
        out = np.zeros(xs.size, dtype=np.int32)
        world.sample_photons(xs, ys, t0, SAMPLE_DT_S, 60.0, out)
        image += out
        t0 += xs.size * SAMPLE_DT_S
    image = image.reshape(n_px, n_px, 8).sum(axis=-1).astype(float)
    grid = np.arange(n_px) * 0.5 - 15.0 + 0.25
    gx, gy = np.meshgrid(grid, grid)
    r = np.hypot(gx, gy)
    radius = gt.radii_um[cell]
    soma = image[(r > 0.6 * radius) & (r < 0.9 * radius)].mean()  # the cytosol ring
    background = image[(r > radius + 3) & (r < radius + 6)].mean()
    assert soma > 3 * background
    ring = (r < radius)
    bright = image * ring
    centroid = (np.sum(bright * gx) / bright.sum(), np.sum(bright * gy) / bright.sum())
    assert math.hypot(*centroid) < 1.0  # um, relative to the cell's true centre


def test_same_seed_gives_identical_photons_and_chunking_does_not_matter():
    cfg = WorldConfig.from_dict({"extent_um": [150.0, 150.0, 60.0]})
    xs, ys, _ = raster(60.0, 1.0, 2)
    n = xs.size  # 28,800 samples = 14.4 ms per frame
    frames = []
    for chunks in (1, 1, 7):
        world = World(cfg, 4)
        out = np.zeros(3 * n, dtype=np.int32)
        bounds = np.linspace(0, 3 * n, 3 * chunks + 1).astype(int)
        x3, y3 = np.tile(xs, 3), np.tile(ys, 3)
        for a, b in itertools.pairwise(bounds):
            part = np.zeros(b - a, dtype=np.int32)
            world.sample_photons(x3[a:b], y3[a:b], a * SAMPLE_DT_S, SAMPLE_DT_S, 30.0, part)
            out[a:b] = part
        frames.append((out, world.ground_truth.spikes))
    np.testing.assert_array_equal(frames[0][0], frames[1][0])
    np.testing.assert_array_equal(frames[0][0], frames[2][0])  # one process across calls
    np.testing.assert_array_equal(frames[0][1][0], frames[2][1][0])
    other = World(cfg, 5)
    out = np.zeros(n, dtype=np.int32)
    other.sample_photons(xs, ys, 0.0, SAMPLE_DT_S, 30.0, out)
    assert not np.array_equal(out, frames[0][0][:n])


def test_photon_counts_follow_the_cells_fluorescence():
    """Each sample's expected count is the documented formula with the cell's dF/F at that
    step: a photostimulated cell's calcium transient reaches the PMT."""
    cfg = WorldConfig.from_dict({"extent_um": [200.0, 200.0, 60.0],
                                 "activity": {"rate_median_hz": 0.05},
                                 "coupling": {"enabled": False}})
    world = World(cfg, 10)
    gt = world.ground_truth
    p = gt.positions_um
    cell = max((c for c in gt.in_focus_cells if (np.abs(p[c, :2]) < 80).all()),
               key=lambda c: gt.brightness[c])
    pixels = gt.footprints[cell]
    x, y = world.plane.pixel_centres_um(pixels)
    reps = 400
    xs, ys = np.tile(x, reps), np.tile(y, reps)
    power = 30.0

    def measured_and_expected(t0: float) -> tuple[float, float]:
        out = np.zeros(xs.size, dtype=np.int32)
        world.sample_photons(xs, ys, t0, SAMPLE_DT_S, power, out)
        # expectation from ground truth: every sample sees the dF/F of its own 1 ms step
        times = t0 + np.arange(xs.size) * SAMPLE_DT_S
        steps = np.floor(times / cfg.dt_s)
        unique_steps, index = np.unique(steps, return_inverse=True)
        dff = world.ground_truth.calcium_at(unique_steps * cfg.dt_s)
        neuropil_rel = 1.0 + cfg.neuropil_activity_gain * dff.mean(axis=1)
        plane = world.plane
        w = np.tile(plane.weight.ravel()[pixels], reps)
        npl = np.tile(plane.neuropil.ravel()[pixels], reps)
        pf = (power / cfg.reference_power_mw) ** 2
        mu = ((cfg.cell_photon_rate_mhz * gt.brightness[cell] * w * (1.0 + dff[index, cell])
               + cfg.neuropil_photon_rate_mhz * npl * neuropil_rel[index]) * pf
              + cfg.dark_rate_mhz) * SAMPLE_DT_S * 1e6
        return float(out.sum()), float(mu.sum())

    before, expected_before = measured_and_expected(0.4)
    assert before == pytest.approx(expected_before, abs=5 * math.sqrt(expected_before))
    world.stimulate_spots(p[cell, :2][None, :], 5.0, 30.0, onset_s=0.5, duration_s=0.5)
    during, expected_during = measured_and_expected(0.95)
    assert during == pytest.approx(expected_during, abs=5 * math.sqrt(expected_during))
    assert world.ground_truth.calcium_at(np.array([0.95]))[0, cell] > 0.5  # ~10 spikes
    assert during > 1.3 * before


def test_bad_sampling_calls_are_rejected():
    world = uniform_world()
    out = np.zeros(100, dtype=np.int32)
    x = np.zeros(100)
    world.sample_photons(x, x, 0.001, SAMPLE_DT_S, 10.0, out)
    with pytest.raises(ValueError, match="cannot go back in time"):
        world.sample_photons(x, x, 0.0, SAMPLE_DT_S, 10.0, out)
    with pytest.raises(ValueError, match="int32"):
        world.sample_photons(x, x, 0.01, SAMPLE_DT_S, 10.0, np.zeros(100, dtype=np.int64))
    with pytest.raises(ValueError, match="same length"):
        world.sample_photons(x, x[:50], 0.01, SAMPLE_DT_S, 10.0, out)
    with pytest.raises(ValueError, match="power_mw"):
        world.sample_photons(x, x, 0.01, SAMPLE_DT_S, -1.0, out)
    world.advance_to(1.0)
    with pytest.raises(ValueError, match="already simulated"):
        world.sample_photons(x, x, 0.5, SAMPLE_DT_S, 10.0, out)
    with pytest.raises(ValueError, match="power_mw"):
        world.stimulate_spots(np.zeros((1, 2)), 5.0, 1e6, 1.0, 0.1)
