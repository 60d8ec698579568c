"""NWB export: the file passes pynwb's validator and reads back with the session's values."""

import json

import h5py
import numpy as np
import pytest
from pynwb import NWBHDF5IO, validate
from recording_helpers import FAST_RIG, TRAIN

from drivers.stimulation.light import LightStimulus
from rig.bench_record import write_synthetic_session
from rig.nwb_export import NwbExportError, export_nwb
from rig.run import run_experiment
from rig.session import open_frames, read_events


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A short simulated open-loop session with raw frames, ROIs and light stimuli."""
    out = tmp_path_factory.mktemp("nwb") / "s"
    result = run_experiment(
        "open_loop_train",
        "sim-galvo",
        duration_s=8.0,
        seed=4,
        out=str(out),
        overrides=FAST_RIG + TRAIN + ["recording.frames=true"],
        write_report=False,
    )
    assert result.status == "completed", result.summary["error"]
    return out


def test_a_real_session_round_trips_through_nwb(session, tmp_path, rig_cli):
    out = tmp_path / "s.nwb"
    assert rig_cli(["export-nwb", str(session), "--out", str(out)]) == 0
    assert validate(path=str(out)) == []
    summary = json.loads((session / "summary.json").read_text())
    stimuli = [e for e in read_events(session / "events.jsonl")[0] if e["type"] == "stimulus"]
    assert stimuli
    with h5py.File(session / "session.h5", "r") as f, NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        assert set(summary["devices"]) <= set(nwb.devices)
        plane = nwb.imaging_planes["ImagingPlane"]
        assert plane.imaging_rate == f.attrs["frame_rate_hz"]
        py, px = f.attrs["pixel_size_um"]
        np.testing.assert_allclose(plane.grid_spacing[:], [px * 1e-6, py * 1e-6])
        assert plane.grid_spacing_unit == "meters"
        assert plane.optical_channel[0].name == "PMT"
        assert plane.device.name in summary["devices"]
        # raw frames: NWB stores (time, x, y), i.e. width before height
        series = nwb.acquisition["TwoPhotonSeries"]
        frames = open_frames(f)[:]
        np.testing.assert_array_equal(series.data[:].transpose(0, 2, 1), frames)
        np.testing.assert_array_equal(series.timestamps[:], f["timestamps"][:])
        # ROIs: pixel masks (x, y, weight) and the noise level column
        planeseg = nwb.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        offsets, pixels = f["rois/offsets"][:], f["rois/pixels"][:]
        weights = f["rois/weights"][:]
        width = frames.shape[2]
        assert len(planeseg) == len(offsets) - 1 > 0
        for i in (0, len(planeseg) - 1):
            mask = np.array(planeseg["pixel_mask"][i].tolist())
            a, b = offsets[i], offsets[i + 1]
            np.testing.assert_array_equal(mask[:, 0], pixels[a:b] % width)
            np.testing.assert_array_equal(mask[:, 1], pixels[a:b] // width)
            np.testing.assert_array_equal(mask[:, 2].astype(np.float32), weights[a:b])
        np.testing.assert_array_equal(planeseg["noise_level"][:], f["noise_level"][:])
        # fluorescence and dF/F as ROI response series over all ROIs
        ophys = nwb.processing["ophys"]
        fluorescence = ophys["Fluorescence"]["fluorescence"]
        dff = ophys["DfOverF"]["dff"]
        np.testing.assert_array_equal(fluorescence.data[:], f["fluorescence"][:])
        np.testing.assert_array_equal(dff.data[:], f["dff"][:])
        assert list(dff.rois.data[:]) == list(range(len(planeseg)))
        np.testing.assert_array_equal(dff.timestamps[:], f["timestamps"][:])
        # results of optional pipeline stages, when they were on
        for name, container in (
            ("neuropil", "Fluorescence"),
            ("calcium", "Deconvolved"),
            ("spikes", "Deconvolved"),
        ):
            if name in f:
                np.testing.assert_array_equal(ophys[container][name].data[:], f[name][:])
        if "motion" in f:
            shift = ophys["motion_shift_px"]
            np.testing.assert_array_equal(shift.data[:], f["motion/shift_px"][:])
        # stimulation: device time (NWB time base), host time, amplitude, train duration
        table = nwb.intervals["stimulation"]
        np.testing.assert_array_equal(table["start_time"][:], [e["device_time_s"] for e in stimuli])
        np.testing.assert_array_equal(table["host_time_s"][:], [e["host_time_s"] for e in stimuli])
        first = stimuli[0]["stimulus"]
        assert table["amplitude"][0] == first["power_mw"]
        assert table["amplitude_unit"][0] == "mW"
        train = LightStimulus(
            targets_um=tuple(map(tuple, first["targets_um"])),
            power_mw=first["power_mw"],
            pulse_ms=first["pulse_ms"],
            n_pulses=first["n_pulses"],
            pulse_rate_hz=first["pulse_rate_hz"],
        ).train_s
        assert table["stop_time"][0] - table["start_time"][0] == pytest.approx(train)
        assert json.loads(table["targets"][0]) == first["targets_um"]
        # the configuration travels along (replay uses it)
        assert json.loads(nwb.scratch["looprig_config"].data) == summary["config"]


def test_lens_events_mea_electrodes_and_drops_are_exported(tmp_path):
    electrodes = {"A1": "A-000", "B1": "A-001", "C1": "A-002"}
    mea = {
        "kind": "mea",
        "label": "probe",
        "allow_unbalanced": False,
        "repeat_while_held": False,
        "trains": [
            {
                "electrodes": ["B1", "C1"],
                "pulse": {
                    "first_phase_ua": 12.0,
                    "first_phase_us": 200.0,
                    "second_phase_ua": None,
                    "second_phase_us": None,
                    "interphase_us": 0.0,
                    "shape": "biphasic",
                    "cathodic_first": True,
                },
                "n_pulses": 1,
                "rate_hz": None,
            }
        ],
    }
    lens_host_offsets_s = [2.5, 3.0, 3.5]
    folder = tmp_path / "s"
    # the synthetic session's frame i completes at host0 + (i + 1) / rate; a host time
    # host0 + t therefore lies at device time t
    written = write_synthetic_session(
        folder,
        duration_s=5.0,
        frame_rate_hz=20.0,
        n_rois=4,
        record_frames=False,
        stimulus=mea,
        drops=(30, 31),
        devices={
            "scanner": {"name": "scanner", "role": "scanner"},
            "MEA stimulator": {
                "name": "MEA stimulator",
                "role": "stimulator",
                "electrodes": electrodes,
            },
        },  # fmt: skip
    )
    events = read_events(folder / "events.jsonl")[0]
    host0 = next(e for e in events if e.get("event") == "start")["host_time_s"]
    lens = [
        {"type": "device", "device": "lens", "focal_power_dpt": 1.5 + k, "temperature_c": 30 + k,
         "host_time_s": host0 + t}
        for k, t in enumerate(lens_host_offsets_s)
    ]  # fmt: skip
    with open(folder / "events.jsonl", "a") as f:
        for event in lens:
            f.write(json.dumps(event) + "\n")
    out = tmp_path / "s.nwb"
    export_nwb(folder, out)
    assert validate(path=str(out)) == []
    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        assert "TwoPhotonSeries" not in nwb.acquisition  # frames were not recorded
        assert list(nwb.electrodes["label"][:]) == list(electrodes)
        assert list(nwb.electrodes["channel"][:]) == list(electrodes.values())
        table = nwb.intervals["stimulation"]
        assert len(table) == len(written["stimuli"]) > 0
        rows = table["electrodes"][0]
        assert list(rows.index) == [1, 2]  # B1 and C1
        assert table["amplitude"][0] == 12.0 and table["amplitude_unit"][0] == "uA"
        # a biphasic pulse lasts both phases: 2 x 200 us
        assert table["stop_time"][0] - table["start_time"][0] == pytest.approx(400e-6)
        focal = nwb.acquisition["focal_power"]
        np.testing.assert_array_equal(focal.data[:], [e["focal_power_dpt"] for e in lens])
        np.testing.assert_allclose(focal.timestamps[:], lens_host_offsets_s, atol=1e-9)
        temperature = nwb.acquisition["lens_temperature"]
        np.testing.assert_array_equal(temperature.data[:], [e["temperature_c"] for e in lens])
        invalid = nwb.invalid_times
        assert list(invalid["frame"][:]) == [30, 31]
        np.testing.assert_allclose(invalid["start_time"][:], [30 / 20.0, 31 / 20.0])
        dff = nwb.processing["ophys"]["DfOverF"]["dff"]
        np.testing.assert_array_equal(dff.data[:], written["dff"])
        np.testing.assert_array_equal(dff.timestamps[:], written["timestamps"])


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch, session):
    import rig.nwb_export

    def invalid(tmp, out):
        raise NwbExportError(f"{out}: the written file does not pass pynwb's validator")

    monkeypatch.setattr(rig.nwb_export, "_validate", invalid)
    out = tmp_path / "x.nwb"
    with pytest.raises(NwbExportError, match="validator"):
        export_nwb(session, out, include_frames=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_sessions_are_refused_naming_the_file_and_field(tmp_path, rig_cli, capsys):
    written = write_synthetic_session(tmp_path / "s", duration_s=1.0, n_rois=3)
    folder = written["folder"]
    with h5py.File(folder / "session.h5", "a") as f:
        del f["dff"]
        f.create_dataset("dff", data=np.zeros((5, 3), np.float32))  # wrong number of frames
    with pytest.raises(NwbExportError, match=r"session\.h5: field 'dff' has 5 frames"):
        export_nwb(folder, tmp_path / "a.nwb")
    (folder / "session.h5").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    assert rig_cli(["export-nwb", str(folder), "--out", str(tmp_path / "b.nwb")]) == 2
    assert "session.h5: not a readable HDF5 file" in capsys.readouterr().err
    (tmp_path / "c.nwb").write_bytes(b"")
    with pytest.raises(FileExistsError, match="never overwrites"):
        export_nwb(folder, tmp_path / "c.nwb")
    with pytest.raises(NwbExportError, match=r"must end in \.nwb"):
        export_nwb(folder, tmp_path / "d.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.nwb", "s"]
