"""The selected ROIs, shared by the image (click to select), traces, noise and manual trigger.

One colour per selected ROI (by its place in the selection), so a trace, its outline on the
image and its mark on the noise histogram read as the same cell.
"""

from __future__ import annotations

import warnings

import numpy as np
from pyqtgraph.Qt import QtCore

#: bright, distinguishable on a dark plot background (Okabe-Ito-like, no black)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (86, 180, 233),
    (230, 159, 0),
    (0, 200, 140),
    (240, 228, 66),
    (204, 121, 167),
    (255, 120, 80),
    (150, 150, 255),
    (170, 220, 120),
    (255, 170, 200),
    (120, 220, 220),
)


def colour(position: int) -> tuple[int, int, int]:
    return PALETTE[position % len(PALETTE)]


def activity_score(dff_history: np.ndarray) -> np.ndarray:
    """Per ROI: how far its transients rise above its own noise,
    (98th percentile - median of dF/F) / median |dF/F(t+1) - dF/F(t)|.

    The denominator is the frame-to-frame noise the CASCADE noise level measures, so a
    quiet cell with clear transients scores higher than a noisy one; the plain variance
    would pick the noisiest ROIs (partial cells at the edge of the field)."""
    d = np.where(np.isfinite(dff_history), dff_history, np.nan)
    with warnings.catch_warnings():  # an all-NaN ROI scores NaN, sorted last
        warnings.simplefilter("ignore", RuntimeWarning)
        noise = np.nanmedian(np.abs(np.diff(d, axis=0)), axis=0)
        rise = np.nanpercentile(d, 98, axis=0) - np.nanmedian(d, axis=0)
    return rise / np.maximum(noise, 1e-9)


def auto_selection(
    dff_history: np.ndarray | None,
    target_rois: list[int],
    n: int = 6,
    noise_level: np.ndarray | None = None,
) -> list[int]:
    """A first selection to show before the user clicks: cells just stimulated (at most
    n // 2), then the most active cells (activity_score). ROIs whose noise level is more
    than 4 times the median are left out of the active ones: broken traces (a near-zero
    baseline gives dF/F of 1e8) would otherwise score highest."""
    chosen: list[int] = []
    plausible = None
    if noise_level is not None and np.isfinite(noise_level).any():
        limit = 4 * np.nanmedian(noise_level)
        plausible = np.isfinite(noise_level) & (noise_level <= limit)
    for roi in target_rois:
        if roi >= 0 and roi not in chosen and len(chosen) < n // 2:
            chosen.append(int(roi))
    if dff_history is None or dff_history.ndim != 2 or dff_history.shape[0] < 3:
        return chosen
    score = activity_score(dff_history)
    for roi in np.argsort(-score):  # NaN scores sort last
        if len(chosen) >= n or not np.isfinite(score[roi]):
            break
        if plausible is not None and (roi >= plausible.size or not plausible[roi]):
            continue
        if int(roi) not in chosen:
            chosen.append(int(roi))
    return chosen


class RoiSelection(QtCore.QObject):
    changed = QtCore.Signal()

    def __init__(self) -> None:
        super().__init__()
        self.rois: list[int] = []
        self.chosen_by_user = False

    def toggle(self, roi: int) -> None:
        self.chosen_by_user = True
        if roi in self.rois:
            self.rois.remove(roi)
        else:
            self.rois.append(roi)
        self.changed.emit()

    def set(self, rois: list[int], by_user: bool = True) -> None:
        self.chosen_by_user = self.chosen_by_user or by_user
        self.rois = list(dict.fromkeys(int(r) for r in rois))
        self.changed.emit()

    def clear(self) -> None:
        self.set([], by_user=True)

    def reset(self) -> None:
        """A new run: new ROIs, nothing chosen yet."""
        self.rois = []
        self.chosen_by_user = False
        self.changed.emit()

    def colour_of(self, roi: int) -> tuple[int, int, int]:
        return colour(self.rois.index(roi))
