"""Benchmarks: `rig bench NAME [--json FILE]` prints a table; --json writes name -> number.

Figures are measured in one run on this machine, and where a limit is a ratio it is a ratio
of two timings taken in the same run (machines here are noisy).

core
    sim_speed_x_realtime   simulated world + galvo scanning of the default sim rig, one
                           thread: acquired device seconds per wall second
    processing_ms_median   online stages (extract, dF/F, noise level) for 500 ROIs on the
    processing_ms_p99      default 256 x 256 frames, per frame, with full 60 s windows at 30 Hz
    latency_p99_ms         frame complete -> stimulus issued, full loop at max speed,
                           500 ROIs, a stimulus decided and issued on every frame, with the
    latency_p50_ms         rig core's stages (ROIs, extract, dF/F, noise level)
    full_latency_p99_ms    the same with every stage of the default sim rig (motion,
                           deconvolution, coarse-graining)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

BENCHMARKS: dict[str, Callable[[bool], dict[str, float]]] = {}


def benchmark(name: str) -> Callable:
    def register(fn: Callable[[bool], dict[str, float]]) -> Callable[[bool], dict[str, float]]:
        BENCHMARKS[name] = fn
        return fn

    return register


#: modules that register more benchmarks with @benchmark when imported
EXTENSIONS: tuple[str, ...] = (
    "rig.bench_rg",
    "rig.bench_lens",
    "rig.bench_mea",
    "rig.bench_gui",
    "rig.bench_scan",
    "rig.bench_record",
    "rig.bench_pipeline",
)


def run_benchmark(name: str, quick: bool = False) -> dict[str, float]:
    import importlib

    from rig.config import ConfigError

    for module in EXTENSIONS:
        importlib.import_module(module)

    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS))}")
    figures = BENCHMARKS[name](quick)
    width = max(len(k) for k in figures)
    print(f"# rig bench {name}" + (" (quick)" if quick else ""))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:12.4g}")
    return figures


def synthetic_rois(
    shape: tuple[int, int], n_rois: int, diameter_px: float, seed: int = 0
) -> np.ndarray:
    """A label image with n disc ROIs at random positions (overlaps resolved by order)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:h, :w]
    r = diameter_px / 2
    for i in range(n_rois):
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        labels[disc & (labels == 0)] = i + 1
    present = np.unique(labels[labels > 0])
    remap = np.zeros(n_rois + 1, np.int32)
    remap[present] = np.arange(1, present.size + 1)
    return remap[labels]


@benchmark("core")
def bench_core(quick: bool) -> dict[str, float]:
    from rig.assembly import build_rig
    from rig.config import load_rig_config

    figures: dict[str, float] = {}
    # 1. simulated world + scanning, one thread, default sim rig
    config = load_rig_config("sim")
    rig = build_rig(config, seed=1, speed="max")
    scanner = rig.scanner
    frame = np.zeros(scanner.frame_shape, np.int16)
    n_frames = 6 if quick else 40
    with rig.daq, scanner:
        scanner.start()
        scanner.read_frame(frame)  # compile and warm up
        t0 = time.perf_counter()
        for _ in range(n_frames):
            scanner.read_frame(frame)
        wall = time.perf_counter() - t0
        scanner.stop()
    figures["sim_speed_x_realtime"] = n_frames / scanner.frame_rate_hz / wall

    # 2. processing stages for 500 ROIs (pipeline only, no threads)
    from rig.pipeline import Pipeline, PipelineSettings
    from rig.ring import FrameRing

    shape = scanner.frame_shape
    diameter_px = 12.0 / scanner.pixel_size_um[0]
    with tempfile.TemporaryDirectory() as tmp:
        roi_file = Path(tmp) / "rois.npy"
        labels = synthetic_rois(shape, 520, diameter_px)
        labels[labels > 500] = 0
        np.save(roi_file, labels)
        settings = PipelineSettings(
            frame_rate_hz=30.0,
            frame_shape=shape,
            pixel_size_um=scanner.pixel_size_um,
            roi_source=str(roi_file),
            reference_s=1.0,
        )
        pipeline = Pipeline(settings, lambda e: None)
        pipeline.setup()
        ring = FrameRing(4, shape, 600)
        rng = np.random.default_rng(0)
        # fresh shot-noise frames every time (outside the timed region), so the sorted
        # windows see new values like real data; measured once all windows are full
        window = int(settings.baseline_window_s * settings.frame_rate_hz)
        n_timed = 300 if quick else 1000
        n = settings.reference_frames + window + n_timed
        times = np.empty(n)
        brightness = rng.uniform(100, 400, shape)
        for i in range(n):
            slot = i % 4
            ring.frames[slot] = rng.poisson(brightness).astype(np.int16)
            t = time.perf_counter()
            pipeline.process(ring, slot, i)
            times[i] = (time.perf_counter() - t) * 1e3
        steady = times[-n_timed:]
        figures["rois"] = float(pipeline.n_rois)
        figures["processing_ms_median"] = float(np.median(steady))
        figures["processing_ms_p99"] = float(np.percentile(steady, 99))

        # 3. full loop at max speed, a stimulus on every frame: the rig core's stages
        #    (ROIs, extract, dF/F, noise level), then every stage of the default sim rig
        from rig.run import run_experiment

        duration = 12.0 if quick else 240.0
        core_only = ["motion.enabled=false", "deconvolution.enabled=false", "rg.enabled=false"]
        for label, extra in (("", core_only), ("full_", [])):
            result = run_experiment(
                _EveryFrame(),
                "sim",
                duration_s=duration,
                speed="max",
                seed=1,
                out=str(Path(tmp) / f"session{label}"),
                write_report=False,
                overrides=[f'rois.source="{roi_file}"', "rois.reference_s=1.0"] + extra,
            )
            s = result.summary
            if s["status"] != "completed":
                raise RuntimeError(f"benchmark run aborted: {s['error']}")
            figures[f"{label}latency_p50_ms"] = s["stimulus_latency_ms"]["p50"]
            figures[f"{label}latency_p99_ms"] = s["stimulus_latency_ms"]["p99"]
            figures[f"{label}loop_processing_latency_p99_ms"] = s["latency_ms"]["p99"]
    return figures


def _every_frame_protocol() -> Any:
    from drivers.stimulation.light import LightStimulus
    from rig.protocol import Protocol

    class EveryFrame(Protocol):
        """Decide and issue a (tiny) stimulus on every frame: measures the loop's latency."""

        name = "bench_every_frame"

        def on_frame(self, ctx: Any) -> None:
            if ctx.rois_ready:
                ctx.stimulate(LightStimulus(targets_um=((0.0, 0.0),), power_mw=0.1, pulse_ms=1.0))

    return EveryFrame


def _EveryFrame() -> Any:  # noqa: N802 - reads like a class at the call site
    return _every_frame_protocol()()
