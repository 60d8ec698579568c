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

The settling figures come from the simulated lens's own focal power trace (its membrane
model), not from frames: measuring them from imaged frames needs the lens in the simulated
rig's loop.
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
    return figures
