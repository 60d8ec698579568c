"""`rig analyze`: the batch coarse-graining analysis (analysis/rg) of recordings on disk.

Inputs (each PATH):

- a session folder (or its session.h5): the `deconvolved` or `activity` dataset if present,
  else `dff` (docs/SESSION_FORMAT.md: frames x ROIs, transposed here to neurons x frames);
  frames before the ROIs existed (all NaN, before the `roi_start_frame` attribute) are left out;
  the frame rate comes from the file;
- a .npy array or an .h5/.hdf5 file (neurons x frames): the dataset named after a colon
  (`file.h5:group/name`), else the only 2-D dataset, else one named activity, deconvolved, dff
  or data;
- an NWB file: the first RoiResponseSeries (time x ROIs), read with pynwb.

Writes per input, into the output folder: rg.json (analysis.rg.batch.analysis_to_dict plus an
`input` block) and figures in the layout of the paper's Figs. 3-5 (Meshulam et al. 2019):
rg_silence_activity.png (P0(K) with the fit and Q_K(x)), rg_spectra.png (covariance spectra vs
rank / K), rg_dynamics.png (C_K(t) vs t / tau_c and tau_c(K)), rg_variance.png (M2(K)). The
shuffle control is drawn in grey. A progress bar goes to stderr.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import h5py
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.rg.batch import RGAnalysis, RGOptions, analyze

SESSION_DATASETS = ("deconvolved", "activity", "dff")
ARRAY_DATASETS = ("activity", "deconvolved", "dff", "data")
FIGURE_DPI = 100


class InputError(ValueError):
    """A PATH cannot be read as neurons x frames activity; the message says what to do."""


@dataclass
class Recording:
    activity: np.ndarray  # (neurons, frames)
    frame_rate_hz: float | None
    source: str
    dataset: str
    frames_skipped: int = 0


# ---------------------------------------------------------------------------------------------
# reading


def load_recording(path_text: str) -> Recording:
    """Read one PATH (see the module docstring)."""
    dataset = None
    path = pathlib.Path(path_text)
    if not path.exists() and ":" in path_text:
        head, _, dataset = path_text.rpartition(":")
        path = pathlib.Path(head)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path_text}")
    if path.is_dir():
        h5 = path / "session.h5"
        if not h5.exists():
            raise InputError(f"{path} is a folder without session.h5 (not a session folder)")
        return _read_session(h5)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return Recording(_as_2d(np.load(path), str(path)), None, str(path), "array")
    if suffix == ".nwb":
        return _read_nwb(path)
    if suffix in (".h5", ".hdf5"):
        with h5py.File(path, "r") as f:
            if dataset is None and "dff" in f and "frame_rate_hz" in f.attrs:
                return _read_session(path)
        return _read_h5_array(path, dataset)
    raise InputError(
        f"{path}: unknown file type {suffix!r}; give a session folder, .npy, .h5/.hdf5 or .nwb"
    )


def _as_2d(array: np.ndarray, where: str) -> np.ndarray:
    if array.ndim != 2:
        raise InputError(f"{where}: expected a 2-D array (neurons x frames), got {array.shape}")
    return array


def _read_session(h5_path: pathlib.Path) -> Recording:
    with h5py.File(h5_path, "r") as f:
        name = next((n for n in SESSION_DATASETS if n in f), None)
        if name is None:
            raise InputError(f"{h5_path}: none of the datasets {SESSION_DATASETS} found")
        frames_by_rois = np.asarray(f[name], dtype=np.float64)
        rate = f.attrs.get("frame_rate_hz")
        start = int(f.attrs.get("roi_start_frame", 0) or 0)
    if frames_by_rois.ndim != 2 or frames_by_rois.shape[1] == 0:
        raise InputError(f"{h5_path}: dataset {name!r} has no ROIs (shape {frames_by_rois.shape})")
    before = frames_by_rois.shape[0]
    data = frames_by_rois[start:]
    all_nan = np.all(np.isnan(data), axis=1)
    first = int(np.argmin(all_nan)) if not all_nan.all() else data.shape[0]
    data = data[first:]
    skipped = before - data.shape[0]
    if np.isnan(data).any():
        bad = int(np.isnan(data).any(axis=1).sum())
        raise InputError(
            f"{h5_path}: dataset {name!r} has NaN in {bad} frame(s) after the ROIs exist; "
            "export the frames you want as a .npy array (neurons x frames) and analyze that"
        )
    rate_hz = float(rate) if rate is not None and math.isfinite(float(rate)) else None
    return Recording(data.T.copy(), rate_hz, str(h5_path), name, skipped)


def _read_h5_array(path: pathlib.Path, dataset: str | None) -> Recording:
    with h5py.File(path, "r") as f:
        if dataset is not None:
            if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
                raise InputError(f"{path}: no dataset {dataset!r}")
            name = dataset
        else:
            found: list[str] = []
            f.visititems(
                lambda n, obj: (
                    found.append(n) if isinstance(obj, h5py.Dataset) and obj.ndim == 2 else None
                )
            )
            if len(found) == 1:
                name = found[0]
            else:
                named = [n for n in ARRAY_DATASETS if n in found]
                if not named:
                    raise InputError(
                        f"{path}: {len(found)} 2-D datasets ({', '.join(found) or 'none'}); "
                        f"name one as {path}:DATASET"
                    )
                name = named[0]
        data = _as_2d(np.asarray(f[name]), f"{path}:{name}")
        rate = f[name].attrs.get("frame_rate_hz", f.attrs.get("frame_rate_hz"))
    return Recording(data, float(rate) if rate is not None else None, str(path), name)


def _read_nwb(path: pathlib.Path) -> Recording:
    try:
        import pynwb  # type: ignore[import-not-found]
    except ImportError as e:
        raise InputError(
            f"{path}: reading NWB files needs pynwb, which is not installed; "
            "install it (pip install pynwb) or export the traces as .npy (neurons x frames)"
        ) from e
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        series = next(
            (o for o in nwb.objects.values() if type(o).__name__ == "RoiResponseSeries"), None
        )
        if series is None:
            raise InputError(f"{path}: no RoiResponseSeries in the NWB file")
        data = np.asarray(series.data[:], dtype=np.float64)
        rate = series.rate
    if data.ndim == 1:
        data = data[:, None]
    return Recording(data.T.copy(), float(rate) if rate else None, str(path), series.name)


# ---------------------------------------------------------------------------------------------
# running


class ProgressBar:
    """`[#####.....]  45%  message` on one line of a stream (stderr)."""

    def __init__(self, stream: TextIO, label: str, width: int = 30) -> None:
        self.stream = stream
        self.label = label
        self.width = width

    def __call__(self, fraction: float, message: str) -> None:
        filled = int(round(self.width * min(max(fraction, 0.0), 1.0)))
        bar = "#" * filled + "." * (self.width - filled)
        text = f"\r{self.label} [{bar}] {100 * fraction:3.0f}%  {message:<28}"
        self.stream.write(text)
        if fraction >= 1.0:
            self.stream.write("\n")
        self.stream.flush()


def analyze_recording(
    recording: Recording,
    options: RGOptions,
    frame_rate_hz: float | None = None,
    progress_stream: TextIO | None = sys.stderr,
) -> tuple[RGAnalysis, dict[str, Any]]:
    """Run the analysis; return it and its JSON dict (with an `input` block)."""
    rate = frame_rate_hz or recording.frame_rate_hz
    label = pathlib.Path(recording.source).name
    progress = ProgressBar(progress_stream, label) if progress_stream else None
    result = analyze(recording.activity, options, progress)
    out = result.to_dict(rate)
    out["input"] = {
        "path": recording.source,
        "dataset": recording.dataset,
        "neurons_in_file": int(recording.activity.shape[0]),
        "frames": int(recording.activity.shape[1]),
        "frames_skipped_before_rois": recording.frames_skipped,
        "frame_rate_hz": rate,
    }
    return result, out


def write_outputs(
    result: RGAnalysis, summary: dict[str, Any], out_dir: pathlib.Path
) -> list[pathlib.Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "rg.json"
    json_path.write_text(json.dumps(summary, indent=1))
    rate = summary.get("frame_rate_hz")
    return [json_path, *write_figures(result, out_dir, rate, summary["input"]["path"])]


def summary_line(summary: dict[str, Any]) -> str:
    """beta, alpha, mu, z with their errors (and the shuffle control's) on one line."""
    names = ("beta", "alpha", "mu", "z")
    line = ", ".join(_pm(summary, n) for n in names)
    if "shuffled" in summary:
        line += "  | shuffled: " + ", ".join(_pm(summary["shuffled"], n) for n in names)
    return line


def _pm(d: dict[str, Any], name: str) -> str:
    v, e = d[name], d[f"{name}_err"]
    if v is None:
        return f"{name} n/a"
    return f"{name} {v:.3f}" + (f" ± {e:.3f}" if e is not None else "")


# ---------------------------------------------------------------------------------------------
# figures (layout of the paper's Figs. 3-5)


def _save(figure: Figure, path: pathlib.Path) -> pathlib.Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=FIGURE_DPI)
    return path


def _shades(n: int) -> list:
    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]  # larger K -> lighter


def _label_fit(name: str, fit: Any) -> str:
    if fit.value is None:
        return f"{name}: n/a ({fit.reason})"[:80]
    err = f" ± {fit.err:.3f}" if fit.err is not None else ""
    return f"{name} = {fit.value:.3f}{err}"


def write_figures(
    result: RGAnalysis, out_dir: pathlib.Path, frame_rate_hz: float | None, title: str
) -> list[pathlib.Path]:
    return [
        _save(_figure_silence_activity(result, title), out_dir / "rg_silence_activity.png"),
        _save(_figure_spectra(result, title), out_dir / "rg_spectra.png"),
        _save(_figure_dynamics(result, title, frame_rate_hz), out_dir / "rg_dynamics.png"),
        _save(_figure_variance(result, title), out_dir / "rg_variance.png"),
    ]


def _figure_silence_activity(result: RGAnalysis, title: str) -> Figure:
    """Fig. 3: P0(K) with exp(-a K^beta) (solid) and beta = 1 (dashed); Q_K(x)."""
    obs = result.observables
    fig = Figure(figsize=(10, 4.2))
    left, right = fig.subplots(1, 2)
    k = obs.cluster_sizes.astype(float)
    ok = obs.p0 > 0
    left.loglog(k[ok], obs.p0[ok], "o", color="k", label="data")
    fit = result.exponents.beta
    kk = np.geomspace(1, k.max(), 100)
    if fit.valid:
        a = math.exp(fit.intercept)
        left.loglog(kk, np.exp(-a * kk**fit.value), "-", color="C3", label=_label_fit("β", fit))
        a1 = -math.log(obs.p0[0]) if 0 < obs.p0[0] < 1 else a
        left.loglog(kk, np.exp(-a1 * kk), "--", color="0.4", label="β = 1")
    else:
        _note(left, _label_fit("β", fit))
    if result.shuffled is not None:
        s = result.shuffled.observables
        sok = s.p0 > 0
        left.loglog(k[sok], s.p0[sok], "s", mfc="none", color="0.6", label="shuffled")
    left.set_xlabel("cluster size K")
    left.set_ylabel("P0(K) (probability of silence)")
    left.legend(fontsize=8)
    edges = obs.q_edges
    centers = (edges[:-1] + edges[1:]) / 2
    for level, color in enumerate(_shades(obs.levels + 1)):
        density = obs.q_density[level]
        good = density > 0
        right.semilogy(centers[good], density[good], color=color, label=f"K={2**level}")
    right.set_xlabel("normalized activity x")
    right.set_ylabel("Q_K(x)")
    right.legend(fontsize=7, ncol=2)
    fig.suptitle(f"Silence and activity of coarse-grained variables - {title}", fontsize=9)
    fig.tight_layout()
    return fig


def _figure_spectra(result: RGAnalysis, title: str) -> Figure:
    """Fig. 4: eigenvalues vs rank / K for K = 16..128 with lambda = B (K / rank)^mu."""
    obs = result.observables
    fig = Figure(figsize=(10, 4.2))
    left, right = fig.subplots(1, 2)
    spectra = sorted(obs.spectra.items())
    for (size, spec), color in zip(spectra, _shades(len(spectra))):
        rank = np.arange(1, size + 1)
        if not spec.valid:
            continue
        good = spec.eigenvalues > 0
        right.loglog(
            rank[good] / size, spec.eigenvalues[good], ".-", color=color, label=f"K={size}"
        )
        left.loglog(rank[good], spec.eigenvalues[good], ".-", color=color, label=f"K={size}")
    fit = result.exponents.mu
    if fit.valid:
        x = np.geomspace(1 / 128, 1, 50)
        right.loglog(
            x, math.exp(fit.intercept) * x ** (-fit.value), "k-", label=_label_fit("μ", fit)
        )
    else:
        _note(right, _label_fit("μ", fit))
    left.set_xlabel("rank")
    right.set_xlabel("rank / K")
    for ax in (left, right):
        ax.set_ylabel("eigenvalue")
        if ax.get_legend_handles_labels()[0]:  # no valid spectrum: the note says why
            ax.legend(fontsize=8)
    fig.suptitle(f"Covariance spectra inside clusters - {title}", fontsize=9)
    fig.tight_layout()
    return fig


def _figure_dynamics(result: RGAnalysis, title: str, frame_rate_hz: float | None) -> Figure:
    """Fig. 5: C_K(t) against t / tau_c(K) for K = 1, 4, 16, 64, 128; tau_c(K) ~ K^z."""
    obs = result.observables
    fig = Figure(figsize=(10, 4.2))
    left, right = fig.subplots(1, 2)
    shown = [lvl for lvl in (0, 2, 4, 6, 7) if lvl <= obs.levels]
    for level, color in zip(shown, _shades(len(shown))):
        tau = obs.tau_c_frames[level]
        if not math.isfinite(tau):
            continue
        left.plot(obs.lags_frames / tau, obs.c_k[level], ".-", color=color, label=f"K={2**level}")
    left.axhline(math.exp(-1), color="0.7", lw=0.8, ls=":")
    left.set_xlabel("t / τc(K)")
    left.set_ylabel("C_K(t)")
    left.set_xlim(0, 5)
    left.legend(fontsize=8)
    k = obs.cluster_sizes.astype(float)
    unit, factor = ("s", 1.0 / frame_rate_hz) if frame_rate_hz else ("frames", 1.0)
    tau = obs.tau_c_frames * factor
    ok = np.isfinite(tau)
    right.loglog(k[ok], tau[ok], "o", color="k", label="data")
    fit = result.exponents.z
    if fit.valid:
        kk = np.geomspace(1, k.max(), 50)
        right.loglog(
            kk, factor * math.exp(fit.intercept) * kk**fit.value, "C3-", label=_label_fit("z", fit)
        )
    else:
        _note(right, _label_fit("z", fit))
    if result.shuffled is not None:
        s_tau = result.shuffled.observables.tau_c_frames * factor
        s_ok = np.isfinite(s_tau)
        right.loglog(k[s_ok], s_tau[s_ok], "s", mfc="none", color="0.6", label="shuffled")
    right.set_xlabel("cluster size K")
    right.set_ylabel(f"τc ({unit})")
    right.legend(fontsize=8)
    fig.suptitle(f"Dynamic scaling - {title}", fontsize=9)
    fig.tight_layout()
    return fig


def _figure_variance(result: RGAnalysis, title: str) -> Figure:
    """M2(K) of the raw sums with K^alpha; alpha = 1 (independent) and 2 (identical) guides."""
    obs = result.observables
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    k = obs.cluster_sizes.astype(float)
    ok = obs.m2 > 0
    ax.loglog(k[ok], obs.m2[ok], "o", color="k", label="data")
    if ok.any():
        m1 = obs.m2[ok][0] / k[ok][0]
        ax.loglog(k, m1 * k, "--", color="0.5", label="α = 1")
        ax.loglog(k, m1 * k**2, ":", color="0.5", label="α = 2")
    fit = result.exponents.alpha
    if fit.valid:
        ax.loglog(k, math.exp(fit.intercept) * k**fit.value, "C3-", label=_label_fit("α", fit))
    if result.shuffled is not None:
        s = result.shuffled.observables.m2
        ax.loglog(k[s > 0], s[s > 0], "s", mfc="none", color="0.6", label="shuffled")
    ax.set_xlabel("cluster size K")
    ax.set_ylabel("M2(K), variance of raw sums")
    ax.legend(fontsize=8)
    fig.suptitle(f"Variance of coarse-grained sums - {title}", fontsize=9)
    fig.tight_layout()
    return fig


def _note(ax: Axes, text: str) -> None:
    ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=7, color="C3", va="bottom")
