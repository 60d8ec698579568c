"""A line clock that stops mid-run, end to end: the run loop aborts safely and keeps the
frames acquired so far (the resonant scanner on simulated hardware, in a prebuilt rig)."""

import json

import h5py

from drivers.scanning.resonant import ResonantGalvoScanner, ResonantScanSettings
from rig.assembly import Rig
from rig.config import load_rig_config
from rig.protocol import Protocol
from rig.run import run_experiment
from simulators.clock import SimClock
from simulators.daq import SimulatedDAQ
from simulators.resonant import SimulatedResonantHardware
from simulators.world.config import WorldConfig
from simulators.world.world import World


class Watch(Protocol):
    """Does nothing: the loop runs until the scanner fails."""

    name = "watch"


def test_a_line_clock_that_stops_mid_run_aborts_safely_and_keeps_the_frames(tmp_path, monkeypatch):
    config = load_rig_config("sim-galvo", {"recording.frames": True, "rois.reference_s": 0.5})
    world = World(WorldConfig(extent_um=(220.0, 220.0, 40.0)), seed=2)
    clock = SimClock("max")
    daq = SimulatedDAQ(world, clock)
    hw = SimulatedResonantHardware(world, clock, seed=2)
    settings = ResonantScanSettings(
        fov_um=(200.0, 200.0), pixels_per_line=128, lines=128, sample_rate_hz=20e6
    )
    scanner = ResonantGalvoScanner(hw.digitizer, hw.io, settings)
    rig = Rig(config=config, daq=daq, scanner=scanner, stimulator=None, world=world,
              clock=clock, devices=[daq, scanner])  # fmt: skip
    stops_after_s = 1.0
    hw.stop_line_clock_at(stops_after_s)
    result = run_experiment(
        Watch(), config, duration_s=10.0, out=str(tmp_path / "s"), write_report=False,
        prebuilt_rig=rig,
    )  # fmt: skip
    summary = result.summary
    assert summary["status"] == "aborted"
    assert "DeviceTimeout" in summary["error"] and "line clock stopped" in summary["error"]
    events = [
        json.loads(x) for x in (result.session_dir / "events.jsonl").read_text().split("\n") if x
    ]
    assert any(e["type"] == "safe" for e in events)
    expected = int(stops_after_s * scanner.frame_rate_hz)  # frames before the clock stopped
    monkeypatch.chdir(result.session_dir)  # raw frames may live in a file next to it
    with h5py.File("session.h5") as f:
        frames = f["frames"][:]
    assert len(frames) == summary["frames"]
    assert expected - 2 <= len(frames) <= expected + 1
    assert frames.std() > 0
    assert hw.amplitude_v == 0.0 and not hw.galvo_armed  # the mirror is off, galvo parked
