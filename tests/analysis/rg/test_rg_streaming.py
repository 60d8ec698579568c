"""The online stage agrees with the batch analysis on the same data and pairing window."""

import threading
import tracemalloc

import numpy as np
import pytest

from analysis.rg import models
from analysis.rg.observables import measure
from analysis.rg.statistics import pairing_statistics
from analysis.rg.streaming import OnlineCoarseGraining
from analysis.rg.tree import build_tree

N, T, LEVELS, LAG = 128, 3000, 5, 16


@pytest.fixture(scope="module")
def activity():
    # deconvolved-like: latent-field spikes with continuous amplitudes (no exact ties)
    rng = np.random.default_rng(7)
    spikes = models.latent_field_model(N, T, rng)
    return (spikes * rng.gamma(2.0, 1.0, spikes.shape)).astype(np.float32)


def feed(stage, x, start, stop):
    for t in range(start, stop):
        assert stage.update(x[:, t])


def assert_same_observables(online, batch):
    assert np.array_equal(online.n_silent, batch.n_silent)
    assert np.array_equal(online.q_n_nonzero, batch.q_n_nonzero)
    np.testing.assert_allclose(online.p0, batch.p0, rtol=0, atol=0)
    np.testing.assert_allclose(online.m2, batch.m2, rtol=1e-9)
    np.testing.assert_allclose(online.q_mean, batch.q_mean, rtol=1e-9)
    np.testing.assert_allclose(online.q_skewness, batch.q_skewness, rtol=1e-7)
    np.testing.assert_array_equal(online.q_density, batch.q_density)
    np.testing.assert_allclose(online.c_k, batch.c_k, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(online.tau_c_frames, batch.tau_c_frames, rtol=1e-9)
    assert online.spectra.keys() == batch.spectra.keys()
    for k, spectrum in online.spectra.items():
        np.testing.assert_allclose(
            spectrum.eigenvalues, batch.spectra[k].eigenvalues, rtol=1e-7, atol=1e-12
        )


def assert_same_tree(a, b):
    for k in range(a.levels):
        np.testing.assert_array_equal(a.pairs[k], b.pairs[k])
        np.testing.assert_allclose(a.scales[k], b.scales[k], rtol=1e-12)
    np.testing.assert_allclose(a.neuron_weights, b.neuron_weights, rtol=1e-12)


@pytest.mark.parametrize("block_frames", [1, 16, 64])
def test_cumulative_window_matches_batch(activity, block_frames):
    x = activity
    stage = OnlineCoarseGraining(N, LEVELS, block_frames=block_frames, max_lag_frames=LAG)
    feed(stage, x, 0, 1700)
    tree = stage.repair()
    batch_tree = build_tree(pairing_statistics(x[:, :1700]), LEVELS)
    assert_same_tree(tree, batch_tree)
    feed(stage, x, 1700, T)
    batch = measure(
        x[:, 1700:],
        batch_tree,
        spectra_stats=pairing_statistics(x),  # the pairing window has grown to all frames
        max_lag_frames=LAG,
        extend_lags=False,
    )
    assert_same_observables(stage.observables(), batch)


def test_trailing_window_matches_batch_on_the_last_window_frames(activity):
    x = activity
    window = 1000
    stage = OnlineCoarseGraining(
        N, LEVELS, block_frames=32, window_frames=window, max_lag_frames=LAG
    )
    feed(stage, x, 0, 2345)
    tree = stage.repair()
    batch_tree = build_tree(pairing_statistics(x[:, 2345 - window : 2345]), LEVELS)
    assert_same_tree(tree, batch_tree)
    feed(stage, x, 2345, T)
    batch = measure(
        x[:, 2345:],
        batch_tree,
        spectra_stats=pairing_statistics(x[:, T - window :]),
        max_lag_frames=LAG,
        extend_lags=False,
    )
    assert_same_observables(stage.observables(), batch)


def test_scheduled_repairs_restart_the_observables(activity):
    stage = OnlineCoarseGraining(N, LEVELS, repair_every_frames=500, max_lag_frames=LAG)
    feed(stage, activity, 0, 1250)
    assert stage.repair_count == 2  # at frames 500 and 1000
    assert stage.frames_since_repair == 250
    assert stage.observables().n_frames == 250


def test_coarse_values_are_the_normalized_cluster_sums(activity):
    x = activity
    stage = OnlineCoarseGraining(N, LEVELS, max_lag_frames=LAG)
    feed(stage, x, 0, 800)
    tree = stage.repair()
    feed(stage, x, 800, 801)
    expected = tree.coarse_grain(x[:, 800:801].astype(np.float64))
    for k in range(LEVELS + 1):
        np.testing.assert_allclose(stage.coarse_values(k), expected[k][:, 0], rtol=1e-12)


def test_frame_with_nan_is_rejected_and_counted(activity):
    x = activity
    stage = OnlineCoarseGraining(N, LEVELS, max_lag_frames=LAG)
    feed(stage, x, 0, 600)
    bad = x[:, 600].copy()
    bad[3] = np.nan
    assert stage.update(bad) is False
    assert stage.frames_rejected == 1 and stage.frames_seen == 600
    tree = stage.repair()
    assert_same_tree(tree, build_tree(pairing_statistics(x[:, :600]), LEVELS))


def test_update_allocates_nothing(activity):
    x = activity
    stage = OnlineCoarseGraining(N, LEVELS, block_frames=8, window_frames=512, max_lag_frames=LAG)
    feed(stage, x, 0, 600)
    stage.repair()
    feed(stage, x, 600, 700)  # warm up every code path (all slabs, observing)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        feed(stage, x, 700, 900)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - before < 1024
    assert peak - before < 16 * 1024  # no array of N x anything (N x 8 bytes = 1 KB per row)


@pytest.mark.parametrize("window_frames", [None, 700])
def test_repair_on_a_worker_thread_equals_a_synchronous_repair(activity, window_frames):
    """begin_repair / job.run() on another thread / finish_repair gives the tree repair() gives
    at the frame it began, and frames taken meanwhile end up in the statistics exactly as if
    the repair had been synchronous (each matrix element receives the blocks in frame order)."""
    x = activity
    kwargs = dict(block_frames=16, window_frames=window_frames, max_lag_frames=LAG)
    sync = OnlineCoarseGraining(N, LEVELS, **kwargs)
    background = OnlineCoarseGraining(N, LEVELS, **kwargs)
    feed(sync, x, 0, 1234)
    feed(background, x, 0, 1234)
    expected = sync.repair()
    job = background.begin_repair()
    worker = threading.Thread(target=job.run)
    worker.start()
    feed(background, x, 1234, 1300)  # 4 blocks complete and wait while the job owns the matrix
    worker.join()
    assert background.repair_running
    tree = background.finish_repair(job)
    assert not background.repair_running
    for k in range(LEVELS):
        np.testing.assert_array_equal(tree.pairs[k], expected.pairs[k])
        np.testing.assert_array_equal(tree.scales[k], expected.scales[k])
    np.testing.assert_array_equal(tree.neuron_weights, expected.neuron_weights)
    feed(sync, x, 1234, 2000)
    feed(background, x, 1300, 2000)
    for k in range(LEVELS + 1):  # both observe with the same tree now
        np.testing.assert_array_equal(background.coarse_values(k), sync.coarse_values(k))
    sync.flush()
    background.flush()
    np.testing.assert_array_equal(background.second_moment, sync.second_moment)
    assert_same_tree(background.repair(), sync.repair())


def test_while_a_repair_runs_the_matrix_is_the_jobs(activity):
    stage = OnlineCoarseGraining(N, LEVELS, max_lag_frames=LAG)
    feed(stage, activity, 0, 600)
    stage.repair()
    feed(stage, activity, 600, 700)
    before = stage.observables()
    job = stage.begin_repair()
    with pytest.raises(RuntimeError, match="already running"):
        stage.begin_repair()
    with pytest.raises(RuntimeError, match="has not run yet"):
        stage.finish_repair(job)
    with pytest.raises(RuntimeError, match="re-pairing is running"):
        stage.flush()
    feed(stage, activity, 700, 720)
    during = stage.observables()  # old tree, spectra as before the job
    assert during.n_frames == before.n_frames + 20
    assert during.spectra is before.spectra
    assert any("re-pairing running" in note for note in during.notes)
    job.run()
    stage.finish_repair(job)
    assert stage.frames_since_repair == 0 and stage.repair_count == 2


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="2\\^levels = 256"):
        OnlineCoarseGraining(100, 8)
    with pytest.raises(ValueError, match="block_frames"):
        OnlineCoarseGraining(64, 3, block_frames=0)
    stage = OnlineCoarseGraining(64, 3)
    with pytest.raises(ValueError, match="shape \\(64,\\)"):
        stage.update(np.zeros(65, np.float32))
    with pytest.raises(RuntimeError, match="repair"):
        stage.observables()
    with pytest.raises(ValueError, match="at least 2 frames"):
        stage.repair()
