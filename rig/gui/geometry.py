"""Pixels <-> field coordinates, the one convention shared by the image, ROIs and stimulation.

The field is centred on (0, 0) um; x runs along a line (pixel columns), y across lines
(pixel rows), the same coordinates the pipeline gives ROI centres and the stimulator takes
as targets (rig/pipeline.py). Pixel (row, col) covers
x in [(col - W/2) px_x, (col + 1 - W/2) px_x] and y in [(row - H/2) px_y, (row + 1 - H/2) px_y],
so its centre is x = (col + 0.5 - W/2) px_x, y = (row + 0.5 - H/2) px_y.

`pixel_size_um` is (y, x), as scanners report it.
"""

from __future__ import annotations

import numpy as np


def field_rect_um(
    frame_shape: tuple[int, int], pixel_size_um: tuple[float, float]
) -> tuple[float, float, float, float]:
    """(x0, y0, width, height) in um of the whole frame: where the image is drawn."""
    h, w = frame_shape
    py, px = pixel_size_um
    return (-w / 2 * px, -h / 2 * py, w * px, h * py)


def centroids_um(
    centroids_px: np.ndarray, frame_shape: tuple[int, int], pixel_size_um: tuple[float, float]
) -> np.ndarray:
    """(n, 2) ROI centres as (x, y) um from (n, 2) (row, col) pixel centroids."""
    h, w = frame_shape
    py, px = pixel_size_um
    c = np.asarray(centroids_px, dtype=float).reshape(-1, 2)
    return np.column_stack([(c[:, 1] + 0.5 - w / 2) * px, (c[:, 0] + 0.5 - h / 2) * py])


def pixel_at_um(
    x_um: float, y_um: float, frame_shape: tuple[int, int], pixel_size_um: tuple[float, float]
) -> tuple[int, int] | None:
    """(row, col) of the pixel containing the field point (x, y) um, or None outside."""
    h, w = frame_shape
    py, px = pixel_size_um
    col = int(np.floor(x_um / px + w / 2))
    row = int(np.floor(y_um / py + h / 2))
    if 0 <= row < h and 0 <= col < w:
        return row, col
    return None


def roi_at_um(
    x_um: float,
    y_um: float,
    label_image: np.ndarray,
    centroids_px: np.ndarray,
    pixel_size_um: tuple[float, float],
    max_distance_um: float,
) -> int | None:
    """The ROI under the field point, else the nearest ROI centre within max_distance_um.

    `label_image` holds 0 for no ROI and i + 1 for ROI i (LiveSnapshot.roi_label_image)."""
    shape = label_image.shape
    pixel = pixel_at_um(x_um, y_um, shape, pixel_size_um)
    if pixel is not None and label_image[pixel] > 0:
        return int(label_image[pixel]) - 1
    if len(centroids_px) == 0:
        return None
    c = centroids_um(centroids_px, shape, pixel_size_um)
    d = np.hypot(c[:, 0] - x_um, c[:, 1] - y_um)
    i = int(np.argmin(d))
    return i if d[i] <= max_distance_um else None


def nearest_rois(
    targets_um: np.ndarray, roi_centres_um: np.ndarray, max_distance_um: float
) -> np.ndarray:
    """For each (x, y) target the index of the nearest ROI centre, -1 if none is that close."""
    t = np.asarray(targets_um, dtype=float).reshape(-1, 2)
    out = np.full(t.shape[0], -1, np.int64)
    if len(roi_centres_um) == 0:
        return out
    for k, (x, y) in enumerate(t):
        d = np.hypot(roi_centres_um[:, 0] - x, roi_centres_um[:, 1] - y)
        i = int(np.argmin(d))
        if d[i] <= max_distance_um:
            out[k] = i
    return out


def roi_outlines(label_image: np.ndarray) -> np.ndarray:
    """Boolean (H, W): ROI pixels with a 4-neighbour of another label (their outline)."""
    lab = label_image
    edge = np.zeros(lab.shape, bool)
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[0, :] = True
    edge[-1, :] = True
    edge[:, 0] = True
    edge[:, -1] = True
    return edge & (lab > 0)
