"""`rig lens PORT ...` and `rig bench lens` on the simulated lens (the lead adds the modules
to rig.cli.EXTENSIONS / rig.bench.EXTENSIONS; here they are added for the test)."""

import pytest

import rig.bench
import rig.cli


@pytest.fixture
def rig_main(monkeypatch):
    monkeypatch.setattr(rig.cli, "EXTENSIONS", ("rig.cli_lens",))
    return rig.cli.main


def test_info_reports_identity_limits_and_readings(rig_main, capsys):
    assert rig_main(["lens", "optotune_sim://?wire_delay=0", "info"]) == 0
    out = capsys.readouterr().out
    assert "max current           292.84 mA" in out  # read with CrMA
    assert "firmware type         A" in out
    assert "temperature           25 degC" in out


def test_current_sets_and_reads_back(rig_main, capsys):
    assert rig_main(["lens", "optotune_sim://?wire_delay=0", "current", "50"]) == 0
    out = capsys.readouterr().out
    code = round(50 / 292.84 * 4095)
    assert f"current               {code * 292.84 / 4095:.2f} mA" in out
    assert "returns to rest" in out


def test_focal_power_sets_and_reads_back(rig_main, capsys):
    assert rig_main(["lens", "optotune_sim://?wire_delay=0", "focal-power", "3.5"]) == 0
    out = capsys.readouterr().out
    assert "mode                  focal power" in out
    assert "focal power           3.500 dpt" in out


def test_refused_values_exit_2_with_the_allowed_range(rig_main, capsys):
    assert rig_main(["lens", "optotune_sim://?wire_delay=0", "current", "400"]) == 2
    assert "[-292.84, 292.84] mA" in capsys.readouterr().err
    assert rig_main(["lens", "optotune_sim://?wire_delay=0", "focal-power", "40"]) == 2
    assert "outside the range the lens reported" in capsys.readouterr().err


def test_an_unknown_port_names_the_simulator(rig_main, capsys):
    assert rig_main(["lens", "no-such-lens", "info"]) == 2
    err = capsys.readouterr().err
    assert "Ports found" in err and "optotune_sim://" in err


def test_bench_lens_figures(monkeypatch, capsys):
    monkeypatch.setattr(rig.bench, "EXTENSIONS", ("rig.bench_lens",))
    figures = rig.bench.run_benchmark("lens", quick=True)
    for key in (
        "round_trip_ms_p50",
        "round_trip_ms_p99",
        "software_round_trip_ms_p50",
        "silent_write_ms_p50",
        "settling_ms_2pct",
        "ringing_hz",
        "overshoot_pct",
    ):
        assert key in figures
    # properties of the simulated lens (virtual time), not of this machine's speed
    assert figures["ringing_hz"] == pytest.approx(150.0, rel=0.01)
    assert 0 < figures["settling_ms_2pct"] <= 15.0
