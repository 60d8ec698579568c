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
    return session_accuracy(
        world.ground_truth,
        rois=rois,
        frame_shape=frame_shape,
        pixel_size_um=pixel_size_um,
        frame_times_s=times,
        frame_rate_hz=frame_rate_hz,
        roi_start_frame=None if start is None else int(start),
        reference_frames=reference_frames,
        shifts_px=shifts,
        spikes=spikes,
        spike_lag_frames=spike_lag_frames,
    )
