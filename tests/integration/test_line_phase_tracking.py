"""Online line-phase tracking in a resonant session (issue 4, item 3): a phase error in the
rig file is corrected from the live frames, every change is in the session record, and
impossible requests are refused before any device opens."""

import json

import pytest

from rig.config import ConfigError
from rig.run import run_experiment

QUICK = {
    "rg.enabled": False,
    "deconvolution.enabled": False,
    "rois.reference_s": 2.0,
}


def events_of(session_dir):
    lines = (session_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x]


@pytest.mark.slow
def test_a_wrong_line_phase_is_tracked_to_the_mirrors_lag_within_a_tenth_of_a_pixel(tmp_path):
    overrides = dict(QUICK)
    overrides.update(
        {
            "scanner.line_phase_us": 1.95,  # the mirror lags ~2.13 us: a comb of ~2.5 px
            "resonant.track_line_phase": True,
            "resonant.track_every_s": 0.25,
        }
    )
    result = run_experiment(
        "open_loop_train",
        "sim",
        duration_s=8.0,
        out=str(tmp_path / "s"),
        overrides=[f"{k}={json.dumps(v)}" for k, v in overrides.items()],
        write_report=False,
    )
    summary = result.summary
    assert summary["status"] == "completed"
    sim = summary["config"]["sim"]
    scanner = summary["devices"]["resonant-galvo scanner"]
    amplitude_fraction = scanner["amplitude_v"] / 5.0  # resonant.max_amplitude_v
    # the simulated mirror's lag (simulators.resonant.ResonantPhysics.lag_s)
    lag_us = sim["resonant_lag_us"] + sim["resonant_lag_amplitude_us"] * amplitude_fraction**2
    changes = [e for e in events_of(result.session_dir) if e["type"] == "line_phase"]
    assert len(changes) >= 5
    final_us = changes[-1]["line_phase_us"]
    # the pixel at the line centre lasts 2 Fs / N of the mirror's phase angle
    resonant_hz = scanner["measured_resonant_hz"]
    us_per_centre_px = 2 * 0.9 / 512 / (2 * 3.141592653589793 * resonant_hz) * 1e6
    assert abs(final_us - lag_us) < 0.1 * us_per_centre_px
    assert summary["line_phase"]["final_us"] == pytest.approx(final_us)
    assert summary["line_phase"]["start_us"] == 1.95


def test_tracking_a_galvo_scan_is_refused_before_anything_opens(tmp_path):
    with pytest.raises(ConfigError, match="resonant.track_line_phase is for resonant"):
        run_experiment(
            "open_loop_train",
            "sim-galvo",
            duration_s=1.0,
            out=str(tmp_path / "s"),
            overrides=["resonant.track_line_phase=true"],
        )
    assert not (tmp_path / "s").exists()


def test_tracking_a_unidirectional_scan_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="needs a bidirectional scan"):
        run_experiment(
            "open_loop_train",
            "sim",
            duration_s=1.0,
            out=str(tmp_path / "s"),
            overrides=["resonant.track_line_phase=true", "scanner.bidirectional=false"],
        )
