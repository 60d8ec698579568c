"""`rig sweep` for the MEA comparisons: per-trial curves across seeds (reaction times of the
LSA closed loop against its yoked control) and the paired table (rig/sweep.py)."""

import json

import numpy as np
import pytest

from rig.cli import main
from rig.config import ConfigError
from rig.sweep import binned_curve, curve_summary, run_sweep


def test_a_curve_bin_is_the_median_of_its_trials_and_a_trial_without_value_is_skipped():
    np.testing.assert_array_equal(
        binned_curve([1.0, 3.0, 2.0, None, 10.0, None, None], 3), [2.0, 10.0, np.nan]
    )
    assert binned_curve([], 5).size == 0


def test_curve_summary_counts_the_seeds_that_reach_each_bin():
    runs = [
        {"condition": "a", "seed": 1, "status": "completed", "curves": {"rt": [1.0, 1.0, 3.0]}},
        {"condition": "a", "seed": 2, "status": "completed", "curves": {"rt": [3.0]}},
        {"condition": "a", "seed": 3, "status": "aborted", "curves": {"rt": [9.0, 9.0]}},
    ]
    bins = curve_summary(runs, "a", [1, 2, 3], "rt", 2)
    assert [b["first_trial"] for b in bins] == [1, 3]
    assert [b["seeds"] for b in bins] == [2, 1]  # an aborted run does not count
    assert bins[0]["mean"] == pytest.approx(2.0) and bins[1]["mean"] == pytest.approx(3.0)


def test_bad_curve_bin_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="--curve-bin 0"):
        run_sweep("lsa", [1], [], [], rig="sim-culture", out=str(tmp_path / "s"), curve_bin=0)


@pytest.mark.slow
def test_lsa_sweep_with_a_yoked_control_reports_reaction_time_curves(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(
        [
            "sweep", "lsa", "--rig", "sim-culture", "--seeds", "1-2", "--duration", "12",
            "--set", "culture.preset=lsa_minimal",
            "--condition", "closed:protocol.contingency=stop_on_output",
            "--condition",
            "yoked:protocol.contingency=yoked,protocol.yoked_from={closed},culture.noise_stream=1",
            "--metric", "weight_in_out_change", "--curve", "reaction_times_s",
            "--curve-bin", "2", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    assert "weight_in_out_change" in capsys.readouterr().out
    sweep = json.loads((out / "sweep.json").read_text())
    for r in sweep["runs"]:
        summary = json.loads((out / f"{r['condition']}-seed{r['seed']}/summary.json").read_text())
        times = summary["protocol"]["metrics"]["reaction_times_s"]
        assert r["curves"]["reaction_times_s"] == times and len(times) >= 2
    for name in ("closed", "yoked"):
        bins = sweep["curve_summary"]["reaction_times_s"][name]
        assert bins[0]["seeds"] == 2 and bins[0]["first_trial"] == 1
    assert (out / "sweep_curve_reaction_times_s.png").is_file()
    assert "sweep_curve_reaction_times_s.png" in (out / "sweep.html").read_text()
    assert sweep["comparisons"]["weight_in_out_change"]["closed vs yoked"]["n"] == 2
