"""`rig bench rg`: coarse-graining analysis figures (issue 6; docs/PERFORMANCE.md).

online_update_ms        N = 1,500, 8 levels: mean time of OnlineCoarseGraining.update per
                        frame with a tree in place (block covariance slab + coarse variables +
                        running observables), measured in a child process with single-threaded
                        BLAS (OPENBLAS_NUM_THREADS=1, what a 2-core rig should run the loop
                        with); also its p99 and the mean with the default BLAS threads
repair_ms               N = 1,500: median of full re-pairings (flush, mirror, 8 levels)
batch_speedup           N = 1,024, T = 10,000 (deconvolved-like: latent-field spikes with
                        gamma amplitudes): time of a straightforward numpy implementation of
                        the same definitions (below, one run) / median time of analysis.rg
                        (statistics, tree, observables with spectra, fits; no error bars) over
                        5 runs, in the same process (the CLI's BLAS threads); the pairings of
                        every level must be identical and beta equal, or the benchmark fails
scale_*                 N = 20,000 (--quick: N = 3,000), one BLAS thread as the CLI runs the
                        loop: mean and max update time, a synchronous repair's time, memory of
                        the stage's arrays and the process peak RSS; then frames paced at 3 Hz
                        while a re-pairing runs on a worker thread (begin_repair / job.run /
                        finish_repair, as the pipeline should schedule it): the longest update
                        and the frames whose update overran their 333 ms budget meanwhile
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

from rig.bench import benchmark


# ---------------------------------------------------------------------------------------------
# a straightforward numpy implementation of science.md section 4, for the speed comparison


def naive_analysis(x: np.ndarray, levels: int, max_lag: int) -> dict:
    """The definitions written out with numpy and no tricks (np.corrcoef per level, argmax
    pairing with masking, explicit sums, lag products per lag, np.cov per cluster)."""
    x = np.asarray(x, dtype=np.float64)
    n, t = x.shape
    v = np.empty_like(x)
    for i in range(n):
        nonzero = x[i][x[i] != 0]
        v[i] = x[i] / nonzero.mean() if nonzero.size else x[i]
    neurons = v.copy()
    raw = x.copy()
    members = [[i] for i in range(n)]
    p0, m2, skew, tau_c, all_pairs = [], [], [], [], []
    spectra = {}
    for k in range(levels + 1):
        p0.append(np.mean(v == 0))
        values = v[v != 0]
        d = values - values.mean()
        skew.append(np.mean(d**3) / np.mean(d**2) ** 1.5)
        m2.append(np.mean(raw.var(axis=1)))
        dv = v - v.mean(axis=1, keepdims=True)
        c = np.array(
            [
                np.mean(np.sum(dv[:, : t - s] * dv[:, s:], axis=1) / (t - s))
                for s in range(max_lag + 1)
            ]
        )
        c = c / c[0]
        below = np.flatnonzero(c <= math.exp(-1))
        if below.size:
            s = below[0]
            tau_c.append(s - 1 + (c[s - 1] - math.exp(-1)) / (c[s - 1] - c[s]))
        else:
            tau_c.append(math.nan)
        size = 2**k
        if size in (16, 32, 64, 128) and t >= 10 * size:
            eig = [np.linalg.eigvalsh(np.cov(neurons[m], bias=True))[::-1] for m in members]
            spectra[size] = np.mean(eig, axis=0)
        if k == levels:
            break
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.corrcoef(v)
        r[np.isnan(r)] = 0.0  # constant variables: correlation 0
        np.fill_diagonal(r, -np.inf)
        pairs = []
        for _ in range(v.shape[0] // 2):
            i, j = np.unravel_index(np.argmax(r), r.shape)
            pairs.append((min(i, j), max(i, j)))
            r[[i, j], :] = -np.inf
            r[:, [i, j]] = -np.inf
        pairs.sort()
        all_pairs.append(np.array(pairs))
        new_v, new_raw, new_members = [], [], []
        for a, b in pairs:
            s = v[a] + v[b]
            nonzero = s[s != 0]
            new_v.append(s / nonzero.mean() if nonzero.size else s)
            new_raw.append(raw[a] + raw[b])
            new_members.append(members[a] + members[b])
        v, raw, members = np.array(new_v), np.array(new_raw), new_members
    sizes = 2.0 ** np.arange(levels + 1)
    p0 = np.array(p0)
    ok = (p0 > 0) & (p0 < 1)
    beta = np.polyfit(np.log(sizes[ok]), np.log(-np.log(p0[ok])), 1)[0]
    alpha = np.polyfit(np.log(sizes), np.log(m2), 1)[0]
    tau = np.array(tau_c)
    use = np.isfinite(tau) & (sizes <= 128)
    z = np.polyfit(np.log(sizes[use]), np.log(tau[use]), 1)[0]
    xs, ys = [], []
    for size, eig in spectra.items():
        rank = np.arange(1, size + 1)
        keep = (rank <= size / 2) & (eig > 0)
        xs.append(np.log(size / rank[keep]))
        ys.append(np.log(eig[keep]))
    mu = np.polyfit(np.concatenate(xs), np.concatenate(ys), 1)[0] if xs else math.nan
    return {"pairs": all_pairs, "beta": beta, "alpha": alpha, "z": z, "mu": mu, "p0": p0}


def deconvolved_like(n: int, t: int, seed: int) -> np.ndarray:
    """Latent-field spikes times gamma amplitudes, neurons with >= 5 events only.

    A neuron with a single event has mean / SD = 1 / sqrt(T - 1) whatever its amplitude, so its
    correlations with every neuron it never coincides with are exactly tied with those of any
    other single-event neuron; rounding then breaks the tie differently in two implementations.
    With >= 5 events and continuous amplitudes there are no exact ties, so the pairings of the
    two implementations must be identical."""
    from analysis.rg import models

    rng = np.random.default_rng(seed)
    spikes = models.latent_field_model(3 * n, t, rng, n_cells=6 * n)
    spikes = spikes[np.count_nonzero(spikes, axis=1) >= 5][:n]
    if spikes.shape[0] < n:
        raise RuntimeError("too few active cells for the benchmark data")
    return (spikes * rng.gamma(2.0, 1.0, spikes.shape)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# online figures (run in a child process so the BLAS thread count can be set)


def online_figures(
    n: int, frames: int, repairs: int, paced_frames: int = 0, rate_hz: float = 3.0
) -> dict[str, float]:
    from analysis.rg.streaming import OnlineCoarseGraining

    warm_up = OnlineCoarseGraining(256, 8, block_frames=4)  # load the compiled kernels
    for i in range(40):
        warm_up.update(np.random.default_rng(i).exponential(1.0, 256).astype(np.float32))
    warm_up.repair()
    warm_up.update(np.ones(256, np.float32))
    warm_up.observables()
    rng = np.random.default_rng(0)
    rates = np.exp(rng.uniform(np.log(0.01), np.log(0.2), n)).astype(np.float32)
    stage = OnlineCoarseGraining(n, 8)
    row = np.zeros(n, np.float32)

    def next_row() -> np.ndarray:
        active = rng.random(n, dtype=np.float32) < rates
        row[:] = np.where(active, rng.exponential(1.0, n).astype(np.float32), 0.0)
        return row

    warm = max(2 * stage.block_frames, 200)
    for _ in range(warm):
        stage.update(next_row())
    repair_s = []
    for _ in range(repairs):
        t0 = time.perf_counter()
        stage.repair()
        repair_s.append(time.perf_counter() - t0)
    for _ in range(stage.block_frames):  # compile and warm every slab
        stage.update(next_row())
    times = np.empty(frames)
    for i in range(frames):
        r = next_row()
        t0 = time.perf_counter()
        stage.update(r)
        times[i] = time.perf_counter() - t0
    times *= 1e3
    figures = {
        "update_ms_mean": float(times.mean()),
        "update_ms_median": float(np.median(times)),
        "update_ms_p99": float(np.percentile(times, 99)),
        "update_ms_max": float(times.max()),
        "repair_ms": float(np.median(repair_s) * 1e3),
    }
    if paced_frames:
        figures.update(background_repair_figures(stage, next_row, paced_frames, rate_hz))
    figures["state_gb"] = stage.state_bytes() / 1e9
    figures["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return figures


def background_repair_figures(stage, next_row, frames: int, rate_hz: float) -> dict[str, float]:
    """Frames paced at rate_hz; at the third one a re-pairing starts on a worker thread and is
    installed at the first frame after it finished. Update times are measured per frame
    (begin_repair and finish_repair included in theirs)."""
    period_s = 1.0 / rate_hz
    job = worker = None
    begin_ms = finish_ms = job_s = math.nan
    job_start = 0.0
    during: list[float] = []  # update times of the frames from begin to finish, inclusive
    late = 0
    next_due = time.perf_counter() + period_s
    for i in range(frames):
        row = next_row()
        time.sleep(max(0.0, next_due - time.perf_counter()))
        t0 = time.perf_counter()
        stage.update(row)
        in_repair = job is not None
        if i == 2:
            job = stage.begin_repair()
            worker = threading.Thread(target=job.run, name="rg-repair")
            worker.start()
            job_start = time.perf_counter()
            begin_ms = (job_start - t0) * 1e3
            in_repair = True
        elif job is not None and worker is not None and not worker.is_alive():
            job_s = time.perf_counter() - job_start
            t1 = time.perf_counter()
            stage.finish_repair(job)
            finish_ms = (time.perf_counter() - t1) * 1e3
            job = None
        elapsed = time.perf_counter() - t0
        if in_repair:
            during.append(elapsed * 1e3)
        late += elapsed > period_s
        next_due += period_s
    if job is not None and worker is not None:  # not done within the paced frames
        worker.join()
        job_s = time.perf_counter() - job_start
        stage.finish_repair(job)
    return {
        "paced_frames": float(frames),
        "paced_rate_hz": rate_hz,
        "background_repair_s": job_s,
        "begin_repair_ms": begin_ms,
        "finish_repair_ms": finish_ms,
        "update_ms_max_during_background_repair": float(max(during)) if during else math.nan,
        "frames_over_budget": float(late),
    }


def _child(
    n: int, frames: int, repairs: int, single_thread_blas: bool, paced_frames: int = 0
) -> dict[str, float]:
    env = dict(os.environ)
    blas_variables = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    for name in blas_variables:  # the CLI sets OPENBLAS_NUM_THREADS=1: the default is unset
        env.pop(name, None)
    if single_thread_blas:
        env.update({name: "1" for name in blas_variables})
    code = (
        "import json, sys; from rig.bench_rg import online_figures; "
        f"print(json.dumps(online_figures({n}, {frames}, {repairs}, {paced_frames})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"online benchmark child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@benchmark("rg")
def bench_rg(quick: bool) -> dict[str, float]:
    from analysis.rg.batch import RGOptions, analyze_once

    figures: dict[str, float] = {}
    frames = 300 if quick else 3000
    single = _child(1500, frames, 2 if quick else 5, single_thread_blas=True)
    default = _child(1500, frames, 1, single_thread_blas=False)
    figures["online_update_ms"] = single["update_ms_mean"]
    figures["online_update_ms_p99"] = single["update_ms_p99"]
    figures["online_update_ms_default_blas_threads"] = default["update_ms_mean"]
    figures["repair_ms"] = single["repair_ms"]

    n, t = (256, 2000) if quick else (1024, 10_000)
    levels = 8
    x = deconvolved_like(n, t, seed=1).astype(np.float64)
    options = RGOptions(levels=levels, max_lag_frames=64)
    analyze_once(x[:, : t // 4], levels, options)  # compile
    fast_runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        tree, obs, exps = analyze_once(x, levels, options)
        fast_runs.append(time.perf_counter() - t0)
    fast_s = statistics.median(fast_runs)
    t0 = time.perf_counter()
    naive = naive_analysis(x, levels, max_lag=int(obs.lags_frames[-1]))
    naive_s = time.perf_counter() - t0
    for k, pairs in enumerate(naive["pairs"]):
        if not np.array_equal(pairs, tree.pairs[k]):
            raise RuntimeError(
                f"pairings differ from the straightforward implementation at level {k}"
            )
    if not math.isclose(naive["beta"], exps.beta.value, rel_tol=1e-6):
        raise RuntimeError(f"beta differs: {naive['beta']} vs {exps.beta.value}")
    figures["batch_s"] = fast_s
    figures["batch_s_min"] = min(fast_runs)
    figures["batch_s_max"] = max(fast_runs)
    figures["batch_naive_s"] = naive_s
    figures["batch_speedup"] = naive_s / fast_s

    scale_n = 3000 if quick else 20_000
    scale = _child(
        scale_n, 20 if quick else 60, 1, single_thread_blas=True, paced_frames=12 if quick else 45
    )
    figures["scale_n_neurons"] = float(scale_n)
    figures["scale_update_ms_mean"] = scale["update_ms_mean"]
    figures["scale_update_ms_max"] = scale["update_ms_max"]
    figures["scale_frame_budget_ms_at_3hz"] = 1000.0 / 3.0
    figures["scale_repair_s"] = scale["repair_ms"] / 1e3
    figures["scale_state_gb"] = scale["state_gb"]
    figures["scale_peak_rss_gb"] = scale["peak_rss_gb"]
    for name in (
        "background_repair_s",
        "begin_repair_ms",
        "finish_repair_ms",
        "update_ms_max_during_background_repair",
        "frames_over_budget",
        "paced_frames",
    ):
        figures[f"scale_{name}"] = scale[name]
    return figures
