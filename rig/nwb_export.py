"""`rig export-nwb DIR --out FILE.nwb`: a session folder as Neurodata Without Borders (pynwb).

Mapping (docs/RECORDING.md has the full table):

    devices (summary.json)           Device per device, snapshot JSON as its description
    scanner, frame rate, pixel size  OpticalChannel + ImagingPlane (grid spacing in metres)
    session.h5 frames                acquisition/TwoPhotonSeries, data (time, x, y) as NWB
                                     prescribes (width before height: frames are transposed),
                                     timestamps = device times of the frames
    rois/*                           processing/ophys/ImageSegmentation/PlaneSegmentation,
                                     pixel_mask (x, y, weight); columns noise_level (CASCADE,
                                     % per sqrt(s)) and centroid_px (y, x)
    fluorescence, dff                processing/ophys/Fluorescence/fluorescence and
                                     DfOverF/dff (RoiResponseSeries, NaN before the ROIs)
    mean_image                       processing/ophys/summary_images/mean (x, y)
    timing/*                         processing/looprig: host times of frame complete,
                                     processing done, stimulus issued (per frame)
    stimuli (events.jsonl)           intervals/stimulation: start/stop on the device clock,
                                     frame, host and device time, kind, targets, amplitude and
                                     its unit, pulse duration, pulses, rate, electrodes (a
                                     region of the electrodes table, MEA), the stimulus as JSON
    protocol marks                   intervals/protocol_marks
    dropped frames                   invalid_times (one row per dropped frame, with the reason)
    lens events (focal_power_dpt,    acquisition/focal_power (dioptres) and
      temperature_c)                 acquisition/lens_temperature (degrees Celsius)
    MEA electrodes (device snapshot  electrodes table with an ElectrodeGroup per device
      "electrodes")
    config, summary                  scratch/looprig_config, scratch/looprig_summary (JSON)

Times: NWB times are seconds from session_start_time, which is the wall-clock time of the
acquisition start (device time 0), so device times go in unchanged. Events recorded with a
host time only are placed on the device clock by interpolating through the frames'
(frame complete host time, end-of-frame device time) pairs.

The file is written as .FILE.tmp-<pid>.nwb next to FILE.nwb, checked with pynwb's validator,
and renamed only when both succeed: a failed export leaves nothing behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from hdmf.data_utils import GenericDataChunkIterator

from rig.session import open_frames, read_events

#: frames per HDF5 chunk of the TwoPhotonSeries (one read of a few frames is cheap)
FRAMES_PER_CHUNK = 8
#: frames read, transposed and written per step (bounded memory for any session length)
FRAMES_PER_BUFFER = 128
#: datasets written when the pipeline stages that produce them were on: (name, ndim, dtype)
OPTIONAL_DATASETS = (
    ("neuropil", 2, np.float32),
    ("calcium", 2, np.float32),
    ("spikes", 2, np.float32),
    ("motion/shift_px", 2, np.float64),
    ("motion/status", 1, np.int8),
)


class NwbExportError(ValueError):
    """The session cannot be exported; the message names the file and the field."""


@dataclass
class NwbExportResult:
    path: Path
    seconds: float
    frames: int
    n_rois: int
    stimuli: int
    wrote_frames: bool
    bytes: int


def export_nwb(
    session_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    include_frames: bool = True,
    validate: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> NwbExportResult:
    """Write the session as an NWB file at `out` (refused if it exists)."""
    t0 = time.perf_counter()
    folder = Path(session_dir)
    out = Path(out)
    if not folder.is_dir():
        raise FileNotFoundError(f"session folder {folder} does not exist")
    if out.exists():
        raise FileExistsError(f"{out} already exists: an export never overwrites; choose --out")
    if out.suffix.lower() != ".nwb":
        raise NwbExportError(f"--out {out}: the file name must end in .nwb")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.nwb")
    try:
        result = _write(folder, tmp, include_frames, progress)
        if validate:
            _validate(tmp, out)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    result.path = out
    result.seconds = time.perf_counter() - t0
    result.bytes = out.stat().st_size
    return result


# ---------------------------------------------------------------------------------------------
# Reading the session
# ---------------------------------------------------------------------------------------------


@dataclass
class _Session:
    folder: Path
    summary: dict[str, Any]
    events: list[dict[str, Any]]
    frame_rate_hz: float
    pixel_size_um: tuple[float, float]
    timestamps_s: np.ndarray
    frame_complete_s: np.ndarray
    processing_done_s: np.ndarray
    stimulus_issued_s: np.ndarray
    fluorescence: np.ndarray
    dff: np.ndarray
    noise_level: np.ndarray
    roi_pixels: np.ndarray
    roi_offsets: np.ndarray
    roi_weights: np.ndarray
    centroids_px: np.ndarray
    mean_image: np.ndarray | None
    frame_shape: tuple[int, int]
    optional: dict[str, np.ndarray]  # neuropil, calcium, spikes, motion/shift_px, motion/status

    @property
    def n_rois(self) -> int:
        return max(0, len(self.roi_offsets) - 1)

    def device_time_of_host(self, host_s: np.ndarray) -> np.ndarray:
        """Host -> device time through the frames (frame complete <-> end of frame)."""
        complete = self.frame_complete_s
        ends = self.timestamps_s + 1.0 / self.frame_rate_hz
        ok = np.isfinite(complete)
        if ok.sum() < 1:
            return np.full(np.shape(host_s), np.nan)
        if ok.sum() == 1:
            return ends[ok][0] + (np.asarray(host_s) - complete[ok][0])
        return np.interp(host_s, complete[ok], ends[ok])


def _read_session(folder: Path) -> _Session:
    summary_path = folder / "summary.json"
    h5_path = folder / "session.h5"
    for path in (summary_path, h5_path):
        if not path.is_file():
            hint = " (run `rig recover` first)" if (folder / "streams").is_dir() else ""
            raise NwbExportError(f"{path} is missing{hint}")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise NwbExportError(f"{summary_path}: not readable JSON ({e})") from e
    events, _ = read_events(folder / "events.jsonl")
    try:
        with h5py.File(h5_path, "r") as f:
            return _read_h5(f, folder, summary, events)
    except OSError as e:
        raise NwbExportError(f"{h5_path}: not a readable HDF5 file ({e})") from e


def _dataset(f: h5py.File, path: Path, name: str, ndim: int, dtype: Any) -> np.ndarray:
    node = f.get(name)
    if not isinstance(node, h5py.Dataset):
        raise NwbExportError(f"{path}: field '{name}' is missing")
    if node.ndim != ndim:
        raise NwbExportError(f"{path}: field '{name}' has shape {node.shape}, expected {ndim}-D")
    if not (np.issubdtype(node.dtype, np.number) or node.dtype == np.bool_):
        raise NwbExportError(f"{path}: field '{name}' has dtype {node.dtype}, expected numbers")
    return np.asarray(node[()], dtype=dtype)


def _read_h5(
    f: h5py.File, folder: Path, summary: dict[str, Any], events: list[dict[str, Any]]
) -> _Session:
    path = folder / "session.h5"
    rate = f.attrs.get("frame_rate_hz", summary.get("frame_rate_hz"))
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        rate = math.nan
    if not (math.isfinite(rate) and rate > 0):
        raise NwbExportError(f"{path}: field 'frame_rate_hz' = {rate!r} must be a positive rate")
    timestamps = _dataset(f, path, "timestamps", 1, np.float64)
    n = timestamps.shape[0]
    fluorescence = _dataset(f, path, "fluorescence", 2, np.float32)
    dff = _dataset(f, path, "dff", 2, np.float32)
    timing = {
        name: _dataset(f, path, f"timing/{name}", 1, np.float64)
        for name in ("frame_complete_s", "processing_done_s", "stimulus_issued_s")
    }
    for name, array in [("fluorescence", fluorescence), ("dff", dff)] + [
        (f"timing/{k}", v) for k, v in timing.items()
    ]:
        if array.shape[0] != n:
            raise NwbExportError(
                f"{path}: field '{name}' has {array.shape[0]} frames, 'timestamps' has {n}"
            )
    offsets = _dataset(f, path, "rois/offsets", 1, np.int64)
    pixels = _dataset(f, path, "rois/pixels", 1, np.int64)
    weights = _dataset(f, path, "rois/weights", 1, np.float32)
    centroids = _dataset(f, path, "rois/centroids_px", 2, np.float64)
    n_rois = max(0, offsets.size - 1)
    if offsets.size < 1 or offsets[0] != 0 or offsets[-1] != pixels.size or np.any(
            np.diff(offsets) < 0) or weights.shape != pixels.shape:  # fmt: skip
        raise NwbExportError(
            f"{path}: fields 'rois/offsets', 'rois/pixels', 'rois/weights' are inconsistent "
            f"(offsets end at {offsets[-1] if offsets.size else None}, {pixels.size} pixels, "
            f"{weights.size} weights)"
        )
    if n_rois and dff.shape[1] != n_rois:
        raise NwbExportError(
            f"{path}: field 'dff' has {dff.shape[1]} ROI columns, 'rois/offsets' {n_rois} ROIs"
        )
    if not n_rois and dff.shape[1]:
        raise NwbExportError(
            f"{path}: field 'dff' has {dff.shape[1]} ROI columns but 'rois' holds no ROI shapes "
            "(ROIs were not saved before a crash): export needs the ROI set"
        )
    noise = f.get("noise_level")
    noise = (
        np.asarray(noise[()], np.float32)
        if isinstance(noise, h5py.Dataset)
        else np.full(n_rois, np.nan, np.float32)
    )
    if noise.shape != (n_rois,):
        noise = np.full(n_rois, np.nan, np.float32)
    frames = open_frames(f)
    mean = f.get("mean_image")
    if frames is not None:
        shape = (int(frames.shape[1]), int(frames.shape[2]))
    elif isinstance(mean, h5py.Dataset) and mean.ndim == 2:
        shape = (int(mean.shape[0]), int(mean.shape[1]))
    else:
        shape = tuple(f["rois"].attrs.get("shape", (0, 0)))  # type: ignore[assignment]
    if n_rois and int(pixels.max(initial=0)) >= shape[0] * shape[1]:
        raise NwbExportError(
            f"{path}: field 'rois/pixels' indexes beyond the {shape[0]} x {shape[1]} frame"
        )
    pixel = f.attrs.get("pixel_size_um")
    p = np.atleast_1d(np.asarray(pixel if pixel is not None else [np.nan], np.float64))
    optional = {}
    for name, ndim, dtype in OPTIONAL_DATASETS:
        if name in f:
            optional[name] = _dataset(f, path, name, ndim, dtype)
            if optional[name].shape[0] != n or (ndim == 2 and name != "motion/shift_px"
                                                and optional[name].shape[1] != n_rois):  # fmt: skip
                raise NwbExportError(
                    f"{path}: field '{name}' has shape {optional[name].shape}, expected "
                    f"{n} frames" + ("" if name.startswith("motion") else f" x {n_rois} ROIs")
                )
    return _Session(
        folder=folder,
        summary=summary,
        events=events,
        frame_rate_hz=rate,
        pixel_size_um=(float(p[0]), float(p[-1])),
        timestamps_s=timestamps,
        fluorescence=fluorescence,
        dff=dff,
        noise_level=noise,
        roi_pixels=pixels,
        roi_offsets=offsets,
        roi_weights=weights,
        centroids_px=centroids if centroids.shape == (n_rois, 2) else np.full((n_rois, 2), np.nan),
        mean_image=np.asarray(mean[()], np.float32) if isinstance(mean, h5py.Dataset) else None,
        frame_shape=(int(shape[0]), int(shape[1])),
        optional=optional,
        **timing,
    )


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _write(
    folder: Path,
    tmp: Path,
    include_frames: bool,
    progress: Callable[[int, int], None] | None,
) -> NwbExportResult:
    from pynwb import NWBHDF5IO

    s = _read_session(folder)
    nwbfile = _nwb_file(s)
    devices = _devices(nwbfile, s)
    plane = _imaging_plane(nwbfile, s, devices)
    with h5py.File(folder / "session.h5", "r") as h5:
        frames = open_frames(h5) if include_frames else None
        series = None
        if frames is not None and frames.shape[0] == s.timestamps_s.shape[0]:
            series = _two_photon_series(nwbfile, s, plane, frames, progress)
        _ophys(nwbfile, s, plane, series)
        _motion(nwbfile, s)
        _loop_timing(nwbfile, s)
        stimuli = _stimulation(nwbfile, s)
        _protocol_marks(nwbfile, s)
        _dropped_frames(nwbfile, s)
        _lens_series(nwbfile, s)
        nwbfile.add_scratch(
            json.dumps(s.summary.get("config") or {}),
            name="looprig_config",
            description="rig configuration of the session (JSON, docs/SESSION_FORMAT.md)",
        )
        nwbfile.add_scratch(
            json.dumps(s.summary),
            name="looprig_summary",
            description="summary.json of the session (JSON, docs/SESSION_FORMAT.md)",
        )
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwbfile)
    return NwbExportResult(
        path=tmp,
        seconds=0.0,
        frames=int(s.timestamps_s.shape[0]),
        n_rois=s.n_rois,
        stimuli=stimuli,
        wrote_frames=series is not None,
        bytes=0,
    )


def _acquisition_start(s: _Session) -> _dt.datetime:
    """Wall-clock time of device time 0: the session start's wall clock plus the host time
    that passed until the acquisition started."""
    start = next(
        (e for e in s.events if e.get("type") == "session" and e.get("event") == "start"), {}
    )
    acquired = next(
        (
            e
            for e in s.events
            if e.get("type") == "session" and e.get("event") == "acquisition started"
        ),
        {},
    )
    wall = start.get("wall_clock")
    if not isinstance(wall, (int, float)):
        wall = (s.folder / "events.jsonl").stat().st_mtime if s.events else time.time()
    if isinstance(acquired.get("host_time_s"), float) and isinstance(
        start.get("host_time_s"), float
    ):
        wall += acquired["host_time_s"] - start["host_time_s"]
    return _dt.datetime.fromtimestamp(wall).astimezone()


def _nwb_file(s: _Session) -> Any:
    from pynwb import NWBFile

    protocol = s.summary.get("protocol") or {}
    start = _acquisition_start(s)
    name = protocol.get("name") or "unknown protocol"
    return NWBFile(
        session_description=(
            f"looprig closed-loop session: protocol {name}, status "
            f"{s.summary.get('status', 'unknown')}, {s.timestamps_s.shape[0]} frames"
        ),
        identifier=str(uuid.uuid5(uuid.NAMESPACE_URL, f"looprig:{s.folder.name}:{start}")),
        session_start_time=start,
        session_id=s.folder.name,
        experiment_description=json.dumps(
            {"protocol": name, "parameters": protocol.get("parameters", {})}
        ),
        protocol=name,
        source_script="looprig (rig run)",
        source_script_file_name=str(protocol.get("file") or ""),
        notes=(
            f"exported from {s.folder.name} by `rig export-nwb`; "
            f"stop reason: {s.summary.get('stop_reason')}; error: {s.summary.get('error')}"
        ),
    )


def _devices(nwbfile: Any, s: _Session) -> dict[str, Any]:
    snapshots = s.summary.get("devices") or {}
    devices = {}
    for name, snapshot in snapshots.items():
        if not isinstance(snapshot, dict):
            continue
        devices[name] = nwbfile.create_device(
            name=str(name),
            description=json.dumps(snapshot, default=str),
        )
    return devices


def _role_device(devices: dict[str, Any], s: _Session, role: str) -> Any:
    for name, snapshot in (s.summary.get("devices") or {}).items():
        if isinstance(snapshot, dict) and snapshot.get("role") == role and name in devices:
            return devices[name]
    return None


def _imaging_plane(nwbfile: Any, s: _Session, devices: dict[str, Any]) -> Any:
    scanner = _role_device(devices, s, "scanner")
    if scanner is None:
        scanner = nwbfile.create_device(name="scanner", description="two-photon scanner")
    snapshot = next(
        (v for v in (s.summary.get("devices") or {}).values()
         if isinstance(v, dict) and v.get("role") == "scanner"),
        {},
    )  # fmt: skip
    from pynwb.ophys import OpticalChannel

    optical = OpticalChannel(
        name="PMT",
        description=f"photomultiplier, DAQ inputs {snapshot.get('pmt_channels', 'unknown')}; "
        "emission wavelength not recorded by the rig configuration (NaN)",
        emission_lambda=math.nan,
    )
    config = s.summary.get("config") or {}
    indicator = "unknown"
    location = "unknown"
    if (config.get("daq") or {}).get("backend") == "sim":
        indicator = "GCaMP6f-like (simulated)"
        location = "simulated cortical volume"
    py, px = s.pixel_size_um
    return nwbfile.create_imaging_plane(
        name="ImagingPlane",
        optical_channel=optical,
        description=f"frames {s.frame_shape[0]} lines x {s.frame_shape[1]} pixels; "
        "excitation wavelength not recorded by the rig configuration (NaN)",
        device=scanner,
        excitation_lambda=math.nan,
        imaging_rate=s.frame_rate_hz,
        indicator=indicator,
        location=location,
        grid_spacing=[px * 1e-6, py * 1e-6],
        grid_spacing_unit="meters",
    )


class _FrameIterator(GenericDataChunkIterator):
    """Frames (t, y, x) of session.h5 as NWB's (t, x, y), in buffers of whole frames."""

    def __init__(self, frames: h5py.Dataset, progress: Callable[[int, int], None] | None) -> None:
        n, h, w = frames.shape
        self._frames = frames
        self._progress = progress
        super().__init__(
            buffer_shape=(min(n, FRAMES_PER_BUFFER), w, h),
            chunk_shape=(min(n, FRAMES_PER_CHUNK), w, h),
            display_progress=False,
        )

    def _get_data(self, selection: tuple[slice, ...]) -> np.ndarray:
        t, x, y = selection
        block = self._frames[t, y, x]
        if self._progress is not None:
            self._progress(int(t.stop), int(self._frames.shape[0]))
        return np.ascontiguousarray(block.transpose(0, 2, 1))

    def _get_maxshape(self) -> tuple[int, ...]:
        n, h, w = self._frames.shape
        return (n, w, h)

    def _get_dtype(self) -> np.dtype:
        return self._frames.dtype


def _two_photon_series(
    nwbfile: Any,
    s: _Session,
    plane: Any,
    frames: h5py.Dataset,
    progress: Callable[[int, int], None] | None,
) -> Any:
    from pynwb.ophys import TwoPhotonSeries

    h, w = s.frame_shape
    py, px = s.pixel_size_um
    series = TwoPhotonSeries(
        name="TwoPhotonSeries",
        imaging_plane=plane,
        data=_FrameIterator(frames, progress),
        unit="ADC counts",
        description="raw frames as acquired (int16 detector codes per pixel); data are "
        "(time, x, y): width before height",
        field_of_view=[w * px * 1e-6, h * py * 1e-6],
        dimension=[w, h],
        timestamps=s.timestamps_s,
        comments="timestamps: device time of each frame's first sample (acquisition clock)",
    )
    nwbfile.add_acquisition(series)
    return series


def _ophys(nwbfile: Any, s: _Session, plane: Any, series: Any) -> None:
    from pynwb.base import Images
    from pynwb.image import GrayscaleImage
    from pynwb.ophys import DfOverF, Fluorescence, ImageSegmentation

    module = nwbfile.create_processing_module(
        name="ophys", description="online ROIs, fluorescence, dF/F and noise levels (looprig)"
    )
    if s.mean_image is not None:
        module.add(
            Images(
                name="summary_images",
                images=[
                    GrayscaleImage(
                        name="mean",
                        data=np.ascontiguousarray(s.mean_image.T),
                        description="mean of the reference period, (x, y)",
                    )
                ],
                description="images computed online",
            )
        )
    if s.n_rois == 0:
        return
    segmentation = ImageSegmentation(name="ImageSegmentation")
    module.add(segmentation)
    planeseg = segmentation.create_plane_segmentation(
        name="PlaneSegmentation",
        description="ROIs of the online pipeline: pixel lists with weights summing to 1 "
        "(fluorescence = weighted mean of the ROI's pixels)",
        imaging_plane=plane,
        reference_images=series,
    )
    _, w = s.frame_shape
    for i in range(s.n_rois):
        a, b = int(s.roi_offsets[i]), int(s.roi_offsets[i + 1])
        y, x = np.divmod(s.roi_pixels[a:b], w)
        planeseg.add_roi(pixel_mask=list(zip(x.tolist(), y.tolist(), s.roi_weights[a:b].tolist())))
    planeseg.add_column(
        name="noise_level",
        description="CASCADE noise level over the whole session, % per sqrt(s): "
        "100 * median |dF/F(t+1) - dF/F(t)| / sqrt(frame rate) (Rupprecht et al. 2021)",
        data=s.noise_level.astype(np.float32),
    )
    planeseg.add_column(
        name="centroid_px",
        description="weighted centroid (y, x) of the ROI in pixels",
        data=s.centroids_px.astype(np.float64),
    )
    region = planeseg.create_roi_table_region(description="all ROIs", region=list(range(s.n_rois)))
    fluorescence_container = Fluorescence(name="Fluorescence")
    dff_container = DfOverF(name="DfOverF")
    module.add(fluorescence_container)
    module.add(dff_container)
    fluorescence = fluorescence_container.create_roi_response_series(
        name="fluorescence",
        data=s.fluorescence,
        unit="ADC counts",
        rois=region,
        timestamps=series if series is not None else s.timestamps_s,
        description="ROI fluorescence (weighted mean of the ROI's pixels); NaN before the "
        "ROIs existed",
    )
    if "neuropil" in s.optional:
        fluorescence_container.create_roi_response_series(
            name="neuropil",
            data=s.optional["neuropil"],
            unit="ADC counts",
            rois=region,
            timestamps=fluorescence,
            description="mean of the neuropil around each ROI; the dF/F stage received "
            "fluorescence - r * neuropil (neuropil.coefficient in the rig config)",
        )
    if "calcium" in s.optional or "spikes" in s.optional:
        deconvolved = Fluorescence(name="Deconvolved")
        module.add(deconvolved)
        for name, what in (
            ("calcium", "denoised calcium of online OASIS AR(1) deconvolution (dF/F units)"),
            ("spikes", "spike estimate of online OASIS AR(1) deconvolution (dF/F units)"),
        ):
            if name in s.optional:
                deconvolved.create_roi_response_series(
                    name=name,
                    data=s.optional[name],
                    unit="fraction",
                    rois=region,
                    timestamps=fluorescence,
                    description=what,
                )
    dff_container.create_roi_response_series(
        name="dff",
        data=s.dff,
        unit="fraction",
        rois=region,
        timestamps=series if series is not None else fluorescence,
        description="causal dF/F (fractional) against a running-percentile baseline; NaN before "
        "the ROIs existed",
    )


def _motion(nwbfile: Any, s: _Session) -> None:
    from pynwb import TimeSeries

    if "motion/shift_px" not in s.optional:
        return
    module = nwbfile.processing["ophys"]
    shift = TimeSeries(
        name="motion_shift_px",
        data=s.optional["motion/shift_px"],
        unit="pixels",
        timestamps=s.timestamps_s,
        description="(dy, dx) rigid motion of each frame against the reference, pixels",
    )
    module.add(shift)
    if "motion/status" in s.optional:
        module.add(
            TimeSeries(
                name="motion_status",
                data=s.optional["motion/status"],
                unit="n.a.",
                timestamps=shift,
                description="registration status per frame: 0 registered, other values "
                "flagged (see events.jsonl frame_flagged)",
            )
        )


def _loop_timing(nwbfile: Any, s: _Session) -> None:
    from pynwb import TimeSeries

    if s.timestamps_s.shape[0] == 0:
        return
    module = nwbfile.create_processing_module(
        name="looprig",
        description="closed-loop timing per frame: host (time.monotonic) seconds; latency = "
        "processing_done - frame_complete",
    )
    first = None
    for name, data, what in (
        ("frame_complete_host_s", s.frame_complete_s, "frame complete in host memory"),
        ("processing_done_host_s", s.processing_done_s, "pipeline and protocol done"),
        ("stimulus_issued_host_s", s.stimulus_issued_s, "stimulus issued (NaN if none)"),
    ):
        ts = TimeSeries(
            name=name,
            data=data,
            unit="s",
            timestamps=s.timestamps_s if first is None else first,
            description=f"host time: {what}",
        )
        first = first or ts
        module.add(ts)


def _stimulus_fields(stimulus: dict[str, Any]) -> dict[str, Any]:
    """Kind, amplitude (+ unit), pulse duration, pulses, rate, train duration, targets and
    electrodes of a stimulus description (light: drivers/stimulation/light.py; MEA:
    drivers/mea/stimulus.py; anything else: the fields it names)."""
    kind = str(stimulus.get("kind", "unknown"))
    out: dict[str, Any] = {
        "kind": kind,
        "amplitude": math.nan,
        "amplitude_unit": "",
        "pulse_ms": math.nan,
        "n_pulses": -1,
        "pulse_rate_hz": math.nan,
        "duration_s": 0.0,
        "targets": [],
        "electrodes": [],
    }
    if kind == "light":
        targets = stimulus.get("targets_um") or []
        n = int(stimulus.get("n_pulses", 1))
        rate = float(stimulus.get("pulse_rate_hz", math.nan))
        pulse_ms = float(stimulus.get("pulse_ms", math.nan))
        out.update(
            amplitude=float(stimulus.get("power_mw", math.nan)),
            amplitude_unit="mW",
            pulse_ms=pulse_ms,
            n_pulses=n,
            pulse_rate_hz=rate,
            duration_s=(n - 1) / rate + len(targets) * pulse_ms / 1e3 if rate > 0 else 0.0,
            targets=targets,
        )
    elif kind == "mea":
        trains = stimulus.get("trains") or []
        electrodes = [e for t in trains for e in t.get("electrodes", [])]
        if trains:
            t = trains[0]
            pulse = t.get("pulse", {})
            first_us = float(pulse.get("first_phase_us", math.nan))
            second_us = pulse.get("second_phase_us") or first_us
            gap_us = float(pulse.get("interphase_us", 0.0))
            phases_us = first_us + gap_us + float(second_us)
            if pulse.get("shape") == "triphasic":
                phases_us += first_us
            n = int(t.get("n_pulses", 1))
            rate = t.get("rate_hz") or math.nan
            duration = ((n - 1) / rate if n > 1 and rate > 0 else 0.0) + phases_us * 1e-6
            out.update(
                amplitude=float(pulse.get("first_phase_ua", math.nan)),
                amplitude_unit="uA",
                pulse_ms=phases_us / 1e3,
                n_pulses=n,
                pulse_rate_hz=float(rate),
                duration_s=duration if math.isfinite(duration) else 0.0,
            )
        out["targets"] = electrodes
        out["electrodes"] = electrodes
    else:
        for key, unit in (("power_mw", "mW"), ("amplitude_ua", "uA"), ("current_ua", "uA")):
            if key in stimulus:
                out.update(amplitude=float(stimulus[key]), amplitude_unit=unit)
        if "duration_s" in stimulus:
            out["duration_s"] = float(stimulus["duration_s"])
        out["targets"] = stimulus.get("targets") or stimulus.get("targets_um") or []
        out["electrodes"] = list(stimulus.get("electrodes") or [])
    return out


def _electrodes_table(nwbfile: Any, s: _Session, devices: dict[str, Any]) -> dict[str, int]:
    """MEA electrodes from device snapshots: "electrodes" as {name: channel} (Intan RHX) or
    as a list of {"name", "channel", "x_um", "y_um"}; returns electrode name -> table row."""
    rows: dict[str, int] = {}
    for device_name, snapshot in (s.summary.get("devices") or {}).items():
        if not isinstance(snapshot, dict) or not snapshot.get("electrodes"):
            continue
        entries = snapshot["electrodes"]
        if isinstance(entries, dict):
            entries = [{"name": k, "channel": v} for k, v in entries.items()]
        if not isinstance(entries, list):
            continue
        device = devices.get(device_name) or nwbfile.create_device(name=str(device_name))
        group = nwbfile.create_electrode_group(
            name=f"{device_name} electrodes",
            description=f"MEA electrodes of {device_name}",
            location="MEA",
            device=device,
        )
        if not rows:
            nwbfile.add_electrode_column(name="label", description="electrode name")
            nwbfile.add_electrode_column(name="channel", description="amplifier channel")
        for entry in entries:
            if not isinstance(entry, dict) or "name" not in entry:
                continue
            rows[str(entry["name"])] = len(rows)
            nwbfile.add_electrode(
                x=float(entry.get("x_um", math.nan)) * 1e-6
                if entry.get("x_um") is not None
                else math.nan,
                y=float(entry.get("y_um", math.nan)) * 1e-6
                if entry.get("y_um") is not None
                else math.nan,
                location="MEA",
                group=group,
                label=str(entry["name"]),
                channel=str(entry.get("channel", "")),
            )
    return rows


def _stimulation(nwbfile: Any, s: _Session) -> int:
    from pynwb.epoch import TimeIntervals

    devices = dict(nwbfile.devices)
    electrode_rows = _electrodes_table(nwbfile, s, devices)
    stimuli = [e for e in s.events if e.get("type") == "stimulus"]
    if not stimuli:
        return 0
    host = np.array([float(e.get("host_time_s", math.nan)) for e in stimuli])
    device = np.array(
        [math.nan if e.get("device_time_s") is None else float(e["device_time_s"]) for e in stimuli]
    )
    placed = np.where(np.isfinite(device), device, s.device_time_of_host(host))
    table = TimeIntervals(
        name="stimulation",
        description="every stimulus delivered: start/stop on the device clock (s from "
        "session start); host_time_s = time.monotonic() when it was issued",
    )
    columns = (
        ("frame", "frame being processed when the stimulus was issued"),
        ("host_time_s", "host time (time.monotonic) the trigger was issued, s"),
        ("device_time_s", "onset on the device clock as reported by the stimulator, s"),
        ("kind", "stimulator kind (light, mea, ...)"),
        ("targets", "targets as JSON: (x, y) um in the field (light) or electrode names"),
        ("amplitude", "power per spot (light) or first-phase current (MEA)"),
        ("amplitude_unit", "unit of amplitude (mW or uA)"),
        ("pulse_ms", "duration of one pulse (light: per target; MEA: all phases), ms"),
        ("n_pulses", "pulses in the train"),
        ("pulse_rate_hz", "pulses per second"),
        ("stimulus", "the validated stimulus as delivered (JSON)"),
    )
    for name, description in columns:
        table.add_column(name=name, description=description)
    if electrode_rows:
        table.add_column(
            name="electrodes",
            description="stimulated electrodes (MEA)",
            table=nwbfile.electrodes,
            index=True,
        )
    for e, start in zip(stimuli, placed):
        description = e.get("stimulus") if isinstance(e.get("stimulus"), dict) else {}
        fields = _stimulus_fields(description)
        row = dict(
            start_time=float(start),
            stop_time=float(start) + float(fields["duration_s"]),
            frame=int(e.get("frame", -1)),
            host_time_s=float(e.get("host_time_s", math.nan)),
            device_time_s=math.nan if e.get("device_time_s") is None else e["device_time_s"],
            kind=fields["kind"],
            targets=json.dumps(fields["targets"]),
            amplitude=float(fields["amplitude"]),
            amplitude_unit=fields["amplitude_unit"],
            pulse_ms=float(fields["pulse_ms"]),
            n_pulses=int(fields["n_pulses"]),
            pulse_rate_hz=float(fields["pulse_rate_hz"]),
            stimulus=json.dumps(description),
        )
        if electrode_rows:
            row["electrodes"] = [
                electrode_rows[name] for name in fields["electrodes"] if name in electrode_rows
            ]
        table.add_row(**row)
    nwbfile.add_time_intervals(table)
    return len(stimuli)


def _protocol_marks(nwbfile: Any, s: _Session) -> None:
    from pynwb.epoch import TimeIntervals

    marks = [e for e in s.events if e.get("type") == "protocol"]
    if not marks:
        return
    host = np.array([float(e.get("host_time_s", math.nan)) for e in marks])
    device = np.array(
        [math.nan if e.get("device_time_s") is None else float(e["device_time_s"]) for e in marks]
    )
    placed = np.where(np.isfinite(device), device, s.device_time_of_host(host))
    table = TimeIntervals(
        name="protocol_marks", description="the protocol's own marks (ctx.mark), instants"
    )
    table.add_column(name="label", description="the mark's label")
    table.add_column(name="frame", description="frame being processed (-1 if none)")
    table.add_column(name="details", description="the mark's data (JSON)")
    skip = {"type", "label", "frame", "host_time_s", "device_time_s"}
    for e, t in zip(marks, placed):
        t = float(t) if math.isfinite(t) else 0.0
        table.add_row(
            start_time=t,
            stop_time=t,
            label=str(e.get("label", "")),
            frame=int(e.get("frame", -1)),
            details=json.dumps({k: v for k, v in e.items() if k not in skip}),
        )
    nwbfile.add_time_intervals(table)


def _dropped_frames(nwbfile: Any, s: _Session) -> None:
    drops = [e for e in s.events if e.get("type") == "drop"]
    if not drops:
        return
    period = 1.0 / s.frame_rate_hz
    nwbfile.add_invalid_times_column(name="frame", description="acquisition index of the frame")
    nwbfile.add_invalid_times_column(name="reason", description="why the frame was dropped")
    for e in drops:
        index = int(e.get("frame", -1))
        start = index * period if index >= 0 else 0.0
        nwbfile.add_invalid_time_interval(
            start_time=start,
            stop_time=start + period,
            frame=index,
            reason=str(e.get("reason", "")),
        )


def _lens_series(nwbfile: Any, s: _Session) -> None:
    """Lens focal power and temperature from `device` events that carry them."""
    from pynwb import TimeSeries

    for key, name, unit, what in (
        ("focal_power_dpt", "focal_power", "dioptres", "tunable lens focal power"),
        ("temperature_c", "lens_temperature", "degrees Celsius", "tunable lens temperature"),
    ):
        rows = [
            e
            for e in s.events
            if e.get("type") == "device" and isinstance(e.get(key), (int, float))
        ]
        if not rows:
            continue
        host = np.array([float(e.get("host_time_s", math.nan)) for e in rows])
        device = np.array(
            [math.nan if e.get("device_time_s") is None else float(e["device_time_s"])
             for e in rows]
        )  # fmt: skip
        times = np.where(np.isfinite(device), device, s.device_time_of_host(host))
        order = np.argsort(times, kind="stable")
        names = sorted({str(e.get("device", "lens")) for e in rows})
        nwbfile.add_acquisition(
            TimeSeries(
                name=name,
                data=np.array([float(rows[i][key]) for i in order]),
                unit=unit,
                timestamps=times[order],
                description=f"{what} ({', '.join(names)}), from device events in events.jsonl",
            )
        )


def _validate(tmp: Path, out: Path) -> None:
    from pynwb import validate

    errors = validate(path=str(tmp))
    if errors:
        shown = "; ".join(str(e) for e in errors[:5])
        raise NwbExportError(
            f"{out}: the written file does not pass pynwb's validator ({len(errors)} errors: "
            f"{shown}); nothing was kept"
        )
