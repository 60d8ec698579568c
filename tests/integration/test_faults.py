"""Faults and bad input: devices end safe, data already recorded are kept, errors are named."""

import json

import h5py
import pytest

from drivers.stimulation.light import LightStimulus
from rig.cli import main
from rig.protocol import Param, Protocol
from rig.run import run_experiment


class FailsAtFrame(Protocol):
    """Stimulates every frame, then raises in its hook at a chosen frame."""

    name = "fails_at_frame"
    fail_at = Param(30, min=0, max=100000)

    def on_frame(self, ctx):
        if ctx.rois_ready:
            ctx.stimulate(LightStimulus(targets_um=((0.0, 0.0),), power_mw=1.0, pulse_ms=2.0))
        if ctx.frame_index == self.fail_at:
            raise RuntimeError("protocol bug at frame %d" % ctx.frame_index)


class OverLimit(Protocol):
    """Asks for more power than the stimulator allows."""

    name = "over_limit"

    def on_frame(self, ctx):
        if ctx.rois_ready:
            ctx.stimulate(LightStimulus(targets_um=((0.0, 0.0),), power_mw=500.0))


def events_of(folder):
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def test_exception_in_a_hook_aborts_safely_and_keeps_the_data(tmp_path):
    result = run_experiment(
        FailsAtFrame(fail_at=45),
        "sim-galvo",
        duration_s=60.0,
        seed=1,
        out=str(tmp_path / "s"),
        overrides=["rois.reference_s=5"],
    )
    s = result.summary
    assert s["status"] == "aborted"
    assert "protocol bug at frame 45" in s["error"] and "processing thread" in s["error"]
    events = events_of(result.session_dir)
    error = [e for e in events if e["type"] == "error"]
    assert error and "RuntimeError" in error[0]["traceback"]
    safe = [e for e in events if e["type"] == "safe"]
    assert safe and events.index(safe[0]) > events.index(
        error[0]
    )  # made safe right after the error
    # every frame processed before the error is in the file, ROIs and stimuli too
    with h5py.File(result.session_dir / "session.h5") as f:
        assert f["dff"].shape[0] == s["frames"] >= 45
        assert f["stimuli/frame"].shape[0] == s["stimuli"] > 0
    assert (result.session_dir / "report.html").is_file()
    assert "protocol bug" in (result.session_dir / "report.html").read_text()


def test_a_stimulus_over_the_limit_is_refused_and_aborts_before_any_light(tmp_path):
    result = run_experiment(
        OverLimit(),
        "sim-galvo",
        duration_s=30.0,
        seed=1,
        out=str(tmp_path / "s"),
        overrides=["rois.reference_s=5"],
    )
    s = result.summary
    assert (
        s["status"] == "aborted" and "LimitError" in s["error"] and "power_mw = 500" in s["error"]
    )
    assert s["stimuli"] == 0


@pytest.mark.parametrize(
    "argv, words",
    [
        (["run", "no_such_protocol"], ["unknown protocol 'no_such_protocol'", "target_pattern"]),
        (
            ["run", "target_pattern", "--set", "protocol.power_mw=5000"],
            ["'power_mw'", "5000", "[0, 1000] mW"],
        ),
        (
            ["run", "target_pattern", "--set", "protocol.no_param=1"],
            ["unknown parameter 'no_param'"],
        ),
        (
            ["run", "target_pattern", "--set", "scanner.zoomm=2"],
            ["unknown config key 'scanner.zoomm'"],
        ),
        (["run", "target_pattern", "--set", "scanner.zoom=0.5"], ["max_amplitude_v", "zoom >="]),
        (
            ["run", "target_pattern", "--set", "scanner.pixels_per_line=99999"],
            ["scanner.pixels_per_line", "[2, 8192]"],
        ),
        (["run", "target_pattern", "--set", "daq.backend=nidaqmx"], ["NI-DAQmx", "--rig sim"]),
        (["config", "show", "--set", "world.coupling.weight_hz=-1"], ["weight_hz"]),
    ],
)
def test_bad_input_is_refused_with_a_message_that_names_it(
    tmp_path, monkeypatch, capsys, argv, words
):
    monkeypatch.chdir(tmp_path)  # sessions (if any) land here
    assert main(argv) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").iterdir())


def test_config_show_lists_keys_with_units(capsys):
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "scanner.pixels_per_line" in out and "sample_rate_hz" in out and "Hz" in out
    assert "world.coupling.weight_hz" in out


def test_protocols_command_lists_each_protocol_with_parameters(capsys):
    assert main(["protocols"]) == 0
    out = capsys.readouterr().out
    assert "target_pattern:" in out and "open_loop_train:" in out
    assert "stim_rate_hz = 0.25  [0.01, 10] Hz" in out
