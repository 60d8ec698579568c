"""The generative test models have the statistics they claim (science.md section 4)."""

import numpy as np
import pytest

from analysis.rg import models
from analysis.rg.controls import circular_shift_control, random_quarters


def test_ornstein_uhlenbeck_unit_variance_and_exponential_autocorrelation():
    h = models.ornstein_uhlenbeck(50, 20_000, 5.0, np.random.default_rng(1))
    assert h.var() == pytest.approx(1.0, abs=0.03)
    lag1 = np.mean(h[:, 1:] * h[:, :-1])
    lag5 = np.mean(h[:, 5:] * h[:, :-5])
    assert lag1 == pytest.approx(np.exp(-1 / 5), abs=0.02)
    assert lag5 == pytest.approx(np.exp(-1), abs=0.02)


def test_equicorrelated_gaussian_has_correlation_c():
    x = models.equicorrelated_gaussian(20, 50_000, 0.3, np.random.default_rng(2))
    corr = np.corrcoef(x)
    off = corr[~np.eye(20, dtype=bool)]
    assert off.mean() == pytest.approx(0.3, abs=0.01)
    assert x.var(axis=1) == pytest.approx(np.ones(20), abs=0.03)


def test_latent_field_model_is_binary_sparse_and_drops_silent_cells():
    x = models.latent_field_model(200, 3000, np.random.default_rng(3))
    assert x.shape == (200, 3000)
    assert set(np.unique(x)) <= {0.0, 1.0}
    assert np.all(x.sum(axis=1) > 0)
    assert 0.001 < x.mean() < 0.1


def test_independent_neurons_are_uncorrelated_with_heterogeneous_rates():
    x = models.independent_neurons(100, 20_000, np.random.default_rng(4)).astype(float)
    rates = (x != 0).mean(axis=1)
    assert rates.min() < 0.05 and rates.max() > 0.2
    corr = np.corrcoef(x)
    assert np.abs(corr[~np.eye(100, dtype=bool)]).max() < 0.05


def test_place_cells_fire_near_their_field_and_stay_exactly_silent_elsewhere():
    x = models.place_cells(60, 5000, np.random.default_rng(5), place_cell_fraction=1.0)
    assert np.all(x >= 0) and (x == 0).mean() > 0.5
    # consecutive passes through a field: activity is periodic with the lap (600 frames)
    lap = 600
    a, b = x[:, 1000 : 1000 + lap], x[:, 1000 + lap : 1000 + 2 * lap]
    same = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert same > 0.3


def test_circular_shift_keeps_each_neuron_and_breaks_correlations():
    rng = np.random.default_rng(6)
    x = models.equicorrelated_gaussian(30, 5000, 0.5, rng)
    shuffled = circular_shift_control(x, rng)
    for i in range(30):
        assert np.allclose(np.sort(shuffled[i]), np.sort(x[i]))
    corr = np.corrcoef(shuffled)[~np.eye(30, dtype=bool)]
    assert abs(corr.mean()) < 0.02


def test_random_quarters_are_contiguous_quarters_inside_the_recording():
    segments = random_quarters(1000, 10, np.random.default_rng(7))
    assert len(segments) == 10
    assert all(b - a == 250 and 0 <= a and b <= 1000 for a, b in segments)
