"""Greedy pairing, tie rule, normalization and the cluster tree (science.md section 4)."""

import numpy as np
import pytest

from analysis.rg.pairing import greedy_pairs
from analysis.rg.statistics import pairing_statistics
from analysis.rg.tree import build_tree


def naive_greedy(corr: np.ndarray) -> list[tuple[int, int]]:
    """The definition written out: repeatedly take numpy's first argmax of the masked matrix."""
    r = corr.astype(float).copy()
    np.fill_diagonal(r, -np.inf)
    pairs = []
    for _ in range(r.shape[0] // 2):
        i, j = np.unravel_index(np.argmax(r), r.shape)
        pairs.append((int(min(i, j)), int(max(i, j))))
        r[[i, j], :] = -np.inf
        r[:, [i, j]] = -np.inf
    return pairs


def test_all_equal_correlations_pair_by_smallest_indices():
    # tie rule: among equal correlations the smallest first index, then the smallest second
    corr = np.full((6, 6), 0.3)
    np.fill_diagonal(corr, 1.0)
    pairs, values, leftover = greedy_pairs(corr)
    assert pairs.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert leftover == -1
    assert np.all(values == pytest.approx(0.3))


def test_tie_rule_prefers_smallest_row_then_smallest_column():
    # r(1,4) = r(1,2) = r(0,3) = 0.9: (0, 3) has the smallest first index; then row 1 picks 2
    corr = np.eye(5)
    for i, j in [(1, 4), (1, 2), (0, 3)]:
        corr[i, j] = corr[j, i] = 0.9
    pairs, _, leftover = greedy_pairs(corr)
    assert pairs.tolist() == [[0, 3], [1, 2]]
    assert leftover == 4


@pytest.mark.parametrize("n", [2, 7, 40, 101])
def test_heap_algorithm_equals_repeated_argmax_with_ties(n):
    rng = np.random.default_rng(n)
    # coarse values -> many exact ties, exercising the tie rule everywhere
    a = np.round(rng.uniform(-1, 1, (n, n)), 1)
    corr = (a + a.T) / 2
    np.fill_diagonal(corr, 1.0)
    pairs, values, leftover = greedy_pairs(corr)
    assert [tuple(p) for p in pairs.tolist()] == naive_greedy(corr)
    assert np.all(np.diff(values) <= 0)  # greedy: each pair no more correlated than the last
    assert (leftover == -1) == (n % 2 == 0)


def test_constant_variable_has_correlation_zero():
    # variable 2 is constant: its correlations count as 0, so it pairs only after every
    # positive correlation is used, before the negative ones
    cov = np.array(
        [
            [1.0, -0.5, 0.0, 0.2],
            [-0.5, 1.0, 0.0, -0.4],
            [0.0, 0.0, 0.0, 0.0],
            [0.2, -0.4, 0.0, 1.0],
        ]
    )
    pairs, values, _ = greedy_pairs(cov)
    assert pairs.tolist() == [[0, 3], [1, 2]]
    assert values.tolist() == pytest.approx([0.2, 0.0])


def test_odd_n_drops_the_leftover_at_every_level():
    rng = np.random.default_rng(0)
    x = rng.exponential(1.0, (7, 500)) * (rng.random((7, 500)) < 0.5)
    tree = build_tree(pairing_statistics(x), 2)
    assert tree.pairs[0].shape == (3, 2)  # floor(7 / 2)
    assert tree.pairs[1].shape == (1, 2)  # floor(7 / 4)
    assert tree.leftovers[0] not in tree.pairs[0]
    members = tree.members(2)
    assert members.shape == (1, 4)
    assert tree.leftovers[0] not in members


# The hand-checkable case: 8 neurons, 8 frames, planted structure. Worked out by hand:
#   level 0 (normalized: mean of nonzero values 1): n0 = n3/3 = [1 1 0 0 0 0 0 0],
#   n1 = 2 n7 -> [0 0 1 1 0 0 0 0], n2 = n5 = n6 = [0 0 0 0 1 1 0 0] (three-way exact tie),
#   n4 = [0 0 0 0 2 0 4 0] -> [0 0 0 0 2/3 0 4/3 0].
#   Pairs: (0,3), (1,7) and, by the tie rule, (2,5) (not (2,6) or (5,6)); 4 and 6 remain.
#   Level 1: Z = nnz / (nnz_a + nnz_b): c0 = c1 = c2 = indicators (Z = 2/4),
#   c3 = (3/4) (n4 + n6) = [0 0 0 0 5/4 3/4 1 0]. c0, c1, c2 are disjoint (r = -1/3), c3
#   overlaps c2 only: pairs (2,3) then (0,1).
#   Level 2: d0 = c0 + c1 = [1 1 1 1 0 0 0 0] (Z = 4/4), d1 = (3/5)(c2 + c3)
#   = [0 0 0 0 27/20 21/20 3/5 0]. Level 3: (d0 + d1) with Z = 7/7.
HAND = np.array(
    [
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 2, 2, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [3, 3, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 2, 0, 4, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 0],
    ],
    dtype=float,
)


def test_hand_checkable_pairs_and_tree():
    tree = build_tree(pairing_statistics(HAND), 3)
    assert tree.pairs[0].tolist() == [[0, 3], [1, 7], [2, 5], [4, 6]]
    assert tree.pairs[1].tolist() == [[0, 1], [2, 3]]
    assert tree.pairs[2].tolist() == [[0, 1]]
    assert tree.members(1).tolist() == [[0, 3], [1, 7], [2, 5], [4, 6]]
    assert tree.members(2).tolist() == [[0, 3, 1, 7], [2, 5, 4, 6]]
    assert tree.members(3).tolist() == [[0, 3, 1, 7, 2, 5, 4, 6]]
    assert tree.pair_correlations[1][0] == pytest.approx(-1 / 3)


def test_hand_checkable_normalized_values():
    tree = build_tree(pairing_statistics(HAND), 3)
    assert tree.neuron_weights.tolist() == pytest.approx([1, 1 / 2, 1, 1 / 3, 1 / 3, 1, 1, 1])
    assert tree.scales[0].tolist() == pytest.approx([1 / 2, 1 / 2, 1 / 2, 3 / 4])
    assert tree.scales[1].tolist() == pytest.approx([1, 3 / 5])
    assert tree.scales[2].tolist() == pytest.approx([1])
    levels = tree.coarse_grain(HAND)
    assert levels[1][3].tolist() == pytest.approx([0, 0, 0, 0, 5 / 4, 3 / 4, 1, 0])
    assert levels[2].tolist() == [
        pytest.approx([1, 1, 1, 1, 0, 0, 0, 0]),
        pytest.approx([0, 0, 0, 0, 27 / 20, 21 / 20, 3 / 5, 0]),
    ]
    assert levels[3][0].tolist() == pytest.approx([1, 1, 1, 1, 27 / 20, 21 / 20, 3 / 5, 0])
    for values in levels:  # mean of nonzero values is 1 at every level
        for row in values:
            assert row[row != 0].mean() == pytest.approx(1.0)


def test_every_coarse_variable_has_nonzero_mean_one_on_its_pairing_window():
    rng = np.random.default_rng(5)
    x = rng.gamma(2.0, rng.uniform(0.1, 10, (64, 1)), (64, 3000)) * (rng.random((64, 3000)) < 0.2)
    tree = build_tree(pairing_statistics(x), 6)
    for values in tree.coarse_grain(x):
        for row in values:
            assert row[row != 0].mean() == pytest.approx(1.0, rel=1e-12)
