"""Recordings as devices: a Scanner that delivers recorded frames, and a DAQ for stimulation.

`ReplayScanner` plays the frames of a recording with their recorded timestamps, so the same
loop, pipeline and protocols run on them as on a rig (`rig replay`, rig/replay.py). Sources
(`open_source` picks one from a path):

- a session folder (session.h5 `frames`, recorded with `recording.frames = true`);
- an NWB file (a TwoPhotonSeries; NWB stores frames as (time, x, y), i.e. width before height,
  and they are transposed back to (lines, pixels));
- a TIFF stack: ScanImage (frame rate `SI.hRoiManager.scanFrameRate`, per-frame
  `frameTimestamps_sec`, saved channels interleaved), ImageJ (`finterval`), OME
  (`TimeIncrement`) or plain (frame rate given by the caller, else a clear error);
- suite2p output (F.npy, Fneu.npy, iscell.npy, stat.npy, ops.npy): no frames to extract from,
  so the traces go straight into the later stages through `trace_source` (the pipeline takes
  fluorescence from it instead of extracting; the scanner delivers the mean image as frames).
- `ArrayFrames`: frames held in memory (tests, benchmarks).

Frames are delivered as int16 (the rig's frame type); uint16 data are accepted when every
value fits (a frame beyond 32767 raises an error naming the file and frame), other dtypes are
refused when the source is opened. Device time of frame i is its recorded time minus that of
the first frame. In "realtime" a frame is handed out no earlier than the wall clock would have
completed it; in "max" as fast as the loop takes them.

`ReplayDAQ` stands in for the DAQ under the (real) light stimulator: it scans nothing and
records each pulse train with its onset on the recording's clock: the end of the frame last
delivered (as the simulated DAQ does at max speed: a stimulus decided on frame i starts when
frame i has been acquired), or the wall clock's recording time in realtime if later. The
recording does not respond to stimulation: replay is open loop.
"""

from __future__ import annotations

import json
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.rois import RoiSet
from drivers.daq.contract import PulseTaskConfig, ScanDAQ, ScanTaskConfig
from drivers.errors import DeviceStateError, LimitError
from drivers.roles import FrameInfo, Scanner
from simulators.clock import SimClock

INT16_MAX = 32767
#: suite2p's default neuropil coefficient (ops["neucoeff"]), used when ops does not give it
SUITE2P_NEUCOEFF = 0.7


class ReplaySourceError(ValueError):
    """A recording cannot be replayed: missing or corrupt file, wrong dimensions or dtype,
    missing frame rate. The message names the file and the field."""


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


@dataclass
class TraceSource:
    """Traces that enter the pipeline after ROI extraction (suite2p output).

    fluorescence: (frames, n_rois) float32, the fluorescence the dF/F stage receives
    (suite2p: F - neucoeff * Fneu). The pipeline calls `read(frame_index, out)` instead of
    extracting, and installs `rois` at setup."""

    rois: RoiSet
    fluorescence: np.ndarray
    mean_image: np.ndarray | None
    how: str

    def read(self, frame_index: int, out: np.ndarray) -> None:
        out[:] = self.fluorescence[frame_index]


class FrameSource(ABC):
    """A recording's frames with their times. Metadata is read when constructed (so errors
    come before anything runs); `open()` / `close()` hold the file for reading frames."""

    kind: str = "frames"
    path: Path
    frame_shape: tuple[int, int]
    frame_rate_hz: float
    pixel_size_um: tuple[float, float] | None = None
    timestamps_s: np.ndarray  # (n,) device time of each frame, first = 0
    frame_indices: np.ndarray  # (n,) acquisition index of each frame (gaps = lost frames)
    trace_source: TraceSource | None = None
    #: the rig configuration the recording was made with, when the source carries it
    recorded_config: dict[str, Any] | None = None

    @property
    def n_frames(self) -> int:
        return int(self.timestamps_s.shape[0])

    def open(self) -> None:  # noqa: B027 - sources held in memory need no file
        """Open the file for reading frames (idempotent)."""

    def close(self) -> None:  # noqa: B027
        """Release the file (idempotent; open() may be called again)."""

    @abstractmethod
    def read(self, i: int, out: np.ndarray) -> None:
        """Write frame i into `out` (int16, frame_shape)."""

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.kind,
            "path": str(self.path),
            "frames": self.n_frames,
            "frame_rate_hz": self.frame_rate_hz,
            "frame_shape": list(self.frame_shape),
            "pixel_size_um": None if self.pixel_size_um is None else list(self.pixel_size_um),
        }


def _regular_times(n: int, rate_hz: float) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / rate_hz


def _indices_from_times(times_s: np.ndarray, rate_hz: float) -> np.ndarray:
    """Acquisition index of each frame from its time (gaps where frames were dropped); frame
    order when the times are not increasing."""
    indices = np.rint(times_s * rate_hz).astype(np.int64)
    if indices.size and (np.any(np.diff(indices) <= 0) or not np.all(np.isfinite(times_s))):
        return np.arange(times_s.size, dtype=np.int64)
    return indices


def _check_rate(rate: Any, path: Path, field: str) -> float:
    try:
        value = float(rate)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ReplaySourceError(f"{path}: field '{field}' = {rate!r} is not a positive frame rate")
    return value


def _frame_dtype_check(dtype: np.dtype, path: Path, field: str = "dtype") -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype in (np.dtype(np.int16), np.dtype(np.uint16), np.dtype(np.uint8), np.dtype(np.int8)):
        return dtype
    raise ReplaySourceError(
        f"{path}: field '{field}' = {dtype}: frames must be int16, uint16, uint8 or int8 "
        "(raw detector values); the rig's frames are int16"
    )


def _copy_frame(src: np.ndarray, out: np.ndarray, path: Path, index: int) -> None:
    """Copy a frame into the int16 output, refusing values the rig's int16 cannot hold."""
    if src.shape != out.shape:
        raise ReplaySourceError(
            f"{path}: frame {index} has shape {src.shape}, expected {out.shape}"
        )
    if src.dtype == np.uint16 and src.size and int(src.max()) > INT16_MAX:
        raise ReplaySourceError(
            f"{path}: frame {index} has pixel values up to {int(src.max())} (dtype uint16), "
            f"beyond the int16 range of the rig's frames (max {INT16_MAX})"
        )
    np.copyto(out, src, casting="unsafe")


class ArrayFrames(FrameSource):
    """Frames held in memory, shape (n, H, W)."""

    kind = "array"

    def __init__(
        self,
        frames: np.ndarray,
        frame_rate_hz: float,
        *,
        pixel_size_um: tuple[float, float] | None = None,
        timestamps_s: np.ndarray | None = None,
        name: str = "<array>",
    ) -> None:
        self.path = Path(name)
        frames = np.asarray(frames)
        if frames.ndim != 3 or frames.shape[0] < 1:
            raise ReplaySourceError(
                f"{name}: field 'shape' = {frames.shape}: frames must be (n >= 1, H, W)"
            )
        _frame_dtype_check(frames.dtype, self.path)
        self.frames = frames
        self.frame_shape = (int(frames.shape[1]), int(frames.shape[2]))
        self.frame_rate_hz = _check_rate(frame_rate_hz, self.path, "frame_rate_hz")
        self.pixel_size_um = pixel_size_um
        n = frames.shape[0]
        if timestamps_s is None:
            self.timestamps_s = _regular_times(n, self.frame_rate_hz)
        else:
            times = np.asarray(timestamps_s, np.float64)
            if times.shape != (n,):
                raise ReplaySourceError(
                    f"{name}: field 'timestamps_s' has shape {times.shape}, expected ({n},)"
                )
            self.timestamps_s = times - times[0]
        self.frame_indices = _indices_from_times(self.timestamps_s, self.frame_rate_hz)

    def read(self, i: int, out: np.ndarray) -> None:
        _copy_frame(self.frames[i], out, self.path, i)


class SessionFrames(FrameSource):
    """Raw frames of a looprig session folder (session.h5, `recording.frames = true`)."""

    kind = "session"

    def __init__(self, folder: str | Path) -> None:
        import h5py

        self.path = Path(folder)
        self.h5_path = self.path / "session.h5"
        if not self.h5_path.is_file():
            hint = (
                " (the session was not closed: run `rig recover` first)"
                if (self.path / "streams").is_dir()
                else ""
            )
            raise ReplaySourceError(f"{self.h5_path} is missing{hint}")
        self._h5: Any = None
        self._frames: Any = None
        try:
            with h5py.File(self.h5_path, "r") as f:
                frames = f.get("frames")
                if not isinstance(frames, h5py.Dataset):
                    raise ReplaySourceError(
                        f"{self.h5_path}: field 'frames' is missing: the session was recorded "
                        "without raw frames (set recording.frames = true to record them)"
                    )
                if frames.ndim != 3 or frames.shape[0] < 1:
                    raise ReplaySourceError(
                        f"{self.h5_path}: field 'frames' has shape {frames.shape}, expected "
                        "(frames >= 1, H, W)"
                    )
                _frame_dtype_check(frames.dtype, self.h5_path, "frames")
                n = frames.shape[0]
                self.frame_shape = (int(frames.shape[1]), int(frames.shape[2]))
                self.frame_rate_hz = _check_rate(
                    f.attrs.get("frame_rate_hz"), self.h5_path, "frame_rate_hz"
                )
                times = f.get("timestamps")
                if not isinstance(times, h5py.Dataset) or times.shape != (n,):
                    raise ReplaySourceError(
                        f"{self.h5_path}: field 'timestamps' must have shape ({n},) like "
                        f"'frames', got {None if times is None else times.shape}"
                    )
                t = np.asarray(times[()], np.float64)
                pixel = f.attrs.get("pixel_size_um")
        except OSError as e:
            raise ReplaySourceError(f"{self.h5_path}: not a readable HDF5 file ({e})") from e
        if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
            raise ReplaySourceError(
                f"{self.h5_path}: field 'timestamps' must be finite and increasing"
            )
        self.timestamps_s = t - t[0]
        self.frame_indices = _indices_from_times(t, self.frame_rate_hz)
        if pixel is not None:
            p = np.atleast_1d(np.asarray(pixel, np.float64))
            self.pixel_size_um = (float(p[0]), float(p[-1]))
        self.recorded_config = _session_config(self.path)

    def open(self) -> None:
        if self._h5 is None:
            import h5py

            self._h5 = h5py.File(self.h5_path, "r")
            self._frames = _open_session_frames(self._h5)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = self._frames = None

    def read(self, i: int, out: np.ndarray) -> None:
        if self._frames is None:
            raise DeviceStateError(f"{self.h5_path} is not open")
        try:
            if self._frames.dtype == out.dtype:
                self._frames.read_direct(out, np.s_[i])
            else:
                _copy_frame(self._frames[i], out, self.h5_path, i)
        except OSError as e:
            raise ReplaySourceError(
                f"{self.h5_path}: frame {i} of field 'frames' is not readable ({e}); raw "
                "frames live in streams/frames.i2 next to session.h5"
            ) from e


def _open_session_frames(h5: Any) -> Any:
    """session.h5 `frames` with its external raw file resolved next to session.h5 (the
    equivalent of rig.session.open_frames; simulators do not import rig)."""
    import h5py

    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_efile_prefix(b"${ORIGIN}")
    return h5py.Dataset(h5py.h5d.open(h5.id, b"frames", dapl=dapl))


def _session_config(folder: Path) -> dict[str, Any] | None:
    """The rig configuration a session ran with: summary.json, else the events.jsonl entry."""
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            config = json.loads(summary.read_text(encoding="utf-8")).get("config")
            if isinstance(config, dict):
                return config
        except (OSError, ValueError, AttributeError):
            pass
    events = folder / "events.jsonl"
    if events.is_file():
        for line in events.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("type") == "config":
                return event.get("config")
    return None


class NwbFrames(FrameSource):
    """A TwoPhotonSeries of an NWB file (data (time, x, y) -> frames (y, x))."""

    kind = "nwb"

    def __init__(self, path: str | Path, series_name: str | None = None) -> None:
        self.path = Path(path)
        self.series_name = series_name
        self._io: Any = None
        self._data: Any = None
        io, nwbfile, series = self._open_series()
        try:
            data = series.data
            if series.external_file is not None and len(data) == 0:
                raise ReplaySourceError(
                    f"{self.path}: TwoPhotonSeries '{series.name}' keeps its frames in "
                    f"external files {list(series.external_file[:])}: not supported"
                )
            if data.ndim != 3 or data.shape[0] < 1:
                raise ReplaySourceError(
                    f"{self.path}: field '{series.name}/data' has shape {data.shape}: expected "
                    "(time, x, y) with at least one frame (volumes are not supported)"
                )
            _frame_dtype_check(data.dtype, self.path, f"{series.name}/data")
            n, width, height = (int(s) for s in data.shape)
            self.frame_shape = (height, width)
            if series.timestamps is not None:
                t = np.asarray(series.timestamps[()], np.float64)
                if t.shape != (n,) or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
                    raise ReplaySourceError(
                        f"{self.path}: field '{series.name}/timestamps' must hold {n} finite, "
                        "increasing times"
                    )
                rate = series.imaging_plane.imaging_rate if series.imaging_plane else None
                if rate is None or not (rate > 0):
                    rate = 1.0 / float(np.median(np.diff(t))) if n > 1 else None
                self.frame_rate_hz = _check_rate(rate, self.path, "imaging_plane/imaging_rate")
            else:
                self.frame_rate_hz = _check_rate(series.rate, self.path, f"{series.name}/rate")
                t = series.starting_time + _regular_times(n, self.frame_rate_hz)
            self.timestamps_s = t - t[0]
            self.frame_indices = _indices_from_times(self.timestamps_s, self.frame_rate_hz)
            self.pixel_size_um = _nwb_pixel_size_um(series)
            self.series_name = series.name
            self.recorded_config = _nwb_scratch_json(nwbfile, "looprig_config")
        finally:
            io.close()

    def _open_series(self) -> tuple[Any, Any, Any]:
        from pynwb import NWBHDF5IO
        from pynwb.ophys import TwoPhotonSeries

        if not self.path.is_file():
            raise ReplaySourceError(f"NWB file {self.path} does not exist")
        io = None
        try:
            io = NWBHDF5IO(str(self.path), "r")
            nwbfile = io.read()
        except Exception as e:  # noqa: BLE001 - any reader failure means "not readable NWB"
            if io is not None:
                io.close()
            raise ReplaySourceError(f"{self.path}: not a readable NWB file ({e})") from e
        found = [o for o in nwbfile.objects.values() if isinstance(o, TwoPhotonSeries)]
        if self.series_name is not None:
            found = [o for o in found if o.name == self.series_name]
        if len(found) != 1:
            io.close()
            names = sorted(
                o.name for o in nwbfile.objects.values() if isinstance(o, TwoPhotonSeries)
            )
            what = "no TwoPhotonSeries" if not names else f"TwoPhotonSeries {names}"
            raise ReplaySourceError(
                f"{self.path}: field 'TwoPhotonSeries': found {what}"
                + ("; name the one to replay" if len(names) > 1 else "")
            )
        return io, nwbfile, found[0]

    def open(self) -> None:
        if self._io is None:
            self._io, _, series = self._open_series()
            self._data = series.data

    def close(self) -> None:
        if self._io is not None:
            self._io.close()
            self._io = self._data = None

    def read(self, i: int, out: np.ndarray) -> None:
        if self._data is None:
            raise DeviceStateError(f"{self.path} is not open")
        _copy_frame(np.asarray(self._data[i]).T, out, self.path, i)


_LENGTH_UNITS_UM = {
    "meters": 1e6,
    "meter": 1e6,
    "m": 1e6,
    "millimeters": 1e3,
    "mm": 1e3,
    "micrometers": 1.0,
    "micrometer": 1.0,
    "um": 1.0,
    "microns": 1.0,
}


def _nwb_pixel_size_um(series: Any) -> tuple[float, float] | None:
    """(y, x) um per pixel from the imaging plane's grid spacing (x, y) in its unit."""
    plane = series.imaging_plane
    spacing = getattr(plane, "grid_spacing", None) if plane is not None else None
    if spacing is None or len(spacing) < 2:
        return None
    unit = (getattr(plane, "grid_spacing_unit", None) or "meters").lower()
    factor = _LENGTH_UNITS_UM.get(unit)
    if factor is None:
        return None
    return float(spacing[1]) * factor, float(spacing[0]) * factor


def _nwb_scratch_json(nwbfile: Any, name: str) -> dict[str, Any] | None:
    """A JSON object stored as scratch text (the looprig exporter stores the rig config)."""
    try:
        if name not in nwbfile.scratch:
            return None
        data = nwbfile.scratch[name].data
        text = data[()] if hasattr(data, "shape") else data
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(str(text))
    except Exception:  # noqa: BLE001 - the config is optional information
        return None
    return value if isinstance(value, dict) else None


class TiffFrames(FrameSource):
    """A TIFF stack: ScanImage, ImageJ, OME or plain (one frame per page or a contiguous
    series). Frame rate: metadata, else `frame_rate_hz`, else an error."""

    kind = "tiff"

    def __init__(
        self, path: str | Path, frame_rate_hz: float | None = None, channel: int = 0
    ) -> None:
        import tifffile

        self.path = Path(path)
        if not self.path.is_file():
            raise ReplaySourceError(f"TIFF file {self.path} does not exist")
        self._tif: Any = None
        self._memmap: np.ndarray | None = None
        try:
            # ScanImage detection is done here: tifffile's own assumes uniform page layouts
            with tifffile.TiffFile(self.path, is_scanimage=False) as tif:
                self._inspect(tif, frame_rate_hz, channel)
        except ReplaySourceError:
            raise
        except Exception as e:  # noqa: BLE001 - tifffile raises many kinds for bad files
            raise ReplaySourceError(f"{self.path}: not a readable TIFF file ({e})") from e

    def _inspect(self, tif: Any, frame_rate_hz: float | None, channel: int) -> None:

        pages = tif.pages
        first = pages.first
        if len(first.shape) != 2:
            raise ReplaySourceError(
                f"{self.path}: field 'shape' = {first.shape} of page 0: each page must be one "
                "grey-scale frame (H, W); colour or multi-sample pages are not supported"
            )
        dtype = _frame_dtype_check(first.dtype, self.path)
        self.frame_shape = (int(first.shape[0]), int(first.shape[1]))
        self.metadata_kind = "plain"
        rate = None
        times: np.ndarray | None = None
        self._page_step, self._page_offset = 1, 0
        if first.software[:3] == "SI." or "SI.hRoiManager" in first.description:
            self.metadata_kind = "ScanImage"
            meta = _scanimage_frame_data(tif, first)
            rate = meta.get("SI.hRoiManager.scanFrameRate")
            if rate is not None:
                rate = _check_rate(rate, self.path, "SI.hRoiManager.scanFrameRate")
            saved = meta.get("SI.hChannels.channelSave", 1)
            n_channels = len(saved) if isinstance(saved, (list, tuple)) else 1
            slices = meta.get("SI.hStackManager.numSlices", 1) or 1
            stack_on = meta.get("SI.hFastZ.enable") or meta.get("SI.hStackManager.enable")
            if stack_on and int(slices) > 1:
                raise ReplaySourceError(
                    f"{self.path}: field 'SI.hStackManager.numSlices' = {slices}: volumetric "
                    "(multi-plane) recordings are not supported; split the planes first"
                )
            if not 0 <= channel < n_channels:
                raise ReplaySourceError(
                    f"{self.path}: channel {channel} requested, field "
                    f"'SI.hChannels.channelSave' = {saved!r} saved {n_channels}"
                )
            if len(pages) % n_channels:
                raise ReplaySourceError(
                    f"{self.path}: {len(pages)} pages are not a whole number of frames of "
                    f"{n_channels} channels (field 'SI.hChannels.channelSave' = {saved!r}); "
                    "the file is truncated"
                )
            self._page_step, self._page_offset = n_channels, channel
            n = len(pages) // n_channels
            times = self._scanimage_times(pages, n)
        else:
            n = len(pages)
            series = tif.series[0]
            if tif.is_imagej:
                self.metadata_kind = "ImageJ"
                ij = tif.imagej_metadata or {}
                if ij.get("channels", 1) not in (1, None):
                    raise ReplaySourceError(
                        f"{self.path}: field 'channels' = {ij['channels']} (ImageJ): one channel "
                        "per file is supported"
                    )
                if ij.get("finterval"):
                    rate = 1.0 / _check_rate(ij["finterval"], self.path, "finterval")
                elif ij.get("fps"):
                    rate = _check_rate(ij["fps"], self.path, "fps")
                n = int(np.prod(series.shape[:-2], dtype=np.int64)) if series.shape else n
                self.pixel_size_um = _imagej_pixel_size_um(first, ij)
            elif tif.is_ome:
                self.metadata_kind = "OME"
                rate, self.pixel_size_um = _ome_rate_and_pixel(tif.ome_metadata or "", self.path)
            if series.shape[-2:] == self.frame_shape and series.dataoffset is not None:
                count = int(np.prod(series.shape[:-2], dtype=np.int64))
                needed = int(series.dataoffset) + count * int(np.prod(self.frame_shape)) * int(
                    series.dtype.itemsize
                )
                size = self.path.stat().st_size
                if size < needed:
                    raise ReplaySourceError(
                        f"{self.path}: the file is truncated: field 'shape' = {series.shape} "
                        f"needs {needed} bytes, the file has {size}"
                    )
                self._contiguous = (int(series.dataoffset), series.dtype, count)
                n = count
        if frame_rate_hz is not None:
            rate = _check_rate(frame_rate_hz, self.path, "--frame-rate")
        if rate is None:
            raise ReplaySourceError(
                f"{self.path}: no frame rate in the file ({self.metadata_kind} TIFF: looked for "
                "'SI.hRoiManager.scanFrameRate' (ScanImage), 'finterval' (ImageJ), "
                "'TimeIncrement' (OME)); give it with --frame-rate HZ"
            )
        if n < 1:
            raise ReplaySourceError(f"{self.path}: field 'pages' holds no frame")
        self.frame_rate_hz = float(rate)
        self.dtype = dtype
        if times is None:
            times = _regular_times(n, self.frame_rate_hz)
        self.timestamps_s = times - times[0]
        self.frame_indices = _indices_from_times(self.timestamps_s, self.frame_rate_hz)

    _contiguous: tuple[int, Any, int] | None = None

    def _scanimage_times(self, pages: Any, n: int) -> np.ndarray | None:
        """Per-frame `frameTimestamps_sec` from the ImageDescription of each frame's page."""
        import tifffile

        times = np.empty(n)
        for i in range(n):
            description = pages[i * self._page_step + self._page_offset].description
            try:
                value = tifffile.matlabstr2py(description).get("frameTimestamps_sec")
            except Exception:  # noqa: BLE001 - a frame without its time: use the rate
                return None
            if value is None:
                return None
            times[i] = float(value)
        if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
            raise ReplaySourceError(
                f"{self.path}: field 'frameTimestamps_sec' (ScanImage) is not increasing"
            )
        return times

    def open(self) -> None:
        import tifffile

        if self._tif is not None:
            return
        if self._contiguous is not None:
            offset, dtype, count = self._contiguous
            self._memmap = np.memmap(
                self.path, dtype=dtype, mode="r", offset=offset, shape=(count, *self.frame_shape)
            )
            self._tif = True
        else:
            self._tif = tifffile.TiffFile(self.path, is_scanimage=False)

    def close(self) -> None:
        if self._tif is not None and self._tif is not True:
            self._tif.close()
        self._tif = None
        self._memmap = None

    def read(self, i: int, out: np.ndarray) -> None:
        if self._tif is None:
            raise DeviceStateError(f"{self.path} is not open")
        try:
            if self._memmap is not None:
                frame = np.asarray(self._memmap[i])
            else:
                frame = self._tif.pages[i * self._page_step + self._page_offset].asarray()
        except (OSError, ValueError, IndexError) as e:
            raise ReplaySourceError(
                f"{self.path}: frame {i} is not readable ({type(e).__name__}: {e}); the file "
                "may be truncated"
            ) from e
        _copy_frame(frame, out, self.path, i)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "metadata": self.metadata_kind}


def _scanimage_frame_data(tif: Any, first: Any) -> dict[str, Any]:
    """ScanImage's non-varying settings: the BigTIFF header of ScanImage 2016 and later, else
    the Software tag of the first page (ScanImage 5, and 2016+ too)."""
    import tifffile

    try:
        frame_data, _, _ = tifffile.read_scanimage_metadata(tif.filehandle)
        if isinstance(frame_data, dict) and frame_data:
            return frame_data
    except (ValueError, TypeError, OSError):
        pass
    text = first.software if first.software[:3] == "SI." else first.description
    try:
        value = tifffile.matlabstr2py(text)
    except Exception:  # noqa: BLE001 - unparsable settings: treated as absent
        return {}
    return value if isinstance(value, dict) else {}


def _imagej_pixel_size_um(page: Any, ij: dict[str, Any]) -> tuple[float, float] | None:
    """ImageJ stores pixels per unit in the TIFF resolution tags; unit 'micron' or 'um'."""
    unit = str(ij.get("unit", "")).lower().replace("\\u00b5", "u").replace("µ", "u")
    if unit not in ("micron", "um", "microns"):
        return None
    try:
        x_res = page.tags["XResolution"].value
        y_res = page.tags["YResolution"].value
        px_per_um_x = x_res[0] / x_res[1]
        px_per_um_y = y_res[0] / y_res[1]
    except (KeyError, ZeroDivisionError, TypeError, IndexError):
        return None
    if px_per_um_x <= 0 or px_per_um_y <= 0:
        return None
    return 1.0 / px_per_um_y, 1.0 / px_per_um_x


_OME_UNITS_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "min": 60.0, "h": 3600.0}
_OME_UNITS_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}


def _ome_rate_and_pixel(xml: str, path: Path) -> tuple[float | None, tuple[float, float] | None]:
    """Frame rate from Pixels/@TimeIncrement (+ unit, default s); pixel size from
    PhysicalSizeX/Y (+ units, default um)."""

    def attr(name: str) -> str | None:
        found = re.search(rf'\b{name}="([^"]*)"', xml)
        return found.group(1) if found else None

    rate = None
    increment = attr("TimeIncrement")
    if increment is not None:
        unit = attr("TimeIncrementUnit") or "s"
        if unit not in _OME_UNITS_S:
            raise ReplaySourceError(f"{path}: field 'TimeIncrementUnit' = {unit!r} is not a time")
        rate = 1.0 / (_check_rate(increment, path, "TimeIncrement") * _OME_UNITS_S[unit])
    pixel = None
    sx, sy = attr("PhysicalSizeX"), attr("PhysicalSizeY")
    if sx is not None and sy is not None:
        ux = _OME_UNITS_UM.get(attr("PhysicalSizeXUnit") or "µm")
        uy = _OME_UNITS_UM.get(attr("PhysicalSizeYUnit") or "µm")
        if ux is not None and uy is not None:
            pixel = (float(sy) * uy, float(sx) * ux)
    return rate, pixel


class Suite2pTraces(FrameSource):
    """suite2p output of one plane: traces go to the pipeline through `trace_source`.

    ROIs: cells with iscell[:, 0] = 1; pixels (ypix, xpix) weighted by lam (normalised to
    sum 1). Fluorescence: F - neucoeff * Fneu (suite2p's neuropil correction, neucoeff from
    ops, default 0.7). Frames: ops' meanImg, so displays and the report have an image.
    stat.npy and ops.npy are pickled: only replay suite2p output you trust."""

    kind = "suite2p"

    def __init__(self, folder: str | Path, frame_rate_hz: float | None = None) -> None:
        self.path = _suite2p_plane_dir(Path(folder))
        files = {name: self.path / f"{name}.npy" for name in ("F", "Fneu", "iscell", "stat", "ops")}
        for name, file in files.items():
            if not file.is_file():
                raise ReplaySourceError(f"{file} is missing (suite2p output needs {name}.npy)")
        F = _load_npy(files["F"], pickle=False)
        Fneu = _load_npy(files["Fneu"], pickle=False)
        iscell = _load_npy(files["iscell"], pickle=False)
        stat = _load_npy(files["stat"], pickle=True)
        ops_array = _load_npy(files["ops"], pickle=True)
        try:
            ops = ops_array.item()
            if not isinstance(ops, dict):
                raise ValueError
        except ValueError:
            raise ReplaySourceError(f"{files['ops']}: must hold a dict (suite2p ops)") from None
        if F.ndim != 2 or not np.issubdtype(F.dtype, np.floating) or F.shape[1] < 2:
            raise ReplaySourceError(
                f"{files['F']}: field 'F' has shape {F.shape} and dtype {F.dtype}: expected "
                "floats of shape (n_rois, frames >= 2)"
            )
        if Fneu.shape != F.shape:
            raise ReplaySourceError(
                f"{files['Fneu']}: field 'Fneu' has shape {Fneu.shape}, F.npy has {F.shape}"
            )
        n_all, n_frames = F.shape
        if iscell.ndim != 2 or iscell.shape[0] != n_all:
            raise ReplaySourceError(
                f"{files['iscell']}: field 'iscell' has shape {iscell.shape}, expected ({n_all}, 2)"
            )
        if stat.shape != (n_all,):
            raise ReplaySourceError(
                f"{files['stat']}: field 'stat' holds {stat.shape} entries, F.npy has {n_all} ROIs"
            )
        for key in ("Ly", "Lx"):
            if not isinstance(ops.get(key), (int, np.integer)) or ops[key] < 1:
                raise ReplaySourceError(
                    f"{files['ops']}: field '{key}' = {ops.get(key)!r} must be a positive integer"
                )
        height, width = int(ops["Ly"]), int(ops["Lx"])
        rate = frame_rate_hz if frame_rate_hz is not None else ops.get("fs")
        if rate is None:
            raise ReplaySourceError(
                f"{files['ops']}: field 'fs' (frame rate) is missing; give it with --frame-rate HZ"
            )
        self.frame_rate_hz = _check_rate(
            rate, files["ops"], "fs" if frame_rate_hz is None else "--frame-rate"
        )
        neucoeff = float(ops.get("neucoeff", SUITE2P_NEUCOEFF))
        cells = np.flatnonzero(iscell[:, 0] > 0.5)
        if cells.size == 0:
            raise ReplaySourceError(f"{files['iscell']}: field 'iscell' marks no ROI as a cell")
        rois = _suite2p_rois(stat, cells, (height, width), files["stat"])
        fluorescence = (F[cells] - neucoeff * Fneu[cells]).T.astype(np.float32)
        mean = ops.get("meanImg")
        mean_image = None
        if isinstance(mean, np.ndarray):
            if mean.shape != (height, width):
                raise ReplaySourceError(
                    f"{files['ops']}: field 'meanImg' has shape {mean.shape}, expected "
                    f"({height}, {width}) from Ly, Lx"
                )
            mean_image = mean.astype(np.float32)
        self.frame_shape = (height, width)
        self.timestamps_s = _regular_times(n_frames, self.frame_rate_hz)
        self.frame_indices = np.arange(n_frames, dtype=np.int64)
        self.trace_source = TraceSource(
            rois=rois,
            fluorescence=np.ascontiguousarray(fluorescence),
            mean_image=mean_image,
            how=f"suite2p {files['stat']} ({cells.size} cells, F - {neucoeff:g} Fneu)",
        )
        image = mean_image if mean_image is not None else np.zeros((height, width), np.float32)
        self._frame = np.clip(np.rint(image), -32768, INT16_MAX).astype(np.int16)

    def read(self, i: int, out: np.ndarray) -> None:
        out[:] = self._frame


def _suite2p_plane_dir(folder: Path) -> Path:
    if not folder.is_dir():
        raise ReplaySourceError(f"suite2p folder {folder} does not exist")
    for candidate in (folder, folder / "plane0", folder / "suite2p" / "plane0"):
        if (candidate / "F.npy").is_file():
            more = sorted(p.name for p in candidate.parent.glob("plane[1-9]*") if p.is_dir())
            if candidate.name == "plane0" and more:
                raise ReplaySourceError(
                    f"{candidate.parent}: several planes ({', '.join(['plane0', *more])}): "
                    "give one plane folder to replay"
                )
            return candidate
    raise ReplaySourceError(
        f"{folder}: neither a session folder (no session.h5) nor suite2p output (no F.npy here "
        "or in plane0/)"
    )


def _load_npy(path: Path, *, pickle: bool) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=pickle)
    except Exception as e:  # noqa: BLE001 - truncated, not .npy, pickle errors
        raise ReplaySourceError(f"{path}: not a readable .npy file ({e})") from e


def _suite2p_rois(
    stat: np.ndarray, cells: np.ndarray, shape: tuple[int, int], path: Path
) -> RoiSet:
    height, width = shape
    pixel_lists, weight_lists = [], []
    for k in cells:
        entry = stat[k]
        try:
            ypix = np.asarray(entry["ypix"], np.int64)
            xpix = np.asarray(entry["xpix"], np.int64)
            lam = np.asarray(entry["lam"], np.float64)
        except (KeyError, TypeError, IndexError):
            raise ReplaySourceError(
                f"{path}: ROI {k} lacks the fields 'ypix', 'xpix', 'lam'"
            ) from None
        if not (ypix.shape == xpix.shape == lam.shape) or ypix.size == 0:
            raise ReplaySourceError(
                f"{path}: ROI {k} fields 'ypix', 'xpix', 'lam' must be non-empty and of equal "
                f"length, got {ypix.shape}, {xpix.shape}, {lam.shape}"
            )
        if ypix.min() < 0 or ypix.max() >= height or xpix.min() < 0 or xpix.max() >= width:
            raise ReplaySourceError(
                f"{path}: ROI {k} has pixels outside the {height} x {width} frame (ops Ly, Lx)"
            )
        flat = ypix * width + xpix
        flat, first = np.unique(flat, return_index=True)
        weights = np.clip(lam[first], 0.0, None)
        if not np.all(np.isfinite(weights)) or weights.sum() <= 0:
            raise ReplaySourceError(f"{path}: ROI {k} field 'lam' has no positive weight")
        pixel_lists.append(flat)
        weight_lists.append(weights / weights.sum())
    sizes = [p.size for p in pixel_lists]
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int32)
    return RoiSet(shape, np.concatenate(pixel_lists), offsets, np.concatenate(weight_lists))


def open_source(spec: str | Path, frame_rate_hz: float | None = None) -> FrameSource:
    """The source a path names: a session folder, a suite2p folder, an .nwb or a .tif(f)."""
    path = Path(spec)
    if not path.exists():
        raise ReplaySourceError(f"replay source {path} does not exist")
    if path.is_dir():
        if (path / "session.h5").is_file() or (path / "streams").is_dir():
            if frame_rate_hz is not None:
                raise ReplaySourceError(
                    f"{path}: --frame-rate is for TIFF and suite2p sources; a session records "
                    "its frame times"
                )
            return SessionFrames(path)
        return Suite2pTraces(path, frame_rate_hz)
    suffix = path.suffix.lower()
    if suffix == ".nwb":
        if frame_rate_hz is not None:
            raise ReplaySourceError(
                f"{path}: --frame-rate is for TIFF and suite2p sources; an NWB file records "
                "its frame times"
            )
        return NwbFrames(path)
    if suffix in (".tif", ".tiff"):
        return TiffFrames(path, frame_rate_hz)
    raise ReplaySourceError(
        f"replay source {path}: unknown kind; give a session folder, a suite2p folder, an "
        ".nwb file or a .tif/.tiff stack"
    )


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------


class ReplayClock(SimClock):
    """The recording's clock: pacing (SimClock) plus how far the recording has been played
    (`delivered_until_s`: device time at the end of the last frame handed out)."""

    def __init__(self, speed: str = "max") -> None:
        super().__init__(speed)
        self.delivered_until_s = 0.0
        self.started = False

    def start(self) -> None:
        super().start()
        self.delivered_until_s = 0.0
        self.started = True

    def now_s(self) -> float:
        """Now on the recording's clock: the end of the last frame delivered, or the wall
        clock's recording time if later (realtime); NaN before the replay started."""
        if not self.started:
            return math.nan
        wall = self.now_virtual_s()
        return self.delivered_until_s if wall is None else max(self.delivered_until_s, wall)


class ReplayScanner(Scanner):
    """Scanner role over a recording: recorded frames with their recorded times."""

    def __init__(
        self,
        source: FrameSource,
        *,
        clock: ReplayClock | None = None,
        speed: str | None = None,
        pixel_size_um: tuple[float, float] | None = None,
        progress: Callable[[int, int], None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name or f"replay scanner ({source.kind})")
        if clock is None:
            clock = ReplayClock(speed or "max")
        elif speed is not None and speed != clock.speed:
            raise ValueError(f"speed = {speed!r} differs from the clock's {clock.speed!r}")
        self.source = source
        self.clock = clock
        self.progress = progress
        size = source.pixel_size_um or pixel_size_um
        if size is None:
            raise ReplaySourceError(
                f"{source.path}: field 'pixel_size_um' is not recorded; give the scanner a "
                "pixel size (rig replay derives it from scanner.fov_um and zoom)"
            )
        if len(size) != 2 or not all(math.isfinite(s) and s > 0 for s in size):
            raise ReplaySourceError(
                f"{source.path}: field 'pixel_size_um' = {size!r} must be two positive numbers"
            )
        self._pixel_size_um = (float(size[0]), float(size[1]))
        self._period_s = 1.0 / source.frame_rate_hz
        self._next = 0
        self._running = False

    # -- Scanner role ----------------------------------------------------------------------
    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.source.frame_shape

    @property
    def frame_rate_hz(self) -> float:
        return self.source.frame_rate_hz

    @property
    def pixel_size_um(self) -> tuple[float, float]:
        return self._pixel_size_um

    @property
    def n_frames(self) -> int:
        return self.source.n_frames

    @property
    def trace_source(self) -> TraceSource | None:
        """Traces for the pipeline instead of extraction (suite2p), else None."""
        return self.source.trace_source

    def start(self) -> None:
        self.require_open()
        self._next = 0
        self.clock.start()
        self._running = True

    def read_frame(self, out: np.ndarray) -> FrameInfo:
        if not self._running:
            raise DeviceStateError(f"{self.name}: read_frame() before start() (or after stop)")
        i = self._next
        if i >= self.source.n_frames:
            raise DeviceStateError(
                f"{self.name}: all {self.source.n_frames} frames of {self.source.path} were "
                "delivered (end of the recording)"
            )
        self.source.read(i, out)
        t = float(self.source.timestamps_s[i])
        self.clock.wait_until(t + self._period_s)  # realtime: when the frame was complete
        self.clock.delivered_until_s = t + self._period_s
        index = int(self.source.frame_indices[i])
        lost = index - int(self.source.frame_indices[i - 1]) - 1 if i else 0
        self._next = i + 1
        if self.progress is not None:
            self.progress(i + 1, self.source.n_frames)
        return FrameInfo(
            index=index, device_time_s=t, host_time_s=time.monotonic(), lost_before=lost
        )

    def stop(self) -> None:
        self._running = False

    # -- Device hooks ----------------------------------------------------------------------
    def _open(self) -> None:
        self.source.open()

    def _close(self) -> None:
        self._running = False
        self.source.close()

    def _safe(self) -> None:
        self._running = False

    def _snapshot(self) -> dict[str, Any]:
        return {
            **self.source.describe(),
            "pixel_size_um": list(self._pixel_size_um),
            "speed": self.clock.speed,
            "traces": None if self.trace_source is None else self.trace_source.how,
        }


class ReplayDAQ(ScanDAQ):
    """The DAQ under the stimulator during a replay: no scanning (frames come from the
    recording); pulse trains are checked like a board would (shape, range) and logged with
    their onset on the recording's clock."""

    def __init__(self, clock: ReplayClock, *, name: str | None = None) -> None:
        super().__init__(name or "replay DAQ")
        self.clock = clock
        self._pulse: PulseTaskConfig | None = None
        self.pulse_log: list[dict[str, Any]] = []
        self.static_outputs: dict[str, float] = {}

    def _no_scan(self) -> DeviceStateError:
        return DeviceStateError(
            f"{self.name}: frames come from the recording; there is no scan to run"
        )

    def configure_scan(self, config: ScanTaskConfig) -> None:
        raise self._no_scan()

    def write_ao(self, waveform_v: np.ndarray) -> None:
        raise self._no_scan()

    def start_scan(self) -> None:
        raise self._no_scan()

    def read_ai(self, out: np.ndarray) -> int:
        raise self._no_scan()

    def stop_scan(self) -> None:
        return None

    def park(self, volts: tuple[float, ...]) -> None:
        self.require_open()

    @property
    def scan_time_s(self) -> float:
        return self.clock.now_s()

    @property
    def ai_volts_per_count(self) -> float:
        return 1.0 / 32768.0

    def write_static_ao(self, channel: str, volts: float, range_v: float = 10.0) -> None:
        self.require_open()
        if not abs(volts) <= range_v:
            raise LimitError(f"static AO {channel} = {volts:g} V is outside +-{range_v:g} V")
        self.static_outputs[channel] = float(volts)

    def configure_pulses(self, config: PulseTaskConfig) -> None:
        self.require_open()
        self._pulse = config

    def write_pulses(self, waveform_v: np.ndarray) -> float:
        self.require_open()
        cfg = self._pulse
        if cfg is None:
            raise DeviceStateError("configure_pulses() first")
        w = np.asarray(waveform_v, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] != len(cfg.channels):
            raise LimitError(
                f"pulse waveform shape {w.shape}: expected ({len(cfg.channels)}, n) for "
                f"channels {cfg.channels}"
            )
        if np.abs(w).max(initial=0.0) > cfg.range_v:
            raise LimitError(f"pulse waveform exceeds +-{cfg.range_v:g} V")
        onset = self.clock.now_s()
        if not math.isfinite(onset):
            onset = 0.0  # before the replay starts its clock stands at 0
        self.pulse_log.append(
            {"onset_s": onset, "samples": int(w.shape[1]), "duration_s": w.shape[1] / cfg.rate_hz}
        )
        return onset

    def zero_pulses(self) -> None:
        return None  # pulses are logged whole at write time; nothing is pending

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _safe(self) -> None:
        self.zero_pulses()

    def _snapshot(self) -> dict[str, Any]:
        return {
            "speed": self.clock.speed,
            "pulses": len(self.pulse_log),
            "pulse_channels": None if self._pulse is None else list(self._pulse.channels),
        }
