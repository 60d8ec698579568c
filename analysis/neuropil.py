"""Neuropil contamination: surrounding ring masks and F_corrected = F - r * F_neuropil.

Out-of-focus light and the processes around a soma (the neuropil) add to the ROI's fluorescence.
The usual estimate (Kerlin et al. 2010; Chen et al. 2013; suite2p, Pachitariu et al. 2017) is the
mean of a region around the ROI that excludes every ROI, subtracted with a coefficient r < 1
(r = 0.7 by default, the value of Chen et al. and suite2p; the soma displaces part of the
neuropil in its own column, so less than all of the surround's level is inside the ROI):

    F_corrected(t) = F(t) - r * F_neuropil(t)

Surround of ROI i: a square ring, as suite2p's default (non-circular) neuropil masks. The inner
square is the ROI's bounding box grown by ``inner_gap_px``; the outer square grows from it one
pixel per side at a time until the ring holds at least ``min_pixels`` free pixels (350,
suite2p's default for ~1 um pixels) or reaches ``max_radius_px`` from the ROI's box. A pixel is
free unless it belongs to an ROI (any ROI) or lies within ``inner_gap_px`` of one (the gap keeps
the blurred edges of cells out). ROIs at the frame's edge get a ring clipped by the frame; an
ROI with no free pixel within reach raises an error naming it.

Per frame (``Neuropil.update``) the ring means cost O(1) per ROI whatever the ring size: one
pass builds the summed-area table of the frame's free pixels (Crow 1984), then each ring's sum
and pixel count are 8 table look-ups (outer square minus inner square). Overlapping rings cost
nothing extra (reading each ring's pixels would: 1,500 rings of 350 pixels are 0.5 M reads).
Under motion the rings and the free-pixel mask move with the content by the frame's shift
rounded to whole pixels (the surround is a smooth average over hundreds of pixels, so the
sub-pixel remainder is immaterial); pixels whose reference position lies outside the
reference frame are not used. Nothing is allocated per frame.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from analysis.rois import RoiSet

DEFAULT_COEFFICIENT = 0.7
DEFAULT_INNER_GAP_PX = 2.0
DEFAULT_MIN_PIXELS = 350
DEFAULT_MAX_RADIUS_PX = 60

# columns of the ring table: inner square y0, y1, x0, x1, outer square y0, y1, x0, x1
# (half-open, in reference pixels, may extend beyond the frame)
_N_BOX = 8


def free_pixels(rois: RoiSet, gap_px: float) -> np.ndarray:
    """Boolean (H, W): True where no ROI pixel lies within gap_px (Euclidean)."""
    height, width = rois.shape
    occupied = np.zeros(height * width, dtype=bool)
    occupied[rois.pixels] = True
    occupied = occupied.reshape(height, width)
    excluded = occupied.copy()
    reach = int(math.floor(gap_px))
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if (dy or dx) and dy * dy + dx * dx <= gap_px * gap_px:
                source = occupied[
                    max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)
                ]
                excluded[max(0, dy) : height - max(0, -dy), max(0, dx) : width - max(0, -dx)] |= (
                    source
                )
    return ~excluded


def _box_sum(table: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> float:
    """Sum over [y0, y1) x [x0, x1) from a summed-area table of shape (H + 1, W + 1), with the
    box clipped to the frame."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    y0, y1 = min(max(y0, 0), h), min(max(y1, 0), h)
    x0, x1 = min(max(x0, 0), w), min(max(x1, 0), w)
    return table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]


_box_sum_kernel = numba.njit(cache=True, nogil=True)(_box_sum)


def ring_boxes(
    rois: RoiSet,
    free: np.ndarray,
    inner_gap_px: float = DEFAULT_INNER_GAP_PX,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_radius_px: int = DEFAULT_MAX_RADIUS_PX,
) -> np.ndarray:
    """int64 (n_rois, 8): inner and outer squares of every ROI's ring (module docstring)."""
    height, width = rois.shape
    counts = np.zeros((height + 1, width + 1), dtype=np.float64)
    counts[1:, 1:] = np.cumsum(np.cumsum(free, axis=0), axis=1)
    gap = int(math.ceil(inner_gap_px))
    boxes = np.zeros((rois.n_rois, _N_BOX), dtype=np.int64)
    for i in range(rois.n_rois):
        pixels = rois.roi_pixels(i)
        ys, xs = pixels // width, pixels % width
        inner = (int(ys.min()) - gap, int(ys.max()) + 1 + gap, int(xs.min()) - gap,
                 int(xs.max()) + 1 + gap)  # fmt: skip
        inner_free = _box_sum(counts, *inner)
        grow = 0
        n_free = 0.0
        while grow < max_radius_px:
            grow += 1
            outer = (inner[0] - grow, inner[1] + grow, inner[2] - grow, inner[3] + grow)
            n_free = _box_sum(counts, *outer) - inner_free
            if n_free >= min_pixels:
                break
        if n_free <= 0:
            cy, cx = rois.centroids_px[i]
            raise ValueError(
                f"ROI {i} (centroid y = {cy:.1f}, x = {cx:.1f} px) has no free pixel for its "
                f"neuropil ring within max_radius_px = {max_radius_px} px (all covered by ROIs "
                "or their gaps); raise max_radius_px or lower inner_gap_px"
            )
        boxes[i, :4] = inner
        boxes[i, 4:] = outer
    return boxes


@numba.njit(cache=True, nogil=True)
def _masked_tables(
    frame: np.ndarray,
    free: np.ndarray,
    shift_y: int,
    shift_x: int,
    values: np.ndarray,
    counts: np.ndarray,
    update_counts: bool,
) -> None:
    """Summed-area tables (H + 1, W + 1) of the frame's free pixels and of their number; frame
    pixel (y, x) is free if reference pixel (y - shift_y, x - shift_x) is."""
    h, w = frame.shape
    for y in range(h):
        row_sum = 0.0
        row_count = 0.0
        ry = y - shift_y
        for x in range(w):
            rx = x - shift_x
            if 0 <= ry < h and 0 <= rx < w and free[ry, rx]:
                row_sum += np.float64(frame[y, x])
                row_count += 1.0
            values[y + 1, x + 1] = values[y, x + 1] + row_sum
            if update_counts:
                counts[y + 1, x + 1] = counts[y, x + 1] + row_count


@numba.njit(cache=True, nogil=True)
def _ring_means(
    values: np.ndarray,
    counts: np.ndarray,
    boxes: np.ndarray,
    shift_y: int,
    shift_x: int,
    out: np.ndarray,
) -> None:
    for i in range(boxes.shape[0]):
        b = boxes[i]
        total = _box_sum_kernel(
            values, b[4] + shift_y, b[5] + shift_y, b[6] + shift_x, b[7] + shift_x
        ) - _box_sum_kernel(values, b[0] + shift_y, b[1] + shift_y, b[2] + shift_x, b[3] + shift_x)
        number = _box_sum_kernel(
            counts, b[4] + shift_y, b[5] + shift_y, b[6] + shift_x, b[7] + shift_x
        ) - _box_sum_kernel(counts, b[0] + shift_y, b[1] + shift_y, b[2] + shift_x, b[3] + shift_x)
        out[i] = total / number if number > 0.5 else np.nan


@numba.njit(cache=True, nogil=True)
def _subtract(
    fluorescence: np.ndarray, neuropil: np.ndarray, coefficient: np.ndarray, out: np.ndarray
) -> None:
    for i in range(out.shape[0]):
        out[i] = fluorescence[i] - coefficient[i] * neuropil[i]


def subtract_neuropil(
    fluorescence: np.ndarray,
    neuropil: np.ndarray,
    coefficient: float | np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """out = fluorescence - coefficient * neuropil, for one frame (n_rois,) or traces
    (T, n_rois) offline; the coefficient is a number or one per ROI; NaN propagates."""
    f = np.asarray(fluorescence)
    n = np.asarray(neuropil)
    if f.shape != n.shape or out.shape != f.shape:
        raise ValueError(
            f"fluorescence {f.shape}, neuropil {n.shape} and out {out.shape} must have one shape"
        )
    r = np.ascontiguousarray(np.broadcast_to(np.asarray(coefficient, np.float64), f.shape[-1:]))
    _check_coefficient(r)
    if f.ndim == 1:
        _subtract(f, n, r, out)
    else:
        np.subtract(f, r * n, out=out)
    return out


def _check_coefficient(r: np.ndarray) -> None:
    if not (np.isfinite(r).all() and (r >= 0).all() and (r <= 2).all()):
        raise ValueError(
            f"neuropil coefficient must be finite and between 0 and 2, got {r.min()}..{r.max()}"
        )


class Neuropil:
    """Neuropil rings of a set of ROIs and the online correction (see the module docstring).

    ``update(frame, shift_yx, fluorescence, out)`` writes every ring mean of the frame into
    ``values`` and F - r F_neuropil into out. No allocation per frame.
    """

    def __init__(
        self,
        rois: RoiSet,
        coefficient: float | np.ndarray = DEFAULT_COEFFICIENT,
        inner_gap_px: float = DEFAULT_INNER_GAP_PX,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_radius_px: int = DEFAULT_MAX_RADIUS_PX,
    ) -> None:
        inner_gap_px = float(inner_gap_px)
        if not (math.isfinite(inner_gap_px) and 0.0 <= inner_gap_px <= 50.0):
            raise ValueError(f"inner_gap_px must be between 0 and 50, got {inner_gap_px!r}")
        for name, value in (("min_pixels", min_pixels), ("max_radius_px", max_radius_px)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.shape = rois.shape
        self.n_rois = rois.n_rois
        self.coefficient = np.ascontiguousarray(
            np.broadcast_to(np.asarray(coefficient, dtype=np.float64), (self.n_rois,))
        ).copy()
        _check_coefficient(self.coefficient)
        self.free = free_pixels(rois, inner_gap_px)
        self.boxes = ring_boxes(rois, self.free, inner_gap_px, min_pixels, max_radius_px)
        height, width = rois.shape
        self._values = np.zeros((height + 1, width + 1), dtype=np.float64)
        self._counts = np.zeros((height + 1, width + 1), dtype=np.float64)
        self._counts_shift = (-(10**9), 0)  # the shift the count table was built for
        self.values = np.full(self.n_rois, np.nan, dtype=np.float32)

    def masks(self) -> RoiSet:
        """The rings as an RoiSet (free pixels, equal weights), e.g. for display. Allocates."""
        height, width = self.shape
        pixel_lists, weight_lists = [], []
        for b in self.boxes:
            ring = np.zeros((height, width), dtype=bool)
            ring[max(b[4], 0) : max(b[5], 0), max(b[6], 0) : max(b[7], 0)] = True
            ring[max(b[0], 0) : max(b[1], 0), max(b[2], 0) : max(b[3], 0)] = False
            pixels = np.flatnonzero(ring & self.free)
            pixel_lists.append(pixels)
            weight_lists.append(np.full(pixels.size, 1.0 / pixels.size))
        return RoiSet._from_lists(self.shape, pixel_lists, weight_lists)

    def update(
        self,
        frame: np.ndarray,
        shift_yx: np.ndarray | None,
        fluorescence: np.ndarray,
        out: np.ndarray,
    ) -> np.ndarray:
        """Ring means of ``frame`` (content displaced by ``shift_yx`` px relative to the
        reference, or None) into ``values``; out = fluorescence - coefficient * values. A NaN
        shift (flagged frame) gives NaN. Returns out."""
        if not isinstance(frame, np.ndarray) or frame.shape != self.shape:
            raise ValueError(
                f"frame must be a numpy array of shape {self.shape}, got "
                f"{getattr(frame, 'shape', type(frame).__name__)}"
            )
        if fluorescence.shape != (self.n_rois,) or out.shape != (self.n_rois,):
            raise ValueError(
                f"fluorescence and out must have shape ({self.n_rois},), got "
                f"{fluorescence.shape} and {out.shape}"
            )
        if shift_yx is None:
            shift_y = shift_x = 0
        else:
            if not (math.isfinite(shift_yx[0]) and math.isfinite(shift_yx[1])):
                self.values[:] = np.nan
                out[:] = np.nan
                return out
            shift_y, shift_x = int(round(float(shift_yx[0]))), int(round(float(shift_yx[1])))
        update_counts = (shift_y, shift_x) != self._counts_shift
        _masked_tables(
            frame, self.free, shift_y, shift_x, self._values, self._counts, update_counts
        )
        self._counts_shift = (shift_y, shift_x)
        _ring_means(self._values, self._counts, self.boxes, shift_y, shift_x, self.values)
        _subtract(fluorescence, self.values, self.coefficient, out)
        return out
