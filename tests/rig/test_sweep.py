"""rig sweep: protocols over seeds and conditions, with paired comparisons."""

import json

import pytest

from rig.cli import main
from rig.config import ConfigError
from rig.sweep import parse_condition, parse_seeds

FAST = ["--rig", "sim-galvo", "--set", "scanner.lines=64", "--set", "scanner.fov_um=[300, 75]",
        "--set", "rois.reference_s=2", "--set", "protocol.target_centre_um=[0, 0]",
        "--set", "protocol.target_radius_um=100", "--set", "protocol.interval_s=2",
        "--set", "protocol.start_after_s=1"]


def test_seed_and_condition_syntax():
    assert parse_seeds("1-3,7") == [1, 2, 3, 7]
    c = parse_condition("yoked:protocol.contingency=yoked,protocol.xy=[1, 2],protocol.f={closed}")
    assert c.name == "yoked"
    assert c.assignments == ("protocol.contingency=yoked", "protocol.xy=[1, 2]",
                             "protocol.f={closed}")
    with pytest.raises(ConfigError, match="NAME:KEY=VALUE"):
        parse_condition("no-colon")
    with pytest.raises(ConfigError, match="range like 1-10"):
        parse_seeds("a-b")


def test_sweep_runs_every_seed_and_condition_and_compares_them(tmp_path):
    out = tmp_path / "sweep"
    status = main(["sweep", "open_loop_train", "--seeds", "1-2", "--duration", "8",
                   "--condition", "strong:protocol.power_mw=20",
                   "--condition", "off:protocol.power_mw=0",
                   "--metric", "trains", "--metric", "mean_peak_target_dff",
                   "--out", str(out)] + FAST)
    assert status == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert [(r["condition"], r["seed"]) for r in sweep["runs"]] == [
        ("strong", 1), ("off", 1), ("strong", 2), ("off", 2)]
    assert all(r["status"] == "completed" for r in sweep["runs"])
    pair = sweep["comparisons"]["trains"]["strong vs off"]
    assert pair["n"] == 2 and pair["mean_difference"] == 0  # same schedule in both
    assert (out / "sweep.html").is_file() and (out / "strong-seed1" / "summary.json").is_file()


def test_a_condition_referring_to_a_later_one_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="list it earlier"):
        from rig.sweep import run_sweep
        run_sweep("open_loop_train", [1], [parse_condition("a:protocol.power_mw={b}"),
                                           parse_condition("b:protocol.power_mw=1")],
                  [], duration_s=5, out=str(tmp_path / "s"), progress=False)
