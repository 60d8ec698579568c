"""`rig bench pipeline`: the online signal pipeline on 512 x 512 frames with 1,500 ROIs.

frames_per_s        whole pipeline (motion + extraction + dF/F + noise level +
                    deconvolution), one core, windows full (60 s baseline, 30 s noise at 30 Hz)
speedup_vs_numpy    the same stages written plainly with numpy in this module (phase
                    correlation with np.fft on the same binned frame, extraction with
                    np.bincount, np.percentile / np.median over the trailing windows every
                    frame; deconvolution is the same numba OASIS AR(1) in both: OASIS is a
                    sequential pool-merging algorithm with no plain-numpy form), timed in the
                    same run
stage_*_ms          each stage's median share per frame
deconvolution_ar2_ms  median time of the AR(2) solver (deconvolution.model = "ar2") on the
                    same dF/F rows, for comparison with stage_deconvolution_ms (AR(1))
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from analysis.deconvolution import OnlineOasis, ar1_decay_factor, online_deconvolution
from rig.bench import benchmark, synthetic_rois

SHAPE = (512, 512)
N_ROIS = 1500
RATE_HZ = 30.0


def _frames(rng: np.random.Generator, n: int) -> np.ndarray:
    """Shot-noise frames of a textured specimen that drifts by up to ~3 px."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    base = 200 + 100 * np.sin(xx / 7.0) * np.cos(yy / 9.0)
    out = np.empty((n,) + SHAPE, np.int16)
    for i in range(n):
        dy, dx = 3 * np.sin(i / 50), 3 * np.cos(i / 70)
        img = 200 + 100 * np.sin((xx - dx) / 7.0) * np.cos((yy - dy) / 9.0)
        out[i] = rng.poisson(np.maximum(img, 1)).astype(np.int16)
    del base
    return out


class NumpyPipeline:
    """The same stages, plainly in numpy (the comparison of issue 3)."""

    def __init__(self, reference: np.ndarray, labels: np.ndarray, window: int, noise_window: int):
        self.ref = np.conj(np.fft.rfft2(_bin(reference)))
        self.labels = labels.ravel()
        self.n = int(labels.max())
        self.counts = np.bincount(self.labels, minlength=self.n + 1)[1:]
        self.f_window = np.zeros((window, self.n))
        self.d_window = np.zeros((noise_window, self.n))
        self.count = 0
        self.prev = np.zeros(self.n)
        self.deconvolution = OnlineOasis(
            self.n, ar1_decay_factor(0.2, RATE_HZ), spike_lag_frames=6, pool_capacity=256
        )

    def process(self, frame: np.ndarray) -> tuple[float, float]:
        spec = np.fft.rfft2(_bin(frame)) * self.ref
        corr = np.fft.irfft2(spec / np.maximum(np.abs(spec), 1e-12))
        peak = np.unravel_index(np.argmax(corr), corr.shape)
        f = np.bincount(self.labels, weights=frame.ravel(), minlength=self.n + 1)[1:] / self.counts
        i = self.count
        self.f_window[i % self.f_window.shape[0]] = f
        k = min(i + 1, self.f_window.shape[0])
        f0 = np.percentile(self.f_window[:k], 8, axis=0)
        dff = (f - f0) / f0
        self.d_window[i % self.d_window.shape[0]] = np.abs(dff - self.prev)
        kd = min(i + 1, self.d_window.shape[0])
        noise = 100 * np.median(self.d_window[:kd], axis=0) / np.sqrt(RATE_HZ)
        self.prev = dff
        self.deconvolution.set_noise_level(noise.astype(np.float32), RATE_HZ, 3.0, 8.0)
        self.deconvolution.update(dff)
        self.count += 1
        return float(peak[0]), float(noise[0])


def _bin(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape
    return frame.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


@benchmark("pipeline")
def bench_pipeline(quick: bool) -> dict[str, float]:
    from rig.pipeline import STAGES, Pipeline, PipelineSettings
    from rig.ring import FrameRing

    rng = np.random.default_rng(0)
    n_timed = 150 if quick else 600
    window = int(60 * RATE_HZ)
    n_cycle = 64
    frames = _frames(rng, n_cycle)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        labels = synthetic_rois(SHAPE, N_ROIS + 200, 10.0, seed=1)
        labels[labels > N_ROIS] = 0
        np.save(Path(tmp) / "rois.npy", labels)
        settings = PipelineSettings(
            frame_rate_hz=RATE_HZ,
            frame_shape=SHAPE,
            pixel_size_um=(1.0, 1.0),
            roi_source=str(Path(tmp) / "rois.npy"),
            reference_s=1.0,
            max_rois=2000,
            motion=True,
            motion_max_shift_um=10.0,
            deconvolution=True,
            neuropil=False,
        )
        pipeline = Pipeline(settings, lambda e: None)
        pipeline.setup()
        ring = FrameRing(4, SHAPE, 2000)
        n_warm = settings.reference_frames + window + 5
        stage = np.zeros((n_timed, len(STAGES)))
        total = np.zeros(n_timed)
        for i in range(n_warm + n_timed):
            slot = i % 4
            ring.frames[slot] = frames[i % n_cycle]
            t = time.perf_counter()
            pipeline.process(ring, slot, i)
            dt = time.perf_counter() - t
            if i >= n_warm:
                total[i - n_warm] = dt
                stage[i - n_warm] = pipeline.stage_ms
        figures["rois"] = float(pipeline.n_rois)
        n = pipeline.n_rois
        dff_rows = ring.dff[:, :n].copy()  # the last frames' dF/F
        noise = np.asarray(pipeline.noise_level, dtype=np.float32).copy()
        ar2 = online_deconvolution("ar2", n, RATE_HZ, 0.2, 0.02, 6, 256)
        ar2_s = np.zeros(n_timed)
        for i in range(window + n_timed):  # the same warm-up as the pipeline's solver
            t = time.perf_counter()
            ar2.set_noise_level(noise, RATE_HZ, 3.0, 8.0)
            ar2.update(dff_rows[i % dff_rows.shape[0]])
            if i >= window:
                ar2_s[i - window] = time.perf_counter() - t
        figures["deconvolution_ar2_ms"] = float(np.median(ar2_s)) * 1e3
        figures["frames_per_s"] = 1.0 / float(np.median(total))
        for j, name in enumerate(STAGES):
            figures[f"stage_{name}_ms"] = float(np.median(stage[:, j]))
        numpy_pipeline = NumpyPipeline(frames[0], labels, window, int(30 * RATE_HZ))
        n_np = 40 if quick else 150
        for i in range(window):  # fill the windows like the online pipeline's
            numpy_pipeline.f_window[i % window] = 1.0 + rng.random(numpy_pipeline.n)
        numpy_pipeline.count = window
        t = time.perf_counter()
        for i in range(n_np):
            numpy_pipeline.process(frames[i % n_cycle])
        numpy_s = (time.perf_counter() - t) / n_np
        figures["numpy_frames_per_s"] = 1.0 / numpy_s
        figures["speedup_vs_numpy"] = figures["frames_per_s"] / figures["numpy_frames_per_s"]
    return figures
