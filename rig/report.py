"""Session report: `report.html` plus PNG figures, written into a finished session folder.

The report is what a scientist opens first after a run, so it must be written for every session
that has a summary, including one aborted after zero frames. It reads only the files described
in docs/SESSION_FORMAT.md (summary.json, session.h5, events.jsonl) and writes

    <session>/report.html
    <session>/figures/mean_image_rois.png     mean image with ROI outlines and numbers
    <session>/figures/dff_raster.png          dF/F raster, stimulus onsets, example traces
    <session>/figures/noise_levels.png        CASCADE noise level per ROI, reference bands
    <session>/figures/stimuli.png             stimulus timeline, intervals, protocol marks
    <session>/figures/latency.png             frame complete -> processed / -> stimulus issued

Figures are drawn with `matplotlib.figure.Figure` on an Agg canvas, never with pyplot, so no
global figure state is touched: a report can be written from any thread and without a display.

Display downsampling: the raster has one column per time bin of width
max(frame period, recorded span / MAX_RASTER_TIME_BINS), each bin the NaN-aware mean of the
frames whose timestamps fall in it (binning by device time, so dropped frames leave gaps
instead of shifting later columns). A 10 min, 30 Hz session (18,000 frames) thus shows
1,500 columns of 0.4 s. Example traces are plotted at full resolution.

Times on every time axis are device seconds (acquisition clock, frame 0 starts at 0). Protocol
marks that carry only a host time are placed by interpolating host -> device time through the
frames' (frame_complete_s, timestamps) pairs.
"""

from __future__ import annotations

import html
import json
import math
import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

MAX_RASTER_TIME_BINS = 1500
"""Most raster columns drawn; longer sessions are averaged into time bins (see module doc)."""

MAX_LABELLED_ROIS = 50
"""Above this many ROIs only every k-th ROI is numbered on the mean image, to stay legible."""

N_EXAMPLE_TRACES = 5
"""Example dF/F traces shown under the raster: the ROIs with the highest variance."""

MAX_LABELLED_PROTOCOL_MARKS = 20
"""Protocol marks beyond this many are drawn as lines without their text."""

FIGURE_DPI = 100

NOISE_LEVEL_BANDS = (
    # (low, high, label, colour): science.md section 1, "about 1 is excellent (Allen Brain
    # Observatory), 2-4 decent, above 5-8 poor"; % per sqrt(s).
    (0.0, 1.5, "≈1 excellent", "#2ca02c"),
    (2.0, 4.0, "2–4 decent", "#ffbf00"),
    (5.0, math.inf, ">5–8 poor", "#d62728"),
)

FIGURE_FAILED = "Figure could not be drawn"


class SessionFolderError(ValueError):
    """Raised when a session folder lacks a readable summary.json or session.h5.

    The message names the file and what is wrong with it.
    """


@dataclass(frozen=True)
class SessionData:
    """Everything the report needs from one session folder, with empty arrays for what is absent.

    Arrays are already made consistent: `dff` has one row per entry of `frame_times_s`.
    """

    folder: pathlib.Path
    summary: dict[str, Any]
    events: list[dict[str, Any]]
    unreadable_event_lines: int
    frame_rate_hz: float
    pixel_size_um: tuple[float, float] | None
    frame_times_s: np.ndarray  # (frames,) device time of each frame, s
    frame_period_s: float
    frame_complete_s: np.ndarray  # (frames,) host time, s
    processing_done_s: np.ndarray  # (frames,) host time, s
    stimulus_issued_s: np.ndarray  # (frames,) host time, s, NaN where no stimulus
    dff: np.ndarray  # (frames, n_rois) fractional, NaN before ROIs exist
    noise_level: np.ndarray  # (n_rois,) % per sqrt(s)
    roi_pixels: np.ndarray  # flat pixel indices of all ROIs
    roi_offsets: np.ndarray  # ROI i = roi_pixels[roi_offsets[i]:roi_offsets[i + 1]]
    roi_centroids_px: np.ndarray  # (n_rois, 2) (y, x), NaN where unknown
    mean_image: np.ndarray | None  # (H, W)
    stimulus_device_time_s: np.ndarray  # (stimuli,)

    @property
    def n_rois(self) -> int:
        return max(len(self.roi_offsets) - 1, 0)


@dataclass(frozen=True)
class _FigureSpec:
    file_name: str
    title: str
    draw: Callable[[Figure, SessionData], str]  # draws into the figure, returns caption details
    caption: str
    size_in: tuple[float, float]


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


#: figures that protocols and analyses add to a session (PNG + same-name .txt caption)
EXTRA_FIGURES = "figures/extra"


def add_figure(
    session_dir: str | os.PathLike[str], name: str, figure: Figure, caption: str
) -> pathlib.Path:
    """Save a matplotlib Figure (Agg) into the session so its report shows it with caption."""
    folder = pathlib.Path(session_dir) / EXTRA_FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=FIGURE_DPI)
    path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def write_report(session_dir: str | os.PathLike[str]) -> pathlib.Path:
    """Write `report.html` and `figures/*.png` into `session_dir`; return the report's path.

    Raises SessionFolderError (a ValueError) naming summary.json or session.h5 when either is
    missing or unreadable. Anything else (no frames, no ROIs, no stimuli, missing optional
    datasets, a figure that fails on odd data) still yields a report that says so.
    """
    data = read_session(session_dir)
    figures_dir = data.folder / "figures"
    figures_dir.mkdir(exist_ok=True)
    rendered: list[tuple[_FigureSpec, str]] = []
    for spec in _FIGURES:
        details = _render_figure(spec, data, figures_dir / spec.file_name)
        rendered.append((spec, details))
    report_path = data.folder / "report.html"
    report_path.write_text(_html_page(data, rendered), encoding="utf-8")
    return report_path


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_session(session_dir: str | os.PathLike[str]) -> SessionData:
    """Read summary.json, events.jsonl (optional) and session.h5 into a SessionData."""
    folder = pathlib.Path(session_dir)
    if not folder.is_dir():
        raise SessionFolderError(f"session_dir = {str(folder)!r} is not a directory")
    summary = _read_summary(folder / "summary.json")
    events, unreadable = _read_events(folder / "events.jsonl")
    h5_path = folder / "session.h5"
    if not h5_path.is_file():
        raise SessionFolderError(f"{h5_path} is missing; a session folder needs session.h5")
    try:
        with h5py.File(h5_path, "r") as h5:
            return _read_h5(h5, folder, summary, events, unreadable)
    except (OSError, KeyError, TypeError, ValueError) as error:
        # not HDF5, truncated, or a dataset of the wrong kind (strings where numbers belong)
        raise SessionFolderError(
            f"{h5_path} is not a readable session file ({type(error).__name__}: {error}); "
            "see docs/SESSION_FORMAT.md for its datasets"
        ) from error


def _read_summary(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        raise SessionFolderError(
            f"{path} is missing; write_report needs the session's summary.json"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SessionFolderError(f"{path} is not readable JSON: {error}") from error
    if not isinstance(summary, dict):
        raise SessionFolderError(f"{path} must hold a JSON object, found {type(summary).__name__}")
    return summary


def _read_events(path: pathlib.Path) -> tuple[list[dict[str, Any]], int]:
    """Parse events.jsonl; lines that are not JSON objects (a torn last line) are counted."""
    from rig.session import read_events

    return read_events(path)


def _dataset(
    h5: h5py.File, name: str, dtype: Any, empty_shape: tuple[int, ...] = (0,)
) -> np.ndarray:
    """The dataset as an array of `dtype`, or an empty array when it is absent."""
    node = h5.get(name)
    if isinstance(node, h5py.Dataset) and node.shape is not None:
        return np.asarray(node[()], dtype=dtype)
    return np.empty(empty_shape, dtype=dtype)


def _read_h5(
    h5: h5py.File,
    folder: pathlib.Path,
    summary: dict[str, Any],
    events: list[dict[str, Any]],
    unreadable: int,
) -> SessionData:
    timestamps_s = _dataset(h5, "timestamps", np.float64)
    dff = _dataset(h5, "dff", np.float32, (len(timestamps_s), 0))
    if dff.ndim != 2:
        dff = np.empty((len(timestamps_s), 0), dtype=np.float32)

    frame_rate_hz = _finite_float(h5.attrs.get("frame_rate_hz"), summary.get("frame_rate_hz"))
    frame_period_s = _frame_period_s(timestamps_s, frame_rate_hz)
    n_frames = dff.shape[0] if dff.shape[1] > 0 else len(timestamps_s)
    frame_times_s = _frame_times_s(timestamps_s, n_frames, frame_period_s)
    if dff.shape[0] != n_frames:
        dff = dff[:n_frames]

    roi_offsets = _dataset(h5, "rois/offsets", np.int64)
    roi_pixels = _dataset(h5, "rois/pixels", np.int64)
    if (
        len(roi_offsets) < 2
        or roi_offsets[-1] > len(roi_pixels)
        or np.any(np.diff(roi_offsets) < 0)
    ):
        roi_offsets = np.zeros(1, dtype=np.int64)
    n_rois = len(roi_offsets) - 1
    centroids = _dataset(h5, "rois/centroids_px", np.float64, (0, 2))
    if centroids.shape != (n_rois, 2):
        centroids = np.full((n_rois, 2), np.nan)

    mean_image = _dataset(h5, "mean_image", np.float32, (0, 0))
    if mean_image.ndim != 2 or mean_image.size == 0:
        mean_image = _mean_of_raw_frames(h5)

    return SessionData(
        folder=folder,
        summary=summary,
        events=events,
        unreadable_event_lines=unreadable,
        frame_rate_hz=frame_rate_hz,
        pixel_size_um=_pixel_size_um(h5.attrs.get("pixel_size_um")),
        frame_times_s=frame_times_s,
        frame_period_s=frame_period_s,
        frame_complete_s=_dataset(h5, "timing/frame_complete_s", np.float64),
        processing_done_s=_dataset(h5, "timing/processing_done_s", np.float64),
        stimulus_issued_s=_dataset(h5, "timing/stimulus_issued_s", np.float64),
        dff=dff,
        noise_level=_dataset(h5, "noise_level", np.float64),
        roi_pixels=roi_pixels,
        roi_offsets=roi_offsets,
        roi_centroids_px=centroids,
        mean_image=mean_image,
        stimulus_device_time_s=_dataset(h5, "stimuli/device_time_s", np.float64),
    )


def _mean_of_raw_frames(h5: h5py.File, max_frames: int = 300) -> np.ndarray | None:
    """Fallback when mean_image is absent: the mean of the first raw frames, if recorded."""
    from rig.session import open_frames  # raw frames may live in an external stream file

    frames = open_frames(h5)
    if not isinstance(frames, h5py.Dataset) or frames.ndim != 3 or frames.shape[0] == 0:
        return None
    return np.asarray(frames[:max_frames], dtype=np.float32).mean(axis=0)


def _finite_float(*candidates: Any) -> float:
    for value in candidates:
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number) and number > 0:
            return number
    return math.nan


def _pixel_size_um(value: Any) -> tuple[float, float] | None:
    """(y, x) pixel size in um from the root attribute, accepting a scalar for square pixels."""
    if value is None:
        return None
    sizes = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if sizes.size == 1:
        sizes = np.repeat(sizes, 2)
    if sizes.size != 2 or not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
        return None
    return float(sizes[0]), float(sizes[1])


def _frame_period_s(timestamps_s: np.ndarray, frame_rate_hz: float) -> float:
    if math.isfinite(frame_rate_hz):
        return 1.0 / frame_rate_hz
    steps = np.diff(timestamps_s)
    steps = steps[np.isfinite(steps) & (steps > 0)]
    return float(np.median(steps)) if steps.size else 1.0


def _frame_times_s(timestamps_s: np.ndarray, n_frames: int, frame_period_s: float) -> np.ndarray:
    """Recorded frame times, or frame index x period when they are missing or not increasing."""
    times = timestamps_s[:n_frames]
    if len(times) == n_frames and np.all(np.isfinite(times)) and np.all(np.diff(times) > 0):
        return times
    return np.arange(n_frames, dtype=np.float64) * frame_period_s


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _render_figure(spec: _FigureSpec, data: SessionData, path: pathlib.Path) -> str:
    """Draw and save one figure; on failure save a figure stating the error, and return it.

    A report is the last record of a session, so one figure failing on unexpected data must
    not cost the rest; the failure is shown in the figure and its caption, never hidden.
    """
    try:
        figure = Figure(figsize=spec.size_in, dpi=FIGURE_DPI, layout="constrained")
        FigureCanvasAgg(figure)
        details = spec.draw(figure, data)
        figure.suptitle(spec.title, fontsize=13, fontweight="bold")
        figure.savefig(path, dpi=FIGURE_DPI)
    except Exception as error:  # noqa: BLE001 - shown in the report, see docstring
        details = f"{FIGURE_FAILED}: {type(error).__name__}: {error}"
        fallback = Figure(figsize=(8.0, 2.5), dpi=FIGURE_DPI)
        FigureCanvasAgg(fallback)
        _note(fallback.add_subplot(), details)
        fallback.suptitle(spec.title, fontsize=13, fontweight="bold")
        fallback.savefig(path, dpi=FIGURE_DPI)
    return details


def _note(ax: Axes, text: str) -> None:
    """Replace an axes' content by a centred message (for 'no ROIs', 'no stimuli', ...)."""
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        fontsize=12,
        color="0.3",
        transform=ax.transAxes,
        wrap=True,
    )


def _robust_limits(values: np.ndarray, low_pct: float, high_pct: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [low_pct, high_pct])
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return float(low), float(high)


# --- 1. mean image with ROI outlines ---------------------------------------------------------


def _draw_mean_image(figure: Figure, data: SessionData) -> str:
    ax = figure.add_subplot()
    image = data.mean_image
    if image is None:
        _note(ax, "No mean image recorded")
        return "No mean image was recorded."
    height_px, width_px = image.shape
    scale_y, scale_x = data.pixel_size_um or (1.0, 1.0)
    unit = "µm" if data.pixel_size_um else "px"
    low, high = _robust_limits(image, 1.0, 99.5)
    extent = (
        -0.5 * scale_x,
        (width_px - 0.5) * scale_x,
        (height_px - 0.5) * scale_y,
        -0.5 * scale_y,
    )
    shown = ax.imshow(
        image, cmap="gray", vmin=low, vmax=high, extent=extent, interpolation="nearest"
    )
    colorbar = figure.colorbar(shown, ax=ax, shrink=0.8)
    colorbar.set_label("mean fluorescence (raw units)")
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"y ({unit})")

    n_rois = data.n_rois
    if n_rois == 0:
        ax.set_title("no ROIs detected")
        return "No ROIs were detected."
    segments, colours, centroids = _roi_outlines(data, height_px, width_px)
    outline_set = LineCollection(
        segments * np.array([scale_x, scale_y]), colors=colours, linewidths=1.0
    )
    ax.add_collection(outline_set)
    step = max(1, math.ceil(n_rois / MAX_LABELLED_ROIS))
    stroke = [patheffects.withStroke(linewidth=2, foreground="black")]
    for roi in range(0, n_rois, step):
        y_px, x_px = centroids[roi]
        if math.isfinite(y_px) and math.isfinite(x_px):
            ax.text(
                x_px * scale_x,
                y_px * scale_y,
                str(roi),
                color="white",
                fontsize=7,
                ha="center",
                va="center",
                path_effects=stroke,
            )
    ax.set_title(f"{n_rois} ROIs")
    numbering = "every ROI is numbered" if step == 1 else f"every {step}th ROI is numbered"
    return (
        f"{n_rois} ROI outlines (pixel edges of each ROI's pixel list, colour per ROI); "
        f"{numbering} (number = column in session.h5 datasets, from 0)."
    )


def _roi_outlines(
    data: SessionData, height_px: int, width_px: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outline segments (n, 2 points, (x, y) in pixels), their RGBA colours, ROI centroids (y, x).

    An outline is every pixel edge between an ROI pixel and a non-ROI pixel, so overlapping
    ROIs keep their own outlines. Centroids come from rois/centroids_px when recorded, else
    from the mean pixel position.
    """
    palette = colormaps["tab20"]
    segment_blocks: list[np.ndarray] = []
    colour_blocks: list[np.ndarray] = []
    centroids = data.roi_centroids_px.copy()
    n_pixels = height_px * width_px
    for roi in range(data.n_rois):
        pixels = data.roi_pixels[data.roi_offsets[roi] : data.roi_offsets[roi + 1]]
        pixels = pixels[(pixels >= 0) & (pixels < n_pixels)]
        if pixels.size == 0:
            continue
        ys, xs = np.divmod(pixels, width_px)
        if not np.all(np.isfinite(centroids[roi])):
            centroids[roi] = ys.mean(), xs.mean()
        y0, x0 = ys.min() - 1, xs.min() - 1  # mask origin, padded by one pixel on each side
        mask = np.zeros((ys.max() - y0 + 2, xs.max() - x0 + 2), dtype=bool)
        mask[ys - y0, xs - x0] = True
        # edges between vertically adjacent cells: horizontal segments at y = row + 1/2
        rows, cols = np.nonzero(mask[1:, :] != mask[:-1, :])
        y, x = rows + y0 + 0.5, cols + x0
        horizontal = np.stack([np.stack([x - 0.5, y], -1), np.stack([x + 0.5, y], -1)], axis=1)
        # edges between horizontally adjacent cells: vertical segments at x = col + 1/2
        rows, cols = np.nonzero(mask[:, 1:] != mask[:, :-1])
        y, x = rows + y0, cols + x0 + 0.5
        vertical = np.stack([np.stack([x, y - 0.5], -1), np.stack([x, y + 0.5], -1)], axis=1)
        segment_blocks += [horizontal, vertical]
        colour_blocks.append(
            np.tile(palette(roi % palette.N), (len(horizontal) + len(vertical), 1))
        )
    if not segment_blocks:
        return np.empty((0, 2, 2)), np.empty((0, 4)), centroids
    return np.concatenate(segment_blocks), np.concatenate(colour_blocks), centroids


# --- 2. dF/F raster with stimuli and example traces -------------------------------------------


def bin_in_time(
    values: np.ndarray, times_s: np.ndarray, frame_period_s: float, max_bins: int
) -> tuple[np.ndarray, float, float]:
    """NaN-aware mean of `values` (frames, n) in time bins; returns (bins, first_edge_s, bin_s).

    bin_s = max(frame_period_s, span / max_bins), so there are at most about `max_bins` bins
    and never more than one per frame. Bin k covers [first_edge_s + k bin_s, ... + bin_s),
    first_edge_s = times_s[0] - frame_period_s / 2 (frames sit at bin centres when bin_s is
    one period). Bins without a finite value are NaN. `times_s` must be increasing.
    """
    n_frames, n_columns = values.shape
    if n_frames == 0:
        return np.empty((0, n_columns), dtype=np.float32), 0.0, frame_period_s
    first_edge_s = float(times_s[0]) - 0.5 * frame_period_s
    span_s = float(times_s[-1]) - first_edge_s + 0.5 * frame_period_s
    bin_s = max(frame_period_s, span_s / max_bins)
    bin_index = np.floor((times_s - first_edge_s) / bin_s).astype(np.int64)
    n_bins = int(bin_index[-1]) + 1
    finite = np.isfinite(values)
    starts = np.flatnonzero(np.diff(bin_index, prepend=-1))
    sums = np.add.reduceat(np.where(finite, values, np.float32(0.0)), starts, axis=0)
    counts = np.add.reduceat(finite.astype(np.int32), starts, axis=0)
    binned = np.full((n_bins, n_columns), np.nan, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        binned[bin_index[starts]] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return binned, first_edge_s, bin_s


def highest_variance_rois(dff: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to `count` ROIs with the largest variance over their finite samples."""
    finite = np.isfinite(dff)
    n_finite = finite.sum(axis=0)
    filled = np.where(finite, dff, np.float32(0.0)).astype(np.float64)
    mean = filled.sum(axis=0) / np.maximum(n_finite, 1)
    variance = (np.where(finite, filled - mean, 0.0) ** 2).sum(axis=0) / np.maximum(n_finite, 1)
    variance[n_finite < 2] = -np.inf
    order = np.argsort(variance)[::-1][:count]
    return order[np.isfinite(variance[order])]


def _stimulus_lines(ax: Axes, stimulus_times_s: np.ndarray, alpha: float) -> None:
    if stimulus_times_s.size:
        ax.vlines(
            stimulus_times_s,
            0.0,
            1.0,
            transform=ax.get_xaxis_transform(),
            colors="tab:red",
            linewidths=0.8,
            alpha=alpha,
        )


def _draw_dff_raster(figure: Figure, data: SessionData) -> str:
    n_frames, n_rois = data.dff.shape
    if n_frames == 0 or n_rois == 0:
        _note(figure.add_subplot(), "No frames recorded" if n_frames == 0 else "No ROIs detected")
        return "No dF/F to show: " + ("no frames were recorded." if n_frames == 0 else "no ROIs.")
    grid = figure.add_gridspec(3, 2, height_ratios=[0.6, 5.0, 3.0], width_ratios=[40, 1])
    ax_stim = figure.add_subplot(grid[0, 0])
    ax_raster = figure.add_subplot(grid[1, 0], sharex=ax_stim)
    ax_colorbar = figure.add_subplot(grid[1, 1])
    ax_traces = figure.add_subplot(grid[2, 0], sharex=ax_stim)

    binned, first_edge_s, bin_s = bin_in_time(
        data.dff, data.frame_times_s, data.frame_period_s, MAX_RASTER_TIME_BINS
    )
    raster_pct = 100.0 * binned.T
    low, high = _robust_limits(raster_pct, 1.0, 99.0)
    cmap = colormaps["viridis"].with_extremes(bad="0.85")
    last_edge_s = first_edge_s + binned.shape[0] * bin_s
    shown = ax_raster.imshow(
        np.ma.masked_invalid(raster_pct),
        aspect="auto",
        cmap=cmap,
        vmin=low,
        vmax=high,
        extent=(first_edge_s, last_edge_s, n_rois - 0.5, -0.5),
        interpolation="antialiased",
    )
    colorbar = figure.colorbar(shown, cax=ax_colorbar)
    colorbar.set_label("dF/F (%)")
    ax_raster.set_ylabel("ROI")
    ax_raster.tick_params(labelbottom=False)

    stimuli_s = data.stimulus_device_time_s[np.isfinite(data.stimulus_device_time_s)]
    ax_stim.set_yticks([])
    ax_stim.tick_params(labelbottom=False)
    ax_stim.set_ylabel("stim", rotation=0, ha="right", va="center")
    if stimuli_s.size:
        _stimulus_lines(ax_stim, stimuli_s, alpha=0.9)
        if stimuli_s.size <= 100:  # more lines would hide the raster
            _stimulus_lines(ax_raster, stimuli_s, alpha=0.5)
    else:
        ax_stim.text(0.5, 0.5, "no stimuli", transform=ax_stim.transAxes, ha="center", va="center")
    ax_stim.set_xlim(first_edge_s, last_edge_s)

    examples = highest_variance_rois(data.dff, N_EXAMPLE_TRACES)
    if examples.size:
        traces_pct = 100.0 * data.dff[:, examples]
        ranges = np.nanmax(traces_pct, axis=0) - np.nanmin(traces_pct, axis=0)
        spacing = 1.1 * float(np.max(ranges)) if np.max(ranges) > 0 else 1.0
        for rank, roi in enumerate(examples):
            ax_traces.plot(
                data.frame_times_s,
                traces_pct[:, rank] - rank * spacing,
                linewidth=0.7,
                label=f"ROI {roi}",
            )
        ax_traces.set_yticks(-spacing * np.arange(examples.size), [f"ROI {r}" for r in examples])
        ax_traces.set_ylabel(f"dF/F (%),\noffset {spacing:.3g} % apart")
    else:
        ax_traces.text(0.5, 0.5, "no finite dF/F", transform=ax_traces.transAxes, ha="center")
    _stimulus_lines(ax_traces, stimuli_s, alpha=0.35)
    ax_traces.set_xlabel("time (s, device clock)")

    frames_per_bin = bin_s / data.frame_period_s
    binning = (
        "one column per frame"
        if frames_per_bin < 1.5
        else f"each column is the mean of {bin_s:.3g} s (≈{frames_per_bin:.0f} frames), "
        f"downsampled for display"
    )
    return (
        f"{n_rois} ROIs × {n_frames} frames; {binning}; colour limits are the 1st and 99th "
        f"percentiles; grey = no dF/F yet (frames before ROI detection) or no frames. "
        f"Red lines: {stimuli_s.size} stimulus onsets (top strip; also across the raster when "
        f"there are at most 100). Bottom: the {examples.size} ROIs with "
        f"the highest dF/F variance, full resolution."
    )


# --- 3. noise levels ---------------------------------------------------------------------------


def _draw_noise_levels(figure: Figure, data: SessionData) -> str:
    ax = figure.add_subplot()
    levels = data.noise_level[np.isfinite(data.noise_level)]
    if levels.size == 0:
        _note(ax, "No ROIs: no noise levels" if data.n_rois == 0 else "No finite noise levels")
        return "No noise levels to show."
    median = float(np.median(levels))
    high_edge = max(10.0, float(np.percentile(levels, 99)) * 1.1)
    for low, high, label, colour in NOISE_LEVEL_BANDS:
        ax.axvspan(low, min(high, high_edge), color=colour, alpha=0.15, label=label, linewidth=0)
    # bins fine enough to resolve the spread of a tight distribution, at most 400 over the axis
    p5, p95 = np.percentile(levels, [5, 95])
    bin_width = float(np.clip((p95 - p5) / 15, high_edge / 400, high_edge / 60))
    bins = np.arange(0.0, high_edge + bin_width, bin_width)
    ax.hist(np.minimum(levels, high_edge), bins=bins, color="0.3")
    ax.axvline(median, color="black", linestyle="--", linewidth=1.5, label=f"median {median:.2f}")
    ax.set_xlim(0.0, high_edge)
    ax.set_xlabel("noise level ν (% / √s)")
    ax.set_ylabel("ROIs")
    ax.legend(loc="upper right", fontsize=9)
    return (
        f"CASCADE noise level ν = 100 · median|ΔdF/F| / √(frame rate) of {levels.size} ROIs "
        f"(median {median:.2f} % / √s; values above {high_edge:.3g} in the last bin). Bands: "
        f"about 1 is excellent (Allen Brain Observatory), 2–4 decent, above 5–8 poor."
    )


# --- 4. stimuli and protocol marks --------------------------------------------------------------


def protocol_marks(data: SessionData) -> list[tuple[float, str]]:
    """(device time s, text) of each `protocol` event that can be placed on the device clock.

    An event's own `device_time_s` wins, then its `frame`'s timestamp, then its host time
    interpolated through the frames' (frame_complete_s, timestamps) pairs.
    """
    n = min(len(data.frame_times_s), len(data.frame_complete_s))
    host_s, device_s = data.frame_complete_s[:n], data.frame_times_s[:n]
    known = np.isfinite(host_s)
    host_s, device_s = host_s[known], device_s[known]
    can_interpolate = host_s.size >= 2 and bool(np.all(np.diff(host_s) > 0))
    marks: list[tuple[float, str]] = []
    for event in data.events:
        if event.get("type") != "protocol":
            continue
        device_time = event.get("device_time_s")
        frame = event.get("frame")
        host_time = event.get("host_time_s")
        if isinstance(device_time, (int, float)) and math.isfinite(device_time):
            time_s = float(device_time)
        elif isinstance(frame, int) and 0 <= frame < len(data.frame_times_s):
            time_s = float(data.frame_times_s[frame])
        elif isinstance(host_time, (int, float)) and can_interpolate:
            time_s = float(np.interp(host_time, host_s, device_s))
        else:
            continue
        marks.append((time_s, _event_text(event)))
    return marks


def _event_text(event: dict[str, Any]) -> str:
    for key in ("name", "mark", "label", "event", "message", "text"):
        if isinstance(event.get(key), str):
            return event[key]
    rest = {k: v for k, v in event.items() if k not in ("type", "host_time_s", "frame")}
    return json.dumps(rest, default=str)[:40]


def _draw_stimuli(figure: Figure, data: SessionData) -> str:
    stimuli_s = np.sort(data.stimulus_device_time_s[np.isfinite(data.stimulus_device_time_s)])
    marks = protocol_marks(data)
    if stimuli_s.size == 0 and not marks:
        _note(figure.add_subplot(), "No stimuli delivered")
        return "No stimuli were delivered and the protocol recorded no marks."
    ax_time, ax_isi = figure.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    recorded_end_s = (
        [float(data.frame_times_s[-1]) + data.frame_period_s] if data.frame_times_s.size else []
    )
    end_s = max([0.0, *recorded_end_s, *stimuli_s[-1:], *(time_s for time_s, _ in marks)])
    if stimuli_s.size:
        count = np.arange(1, stimuli_s.size + 1)
        ax_time.step(
            np.r_[0.0, stimuli_s, end_s],
            np.r_[0, count, count[-1]],
            where="post",
            color="tab:red",
            label="stimuli delivered",
        )
        ax_time.plot(stimuli_s, np.zeros_like(stimuli_s), "|", color="tab:red", markersize=10)
    for index, (time_s, text) in enumerate(marks):
        ax_time.axvline(
            time_s,
            color="tab:blue",
            linestyle=":",
            linewidth=1,
            label="protocol mark" if index == 0 else None,
        )
        if index < MAX_LABELLED_PROTOCOL_MARKS:
            ax_time.text(
                time_s,
                1.0,
                text,
                rotation=90,
                fontsize=7,
                va="top",
                ha="right",
                color="tab:blue",
                transform=ax_time.get_xaxis_transform(),
            )
    ax_time.set_ylabel("cumulative stimuli")
    ax_time.set_xlim(0.0, end_s if end_s > 0 else 1.0)
    if stimuli_s.size or marks:
        ax_time.legend(loc="lower right", fontsize=9)

    intervals_s = np.diff(stimuli_s)
    if intervals_s.size:
        ax_isi.plot(stimuli_s[1:], intervals_s, ".", color="tab:red", markersize=4)
        positive = intervals_s[intervals_s > 0]
        if positive.size and positive.max() / positive.min() > 20:
            ax_isi.set_yscale("log")
        ax_isi.set_ylabel("inter-stimulus\ninterval (s)")
        isi_text = (
            f"inter-stimulus interval median {np.median(intervals_s):.3g} s "
            f"(min {intervals_s.min():.3g} s, max {intervals_s.max():.3g} s)"
        )
    else:
        ax_isi.text(
            0.5,
            0.5,
            "fewer than 2 stimuli: no intervals",
            transform=ax_isi.transAxes,
            ha="center",
            va="center",
        )
        ax_isi.set_yticks([])
        isi_text = "no inter-stimulus intervals"
    ax_isi.set_xlabel("time (s, device clock)")
    if stimuli_s.size == 0:
        ax_time.text(
            0.5,
            0.5,
            "no stimuli delivered",
            transform=ax_time.transAxes,
            ha="center",
            va="center",
            color="0.3",
        )
        stimulus_text = "No stimuli were delivered"
    else:
        stimulus_text = (
            f"Top: cumulative count of the {stimuli_s.size} stimuli (ticks at each onset)"
        )
    return (
        f"{stimulus_text}; {len(marks)} protocol marks from events.jsonl (dotted). Bottom: "
        f"each interval plotted at the later stimulus; {isi_text}."
    )


# --- 5. latency ---------------------------------------------------------------------------------


def _latencies_ms(data: SessionData) -> tuple[np.ndarray, np.ndarray]:
    """(frame complete -> processing done, frame complete -> stimulus issued), finite, in ms."""

    def difference_ms(later: np.ndarray) -> np.ndarray:
        n = min(len(later), len(data.frame_complete_s))
        latency = 1000.0 * (later[:n] - data.frame_complete_s[:n])
        return latency[np.isfinite(latency)]

    return difference_ms(data.processing_done_s), difference_ms(data.stimulus_issued_s)


def _draw_latency(figure: Figure, data: SessionData) -> str:
    processing_ms, stimulus_ms = _latencies_ms(data)
    axes = figure.subplots(2, 1)
    parts = []
    for ax, values, what, colour in (
        (axes[0], processing_ms, "frame complete → processing done", "tab:blue"),
        (axes[1], stimulus_ms, "frame complete → stimulus issued", "tab:red"),
    ):
        ax.set_title(what, fontsize=10)
        if values.size == 0:
            _note(ax, f"no frames with {what.split('→ ')[1]}")
            parts.append(f"{what}: none")
            continue
        p50, p99 = np.percentile(values, [50, 99])
        positive = values[values > 0]
        log_scale = positive.size == values.size and positive.max() / positive.min() > 30
        if log_scale:
            bins = np.geomspace(positive.min(), positive.max() * 1.0001, 60)
            ax.set_xscale("log")
        else:
            bins = np.linspace(values.min(), values.max() + 1e-9, 60)
        ax.hist(values, bins=bins, color=colour, alpha=0.8)
        ax.axvline(p50, color="black", linestyle="--", label=f"p50 {p50:.3g} ms")
        ax.axvline(p99, color="black", linestyle=":", label=f"p99 {p99:.3g} ms")
        ax.set_xlabel("latency (ms)" + (", log scale" if log_scale else ""))
        ax.set_ylabel("frames")
        ax.legend(loc="upper right", fontsize=9)
        parts.append(
            f"{what}: {values.size} frames, p50 {p50:.3g} ms, p99 {p99:.3g} ms, "
            f"max {values.max():.3g} ms"
        )
    return "Host-clock latencies from timing/* in session.h5. " + "; ".join(parts) + "."


_FIGURES = (
    _FigureSpec(
        "mean_image_rois.png",
        "Mean image and ROIs",
        _draw_mean_image,
        "Mean image of the reference period (grey scale clipped at the 1st and 99.5th "
        "percentiles) with ROI outlines.",
        (8.0, 7.5),
    ),
    _FigureSpec(
        "dff_raster.png",
        "dF/F of every ROI",
        _draw_dff_raster,
        "Causal dF/F raster (ROIs × device time) with stimulus onsets, and example traces.",
        (12.0, 8.0),
    ),
    _FigureSpec(
        "noise_levels.png",
        "Noise level per ROI",
        _draw_noise_levels,
        "Histogram of the session-wide noise level per ROI with the median and the "
        "reference bands.",
        (8.0, 4.5),
    ),
    _FigureSpec(
        "stimuli.png",
        "Stimuli and protocol marks",
        _draw_stimuli,
        "Stimulus timeline on the device clock and inter-stimulus intervals.",
        (12.0, 5.5),
    ),
    _FigureSpec(
        "latency.png",
        "Closed-loop latency",
        _draw_latency,
        "Latency histograms with p50 and p99 marked.",
        (8.0, 6.5),
    ),
)


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }
h1 { margin-bottom: 0.2em; } .status { padding: 0.1em 0.5em; border-radius: 4px; color: white; }
.completed { background: #2c7a2c; } .aborted { background: #b3261e; } .unknown { background: #777; }
.error { border: 2px solid #b3261e; background: #fdecea; padding: 0.8em 1em; margin: 1em 0; }
.error pre, pre { white-space: pre-wrap; word-break: break-word; font-size: 0.85em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; font-weight: 600; } td.number { text-align: right; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; max-width: 1000px; }
details { margin: 0.5em 0; } summary { cursor: pointer; font-weight: 600; }
"""


def _format_value(value: Any) -> str:
    """How a number appears in the report: integers in full, floats to 4 significant digits
    (at least 1 decimal from 100 on, never in exponent form for values >= 0.001), '—' if absent.
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—" if math.isnan(value) else str(value)
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        if abs(value) >= 100:
            return f"{value:.1f}"
        if abs(value) >= 0.001:
            return f"{value:.4g}"
        return f"{value:.3g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _summary_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label with unit, value) of the summary's main numbers, in the order shown."""

    def trio(key: str, names: tuple[str, ...]) -> str:
        return " / ".join(_format_value(_get(summary, key, name)) for name in names)

    rows = [
        ("Frames", summary.get("frames")),
        ("Frames dropped", summary.get("frames_dropped")),
        ("Frame rate (Hz)", summary.get("frame_rate_hz")),
        ("Duration, device clock (s)", summary.get("duration_s")),
        ("Wall time (s)", summary.get("wall_time_s")),
        ("ROIs", summary.get("n_rois")),
        ("Stimuli", summary.get("stimuli")),
        (
            "Latency frame → processed p50 / p99 / max (ms)",
            trio("latency_ms", ("p50", "p99", "max")),
        ),
        (
            "Latency frame → stimulus p50 / p99 / max (ms)",
            trio("stimulus_latency_ms", ("p50", "p99", "max")),
        ),
        ("Frames that stimulated", _get(summary, "stimulus_latency_ms", "count")),
        ("Processing time median / p99 (ms)", trio("processing_ms", ("median", "p99"))),
        ("Noise level median / p10 / p90 (% / √s)", trio("noise_level", ("median", "p10", "p90"))),
        ("Seed", summary.get("seed")),
        ("Rig", summary.get("rig")),
        ("Speed", summary.get("speed")),
    ]
    zstack = summary.get("reference_zstack")
    if isinstance(zstack, dict):
        kept = f"{_format_value(zstack.get('kept'))} of {_format_value(zstack.get('detected'))}"
        rows.insert(6, ("ROIs in focus by the reference z-stack", kept))
    accuracy = summary.get("accuracy")
    if isinstance(accuracy, dict) and "roi_recall" in accuracy:
        rows.append(
            (
                "Against ground truth: ROI recall / precision, motion RMS (px), spike corr",
                trio("accuracy", ("roi_recall", "roi_precision", "motion_rms_px", "spike_corr")),
            )
        )
    return rows


def _table(rows: list[tuple[str, Any]], header: tuple[str, str] | None = None) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    lines = ["<table>"]
    if header:
        lines.append(f"<tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>")
    for label, value in rows:
        css = (
            ' class="number"'
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            else ""
        )
        lines.append(
            f"<tr><th>{html.escape(str(label))}</th>"
            f"<td{css}>{html.escape(_format_value(value))}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _json_block(value: Any) -> str:
    return f"<pre>{html.escape(json.dumps(value, indent=2, default=str, sort_keys=True))}</pre>"


def _last_error_event(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    errors = [event for event in events if event.get("type") == "error"]
    return errors[-1] if errors else None


def _error_section(event: dict[str, Any]) -> str:
    message = next(
        (event[k] for k in ("error", "message", "text") if isinstance(event.get(k), str)), ""
    )
    traceback = next(
        (event[k] for k in ("traceback", "trace") if isinstance(event.get(k), str)), ""
    )
    where = f" at frame {event['frame']}" if "frame" in event else ""
    parts = [f'<section class="error"><h2>Last error in events.jsonl{html.escape(where)}</h2>']
    if message:
        parts.append(f"<p><strong>{html.escape(message)}</strong></p>")
    if traceback:
        parts.append(f"<pre>{html.escape(traceback)}</pre>")
    parts.append(f"<details><summary>Full event</summary>{_json_block(event)}</details></section>")
    return "\n".join(parts)


def _event_counts(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    counts: dict[str, int] = {}
    for event in events:
        kind = str(event.get("type", "?"))
        counts[kind] = counts.get(kind, 0) + 1
    return sorted(counts.items())


def _html_page(data: SessionData, figures: list[tuple[_FigureSpec, str]]) -> str:
    summary = data.summary
    protocol = summary.get("protocol") if isinstance(summary.get("protocol"), dict) else {}
    name = str(protocol.get("name") or "unknown protocol")
    status = str(summary.get("status") or "unknown")
    status_css = status if status in ("completed", "aborted") else "unknown"
    title = f"{name} — {status}"
    badge = f'<span class="status {status_css}">{html.escape(status)}</span>'
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(name)} {badge}</h1>",
        f"<p>Session folder <code>{html.escape(data.folder.name)}</code>"
        + (
            f", protocol file <code>{html.escape(str(protocol['file']))}</code>"
            if protocol.get("file")
            else ""
        )
        + "</p>",
    ]
    if summary.get("error") or status == "aborted":
        error_text = str(summary.get("error") or "no error text recorded")
        parts.append(
            f'<section class="error"><h2>Session aborted</h2>'
            f"<pre>{html.escape(error_text)}</pre></section>"
        )
    last_error = _last_error_event(data.events)
    if last_error is not None:
        parts.append(_error_section(last_error))
    parts += ["<h2>Summary</h2>", _table(_summary_rows(summary))]
    parameters = protocol.get("parameters") if isinstance(protocol.get("parameters"), dict) else {}
    metrics = protocol.get("metrics") if isinstance(protocol.get("metrics"), dict) else {}
    parts += [
        "<h2>Protocol parameters</h2>",
        _table(list(parameters.items()), ("parameter", "value")),
    ]
    parts += ["<h2>Protocol metrics</h2>", _table(list(metrics.items()), ("metric", "value"))]

    parts.append("<h2>Figures</h2>")
    for number, (spec, details) in enumerate(figures, start=1):
        src = html.escape(f"figures/{spec.file_name}", quote=True)
        parts.append(
            f'<figure id="{html.escape(spec.file_name.removesuffix(".png"))}">'
            f'<img src="{src}" alt="{html.escape(spec.title, quote=True)}">'
            f"<figcaption><strong>Figure {number}. {html.escape(spec.title)}.</strong> "
            f"{html.escape(spec.caption)} {html.escape(details)}</figcaption></figure>"
        )

    extra = sorted((data.folder / EXTRA_FIGURES).glob("*.png"))
    if extra:
        parts.append("<h2>Analysis and protocol figures</h2>")
    for path in extra:
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8") if caption_file.is_file() else ""
        src = html.escape(f"{EXTRA_FIGURES}/{path.name}", quote=True)
        parts.append(
            f'<figure><img src="{src}" alt="{html.escape(path.stem, quote=True)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    parts.append("<h2>Events</h2>")
    parts.append(_table(_event_counts(data.events), ("event type", "count")))
    if data.unreadable_event_lines:
        parts.append(
            f"<p>{data.unreadable_event_lines} line(s) of events.jsonl were not readable "
            f"JSON and were skipped.</p>"
        )
    parts.append("<h2>Devices and configuration</h2>")
    devices = summary.get("devices") or {}
    if isinstance(devices, list):
        devices = dict(enumerate(devices))
    if not isinstance(devices, dict):
        devices = {"devices": devices}
    for device_name, snapshot in devices.items():
        parts.append(
            f"<details><summary>Device {html.escape(str(device_name))}</summary>"
            f"{_json_block(snapshot)}</details>"
        )
    if not devices:
        parts.append("<p><em>no device snapshots recorded</em></p>")
    parts.append(
        f"<details><summary>Rig configuration</summary>{_json_block(summary.get('config'))}"
        "</details>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
