"""Analyses run once a session has been recorded: the coarse-graining (`rg`) block with the
report figures in the layout of the PRL's Figs. 3-5, and, on simulated rigs, accuracy against
the world's ground truth. Both read the finished session.h5, never the live state, and never
fail the session: a problem becomes a reason in the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

RG_CAPTIONS = {
    "rg_silence_activity": "Coarse-graining, as Fig. 3 of Meshulam et al. 2019: silence "
    "probability P0(K) with the fit exp(-a K^beta), and the distributions Q_K of nonzero "
    "coarse-grained activity.",
    "rg_spectra": "Within-cluster covariance spectra against rank/K (Fig. 4): a collapse means "
    "lambda ~ (K / rank)^mu.",
    "rg_dynamics": "Autocorrelation C_K(t) of coarse-grained variables and tau_c(K) ~ K^z "
    "(Fig. 5).",
    "rg_variance": "Variance of the raw sums M2(K) ~ K^alpha (alpha = 1 independent, 2 fully "
    "correlated).",
}


def rg_block(folder: Path, signal: str, frame_rate_hz: float) -> dict[str, Any]:
    """Batch coarse-graining of the recorded signal (spikes, calcium or dff) of the session;
    adds the figures to the report. Returns the summary's `rg` block."""
    from analysis.rg.batch import RGOptions, analyze
    from rig.analyze import write_figures

    with h5py.File(folder / "session.h5", "r") as f:
        if signal not in f:
            return {"valid": False, "reason": f"session.h5 has no '{signal}' dataset"}
        x = f[signal][:]
        start = int(f.attrs.get("roi_start_frame", 0) or 0)
        if "rg_rois" in f:  # the ROIs the live stage used (those that never leave the field)
            x = x[:, f["rg_rois"][:]]
    x = x[start:]
    x = x[np.isfinite(x).all(axis=1)] if x.size else x
    if x.ndim != 2 or x.shape[0] < 64 or x.shape[1] < 4:
        return {
            "valid": False,
            "reason": f"{x.shape[0] if x.ndim == 2 else 0} complete frames x "
            f"{x.shape[1] if x.ndim == 2 else 0} ROIs of '{signal}': too few",
        }
    activity = np.maximum(x.T.astype(np.float64), 0.0)
    try:
        result = analyze(activity, RGOptions(constant_rows="drop"))
    except ValueError as e:
        return {"valid": False, "reason": str(e)}
    block = result.to_dict(frame_rate_hz)
    out = {
        k: block.get(k)
        for k in ("beta", "beta_err", "alpha", "alpha_err", "mu", "mu_err", "z", "z_err")
    }
    out.update(
        signal=signal,
        n_neurons=block.get("n_neurons"),
        n_frames=block.get("n_frames"),
        p0=block.get("p0"),
        tau_c_frames=block.get("tau_c_frames"),
        invalid=block.get("invalid"),
        valid=True,
    )
    extra = folder / "figures" / "extra"
    extra.mkdir(parents=True, exist_ok=True)
    for path in write_figures(result, extra, frame_rate_hz, f"{signal}, {x.shape[1]} ROIs"):
        caption = RG_CAPTIONS.get(Path(path).stem, "Coarse-graining.")
        Path(path).with_suffix(".txt").write_text(caption, encoding="utf-8")
    return out


def accuracy_block(
    folder: Path,
    world: Any,
    rois: Any,
    *,
    frame_rate_hz: float,
    pixel_size_um: tuple[float, float],
    frame_shape: tuple[int, int],
    reference_frames: int,
    spike_lag_frames: int,
) -> dict[str, Any]:
    from rig.accuracy import session_accuracy

    with h5py.File(folder / "session.h5", "r") as f:
        times = f["timestamps"][:] if "timestamps" in f else np.zeros(0)
        shifts = f["motion/shift_px"][:] if "motion/shift_px" in f else None
        spikes = f["spikes"][:] if "spikes" in f else None
        start = f.attrs.get("roi_start_frame", None)
        reference_end = f.attrs.get("reference_end_frame", None)
    return session_accuracy(
        world.ground_truth,
        rois=rois,
        frame_shape=frame_shape,
        pixel_size_um=pixel_size_um,
        frame_times_s=times,
        frame_rate_hz=frame_rate_hz,
        roi_start_frame=None if start is None else int(start),
        reference_frames=reference_frames,
        reference_end_frame=None if reference_end is None else int(reference_end),
        shifts_px=shifts,
        spikes=spikes,
        spike_lag_frames=spike_lag_frames,
    )


def record_stage_timing(folder: Path, stage_ms: np.ndarray, stage_names: tuple[str, ...]) -> None:
    """Per-frame, per-stage processing time (issue 3, item 7): `timing/stage_ms` (frames x
    stages, ms, NaN for a stage that did not run) in session.h5, and a report figure with each
    stage's median and p99 and its share of the processing time."""
    from matplotlib.figure import Figure

    from rig.report import add_figure

    with h5py.File(folder / "session.h5", "a") as f:
        if "timing/stage_ms" in f:
            del f["timing/stage_ms"]
        ds = f.create_dataset("timing/stage_ms", data=stage_ms.astype(np.float32))
        ds.attrs["stages"] = list(stage_names)
    if stage_ms.shape[0] == 0:
        return
    median = np.nan_to_num(np.nanmedian(stage_ms, axis=0))
    p99 = np.nan_to_num(np.nanpercentile(stage_ms, 99, axis=0))
    total = float(median.sum())
    figure = Figure(figsize=(7.0, 3.2))
    ax = figure.add_subplot(1, 1, 1)
    y = np.arange(len(stage_names))
    ax.barh(y, p99, color="0.8", label="p99")
    ax.barh(y, median, color="tab:blue", label="median")
    for i, m in enumerate(median):
        share = 100.0 * m / total if total > 0 else 0.0
        ax.text(p99[i], i, f"  {m:.2f} ms ({share:.0f} %)", va="center", fontsize=8)
    ax.set_yticks(y, stage_names)
    ax.invert_yaxis()
    ax.set_xlabel("time per frame (ms)")
    ax.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    add_figure(
        folder,
        "stage_timing",
        figure,
        "Processing time per frame of each pipeline stage (median, p99; share of the median "
        "total). Per-frame values: session.h5 timing/stage_ms.",
    )


def record_rg_rois(folder: Path, columns: np.ndarray | None) -> None:
    """`rg_rois` in session.h5: the ROI columns the live coarse-graining used (the ROIs the
    brain's motion cannot carry out of the field), so the batch `rg` block uses the same."""
    if columns is None:
        return
    with h5py.File(folder / "session.h5", "a") as f:
        if "rg_rois" in f:
            del f["rg_rois"]
        f.create_dataset("rg_rois", data=np.asarray(columns, np.int64))
