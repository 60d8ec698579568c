"""Replay: recordings (sessions, NWB, TIFF stacks, suite2p output) through the same loop,
pipeline and protocols with simulated devices; yoked controls from replayed stimuli."""

import json

import h5py
import numpy as np
import pytest
import tifffile
from contract_suites import DeviceContract, ScannerContract, StimulatorContract
from recording_helpers import FAST_RIG, TRAIN

from analysis.dff import OnlineDff
from analysis.noise import noise_level
from drivers.stimulation.light import LightStimulator, LightStimulus
from rig.config import ConfigError, load_rig_config
from rig.nwb_export import export_nwb
from rig.replay import replay
from rig.run import run_experiment
from rig.session import open_frames, read_stimuli
from simulators.replay import (
    ArrayFrames,
    ReplayClock,
    ReplayDAQ,
    ReplayScanner,
    ReplaySourceError,
    Suite2pTraces,
    TiffFrames,
)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A max-speed open-loop session with raw frames (ROIs detected on its first 2 s)."""
    out = tmp_path_factory.mktemp("replay") / "original"
    result = run_experiment(
        "open_loop_train",
        "sim-galvo",
        duration_s=10.0,
        seed=7,
        out=str(out),
        overrides=FAST_RIG + TRAIN + ["recording.frames=true"],
        write_report=False,
    )
    assert result.status == "completed", result.summary["error"]
    return out


@pytest.fixture(scope="module")
def replayed_with_protocol(original, tmp_path_factory):
    out = tmp_path_factory.mktemp("replay") / "replayed"
    result = replay(
        original, protocol="open_loop_train", overrides=TRAIN, out=str(out), write_report=False
    )
    assert result.status == "completed", result.summary["error"]
    return out


def assert_same_results(a, b):
    with h5py.File(a / "session.h5", "r") as fa, h5py.File(b / "session.h5", "r") as fb:
        for name in ("timestamps", "fluorescence", "dff", "noise_level", "rois/pixels",
                     "rois/weights", "mean_image"):  # fmt: skip
            np.testing.assert_array_equal(fa[name][:], fb[name][:], err_msg=name)
        assert fa.attrs["roi_start_frame"] == fb.attrs["roi_start_frame"]
        assert fa["dff"].shape[1] > 0


def test_replaying_the_raw_frames_of_a_max_speed_session_reproduces_it_exactly(original, tmp_path):
    result = replay(original, out=str(tmp_path / "r"), write_report=False)
    assert result.status == "completed" and result.summary["frames_dropped"] == 0
    assert_same_results(original, tmp_path / "r")
    summary = json.loads((original / "summary.json").read_text())
    assert result.summary["noise_level"] == summary["noise_level"]
    assert result.summary["stimuli"] == 0  # playback decides nothing


def test_the_same_protocol_decides_the_same_stimuli_on_the_replay(original, replayed_with_protocol):
    assert_same_results(original, replayed_with_protocol)
    a, b = read_stimuli(original), read_stimuli(replayed_with_protocol)
    assert len(a) == len(b) > 0
    assert [e["frame"] for e in a] == [e["frame"] for e in b]
    assert [e["stimulus"] for e in a] == [e["stimulus"] for e in b]
    rate = json.loads((original / "summary.json").read_text())["frame_rate_hz"]
    # on the replay's clock a stimulus decided on frame i starts when frame i is complete
    np.testing.assert_allclose(
        [e["device_time_s"] for e in b], [(e["frame"] + 1) / rate for e in b], rtol=1e-12
    )


def test_an_nwb_export_replays_to_the_same_dff(original, tmp_path):
    export_nwb(original, tmp_path / "s.nwb", validate=False)
    result = replay(tmp_path / "s.nwb", out=str(tmp_path / "r"), write_report=False)
    assert result.status == "completed", result.summary["error"]
    assert_same_results(original, tmp_path / "r")


def test_a_replayed_sessions_stimuli_drive_a_yoked_control(replayed_with_protocol, tmp_path):
    summary = json.loads((replayed_with_protocol / "summary.json").read_text())
    yoked = run_experiment(
        "yoked_replay",
        "sim-galvo",
        duration_s=summary["duration_s"],
        seed=11,  # another simulated animal
        out=str(tmp_path / "yoked"),
        overrides=FAST_RIG + [f"protocol.yoked_from={replayed_with_protocol}"],
        write_report=False,
    )
    assert yoked.status == "completed", yoked.summary["error"]
    planned, given = read_stimuli(replayed_with_protocol), read_stimuli(tmp_path / "yoked")
    assert len(given) == len(planned) > 0
    assert [e["stimulus"] for e in given] == [e["stimulus"] for e in planned]
    period = 1 / summary["frame_rate_hz"]
    errors = np.subtract([e["device_time_s"] for e in given], [e["device_time_s"] for e in planned])
    assert np.all(np.abs(errors) <= period / 2)
    metrics = yoked.summary["protocol"]["metrics"]
    assert metrics["delivered"] == metrics["planned"] == len(planned)


def test_yoked_from_must_name_a_session_with_stimuli(tmp_path):
    from rig.protocol import load_protocol_class

    cls = load_protocol_class("yoked_replay")
    with pytest.raises(ConfigError, match="'yoked_from' is empty"):
        cls().setup(None)  # the default is refused when a run starts
    with pytest.raises(ConfigError, match="is not a folder"):
        cls(yoked_from=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"events\.jsonl is missing"):
        cls(yoked_from=str(tmp_path / "empty"))


# --- TIFF -----------------------------------------------------------------------------------


def tiff_frames(n=30, shape=(32, 48), seed=0):
    """Shot noise around a still image of bright round cells (so registration and ROI
    detection have structure to work on)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 50.0)
    for _ in range(max(3, shape[0] * shape[1] // 300)):
        cy, cx = rng.uniform(4, shape[0] - 4), rng.uniform(4, shape[1] - 4)
        image += 300.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))
    return rng.poisson(image, (n, *shape)).astype(np.uint16)


def delivered(scanner, n):
    out = np.zeros(scanner.frame_shape, np.int16)
    frames, infos = [], []
    with scanner:
        scanner.start()
        for _ in range(n):
            infos.append(scanner.read_frame(out))
            frames.append(out.copy())
        scanner.stop()
    return np.array(frames), infos


def test_a_plain_tiff_needs_the_frame_rate_and_then_replays_its_pages(tmp_path, rig_cli, capsys):
    frames = tiff_frames()
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, frames)
    with pytest.raises(ReplaySourceError, match=r"plain\.tif: no frame rate .* --frame-rate"):
        TiffFrames(path)
    assert rig_cli(["replay", str(path)]) == 2
    assert "--frame-rate" in capsys.readouterr().err
    source = TiffFrames(path, frame_rate_hz=5.0)
    got, infos = delivered(ReplayScanner(source, pixel_size_um=(1.0, 1.0)), len(frames))
    np.testing.assert_array_equal(got, frames)
    np.testing.assert_allclose([i.device_time_s for i in infos], np.arange(len(frames)) / 5.0)


def test_a_tiff_replay_runs_the_pipeline_and_records_the_same_frames(tmp_path):
    frames = tiff_frames(n=40, shape=(64, 80))
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, frames)
    settings = ["recording.frames=true", "rois.reference_s=1"]
    # a plain TIFF has no pixel size: the default rig's field over 64 x 80 pixels makes
    # pixels several um wide, and a 6 um cell less than 2 pixels wide, too small to detect
    fov_x_um, fov_y_um = load_rig_config("sim")["scanner.fov_um"]
    cell_px = 6.0 / np.sqrt(fov_y_um / 64 * fov_x_um / 80)
    with pytest.raises(ConfigError, match=rf"{cell_px:.3g} pixels.*scanner\.fov_um"):
        replay(
            path,
            frame_rate_hz=10.0,
            out=str(tmp_path / "x"),
            overrides=settings + ["rois.cell_diameter_um=6"],
        )
    assert not (tmp_path / "x").exists()
    result = replay(
        path,
        frame_rate_hz=10.0,
        out=str(tmp_path / "r"),
        overrides=settings + ["scanner.fov_um=[80, 64]"],  # 1 um pixels
        write_report=False,
    )
    assert result.status == "completed", result.summary["error"]
    assert result.summary["frames"] == 40 and result.summary["frame_rate_hz"] == 10.0
    with h5py.File(tmp_path / "r" / "session.h5", "r") as f:
        np.testing.assert_array_equal(open_frames(f)[:], frames)
        np.testing.assert_allclose(f["timestamps"][:], np.arange(40) / 10.0)


def test_imagej_and_ome_metadata_give_rate_and_pixel_size(tmp_path):
    frames = tiff_frames()
    tifffile.imwrite(
        tmp_path / "ij.tif",
        frames,
        imagej=True,
        resolution=(2.0, 4.0),  # pixels per um in x and y
        metadata={"axes": "TYX", "finterval": 0.25, "unit": "um"},
    )
    ij = TiffFrames(tmp_path / "ij.tif")
    assert ij.frame_rate_hz == 4.0 and ij.pixel_size_um == (0.25, 0.5)
    tifffile.imwrite(
        tmp_path / "x.ome.tif",
        frames,
        metadata={"axes": "TYX", "TimeIncrement": 500.0, "TimeIncrementUnit": "ms",
                  "PhysicalSizeX": 0.8, "PhysicalSizeY": 0.9},
    )  # fmt: skip
    ome = TiffFrames(tmp_path / "x.ome.tif")
    assert ome.frame_rate_hz == 2.0 and ome.pixel_size_um == (0.9, 0.8)


def test_scanimage_channels_and_frame_timestamps(tmp_path):
    """ScanImage interleaves the saved channels page by page and stamps every frame
    (frameTimestamps_sec); a missing frame is a gap in those times."""
    frames = tiff_frames(n=4)
    times = [0.0, 1 / 7.5, 3 / 7.5, 4 / 7.5]  # the third frame was lost
    settings = "SI.hRoiManager.scanFrameRate = 7.5\nSI.hChannels.channelSave = [1;2]\n"
    path = tmp_path / "si.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k, t in enumerate(times):
            for channel in range(2):
                tw.write(
                    (frames[k] + 1000 * channel).astype(np.int16),
                    software=settings,
                    description=f"frameNumbers = {k + 1}\nframeTimestamps_sec = {t:.6f}\n",
                    metadata=None,
                    contiguous=False,
                )
    source = TiffFrames(path)
    assert source.metadata_kind == "ScanImage" and source.frame_rate_hz == 7.5
    got, infos = delivered(ReplayScanner(source, pixel_size_um=(1.0, 1.0)), 4)
    np.testing.assert_array_equal(got, frames)  # channel 1 only
    assert [i.index for i in infos] == [0, 1, 3, 4]
    assert [i.lost_before for i in infos] == [0, 0, 1, 0]
    np.testing.assert_allclose([i.device_time_s for i in infos], times, atol=1e-6)
    second = TiffFrames(path, channel=1)
    got, _ = delivered(ReplayScanner(second, pixel_size_um=(1.0, 1.0)), 4)
    np.testing.assert_array_equal(got, frames + 1000)


def test_bad_tiffs_are_refused_naming_the_file_and_field(tmp_path):
    frames = tiff_frames()
    tifffile.imwrite(tmp_path / "float.tif", frames.astype(np.float32))
    with pytest.raises(ReplaySourceError, match=r"float\.tif: field 'dtype' = float32"):
        TiffFrames(tmp_path / "float.tif", 5.0)
    tifffile.imwrite(tmp_path / "ok.tif", frames)
    data = (tmp_path / "ok.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReplaySourceError, match=r"cut\.tif: the file is truncated"):
        TiffFrames(tmp_path / "cut.tif", 5.0)
    (tmp_path / "junk.tif").write_bytes(b"II*\x00 not really a tiff")
    with pytest.raises(ReplaySourceError, match=r"junk\.tif: not a readable TIFF"):
        TiffFrames(tmp_path / "junk.tif", 5.0)
    bright = frames.copy()
    bright[3, 0, 0] = 40000  # beyond int16, the rig's frame type
    tifffile.imwrite(tmp_path / "bright.tif", bright)
    scanner = ReplayScanner(TiffFrames(tmp_path / "bright.tif", 5.0), pixel_size_um=(1.0, 1.0))
    with pytest.raises(ReplaySourceError, match=r"bright\.tif: frame 3 has pixel values up to"):
        delivered(scanner, 4)


# --- suite2p --------------------------------------------------------------------------------


def write_suite2p(folder, *, n_frames=120, fs=10.0, include_fs=True, seed=0):
    """A plane folder as suite2p writes it: 5 ROIs, of which ROI 2 is not a cell."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    height, width = 32, 40
    stat = []
    for k in range(5):
        cy, cx = 6 + 5 * k, 8 + 6 * k
        yy, xx = np.mgrid[cy - 2 : cy + 3, cx - 2 : cx + 3]
        lam = rng.uniform(0.5, 2.0, yy.size).astype(np.float32)
        stat.append({"ypix": yy.ravel(), "xpix": xx.ravel(), "lam": lam, "med": [cy, cx]})
    F = rng.uniform(300, 500, (5, n_frames)).astype(np.float32)
    Fneu = rng.uniform(50, 100, (5, n_frames)).astype(np.float32)
    iscell = np.array([[1, 0.9], [1, 0.8], [0, 0.2], [1, 0.7], [1, 0.95]])
    ops = {"Ly": height, "Lx": width, "neucoeff": 0.7,
           "meanImg": rng.uniform(0, 200, (height, width))}  # fmt: skip
    if include_fs:
        ops["fs"] = fs
    np.save(folder / "F.npy", F)
    np.save(folder / "Fneu.npy", Fneu)
    np.save(folder / "iscell.npy", iscell)
    np.save(folder / "stat.npy", np.array(stat, dtype=object), allow_pickle=True)
    np.save(folder / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)
    return F, Fneu, iscell, stat


def test_suite2p_traces_go_straight_into_the_dff_stage(tmp_path):
    F, Fneu, iscell, stat = write_suite2p(tmp_path / "suite2p" / "plane0")
    result = replay(tmp_path / "suite2p", out=str(tmp_path / "r"), write_report=False)
    assert result.status == "completed", result.summary["error"]
    cells = [0, 1, 3, 4]
    assert result.summary["n_rois"] == len(cells) and result.summary["frame_rate_hz"] == 10.0
    fluorescence = (F[cells] - 0.7 * Fneu[cells]).T.astype(np.float32)  # suite2p's neuropil
    expected_dff = np.zeros_like(fluorescence)
    online = OnlineDff(len(cells), 10.0, baseline_window_s=60.0, percentile=8.0)
    for t in range(fluorescence.shape[0]):
        online.update(fluorescence[t], expected_dff[t])
    with h5py.File(tmp_path / "r" / "session.h5", "r") as f:
        assert f.attrs["roi_start_frame"] == 0  # no reference period: the ROIs are given
        np.testing.assert_array_equal(f["fluorescence"][:], fluorescence)
        np.testing.assert_array_equal(f["dff"][:], expected_dff)
        np.testing.assert_allclose(
            f["noise_level"][:], noise_level(expected_dff.T.astype(np.float64), 10.0), rtol=1e-6
        )
        offsets, pixels = f["rois/offsets"][:], f["rois/pixels"][:]
        for roi, k in enumerate(cells):
            expected = np.sort(stat[k]["ypix"] * 40 + stat[k]["xpix"])
            np.testing.assert_array_equal(
                np.sort(pixels[offsets[roi] : offsets[roi + 1]]), expected
            )


def test_bad_suite2p_output_is_refused_naming_the_file_and_field(tmp_path):
    write_suite2p(tmp_path / "a", include_fs=False)
    with pytest.raises(ReplaySourceError, match=r"ops\.npy: field 'fs' .* --frame-rate"):
        Suite2pTraces(tmp_path / "a")
    assert Suite2pTraces(tmp_path / "a", frame_rate_hz=30.0).frame_rate_hz == 30.0
    write_suite2p(tmp_path / "b")
    np.save(tmp_path / "b" / "Fneu.npy", np.zeros((5, 7), np.float32))
    with pytest.raises(ReplaySourceError, match=r"Fneu\.npy: field 'Fneu' has shape \(5, 7\)"):
        Suite2pTraces(tmp_path / "b")
    write_suite2p(tmp_path / "c")
    (tmp_path / "c" / "ops.npy").unlink()
    with pytest.raises(ReplaySourceError, match=r"ops\.npy is missing"):
        Suite2pTraces(tmp_path / "c")


# --- devices --------------------------------------------------------------------------------


def test_recorded_timestamps_with_gaps_reach_the_loop_as_lost_frames():
    frames = np.zeros((4, 8, 8), np.int16)
    source = ArrayFrames(frames, 10.0, timestamps_s=np.array([5.0, 5.1, 5.3, 5.4]))
    _, infos = delivered(ReplayScanner(source, pixel_size_um=(1.0, 1.0)), 4)
    assert [i.index for i in infos] == [0, 1, 3, 4]
    assert [i.lost_before for i in infos] == [0, 0, 1, 0]
    np.testing.assert_allclose([i.device_time_s for i in infos], [0.0, 0.1, 0.3, 0.4])


class TestReplayScanner(ScannerContract):
    @pytest.fixture
    def device(self):
        frames = np.random.default_rng(1).integers(0, 500, (5, 16, 24)).astype(np.int16)
        return ReplayScanner(ArrayFrames(frames, 12.5, pixel_size_um=(1.5, 1.0)))


class TestReplayDAQ(DeviceContract):
    @pytest.fixture
    def device(self):
        return ReplayDAQ(ReplayClock())


class TestLightStimulatorOnReplayDAQ(StimulatorContract):
    @pytest.fixture
    def daq(self):
        return ReplayDAQ(ReplayClock())

    @pytest.fixture
    def device(self, daq):
        return LightStimulator(daq)

    @pytest.fixture
    def sent(self, daq):
        return lambda: len(daq.pulse_log)

    @pytest.fixture
    def good_stimulus(self):
        return LightStimulus(targets_um=((0.0, 0.0),), power_mw=5.0, pulse_ms=5.0, n_pulses=3,
                             pulse_rate_hz=10.0)  # fmt: skip

    @pytest.fixture
    def bad_stimuli(self):
        ok = dict(targets_um=((0.0, 0.0),), power_mw=5.0, pulse_ms=5.0, n_pulses=3,
                  pulse_rate_hz=10.0)  # fmt: skip
        return [
            LightStimulus(**{**ok, "power_mw": 80.0}),  # over max_power_mw
            LightStimulus(**{**ok, "targets_um": ((400.0, 0.0),)}),  # outside the field
            LightStimulus(**{**ok, "n_pulses": 1000}),  # over max_pulses
        ]


def test_unreadable_sources_are_refused_before_anything_runs(tmp_path, rig_cli, capsys):
    (tmp_path / "x.nwb").write_bytes(b"\x89HDF\r\n\x1a\n cut short")
    with pytest.raises(ReplaySourceError, match=r"x\.nwb: not a readable NWB file"):
        replay(tmp_path / "x.nwb", out=str(tmp_path / "r1"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReplaySourceError, match="neither a session folder .* nor suite2p"):
        replay(tmp_path / "empty", out=str(tmp_path / "r2"))
    assert rig_cli(["replay", str(tmp_path / "movie.avi")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
