"""Bad input gives clear errors or results marked invalid with the reason, never exponents
from garbage (issue 6)."""

import numpy as np
import pytest

from analysis.rg import models
from analysis.rg.batch import RGOptions, analyze

FAST = RGOptions(n_quarters=0, shuffle=False)


def sparse(n, t, seed=0):
    return models.independent_neurons(n, t, np.random.default_rng(seed))


def test_nan_is_an_error_naming_where():
    x = sparse(32, 500)
    x[5, 17] = np.nan
    with pytest.raises(ValueError, match="1 NaN/inf values \\(first at neuron 5, frame 17\\)"):
        analyze(x, FAST)


def test_constant_and_all_zero_rows_are_named_and_droppable():
    x = sparse(40, 2000)
    x[3] = 0.0
    x[9] = 2.5
    with pytest.raises(ValueError, match="1 all-zero .* row\\(s\\): 3.*1 constant row\\(s\\): 9"):
        analyze(x, FAST)
    result = analyze(x, RGOptions(n_quarters=0, shuffle=False, constant_rows="drop", levels=5))
    assert result.dropped_rows == {"all_zero": [3], "constant": [9]}
    assert result.n_neurons == 38
    assert 3 not in result.kept_rows and 9 not in result.kept_rows


def test_kept_constant_rows_pair_with_correlation_zero():
    x = sparse(16, 3000)
    x[4] = 0.0
    result = analyze(x, RGOptions(n_quarters=0, shuffle=False, constant_rows="keep", levels=3))
    pairs = result.tree.pairs[0]
    partner = [p for p in pairs.tolist() if 4 in p][0]
    i = partner.index(4)
    assert result.tree.pair_correlations[0][pairs.tolist().index(partner)] == 0.0
    assert partner[1 - i] != 4
    assert any("kept 1 all-zero" in note for note in result.notes)


def test_rows_that_cannot_be_normalized_are_refused():
    x = sparse(16, 1000)
    x[2] = -x[2]  # nonzero values averaging < 0: no "mean of nonzero values = 1"
    with pytest.raises(ValueError, match="averaging <= 0.*: 2"):
        analyze(x, RGOptions(n_quarters=0, shuffle=False, constant_rows="keep"))


def test_too_few_neurons_for_the_levels():
    with pytest.raises(ValueError, match="N = 100 neurons is smaller than 2\\^levels = 128"):
        analyze(sparse(100, 500), RGOptions(levels=7, n_quarters=0, shuffle=False))


def test_recording_too_short_for_spectra_marks_mu_invalid():
    # 1,000 frames: K = 128 and 256 would need 1,280 frames, K = 16..64 are fine
    result = analyze(sparse(256, 1000), RGOptions(levels=8, n_quarters=0, shuffle=False))
    spectra = result.observables.spectra
    assert spectra[64].valid and not spectra[128].valid
    assert "T = 1000 frames < 10 x K = 1280" in spectra[128].reason
    assert result.exponents.mu.valid  # three spectra left
    short = analyze(sparse(256, 300), RGOptions(levels=8, n_quarters=0, shuffle=False))
    mu = short.exponents.mu
    assert not mu.valid and mu.value is None
    assert "valid spectra" in mu.reason and "T = 300 frames" in mu.reason
    assert short.to_dict()["mu"] is None and "mu" in short.to_dict()["invalid"]


def test_activity_without_exact_zeros_gives_no_beta():
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 1.0, (64, 2000))  # never zero: P0 = 0 at every K
    result = analyze(x, RGOptions(levels=6, n_quarters=0, shuffle=False))
    beta = result.exponents.beta
    assert not beta.valid and beta.value is None
    assert "no exact zeros" in beta.reason
    assert result.exponents.alpha.valid  # the other exponents do not need zeros


def test_quarter_error_bars_need_two_valid_refits():
    result = analyze(sparse(64, 4000), RGOptions(levels=6, n_quarters=3, shuffle=False))
    assert result.exponents.beta.err is not None
    assert len(result.exponents.beta.quarter_values) == 3
    with pytest.raises(ValueError, match="n_quarters must be 0 or >= 2"):
        analyze(sparse(64, 400), RGOptions(levels=6, n_quarters=1))
    none = analyze(sparse(64, 400), RGOptions(levels=6, n_quarters=0, shuffle=False))
    assert none.exponents.beta.err is None and "no quarter refits" in none.exponents.beta.err_reason


def test_not_2d_or_too_small():
    with pytest.raises(ValueError, match="2-D"):
        analyze(np.zeros(10), FAST)
    with pytest.raises(ValueError, match="at least 2 frames"):
        analyze(np.ones((4, 1)), FAST)
