"""Exact paired tests: the small-sample statistics of closed loop vs yoked comparisons."""

import math

import numpy as np
import pytest

from analysis.paired import paired_test


def test_all_positive_differences_give_the_smallest_exact_p():
    # n = 6, every difference positive: of 2**6 sign patterns only the all-positive and the
    # all-negative ones are as extreme -> p = 2 / 64 for both tests
    a = np.array([3.0, 2.5, 4.0, 1.0, 2.0, 5.0])
    r = paired_test(a, np.zeros(6))
    assert r.p_sign_flip == pytest.approx(2 / 64)
    assert r.p_wilcoxon == pytest.approx(2 / 64)
    assert r.n_positive == 6 and r.mean_difference == pytest.approx(a.mean())


def test_wilcoxon_matches_the_textbook_table_value():
    # n = 8 distinct |d|, W+ = 3 (ranks 1 and 2 positive): two-sided exact p = 2 * P(W <= 3)
    d = np.array([-8.0, -7, -6, -5, -4, -3, 1, 2])
    r = paired_test(d, np.zeros(8))
    # count rank subsets of 1..8 with sum <= 3: {}, {1}, {2}, {3}, {1,2} -> 5 of 256
    assert r.p_wilcoxon == pytest.approx(2 * 5 / 256)


def test_symmetric_differences_are_not_significant():
    d = np.array([1.0, -1.0, 2.0, -2.0, 3.0, -3.0])
    r = paired_test(d, np.zeros(6))
    assert r.p_sign_flip == 1.0 and r.p_wilcoxon == 1.0 and math.isclose(r.mean_difference, 0)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="equal length"):
        paired_test(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="no pair"):
        paired_test(np.array([np.nan]), np.array([1.0]))
