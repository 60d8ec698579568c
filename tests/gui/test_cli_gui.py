"""`rig gui` on the command line: headless run with a screenshot, and bad input refused
before any window opens."""

import argparse
import json

import pytest
from gui_settings import FAST_PROTOCOL, FAST_RIG
from matplotlib.image import imread

from rig import cli_gui
from rig.config import ConfigError


def parse(argv):
    parser = argparse.ArgumentParser(prog="rig")
    cli_gui.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["gui", *argv])


def rig_sets(tmp_path):
    sets = [f"{k}={json.dumps(v)}" for k, v in FAST_RIG.items()]
    sets.append(f'recording.out_dir="{tmp_path / "sessions"}"')
    return ["--rig", "sim-galvo"] + [a for kv in sets for a in ("--set", kv)]


def protocol_sets(**changes):
    values = {**FAST_PROTOCOL, **changes}
    return [a for k, v in values.items() for a in ("--set", f"protocol.{k}={v}")]


@pytest.mark.slow
def test_headless_run_saves_a_screenshot_of_the_window_and_closes_the_session(
    qtbot, tmp_path, capsys
):
    shot = tmp_path / "images" / "gui.png"
    args = parse(
        ["--protocol", "open_loop_train", "--run-for", "4", "--screenshot", str(shot)]
        + rig_sets(tmp_path)
        + protocol_sets()
    )
    assert args.handler(args) == 0
    pixels = imread(shot)
    assert pixels.ndim == 3 and pixels.shape[0] > 500 and pixels.shape[1] > 1000
    assert pixels.std() > 0.05  # a drawn window, not a blank image
    out = capsys.readouterr().out
    sessions = list((tmp_path / "sessions").iterdir())
    assert len(sessions) == 1 and str(sessions[0]) in out
    summary = json.loads((sessions[0] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["stop_reason"] == "stopped by the user"
    assert summary["protocol"]["parameters"]["target_radius_um"] == 100.0
    assert (sessions[0] / "report.html").is_file()


def test_bad_input_is_refused_before_a_window_opens(tmp_path):
    with pytest.raises(ConfigError, match="--screenshot FILE.png needs --run-for"):
        cli_gui.gui_command(parse(["--screenshot", str(tmp_path / "x.png")]))
    with pytest.raises(ConfigError, match="positive number of seconds"):
        cli_gui.gui_command(parse(["--run-for", "-1"]))
    args = parse(
        ["--protocol", "open_loop_train", "--run-for", "1"] + protocol_sets(target_radius_um=5000)
    )
    with pytest.raises(ConfigError, match=r"target_radius_um.*\[1, 2000\] um"):
        args.handler(args)
    with pytest.raises(ConfigError, match="unknown config key 'scanner.linez'"):
        cli_gui.gui_command(parse(["--run-for", "1", "--set", "scanner.linez=64"]))
    with pytest.raises(ConfigError, match="unknown protocol 'no_such_protocol'"):
        cli_gui.gui_command(parse(["--protocol", "no_such_protocol", "--run-for", "1"]))
    assert not (tmp_path / "x.png").exists()
