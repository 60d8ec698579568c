"""Benchmarks of the MEA path: `rig bench mea [--json FILE]` (registered with @benchmark).

culture_speed_x_realtime        the `culture` preset (1,000 Izhikevich neurons, STDP and
                                short-term plasticity, spontaneous bursts), one thread:
                                simulated seconds per wall second
latency_p50_ms / latency_p99_ms a spike arriving in the data stream -> the trigger sent:
                                RHX client and simulated RHX server over loopback TCP,
                                realtime speed, one block (128 frames, 4.3 ms) per TCP write;
                                from the moment a block's bytes are in host memory to the
                                moment the trigger command has left the host (stimulus
                                validated, command written), for every block holding a spike
latency_max_speed_p99_ms        the same at max speed (lock-step, server idle meanwhile)
stream_speed_x_realtime         the whole simulated MEA rig at max speed (culture, RHX
                                server, data streams, client parsing, 64 STIM channels)

Garbage collection: a full collection of this process's ~110,000 tracked objects takes
~20 ms and lands on whichever call allocates at the wrong moment. The loops here call
gc.freeze() after setup (moving the long-lived objects out of the collector's way), as the
run loop should; without it the p99 latencies were 3-5 ms instead of ~0.3 ms.
"""

from __future__ import annotations

import gc
import time

import numpy as np

from rig.bench import benchmark


def _culture_speed(quick: bool) -> float:
    from simulators.culture import Culture, preset_config

    culture = Culture(preset_config("culture"), seed=1)
    culture.run(1000)  # compile and warm up
    n_steps = 3000 if quick else 20_000
    t0 = time.perf_counter()
    culture.run(n_steps)
    return n_steps * 1e-3 / (time.perf_counter() - t0)


def _closed_loop(speed: str, duration_s: float) -> tuple[np.ndarray, float, float]:
    """Stimulate after every block that holds a spike; returns (latencies ms, simulated s,
    wall s)."""
    from drivers.mea.intan_rhx import RHXClient, RHXStimulatorBackend
    from drivers.mea.rhx_spike_source import RHXSpikeSource
    from drivers.mea.stimulator import MEAStimulator
    from drivers.mea.stimulus import MEAStimulus, Pulse
    from simulators.culture import Culture, preset_config
    from simulators.rhx_server import RHXSimServer

    culture = Culture(preset_config("culture"), seed=1)
    culture.run(500)  # compile the kernels before the clock starts
    stimulus = MEAStimulus.on("A-000", Pulse(10.0, 100.0))
    with RHXSimServer(culture, speed=speed) as server:
        pace = server.pace if speed == "max" else None
        client = RHXClient("127.0.0.1", server.command_port, pace=pace)
        stimulator = MEAStimulator(RHXStimulatorBackend(client))
        source = RHXSpikeSource(client, blocks_per_write=1)
        with stimulator, source:
            stimulator.prepare([stimulus])
            block = source.new_block()
            n_blocks = int(duration_s / source.block_duration_s)
            latencies = np.full(n_blocks, np.nan)
            gc.collect()
            gc.freeze()  # what the loop should do after setup (see module docstring)
            try:
                source.start()
                t0 = time.perf_counter()
                for k in range(n_blocks):
                    source.read_block(block)
                    if block.n_spikes:
                        stimulator.stimulate(stimulus)
                        latencies[k] = (client.last_send_s - block.host_time_s) * 1e3
                wall = time.perf_counter() - t0
                source.stop()
            finally:
                gc.unfreeze()
    return latencies[np.isfinite(latencies)], n_blocks * source.block_duration_s, wall


@benchmark("mea")
def bench_mea(quick: bool) -> dict[str, float]:
    figures: dict[str, float] = {}
    figures["culture_speed_x_realtime"] = _culture_speed(quick)
    lat, _, _ = _closed_loop("realtime", 2.0 if quick else 20.0)
    figures["latency_p50_ms"] = float(np.percentile(lat, 50))
    figures["latency_p99_ms"] = float(np.percentile(lat, 99))
    figures["latency_triggers"] = float(lat.size)
    lat_max, simulated, wall = _closed_loop("max", 2.0 if quick else 20.0)
    figures["latency_max_speed_p99_ms"] = float(np.percentile(lat_max, 99))
    figures["stream_speed_x_realtime"] = simulated / wall
    return figures
