"""`rig analyze`: reading sessions, arrays and NWB; JSON keys of issue 6; bad input -> exit 2."""

import argparse
import builtins
import json

import h5py
import numpy as np
import pytest

from analysis.rg import models
from rig.analyze import InputError, load_recording
from rig.cli_analyze import register
from rig.config import ConfigError

REQUIRED = ["beta", "beta_err", "alpha", "alpha_err", "mu", "mu_err", "z", "z_err"]


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="rig")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["analyze", *argv])
    return args.handler(args)


@pytest.fixture(scope="module")
def latent():
    return models.latent_field_model(256, 4000, np.random.default_rng(3))


def test_npy_array_gives_the_json_keys_and_figures(tmp_path, latent, capsys):
    path = tmp_path / "cells.npy"
    np.save(path, latent)
    out = tmp_path / "out"
    status = run_cli(
        [
            str(path),
            "--json",
            str(tmp_path / "r.json"),
            "--out",
            str(out),
            "--quarters",
            "2",
            "--frame-rate",
            "30",
        ]
    )
    assert status == 0
    result = json.loads((tmp_path / "r.json").read_text())
    for key in REQUIRED:
        assert key in result and key in result["shuffled"]
    assert len(result["tau_c_frames"]) == len(result["p0"]) == 9  # K = 1..256
    assert result["shuffled"]["p0"] and result["shuffled"]["tau_c_frames"]
    assert result["tau_c_s"][0] == pytest.approx(result["tau_c_frames"][0] / 30)
    assert result["beta"] < 0.95 and result["shuffled"]["beta"] > result["beta"]
    names = {p.name for p in out.iterdir()}
    assert {
        "rg.json",
        "rg_silence_activity.png",
        "rg_spectra.png",
        "rg_dynamics.png",
        "rg_variance.png",
    } <= names
    err = capsys.readouterr().err
    assert "100%" in err  # the progress bar


def test_session_folder_reads_deconvolved_frames_by_rois(tmp_path, latent):
    session = tmp_path / "session-1"
    session.mkdir()
    frames = np.full((4100, 256), np.nan, np.float32)
    frames[100:] = latent.T  # ROIs exist from frame 100
    with h5py.File(session / "session.h5", "w") as f:
        f.attrs["frame_rate_hz"] = 15.0
        f.attrs["roi_start_frame"] = 100
        f["dff"] = np.zeros_like(frames)
        f["deconvolved"] = frames
    rec = load_recording(str(session))
    assert rec.dataset == "deconvolved"
    assert rec.activity.shape == (256, 4000)
    assert rec.frame_rate_hz == 15.0 and rec.frames_skipped == 100
    np.testing.assert_array_equal(rec.activity, latent)


def test_h5_array_by_name(tmp_path, latent):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f["x/activity"] = latent
        f["other"] = np.zeros((3, 3))
    assert load_recording(f"{path}:x/activity").activity.shape == (256, 4000)
    with pytest.raises(InputError, match="name one as"):
        load_recording(str(path))


def test_nwb_without_pynwb_says_to_install_it(tmp_path, monkeypatch):
    path = tmp_path / "rec.nwb"
    path.write_bytes(b"")
    real_import = builtins.__import__

    def no_pynwb(name, *args, **kwargs):
        if name == "pynwb":
            raise ImportError("No module named 'pynwb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pynwb)
    with pytest.raises(InputError, match="pip install pynwb"):
        load_recording(str(path))


def test_bad_input_is_a_config_error_with_the_reason(tmp_path):
    path = tmp_path / "bad.npy"
    x = models.independent_neurons(64, 500, np.random.default_rng(0))
    x[2, 7] = np.nan
    np.save(path, x)
    with pytest.raises(ConfigError, match="NaN/inf .*neuron 2, frame 7"):
        run_cli([str(path), "--out", str(tmp_path / "o")])
    np.save(path, x[30:50, :])
    with pytest.raises(ConfigError, match="levels"):
        run_cli([str(path), "--levels", "6", "--out", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="--frame-rate"):
        run_cli([str(path), "--frame-rate", "-1"])
    with pytest.raises(FileNotFoundError):
        run_cli([str(tmp_path / "missing.npy")])
