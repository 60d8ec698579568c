"""`rig bench lens`: the tunable lens through the real driver and the simulated lens.

round_trip_ms_p50/p99          `Ar` (get current) query -> checked reply, through
                               serial_for_url("optotune_sim://"), wire time at 115200 baud
                               modelled (13 bytes: about 1.1 ms of the figure)
software_round_trip_ms_p50/p99 the same without wire time: driver + codec + simulator cost
silent_write_ms_p50            `Aw` (set current), which the lens does not answer
settling_ms_2pct               after a 2 dpt focal power step: last time the focal power is
                               outside +-2 % of the step around its final value
ringing_hz                     frequency of the ringing after the step (zero crossings)
overshoot_pct                  peak overshoot, % of the step

frame_settling_ms              the same settling, seen in simulated frames: a galvo rig with
                               the simulated lens (rig/focus.py) steps the focus by
                               FRAME_STEP_UM on a frame boundary, repeatedly, up and down;
                               each band of BAND_LINES lines of the frame after the step is
                               correlated with the settled image of the new plane (mean of
                               later frames), and its progress p = (c - c_old) / (c_new - c_old)
                               (c_old: the old plane's settled image, c_new: a settled single
                               frame; differences pooled over the steps); the figure is the
                               time from the frame start to the end of the last band with p below
                               1 - FRAME_TOLERANCE. Photon noise limits the band to 10 %
                               of the change in correlation, not 2 % of the focal step.
frame_settling_lines           the same in lines of the frame
frame_line_ms                  one line period of that raster

The first set of settling figures comes from the simulated lens's own focal power trace (its
membrane model); frame_settling_* from imaged frames. The simulated scanner samples the lens
once per acquisition block (sim.ai_block_ms = 5 ms here: 1 ms for this figure), so finer
ringing is not resolved in frames.
"""

from __future__ import annotations

import time

import numpy as np

from rig.bench import benchmark

STEP_DPT = 2.0
TRACE_STEP_S = 1e-5


def _round_trips_ms(lens, n: int, call) -> np.ndarray:
    call()  # warm up
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        call()
        times[i] = time.perf_counter() - t0
    return times * 1e3


def _step_response(step_dpt: float) -> tuple[np.ndarray, np.ndarray]:
    """Focal power trace (t from the step, dpt) of the simulated lens after a focal power
    step commanded through the driver, on a virtual clock."""
    from drivers.optotune import OptotuneLens
    from simulators.optotune import LensFaults, ManualClock, SimulatedLens

    clock = ManualClock()
    sim = SimulatedLens(clock=clock, faults=LensFaults(wire_delay=False))
    with OptotuneLens(sim.url) as lens:
        lens.set_mode("focal power")
        lens.set_focal_power_dpt(0.0)
        clock.set(1.0)
        lens.set_focal_power_dpt(step_dpt)
        t = np.arange(0.0, 0.2, TRACE_STEP_S)
        return t, sim.focal_power_trace_dpt(1.0 + t)


def step_figures(t_s: np.ndarray, focal_power_dpt: np.ndarray, step_dpt: float) -> dict[str, float]:
    """Settling time (2 % band), ringing frequency and overshoot of a step response."""
    final = float(np.mean(focal_power_dpt[t_s >= t_s[-1] - 0.02]))
    error = focal_power_dpt - final
    outside = np.nonzero(np.abs(error) > 0.02 * abs(step_dpt))[0]
    settling_s = float(t_s[outside[-1]] + TRACE_STEP_S) if outside.size else 0.0
    crossings = t_s[np.nonzero(np.diff(np.sign(error)) != 0)[0]]
    crossings = crossings[crossings <= max(settling_s, 2 * TRACE_STEP_S)]
    ringing_hz = (
        1.0 / (2.0 * float(np.mean(np.diff(crossings)))) if crossings.size > 2 else float("nan")
    )
    overshoot = float(np.max(np.sign(step_dpt) * error)) / abs(step_dpt)
    return {
        "settling_ms_2pct": settling_s * 1e3,
        "ringing_hz": ringing_hz,
        "overshoot_pct": overshoot * 100.0,
    }


FRAME_STEP_UM = 10.0
FRAME_STEPS = 8
BAND_LINES = 8
FRAME_TOLERANCE = 0.1


def _band_correlation(a: np.ndarray, b: np.ndarray, band_lines: int) -> np.ndarray:
    """Pearson correlation of a and b in bands of `band_lines` rows."""
    n = a.shape[0] // band_lines
    a = a[: n * band_lines].reshape(n, -1).astype(np.float64)
    b = b[: n * band_lines].reshape(n, -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def frame_settling(steps: int = FRAME_STEPS, settled_frames: int = 4) -> dict[str, float]:
    """Settling after a focal step measured in simulated frames (module docstring)."""
    from rig.assembly import build_rig
    from rig.config import load_rig_config

    config = load_rig_config(
        "sim-volume",
        {
            "scanner.fov_um": [120.0, 120.0],
            "scanner.pixels_per_line": 96,
            "scanner.lines": 96,
            "stimulator.kind": "none",
            "volume.planes_um": [],
            "sim.ai_block_ms": 1.0,
            "world.extent_um": [200.0, 200.0, 100.0],
            "world.motion.enabled": False,
        },
    )
    rig = build_rig(config, seed=1, speed="max")
    scanner, focus = rig.scanner, rig.focus
    assert scanner is not None and focus is not None
    frame = np.zeros(scanner.frame_shape, np.int16)
    raster = scanner.raster  # type: ignore[attr-defined]
    line_s = raster.line_samples / raster.ao_rate_hz

    def settled_image() -> np.ndarray:
        frames = []
        for _ in range(settled_frames):
            scanner.read_frame(frame)
            frames.append(frame.astype(np.float64))
        return np.mean(frames, axis=0)

    progress = []
    rig.open_all()
    try:
        focus.move_to_um(0.0)
        scanner.start()
        try:
            settled_image()  # the first frames after the start
            old = settled_image()
            for k in range(steps):
                focus.move_to_um(FRAME_STEP_UM if k % 2 == 0 else 0.0)  # on a frame boundary
                scanner.read_frame(frame)
                after = frame.astype(np.float64)
                scanner.read_frame(frame)
                single = frame.astype(np.float64)  # a settled single frame (noise level)
                new = settled_image()
                c = _band_correlation(after, new, BAND_LINES)
                c_old = _band_correlation(old, new, BAND_LINES)
                c_new = _band_correlation(single, new, BAND_LINES)
                progress.append((c - c_old, c_new - c_old))
                old = new
        finally:
            scanner.stop()
    finally:
        rig.safe_all()
        rig.close_all()
    gained, full = np.mean(progress, axis=0)  # pooled over the steps before the ratio
    p = gained / full
    late = np.flatnonzero(p < 1.0 - FRAME_TOLERANCE)
    bands = int(late[-1]) + 1 if late.size else 0
    return {
        "frame_settling_ms": bands * BAND_LINES * line_s * 1e3,
        "frame_settling_lines": float(bands * BAND_LINES),
        "frame_line_ms": line_s * 1e3,
    }


@benchmark("lens")
def bench_lens(quick: bool) -> dict[str, float]:
    import simulators.optotune  # noqa: F401  (registers optotune_sim://)
    from drivers.optotune import OptotuneLens

    n = 200 if quick else 2000
    figures: dict[str, float] = {}
    with OptotuneLens("optotune_sim://") as lens:
        wire = _round_trips_ms(lens, n, lens.current_ma)
    with OptotuneLens("optotune_sim://?wire_delay=0") as lens:
        software = _round_trips_ms(lens, n, lens.current_ma)
        silent = _round_trips_ms(lens, n, lambda: lens.set_current_ma(10.0))
    figures["round_trip_ms_p50"] = float(np.percentile(wire, 50))
    figures["round_trip_ms_p99"] = float(np.percentile(wire, 99))
    figures["software_round_trip_ms_p50"] = float(np.percentile(software, 50))
    figures["software_round_trip_ms_p99"] = float(np.percentile(software, 99))
    figures["silent_write_ms_p50"] = float(np.percentile(silent, 50))
    t, trace = _step_response(STEP_DPT)
    figures.update(step_figures(t, trace, STEP_DPT))
    figures.update(frame_settling(steps=4 if quick else FRAME_STEPS))
    return figures
