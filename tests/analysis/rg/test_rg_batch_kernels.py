"""The fast batch kernels give the definitions of science.md section 4 written out with numpy.

measure() walks the cluster tree depth first and keeps each variable as its active frames only;
pairing_statistics() finds the nonzero samples from bit sets. Both are checked here against
the plain definitions on data that exercise their branches: odd N (leftovers dropped at
several levels), rows from very sparse to dense, and lags long enough to cross rows.
"""

import numpy as np
import pytest

from analysis.rg.observables import measure
from analysis.rg.statistics import nonzero_bitsets, pairing_statistics
from analysis.rg.tree import build_tree

N, T, LEVELS, LAG = 37, 600, 3, 12


@pytest.fixture(scope="module")
def mixed_density():
    rng = np.random.default_rng(3)
    density = np.linspace(0.01, 0.6, N)[:, None]  # sparse rows and dense rows
    common = rng.random(T) < 0.05  # some shared events, so pairs are not arbitrary
    active = (rng.random((N, T)) < density) | (common & (rng.random((N, T)) < 0.5))
    return np.where(active, rng.gamma(2.0, 1.0, (N, T)), 0.0)


def direct_observables(x, tree, max_lag):
    """P0, M2, C_K(t) and the mean / variance of the nonzero values, from the definitions."""
    p0, m2, c_k, q_mean, q_var = [], [], [], [], []
    for k, values in enumerate(tree.coarse_grain(x)):
        members = tree.members(k)
        raw = x[members].sum(axis=1)  # (clusters, T): input activity summed over members
        p0.append(np.mean(raw == 0))  # nonnegative activity: silent = every member zero
        m2.append(np.mean(raw.var(axis=1)))
        nonzero = values[values != 0]
        q_mean.append(nonzero.mean())
        q_var.append(nonzero.var())
        dv = values - values.mean(axis=1, keepdims=True)
        c = np.array(
            [
                np.mean(np.sum(dv[:, : T - s] * dv[:, s:], axis=1) / (T - s))
                for s in range(max_lag + 1)
            ]
        )
        c_k.append(c / c[0])
    return np.array(p0), np.array(m2), np.array(c_k), np.array(q_mean), np.array(q_var)


def test_measure_equals_the_definitions_with_leftovers_and_mixed_density(mixed_density):
    x = mixed_density
    tree = build_tree(pairing_statistics(x), LEVELS)
    assert [p.shape[0] for p in tree.pairs] == [18, 9, 4]  # N = 37: leftovers at levels 0, 2
    assert tree.leftovers[0] >= 0 and tree.leftovers[2] >= 0
    obs = measure(x, tree, max_lag_frames=LAG, extend_lags=False)
    p0, m2, c_k, q_mean, q_var = direct_observables(x, tree, LAG)
    np.testing.assert_allclose(obs.p0, p0, rtol=0, atol=0)
    np.testing.assert_allclose(obs.m2, m2, rtol=1e-10)
    np.testing.assert_allclose(obs.c_k, c_k, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(obs.q_mean, q_mean, rtol=1e-10)
    np.testing.assert_allclose(obs.q_variance, q_var, rtol=1e-9)
    assert np.all(obs.q_n_nonzero == [np.count_nonzero(v) for v in tree.coarse_grain(x)])


@pytest.mark.parametrize("density", [0.003, 0.5])  # the sparse path and the BLAS path
def test_pairing_statistics_give_the_covariance_sums_and_nonzero_bits(density):
    rng = np.random.default_rng(5)
    n, t = 50, 1000
    x = np.where(rng.random((n, t)) < density, rng.exponential(1.0, (n, t)), 0.0)
    x[:, 0] = np.where(rng.random(n) < 0.5, 1.5, 0.0)  # frame 0 is the BLAS path's shift
    stats = pairing_statistics(x)
    covariance = stats.second_moment / t - np.outer(stats.means, stats.means)
    np.testing.assert_allclose(covariance, np.cov(x, bias=True), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(stats.raw_sums, x.sum(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(stats.nonzero_bits, nonzero_bitsets(x))
    np.testing.assert_array_equal(stats.nonzero_counts(), np.count_nonzero(x, axis=1))
