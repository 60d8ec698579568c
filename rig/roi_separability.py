"""How well can an ROI be told in focus from what the image shows? (issue 3, item 2)

The ROIs left unmatched on the default rig lie mostly on real cells just beyond the focal
plane's reach of their soma (docs/PIPELINE.md). This module measures how far image features
can separate those from the in-focus cells ("in focus": peak weight >= the world's
``in_focus_min_peak_weight``, 0.5, the plane cuts the soma):

- ``noise_free_separability``: every cell visible in the plane (peak weight >= 0.05, centre in
  the field) rendered alone with the world's own kernel at the imaging pixel size, as it would
  look above the background with no noise, no neighbours and no motion. Features: its peak
  (brightness x peak weight), its area at half its own maximum, its integrated brightness,
  and the three combined (logistic regression, fit in-sample).
- ``session_separability``: the detected ROIs of a simulated session, labelled by the same
  one-to-one matching as the session's accuracy, with the features the pipeline can measure
  on its mean image: brightness above the local background relative to the median ROI
  (analysis.rois.relative_excess) and ROI area.

Each feature is scored by the best threshold on it: the largest min(precision, recall) over
all thresholds, picked knowing the answer, so an upper bound for a rule on that feature.

``python -m rig.roi_separability [SESSION ...]`` prints both (noise-free on the default ``sim``
rig, seed 1; a session should be detected with ``--set rois.min_relative_excess=0`` so that no
ROI was dropped before the comparison). What does separate them, a reference z-stack, is a
pipeline stage (rois.zstack_range_um; rig/reference_zstack.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

VISIBLE_MIN_PEAK_WEIGHT = 0.05  # below this a cell adds < 5 % of an in-focus cell's light


@dataclasses.dataclass(frozen=True)
class Separation:
    """The best threshold rule on one feature: keep items with feature >= threshold."""

    feature: str
    threshold: float
    precision: float
    recall: float

    def as_row(self) -> str:
        return f"| {self.feature} | {self.precision:.3f} | {self.recall:.3f} |"


def best_threshold(feature: str, values: np.ndarray, positive: np.ndarray,
                   n_positive: int | None = None) -> Separation:
    """The threshold on ``values`` maximising min(precision, recall) for ``positive`` items.
    Recall counts against ``n_positive`` (default: the positives among the items), so items
    never detected can count as missed."""
    values = np.asarray(values, float)
    positive = np.asarray(positive, bool)
    total = int(positive.sum()) if n_positive is None else int(n_positive)
    if values.size == 0 or total == 0:
        raise ValueError(f"{feature}: need items and at least one positive to score a threshold")
    order = np.argsort(-values, kind="stable")
    kept_positive = np.cumsum(positive[order])
    kept = np.arange(1, values.size + 1)
    # a threshold can only fall between distinct values: score the last item of each run
    last_of_run = np.append(values[order][1:] != values[order][:-1], True)
    precision = kept_positive / kept
    recall = kept_positive / total
    score = np.where(last_of_run, np.minimum(precision, recall), -1.0)
    k = int(np.argmax(score))
    return Separation(feature, float(values[order][k]), float(precision[k]), float(recall[k]))


def _logistic_score(features: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Linear score of a logistic regression of ``positive`` on ``features`` (items x k),
    fitted by iteratively reweighted least squares with a tiny ridge."""
    x = np.column_stack([features, np.ones(features.shape[0])])
    y = positive.astype(float)
    beta = np.zeros(x.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-x @ beta))
        w = p * (1.0 - p) + 1e-9
        step = np.linalg.solve(x.T @ (x * w[:, None]) + 1e-6 * np.eye(x.shape[1]), x.T @ (y - p))
        beta += step
        if np.max(np.abs(step)) < 1e-9:
            break
    return x @ beta


def isolated_cell_images(world: Any, cells: np.ndarray, pixel_um: float,
                         half_width_px: int = 16) -> np.ndarray:
    """Each cell's weight x brightness in the world's current focal plane, rendered alone
    (simulators.world.kernels.render_cells) on imaging pixels of ``pixel_um``; (n, 2h+1, 2h+1)
    patches around the cell's centre."""
    from simulators.world.kernels import render_cells

    specimen, config = world.specimen, world.config
    size = 2 * half_width_px + 1
    images = np.zeros((cells.size, size, size))
    for k, cell in enumerate(cells):
        one = slice(int(cell), int(cell) + 1)
        x0 = specimen.positions_um[cell, 0] - (half_width_px + 0.5) * pixel_um
        y0 = specimen.positions_um[cell, 1] - (half_width_px + 0.5) * pixel_um
        label = np.full((size, size), -1, np.int32)
        weight = np.zeros((size, size), np.float32)
        occupancy = np.zeros((size, size), np.float32)
        score = np.zeros((size, size), np.float32)
        peak = np.zeros(1, np.float32)
        render_cells(world.focus_z_um, specimen.positions_um[one], specimen.radii_um[one],
                     specimen.nucleus_radii_um[one], specimen.brightness[one],
                     config.nucleus_brightness_fraction, config.axial_psf_sigma_um,
                     x0, y0, pixel_um, label, weight, occupancy, score, peak)
        images[k] = score
    return images


def noise_free_separability(world: Any, field_um: tuple[float, float],
                            pixel_um: float) -> dict[str, Any]:
    """Best threshold rules on noise-free features of the cells visible in the world's
    current plane (module docstring). field_um: (x, y) extent of the imaged field, centred."""
    peak_weight = world.plane.peak_weight.astype(float)
    position = world.specimen.positions_um
    inside = (np.abs(position[:, 0]) < field_um[0] / 2) & (np.abs(position[:, 1]) < field_um[1] / 2)
    cells = np.flatnonzero(inside & (peak_weight >= VISIBLE_MIN_PEAK_WEIGHT))
    in_focus = peak_weight[cells] >= world.config.in_focus_min_peak_weight
    images = isolated_cell_images(world, cells, pixel_um)
    peak = images.max(axis=(1, 2))
    half_max_area = (images >= 0.5 * peak[:, None, None]).sum(axis=(1, 2)) * pixel_um**2
    integrated = images.sum(axis=(1, 2)) * pixel_um**2
    combined = _logistic_score(np.log(np.column_stack([peak, half_max_area, integrated])),
                               in_focus)
    return {
        "visible_cells": int(cells.size),
        "in_focus_cells": int(in_focus.sum()),
        "rules": [
            best_threshold("peak brightness (brightness x peak weight)", peak, in_focus),
            best_threshold("area at half maximum", half_max_area, in_focus),
            best_threshold("integrated brightness", integrated, in_focus),
            best_threshold("all three (logistic, in-sample)", combined, in_focus),
        ],
    }


@dataclasses.dataclass(frozen=True)
class LabelledSession:
    """A simulated session's ROIs labelled by the accuracy's one-to-one matching."""

    rois: Any  # analysis.rois.RoiSet
    mean_image: np.ndarray
    in_focus: np.ndarray  # bool per ROI: matched to an in-focus cell
    n_in_focus_cells: int
    pixel_um: tuple[float, float]  # (y, x)
    diameter_px: float


def labelled_session(folder: str | Path) -> LabelledSession:
    """Rebuild a simulated session's truth (world, seed, reference period) and label its ROIs
    exactly as summary.json `accuracy` does."""
    import h5py

    from analysis.accuracy import match_rois
    from analysis.rois import RoiSet
    from rig.accuracy import mean_displacement_um, true_footprints
    from simulators.world.config import WorldConfig
    from simulators.world.world import World

    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    config = summary["config"]
    with h5py.File(folder / "session.h5", "r") as f:
        if "mean_image" not in f or "rois/pixels" not in f:
            raise ValueError(f"{folder}: the session has no mean image or no ROIs to assess")
        mean_image = f["mean_image"][:].astype(np.float64)
        rois = RoiSet(mean_image.shape, f["rois/pixels"][:], f["rois/offsets"][:],
                      f["rois/weights"][:])
        times = f["timestamps"][:]
        start = int(f.attrs["roi_start_frame"])
        reference_end = int(f.attrs.get("reference_end_frame", start))
    height, width = mean_image.shape
    fov_x, fov_y = config["scanner"]["fov_um"]
    zoom = config["scanner"]["zoom"]
    pixel_um = (fov_y / zoom / height, fov_x / zoom / width)
    rate = float(summary["frame_rate_hz"])
    reference_frames = max(20, math.ceil(config["rois"]["reference_s"] * rate))
    world = World(WorldConfig.from_dict(config["world"]), seed=summary["seed"])
    world.advance_to(times[reference_end] + 1.0 / rate)
    truth_t0 = times[max(0, reference_end - reference_frames)]
    offset = mean_displacement_um(world.ground_truth, truth_t0, times[reference_end] + 1.0 / rate)
    truth, _ = true_footprints(world.ground_truth, (height, width), pixel_um, offset)
    match = match_rois(rois, truth)
    in_focus = np.zeros(rois.n_rois, bool)
    in_focus[match.pairs[:, 0]] = True
    diameter_px = config["rois"]["cell_diameter_um"] / math.sqrt(pixel_um[0] * pixel_um[1])
    return LabelledSession(rois, mean_image, in_focus, truth.n_rois, pixel_um, diameter_px)


def session_separability(folder: str | Path) -> dict[str, Any]:
    """Best threshold rules on the measured features of a simulated session's ROIs: relative
    excess (brightness above the local background / the median ROI's), area, and both (the
    best pair of thresholds). ROIs are labelled in focus by the session accuracy's matching."""
    from analysis.rois import relative_excess

    s = labelled_session(folder)
    excess = relative_excess(s.rois, s.mean_image, s.diameter_px)
    area = np.diff(s.rois.offsets) / (math.pi * (s.diameter_px / 2) ** 2)
    return {
        "rois": s.rois.n_rois,
        "in_focus_cells": s.n_in_focus_cells,
        "matched": int(s.in_focus.sum()),
        "rules": [
            best_threshold("relative excess", excess, s.in_focus, s.n_in_focus_cells),
            best_threshold("ROI area / cell disc", area, s.in_focus, s.n_in_focus_cells),
            _best_pair(excess, area, s.in_focus, s.n_in_focus_cells),
        ],
    }


def _best_pair(excess: np.ndarray, area: np.ndarray, positive: np.ndarray,
               n_positive: int) -> Separation:
    best = Separation("relative excess and area", 0.0, 0.0, 0.0)
    for e in np.unique(excess):
        keep = excess >= e
        rule = best_threshold("relative excess and area", area[keep], positive[keep], n_positive)
        if min(rule.precision, rule.recall) > min(best.precision, best.recall):
            best = dataclasses.replace(rule, feature=f"relative excess >= {e:.2f} and area")
    return best


def _print(title: str, result: dict[str, Any]) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in result.items() if k != "rules")
    print(f"{title} ({counts})")
    print("| feature | precision | recall |\n|---|---|---|")
    for rule in result["rules"]:
        print(rule.as_row() + f" <!-- threshold {rule.threshold:.3g} -->")


def main(argv: list[str]) -> None:
    from rig.config import load_rig_config, world_config
    from simulators.world.world import World

    config = load_rig_config("sim")
    fov_x, fov_y = config["scanner.fov_um"]
    zoom = config["scanner.zoom"]
    world = World(world_config(config), seed=config["sim.seed"])
    pixel_um = fov_x / zoom / config["scanner.pixels_per_line"]
    _print("noise-free, default sim rig, seed %d" % config["sim.seed"],
           noise_free_separability(world, (fov_x / zoom, fov_y / zoom), pixel_um))
    for folder in argv:
        _print(f"measured, {folder}", session_separability(folder))


if __name__ == "__main__":
    main(sys.argv[1:])
