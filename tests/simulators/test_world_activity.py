"""Activity of the simulated world: firing models, calcium, stimulation and coupling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulators.world.activity import ActivityEngine
from simulators.world.config import WorldConfig
from simulators.world.world import World


def config(**overrides: object) -> WorldConfig:
    d: dict[str, object] = {"extent_um": [150.0, 150.0, 60.0], "coupling": {"enabled": False}}
    d.update(overrides)
    return WorldConfig.from_dict(d)


def binned_counts(cells: np.ndarray, times: np.ndarray, n_cells: int, duration_s: float,
                  bin_s: float) -> np.ndarray:
    n_bins = int(duration_s / bin_s)
    counts = np.zeros((n_cells, n_bins))
    keep = times < n_bins * bin_s
    np.add.at(counts, (cells[keep], (times[keep] / bin_s).astype(int)), 1)
    return counts


def mean_pairwise_correlation(counts: np.ndarray) -> float:
    active = counts[counts.sum(axis=1) >= 5]
    c = np.corrcoef(active)
    return float(c[np.triu_indices(c.shape[0], 1)].mean())


def test_poisson_cells_fire_at_their_configured_rates():
    duration = 100.0
    world = World(config(), 11)
    world.advance_to(duration)
    gt = world.ground_truth
    assert gt.t_s == pytest.approx(duration)
    counts = np.bincount(gt.spikes[0], minlength=world.n_cells)
    expected = gt.base_rate_hz * duration
    assert abs(counts.sum() - expected.sum()) < 4 * math.sqrt(expected.sum())
    z = (counts - expected) / np.sqrt(np.maximum(expected, 1.0))
    assert np.abs(z).max() < 5.0
    # heterogeneous, lognormal rates with the configured median
    assert np.median(gt.base_rate_hz) == pytest.approx(0.5, rel=0.3)
    assert gt.base_rate_hz.max() / np.median(gt.base_rate_hz) > 5


def test_calcium_rises_and_decays_with_the_indicator_time_constants():
    cfg = config(activity={"rate_median_hz": 0.1, "rate_log_sd": 0.0})
    ind = cfg.indicator
    n_cells, n_steps = 20, 60_000
    engine = ActivityEngine(cfg, n_cells, np.array([], int), np.array([], int),
                            np.random.default_rng(5))
    fluor = np.zeros((n_steps, n_cells), dtype=np.float32)
    engine.run(n_steps, fluor, np.zeros(n_steps))
    dff = fluor.astype(np.float64) - 1.0
    calcium = dff / (1.0 - dff / ind.dff_max)  # undo the documented saturation
    cells, steps = engine.spikes.arrays()
    isolated = 0
    for c, k in zip(cells, steps):
        own = steps[cells == c]
        if np.any((own > k - 2000) & (own < k + 1500) & (own != k)) or k + 1500 > n_steps:
            continue
        trace = calcium[k:k + 1500, c]
        assert trace[0] < 1e-4  # the transient starts at the spike (older ones have decayed)
        peak_step = int(np.argmax(trace))
        t_peak = math.log(ind.decay_tau_s / ind.rise_tau_s) * ind.decay_tau_s \
            * ind.rise_tau_s / (ind.decay_tau_s - ind.rise_tau_s)
        assert peak_step * cfg.dt_s == pytest.approx(t_peak, abs=1.5e-3)
        assert trace[peak_step] == pytest.approx(ind.dff_per_spike, rel=1e-3)
        tail = np.arange(300, 1200)  # 0.3-1.2 s: the rise has died out (exp(-15))
        slope = np.polyfit(tail * cfg.dt_s, np.log(trace[tail]), 1)[0]
        assert -1.0 / slope == pytest.approx(ind.decay_tau_s, rel=1e-3)
        isolated += 1
    assert isolated >= 5


def test_ground_truth_calcium_matches_the_simulated_fluorescence():
    cfg = config(extent_um=[100.0, 100.0, 40.0], activity={"rate_median_hz": 3.0})
    world = World(cfg, 12)
    fluor = np.zeros((3000, world.n_cells), dtype=np.float32)
    world.activity.run(3000, fluor, np.zeros(3000))
    gt = world.ground_truth
    step_starts = np.arange(3000) * cfg.dt_s
    np.testing.assert_allclose(gt.calcium_at(step_starts), fluor - 1.0, atol=2e-6)


def test_latent_field_model_makes_cells_correlated():
    duration, bin_s = 100.0, 0.033
    means = {}
    for model in ("poisson", "latent"):
        world = World(config(activity={"model": model}), 3)
        world.advance_to(duration)
        cells, times = world.ground_truth.spikes
        means[model] = mean_pairwise_correlation(
            binned_counts(cells, times, world.n_cells, duration, bin_s))
    # independent cells: mean correlation 0 within ~1/sqrt(bins) / sqrt(pairs)
    assert abs(means["poisson"]) < 0.003
    assert means["latent"] > 0.01
    assert means["latent"] > 5 * abs(means["poisson"])


def test_place_cells_fire_in_their_place_fields():
    cfg = config(activity={"model": "place"})
    world = World(cfg, 7)
    world.advance_to(150.0)
    gt = world.ground_truth
    assert len(gt.reward_times_s) >= 3  # the animal ran several laps
    cells, times = gt.spikes
    position = np.interp(times, gt.animal_times_s, gt.animal_position_m)
    centres = gt.place_field_centre_m
    place = np.flatnonzero(np.isfinite(centres))
    assert len(place) == pytest.approx(cfg.activity.place_cell_fraction * world.n_cells,
                                       abs=4 * math.sqrt(world.n_cells * 0.21))
    width = 2 * cfg.activity.place_field_sd_m
    in_field, chance = [], []
    rng = np.random.default_rng(0)
    for c in place:
        p = position[cells == c]
        if len(p) < 20:
            continue
        in_field.append(np.mean(np.abs(p - centres[c]) < width))
        other = rng.uniform(0, cfg.animal.track_length_m)  # a field the cell does not have
        chance.append(np.mean(np.abs(p - other) < width))
    assert len(in_field) >= 10
    assert np.median(in_field) > 0.7
    assert np.median(chance) < 0.35


def test_place_cells_are_silent_in_their_fields_while_the_animal_rests():
    cfg = config(activity={"model": "place"})
    world = World(cfg, 8)
    world.advance_to(150.0)
    gt = world.ground_truth
    cells, times = gt.spikes
    speed = np.interp(times, gt.animal_times_s, gt.animal_speed_m_per_s)
    place = np.isfinite(gt.place_field_centre_m)[cells]
    rest_time = np.mean(gt.animal_speed_m_per_s < 0.01) * 150.0
    resting = speed < 0.01
    rate_at_rest = np.sum(place & resting) / (rest_time * np.isfinite(
        gt.place_field_centre_m).sum())
    assert rest_time > 10.0
    assert rate_at_rest < 3 * cfg.activity.place_baseline_rate_hz


def test_stimulation_drives_exactly_the_opsin_cells_in_the_spot():
    cfg = config(extent_um=[200.0, 200.0, 60.0], stimulation={"opsin_fraction": 0.5})
    world = World(cfg, 8)
    world.advance_to(1.0)
    spots, radius, power = np.array([[0.0, 0.0], [40.0, -30.0]]), 15.0, 20.0
    driven = world.stimulate_spots(spots, radius, power, onset_s=1.0, duration_s=0.5)
    world.advance_to(2.0)
    gt = world.ground_truth

    p, r = gt.positions_um, gt.radii_um
    near = np.zeros(world.n_cells, dtype=bool)
    for sx, sy in spots:
        near |= np.hypot(p[:, 0] - sx, p[:, 1] - sy) < radius + r
    reach = np.abs(p[:, 2] - world.focus_z_um) <= cfg.stimulation.spot_axial_fwhm_um / 2
    np.testing.assert_array_equal(driven, np.flatnonzero(near & reach & gt.opsin))
    assert len(driven) >= 2
    assert np.any(near & reach & ~gt.opsin)  # the spot also covers cells without opsin

    cells, times = gt.spikes
    window = (times >= 1.0) & (times < 1.5)
    counts = np.bincount(cells[window], minlength=world.n_cells)
    assert (counts[driven] >= 3).all()  # ~10-12 expected at >= 20 Hz
    others = np.setdiff1d(np.arange(world.n_cells), driven)
    expected = gt.base_rate_hz[others].sum() * 0.5
    assert counts[others].sum() < expected + 4 * math.sqrt(expected) + 1
    before = np.bincount(cells[(times >= 0.4) & (times < 0.9)], minlength=world.n_cells)
    assert counts[driven].sum() > 5 * (before[driven].sum() + 1)
    record = gt.stimulations[0]
    assert record["evoked_start_s"] == pytest.approx(1.0 + cfg.stimulation.latency_s)
    np.testing.assert_array_equal(record["driven_cells"], driven)


def test_coupling_makes_motor_cells_burst_after_sensory_stimulation():
    onset, duration = 2.0, 0.4
    results = {}
    for enabled in (True, False):
        cfg = WorldConfig.from_dict({
            "extent_um": [240.0, 240.0, 60.0],
            "coupling": {"enabled": enabled, "radius_um": 40.0},
        })
        world = World(cfg, 21)
        gt = world.ground_truth
        sensory, motor = gt.sensory_cells, gt.motor_cells
        assert len(sensory) >= 4 and len(motor) >= 4
        world.advance_to(onset)
        driven = world.stimulate_spots(gt.positions_um[sensory, :2], 8.0, 25.0, onset, duration)
        assert set(sensory.tolist()) <= set(driven.tolist())
        world.advance_to(onset + 1.0)
        cells, times = world.ground_truth.spikes
        window = (times >= onset) & (times < onset + duration + 0.1)
        per_cell = np.bincount(cells[window], minlength=world.n_cells)[motor]
        results[enabled] = (per_cell, gt.base_rate_hz[motor])
    coupled, _ = results[True]
    control, base = results[False]
    assert coupled.mean() >= 3.0  # a burst of several spikes per motor cell
    expected_control = base.sum() * (duration + 0.1)
    assert control.sum() < expected_control + 4 * math.sqrt(expected_control) + 1
    assert coupled.sum() > 4 * (control.sum() + 1)


def test_stimulation_from_another_thread_while_sampling_takes_effect():
    import threading

    cfg = config(extent_um=[200.0, 200.0, 60.0])
    world = World(cfg, 13)
    gt = world.ground_truth
    target = gt.in_focus_cells[:3]
    n = 200_000  # 0.1 s per call at 2 MS/s
    x = np.zeros(n)
    out = np.zeros(n, dtype=np.int32)
    driven: list[np.ndarray] = []
    started = threading.Event()

    def stimulate() -> None:
        started.wait()
        driven.append(world.stimulate_spots(gt.positions_um[target, :2], 5.0, 30.0,
                                            onset_s=0.5, duration_s=0.5))

    thread = threading.Thread(target=stimulate)
    thread.start()
    for i in range(12):
        if i == 2:
            started.set()
        world.sample_photons(x, x, i * n * 0.5e-6, 0.5e-6, 30.0, out)
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert set(target.tolist()) <= set(driven[0].tolist())
    cells, times = world.ground_truth.spikes
    in_window = np.isin(cells, target) & (times >= 0.5) & (times < 1.0)
    assert in_window.sum() >= 3 * 5


def test_back_to_back_stimulations_drive_each_group_only_in_its_own_window():
    cfg = config(extent_um=[200.0, 200.0, 60.0], activity={"rate_median_hz": 0.1})
    world = World(cfg, 14)
    gt = world.ground_truth
    first, second = gt.in_focus_cells[:3], gt.in_focus_cells[3:6]
    a = world.stimulate_spots(gt.positions_um[first, :2], 4.0, 30.0, onset_s=0.2, duration_s=0.3)
    b = world.stimulate_spots(gt.positions_um[second, :2], 4.0, 30.0, onset_s=0.5,
                              duration_s=0.3)
    only_a, only_b = np.setdiff1d(a, b), np.setdiff1d(b, a)
    assert len(only_a) >= 2 and len(only_b) >= 2
    world.advance_to(1.2)
    cells, times = world.ground_truth.spikes
    latency = cfg.stimulation.latency_s

    def count(group: np.ndarray, start: float, stop: float) -> int:
        return int(np.sum(np.isin(cells, group) & (times >= start + latency)
                          & (times < stop + latency)))

    assert count(only_a, 0.2, 0.5) >= 3 * len(only_a)
    assert count(only_b, 0.5, 0.8) >= 3 * len(only_b)
    # outside its window a group fires at its ~0.1 Hz spontaneous rate: almost never
    assert count(only_a, 0.5, 1.1) <= 2
    assert count(only_b, 0.0, 0.5) + count(only_b, 0.8, 1.1) <= 2
