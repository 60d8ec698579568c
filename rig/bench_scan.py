"""Benchmarks of resonant scanning: `rig bench scan [--quick] [--json FILE]`.

reconstruct_vs_sum       one raw 512 x 512 frame at the ScanImage golden case (7925.52 Hz,
                         bidirectional, 100 MS/s, 1 ms flyback: 264 records of 12,493
                         samples): time of the sinusoidal binning (bin_frame) / time of
                         numpy's sum of the same raw buffer, medians of interleaved runs
reconstruct_vs_memcpy    the same binning time / a copy of the raw buffer (np.copyto)
reconstruct_ms, raw_sum_ms, raw_memcpy_ms   the three medians
sim_speed_x_realtime     the default simulated resonant rig (512 x 512 at ~30 Hz over
                         0.5 x 0.5 mm, 100 MS/s digitizer, ~1,500 cells): device seconds
                         acquired per wall second by scanner.read_frame in one thread
                         (simulated mirror, digitizer and world, plus reconstruction)
sim_sub_bin_samples      digitizer samples per photon sub-bin of that simulation
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rig.bench import benchmark

#: ScanImage golden case plus the default simulated rig's field (hardware.md section 2)
RESONANT_DEFAULTS: dict[str, Any] = dict(
    resonant_hz=7910.0,
    fov_um=(500.0, 500.0),
    pixels_per_line=512,
    lines=512,
    bidirectional=True,
    fill_fraction=0.9,
    flyback_ms=1.0,
    sample_rate_hz=100e6,
    resonant_um_per_volt=62.5,
    galvo_um_per_volt=50.0,
    galvo_lag_us=100.0,
)
#: ~1,500 cells in the imaged 500 x 500 x 60 um volume (100,000 / mm^3)
WORLD_DEFAULTS: dict[str, Any] = dict(
    extent_um=(520.0, 520.0, 60.0), cell_density_per_mm3=100_000.0
)


def _median_ms(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def reconstruction_figures(quick: bool) -> dict[str, float]:
    from drivers.scanning.resonant import ResonantScanSettings, plan_resonant
    from drivers.scanning.sinusoidal import bin_frame

    settings = ResonantScanSettings(**{**RESONANT_DEFAULTS, "resonant_hz": 7925.52})
    raster = plan_resonant(settings)
    rng = np.random.default_rng(0)
    shape = (raster.periods_per_frame, raster.samples_per_record)
    raw = rng.integers(-200, 4000, size=shape).astype(np.int16)
    copy = np.empty_like(raw)
    frame = np.zeros((settings.lines, settings.pixels_per_line), np.int16)
    line_map = raster.line_map
    bin_frame(raw, line_map, frame)  # compile
    rounds, repeats = (3, 10) if quick else (10, 30)
    binned, summed, copied = [], [], []
    for _ in range(rounds):  # interleaved, so machine noise hits all three alike
        binned.append(_median_ms(lambda: bin_frame(raw, line_map, frame), repeats))
        summed.append(_median_ms(raw.sum, repeats))
        copied.append(_median_ms(lambda: np.copyto(copy, raw), repeats))
    reconstruct, total, memcpy = np.median(binned), np.median(summed), np.median(copied)
    return {
        "reconstruct_vs_sum": float(reconstruct / total),
        "reconstruct_vs_memcpy": float(reconstruct / memcpy),
        "reconstruct_ms": float(reconstruct),
        "raw_sum_ms": float(total),
        "raw_memcpy_ms": float(memcpy),
    }


def default_resonant_sim(seed: int = 1, speed: str = "max") -> Any:
    """The default simulated resonant rig's scanner (what rig/rigs/sim.toml describes once
    it is resonant): the scanner, over the simulated hardware and a World."""
    from drivers.scanning.resonant import ResonantGalvoScanner, ResonantScanSettings
    from simulators.clock import SimClock
    from simulators.resonant import ResonantPhysics, SimulatedResonantHardware
    from simulators.world.config import WorldConfig
    from simulators.world.world import World

    world = World(WorldConfig(**WORLD_DEFAULTS), seed=seed)
    physics = ResonantPhysics()
    settings = ResonantScanSettings(**RESONANT_DEFAULTS)
    amplitude_fraction = (
        settings.fov_um[0] / (2 * settings.fill_fraction) / physics.amplitude_um_per_volt
    ) / physics.full_amplitude_v
    settings = ResonantScanSettings(
        **{**RESONANT_DEFAULTS, "line_phase_us": physics.lag_s(amplitude_fraction) * 1e6}
    )
    hw = SimulatedResonantHardware(world, SimClock(speed), physics, seed=seed)
    return ResonantGalvoScanner(hw.digitizer, hw.io, settings)


def _sim_scanner() -> Any:
    """The default sim rig's scanner if it is resonant, else the same settings built here."""
    from rig.config import load_rig_config

    config = load_rig_config("sim")
    if config["scanner.kind"] == "resonant":
        from rig.assembly import build_rig

        rig = build_rig(config, seed=1, speed="max")
        return rig.scanner
    return default_resonant_sim()


@benchmark("scan")
def bench_scan(quick: bool) -> dict[str, float]:
    figures = reconstruction_figures(quick)
    scanner = _sim_scanner()
    frame = np.zeros(scanner.frame_shape, np.int16)
    n_frames = 8 if quick else 60
    with scanner:
        scanner.start()
        scanner.read_frame(frame)  # compile and warm up
        t0 = time.perf_counter()
        for _ in range(n_frames):
            scanner.read_frame(frame)
        wall = time.perf_counter() - t0
        sub_bin = float(getattr(scanner.digitizer, "sub_bin_samples", 1))
        scanner.stop()
    figures["sim_speed_x_realtime"] = n_frames / scanner.frame_rate_hz / wall
    figures["sim_frame_rate_hz"] = scanner.frame_rate_hz
    figures["sim_sub_bin_samples"] = sub_bin
    return figures
