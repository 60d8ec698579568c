"""Tests of rig.report: the session report is written for every session and shows its facts.

Sessions are synthesised here, dataset by dataset, exactly as docs/SESSION_FORMAT.md describes.
"""

from __future__ import annotations

import json
import pathlib
import struct
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from typing import Any

import h5py
import numpy as np
import pytest

import rig.report as report_module
from rig.report import (
    FIGURE_FAILED,
    bin_in_time,
    highest_variance_rois,
    protocol_marks,
    read_session,
    write_report,
)

HOST_START_S = 1000.0  # monotonic host clock at scan start
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "protocol.py", line 12, in on_frame\n'
    "RuntimeError: amplitude <too> high & rising"
)


def make_session(
    folder: pathlib.Path,
    *,
    n_frames: int = 300,
    n_rois: int = 12,
    n_stimuli: int = 6,
    frame_rate_hz: float = 30.0,
    height_px: int = 64,
    width_px: int = 64,
    roi_start_frame: int = 60,
    status: str = "completed",
    error: str | None = None,
    seed: int = 1,
) -> dict[str, Any]:
    """Write summary.json, session.h5 and events.jsonl of a synthetic session; return summary."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    timestamps_s = np.arange(n_frames) / frame_rate_hz
    frame_complete_s = HOST_START_S + timestamps_s + 1.0 / frame_rate_hz
    processing_done_s = frame_complete_s + rng.lognormal(np.log(2e-3), 0.3, n_frames)
    stimulus_frames = (
        np.sort(
            rng.choice(
                np.arange(roi_start_frame, max(n_frames, roi_start_frame + n_stimuli)),
                n_stimuli,
                replace=False,
            )
        )
        if n_stimuli
        else np.empty(0, int)
    )
    stimulus_issued_s = np.full(n_frames, np.nan)
    stimulus_issued_s[stimulus_frames] = processing_done_s[stimulus_frames] + 1e-4

    # ROIs: discs of radius 3 px at random centres
    yy, xx = np.mgrid[:height_px, :width_px]
    centres = rng.uniform(5, min(height_px, width_px) - 5, size=(n_rois, 2))
    pixel_lists = [np.flatnonzero((yy - cy) ** 2 + (xx - cx) ** 2 <= 9) for cy, cx in centres]
    offsets = np.r_[0, np.cumsum([len(p) for p in pixel_lists])].astype(np.int32)
    pixels = (np.concatenate(pixel_lists) if pixel_lists else np.empty(0)).astype(np.int32)

    dff = (0.02 * rng.standard_normal((n_frames, n_rois))).astype(np.float32)
    dff[:roi_start_frame] = np.nan
    fluorescence = (100.0 * (1.0 + dff)).astype(np.float32)
    with np.errstate(all="ignore"):  # all-NaN columns when there are too few frames
        noise_level = (
            (100 * np.nanmedian(np.abs(np.diff(dff, axis=0)), axis=0) / np.sqrt(frame_rate_hz))
            if n_frames > roi_start_frame + 1
            else np.full(n_rois, np.nan)
        )

    with h5py.File(folder / "session.h5", "w") as h5:
        h5.attrs["frame_rate_hz"] = frame_rate_hz
        h5.attrs["pixel_size_um"] = np.array([0.8, 0.8])
        h5.attrs["roi_start_frame"] = roi_start_frame
        h5.attrs["dff_baseline_window_s"] = 30.0
        h5.attrs["dff_percentile"] = 8.0
        h5["timestamps"] = timestamps_s
        h5["timing/frame_complete_s"] = frame_complete_s
        h5["timing/processing_done_s"] = processing_done_s
        h5["timing/stimulus_issued_s"] = stimulus_issued_s
        h5["fluorescence"] = fluorescence
        h5["dff"] = dff
        h5["noise_level"] = noise_level.astype(np.float32)
        h5["rois/pixels"] = pixels
        h5["rois/offsets"] = offsets
        h5["rois/weights"] = np.ones(len(pixels), np.float32)
        h5["rois/centroids_px"] = centres.astype(np.float64)
        h5["mean_image"] = rng.gamma(2.0, 50.0, (height_px, width_px)).astype(np.float32)
        h5["stimuli/frame"] = stimulus_frames.astype(np.int64)
        h5["stimuli/host_time_s"] = stimulus_issued_s[stimulus_frames]
        h5["stimuli/device_time_s"] = timestamps_s[stimulus_frames] + 1.0 / frame_rate_hz

    summary = {
        "status": status,
        "error": error,
        "seed": seed,
        "rig": "sim",
        "speed": "max",
        "frames": n_frames,
        "frames_dropped": 7,
        "frame_rate_hz": frame_rate_hz,
        "duration_s": n_frames / frame_rate_hz,
        "wall_time_s": 3.25,
        "n_rois": n_rois,
        "latency_ms": {"p50": 1.25, "p99": 3.5, "max": 7.75},
        "stimulus_latency_ms": {"p50": 2.125, "p99": 4.5, "max": 9.5, "count": n_stimuli},
        "processing_ms": {"median": 0.875, "p99": 2.75},
        "stimuli": n_stimuli,
        "noise_level": {"median": 1.625, "p10": 1.125, "p90": 2.375},
        "protocol": {
            "name": "burst_suppression",
            "file": "protocols/burst_suppression.py",
            "parameters": {"threshold_dff": 0.35, "refractory_s": 2.5},
            "metrics": {"bursts_suppressed": 17},
        },
        "config": {"scanner": {"lines": height_px}, "recording": {"frames": False}},
        "devices": {"stimulator": {"model": "sim-stim", "max_current_ua": 200}},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    events: list[dict[str, Any]] = [
        {"type": "session", "host_time_s": HOST_START_S - 0.5, "state": "start"},
        {
            "type": "protocol",
            "host_time_s": HOST_START_S + 2.0 + 1 / frame_rate_hz,
            "name": "baseline over",
        },
        {"type": "protocol", "host_time_s": 0.0, "frame": 150, "name": "phase B"},
    ]
    events += [
        {"type": "stimulus", "host_time_s": float(stimulus_issued_s[f]), "frame": int(f)}
        for f in stimulus_frames
    ]
    if status == "aborted":
        events.append(
            {
                "type": "error",
                "host_time_s": HOST_START_S + 5.0,
                "frame": n_frames,
                "error": error,
                "traceback": TRACEBACK,
            }
        )
    events.append({"type": "session", "host_time_s": HOST_START_S + 9.0, "state": "stop"})
    with (folder / "events.jsonl").open("w") as lines:
        for event in events:
            lines.write(json.dumps(event) + "\n")
        lines.write('{"type": "drop", "host_ti')  # a torn last line, as after a crash
    return summary


class _ReportParser(HTMLParser):
    """Collects <img src>, (th, td) rows of tables and the text inside <details>."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.rows: dict[str, str] = {}
        self.details_text: list[str] = []
        self._cell: str | None = None
        self._cells: list[str] = []
        self._details_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        elif tag == "tr":
            self._cells = []
        elif tag in ("th", "td"):
            self._cell = ""
        elif tag == "details":
            self._details_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None:
            self._cells.append(self._cell)
            self._cell = None
        elif tag == "tr" and len(self._cells) == 2:
            self.rows[self._cells[0]] = self._cells[1]
        elif tag == "details":
            self._details_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell += data
        if self._details_depth:
            self.details_text.append(data)


def parse_report(path: pathlib.Path) -> tuple[str, _ReportParser]:
    text = path.read_text(encoding="utf-8")
    parser = _ReportParser()
    parser.feed(text)
    return text, parser


def png_size_px(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk; fails if the file is not a PNG."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


def assert_complete_report(folder: pathlib.Path) -> tuple[str, _ReportParser]:
    """The report exists, links exactly the figure files present, each a readable-size PNG."""
    report = write_report(folder)
    assert report == folder / "report.html"
    text, parser = parse_report(report)
    pngs = sorted(p.relative_to(folder).as_posix() for p in (folder / "figures").glob("*.png"))
    assert len(pngs) == 5  # mean image, raster, noise, stimuli, latency
    assert sorted(parser.images) == pngs
    for name in pngs:
        width, height = png_size_px(folder / name)
        assert 400 <= width <= 2500 and 200 <= height <= 2500, (name, width, height)
    assert FIGURE_FAILED not in text
    return text, parser


def test_report_links_every_figure_and_shows_summary_numbers(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "burst-20240101-120000"
    make_session(folder)
    text, parser = assert_complete_report(folder)
    rows = parser.rows
    assert rows["Frames"] == "300"
    assert rows["Frames dropped"] == "7"
    assert rows["Frame rate (Hz)"] == "30"
    assert rows["Duration, device clock (s)"] == "10"
    assert rows["ROIs"] == "12"
    assert rows["Stimuli"] == "6"
    assert rows["Latency frame → processed p50 / p99 / max (ms)"] == "1.25 / 3.5 / 7.75"
    assert rows["Latency frame → stimulus p50 / p99 / max (ms)"] == "2.125 / 4.5 / 9.5"
    assert rows["Noise level median / p10 / p90 (% / √s)"] == "1.625 / 1.125 / 2.375"
    assert rows["threshold_dff"] == "0.35" and rows["refractory_s"] == "2.5"
    assert rows["bursts_suppressed"] == "17"
    assert "burst_suppression" in text and "completed" in text
    assert "max_current_ua" in "".join(parser.details_text)  # device snapshot, collapsed
    assert "1 line(s) of events.jsonl were not readable" in text  # the torn last line


def test_aborted_session_shows_error_and_traceback_escaped(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "aborted"
    error = "LimitError: current_ua = 250 is outside the allowed range [0, 200] <stim>"
    make_session(folder, n_frames=120, status="aborted", error=error)
    text, _ = assert_complete_report(folder)
    assert "aborted" in text
    assert "LimitError: current_ua = 250 is outside the allowed range [0, 200] &lt;stim&gt;" in text
    assert "<stim>" not in text and "<too>" not in text  # user text never becomes markup
    assert "RuntimeError: amplitude &lt;too&gt; high &amp; rising" in text
    # the abort is stated before the summary table
    assert text.index("Session aborted") < text.index("<h2>Summary</h2>")


def test_empty_session_zero_frames_rois_and_stimuli_still_reports(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "empty"
    make_session(
        folder,
        n_frames=0,
        n_rois=0,
        n_stimuli=0,
        roi_start_frame=0,
        status="aborted",
        error="DeviceTimeout: no frame within 2 s",
    )
    text, parser = assert_complete_report(folder)
    assert parser.rows["Frames"] == "0"
    assert "No frames recorded" in text or "no frames were recorded" in text
    assert "DeviceTimeout: no frame within 2 s" in text


def test_frames_but_no_rois_and_no_stimuli_still_reports(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "no-rois"
    make_session(folder, n_frames=200, n_rois=0, n_stimuli=0)
    text, _ = assert_complete_report(folder)
    assert "No ROIs were detected" in text
    assert "No stimuli were delivered" in text


def test_session_aborted_before_roi_detection_has_only_nan_dff(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "nan-dff"
    make_session(
        folder,
        n_frames=50,
        n_rois=4,
        n_stimuli=0,
        roi_start_frame=50,
        status="aborted",
        error="stopped by user",
    )
    text, _ = assert_complete_report(folder)
    assert "stopped by user" in text


def test_a_figure_that_fails_is_reported_not_fatal(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(dff: np.ndarray, count: int) -> np.ndarray:
        raise RuntimeError("example-trace selection broke")

    monkeypatch.setattr(report_module, "highest_variance_rois", broken)
    folder = tmp_path / "broken-figure"
    make_session(folder)
    text, parser = parse_report(write_report(folder))
    assert f"{FIGURE_FAILED}: RuntimeError: example-trace selection broke" in text
    assert len(parser.images) == 5  # the other figures, and a placeholder, are still there
    png_size_px(folder / "figures" / "dff_raster.png")


def test_missing_summary_raises_value_error_naming_it(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "no-summary"
    make_session(folder)
    (folder / "summary.json").unlink()
    with pytest.raises(ValueError, match="summary.json"):
        write_report(folder)
    assert not (folder / "report.html").exists()


def test_unreadable_session_h5_raises_value_error_naming_it(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "bad-h5"
    make_session(folder)
    (folder / "session.h5").write_bytes(b"this is not HDF5")
    with pytest.raises(ValueError, match="session.h5"):
        write_report(folder)


def test_time_binning_averages_frames_per_bin_and_leaves_dropped_frames_as_gaps() -> None:
    frame_rate_hz = 30.0
    rng = np.random.default_rng(3)
    values = rng.standard_normal((18_000, 3)).astype(np.float32)
    times_s = np.arange(18_000) / frame_rate_hz
    binned, first_edge_s, bin_s = bin_in_time(values, times_s, 1 / frame_rate_hz, 1500)
    # 600 s in 1500 bins: 0.4 s = 12 frames per bin, each bin the mean of its 12 frames
    assert bin_s == pytest.approx(0.4)
    assert first_edge_s == pytest.approx(-0.5 / frame_rate_hz)
    assert binned.shape == (1500, 3)
    np.testing.assert_allclose(binned, values.reshape(1500, 12, 3).mean(axis=1), atol=1e-5)

    # one column per frame when short; frames 4 and 5 dropped -> their bins are empty (NaN)
    kept = np.r_[0:4, 6:10]
    short = np.arange(10, dtype=np.float32)[kept, None]
    binned, _, bin_s = bin_in_time(short, kept / 10.0, 0.1, 1500)
    assert bin_s == pytest.approx(0.1)
    np.testing.assert_array_equal(binned[:, 0], [0, 1, 2, 3, np.nan, np.nan, 6, 7, 8, 9])

    # NaN frames (before ROI detection) do not contaminate a bin's mean of the finite frames
    with_nan = np.array([[np.nan], [2.0], [4.0], [np.nan]], dtype=np.float32)
    binned, _, _ = bin_in_time(with_nan, np.arange(4) / 10.0, 0.1, 2)
    np.testing.assert_allclose(binned[:, 0], [2.0, 4.0])


def test_example_traces_are_the_most_variable_rois() -> None:
    rng = np.random.default_rng(4)
    dff = (0.01 * rng.standard_normal((900, 10))).astype(np.float32)
    dff[:, 7] += 0.5 * np.sin(np.arange(900) / 20)  # a strongly active ROI
    dff[:, 2] += 0.2 * np.sin(np.arange(900) / 30)  # a less active one
    dff[:100] = np.nan  # frames before ROI detection
    assert list(highest_variance_rois(dff, 2)) == [7, 2]
    assert highest_variance_rois(np.full((10, 3), np.nan, np.float32), 2).size == 0


def test_protocol_marks_are_placed_on_the_device_clock(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "marks"
    make_session(folder, n_frames=300, frame_rate_hz=30.0)
    marks = {text: time_s for time_s, text in protocol_marks(read_session(folder))}
    # host time of frame 60's completion -> device time of frame 60 (2 s); frame 150 -> 5 s
    assert marks["baseline over"] == pytest.approx(2.0)
    assert marks["phase B"] == pytest.approx(5.0)


def test_reports_can_be_written_from_worker_threads_at_once(tmp_path: pathlib.Path) -> None:
    # the run loop writes the report off the main thread; no pyplot state is shared
    folders = [tmp_path / f"thread-{seed}" for seed in (5, 6)]
    for seed, folder in zip((5, 6), folders):
        make_session(folder, n_frames=150, seed=seed)
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(write_report, folders))
    for folder, report in zip(folders, reports):
        assert report == folder / "report.html"
        text, parser = parse_report(report)
        assert len(parser.images) == 5 and FIGURE_FAILED not in text


@pytest.mark.slow
def test_report_of_a_ten_minute_session_with_500_rois_is_complete(tmp_path: pathlib.Path) -> None:
    """A long, wide session (raster binned for display) still gives every figure; its timing
    is a benchmark figure, not a test limit."""
    folder = tmp_path / "long"
    make_session(
        folder,
        n_frames=18_000,
        n_rois=500,
        n_stimuli=600,
        height_px=512,
        width_px=512,
        roi_start_frame=900,
    )
    assert_complete_report(folder)


def test_the_run_summary_points_at_the_report_only_when_one_was_written(tmp_path):
    from rig.cli import _summary_text

    summary = {
        "status": "completed", "error": None, "stop_reason": None, "frames": 10,
        "frame_rate_hz": 30.0, "duration_s": 0.33, "frames_dropped": 0, "wall_time_s": 1.0,
        "n_rois": 3, "noise_level": {"median": 2.0, "p10": 1.0, "p90": 3.0},
        "latency_ms": {"p50": 1.0, "p99": 2.0, "max": 3.0}, "stimuli": 0,
        "protocol": {"name": "p", "metrics": {}},
    }
    assert f"rig report {tmp_path}" in _summary_text(tmp_path, summary)
    (tmp_path / "report.html").write_text("<html></html>")
    assert f"{tmp_path}/report.html" in _summary_text(tmp_path, summary)


def test_the_report_lists_the_z_stack_check_and_the_accuracy_when_the_session_has_them():
    from rig.report import _summary_rows

    plain = dict(_summary_rows({"n_rois": 5}))
    assert not any("z-stack" in label or "ground truth" in label for label in plain)
    rows = dict(
        _summary_rows(
            {
                "n_rois": 285,
                "reference_zstack": {"kept": 285, "detected": 320},
                "accuracy": {"roi_recall": 0.908, "roi_precision": 0.937,
                             "motion_rms_px": 0.06, "spike_corr": None},
            }
        )
    )
    assert rows["ROIs in focus by the reference z-stack"] == "285 of 320"
    accuracy = rows["Against ground truth: ROI recall / precision, motion RMS (px), spike corr"]
    assert "0.908" in accuracy and "0.937" in accuracy
