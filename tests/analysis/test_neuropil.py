"""Neuropil annuli and subtraction: geometry of the masks, recovery of the soma signal."""

import numpy as np
import pytest

from analysis.neuropil import Neuropil, subtract_neuropil
from analysis.rois import RoiSet


def _discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.stack([np.hypot(yy - cy, xx - cx) <= radius for cy, cx in centres])


def test_ring_excludes_every_roi_and_its_gap_and_surrounds_its_own_roi():
    shape = (80, 80)
    masks = _discs(shape, [(40, 40), (40, 53), (20, 20)], 5)  # two touching cells
    rois = RoiSet.from_masks(masks)
    neuropil = Neuropil(rois, inner_gap_px=2, min_pixels=200)
    rings = neuropil.masks()
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    near_roi = np.zeros(shape, bool)
    for y, x in zip(*np.nonzero(masks.any(axis=0))):
        near_roi |= np.hypot(yy - y, xx - x) <= 2
    for i in range(rois.n_rois):
        pixels = rings.roi_pixels(i)
        assert not near_roi.ravel()[pixels].any()  # no ROI pixel, no pixel within the gap
        assert pixels.size >= 200
        ring_y, ring_x = pixels // 80, pixels % 80
        own_y, own_x = np.nonzero(masks[i])
        # a square ring around the ROI: its pixels lie beyond the ROI's box grown by the gap
        outside = (ring_y < own_y.min() - 2) | (ring_y > own_y.max() + 2)
        outside |= (ring_x < own_x.min() - 2) | (ring_x > own_x.max() + 2)
        assert outside.all()
        # ... and it holds every free pixel of its outer square not in the inner square
        in_outer = (yy >= ring_y.min()) & (yy <= ring_y.max()) & (xx >= ring_x.min())
        in_outer &= xx <= ring_x.max()
        in_inner = (yy >= own_y.min() - 2) & (yy <= own_y.max() + 2)
        in_inner &= (xx >= own_x.min() - 2) & (xx <= own_x.max() + 2)
        expected = np.flatnonzero(in_outer & ~in_inner & ~near_roi)
        np.testing.assert_array_equal(pixels, expected)


def test_ring_means_from_the_summed_area_table_equal_direct_means():
    rng = np.random.default_rng(2)
    shape = (70, 90)
    rois = RoiSet.from_masks(_discs(shape, [(35, 45), (10, 10), (60, 80), (30, 20)], 4))
    neuropil = Neuropil(rois, min_pixels=150)
    rings = neuropil.masks()
    frame = rng.random(shape).astype(np.float32)
    out = np.zeros(4, np.float32)
    neuropil.update(frame, None, np.zeros(4, np.float32), out)
    direct = [frame.ravel()[rings.roi_pixels(i)].mean() for i in range(4)]
    np.testing.assert_allclose(neuropil.values, direct, rtol=1e-5)
    # content moved by (3, -2): the rings and the free-pixel mask move with it
    moved = np.zeros_like(frame)
    moved[3:, :-2] = frame[:-3, 2:]
    neuropil.update(moved, np.array([3.2, -1.9]), np.zeros(4, np.float32), out)
    inside = []
    for i in range(4):  # pixels that moved out of the frame are not used
        ys, xs = np.divmod(rings.roi_pixels(i), 90)
        keep = (ys + 3 < 70) & (xs - 2 >= 0)
        inside.append(moved[ys[keep] + 3, xs[keep] - 2].mean())
    np.testing.assert_allclose(neuropil.values, inside, rtol=1e-5)


def test_ring_of_a_roi_at_the_edge_stays_inside_the_frame():
    rois = RoiSet.from_masks(_discs((50, 50), [(2, 2)], 3))
    rings = Neuropil(rois, min_pixels=100).masks()
    pixels = rings.roi_pixels(0)
    assert pixels.size >= 100 and pixels.min() >= 0 and pixels.max() < 2500


def test_roi_without_room_for_a_ring_is_an_error_naming_it():
    masks = np.zeros((2, 20, 20), bool)
    masks[0, :, :10] = True
    masks[1, :, 10:] = True  # the two ROIs cover the whole frame
    with pytest.raises(ValueError, match=r"ROI 0 .* has no free pixel for its neuropil ring"):
        Neuropil(RoiSet.from_masks(masks))


def test_subtraction_recovers_the_soma_signal_of_a_linear_mixture():
    # inside the soma: its own signal S plus 0.7 of the surrounding neuropil N (the soma
    # displaces the rest); outside: N. F - 0.7 F_np = S exactly.
    rng = np.random.default_rng(1)
    shape = (60, 60)
    masks = _discs(shape, [(30, 30), (15, 45)], 5)
    rois = RoiSet.from_masks(masks)
    neuropil = Neuropil(rois, coefficient=0.7, min_pixels=150)
    n_frames = 50
    soma = rng.uniform(1, 3, (n_frames, 2))
    surround = rng.uniform(0.5, 2.0, n_frames)
    corrected = np.zeros((n_frames, 2), np.float32)
    raw = np.zeros(2, np.float32)
    for t in range(n_frames):
        frame = np.full(shape, surround[t], np.float32)
        for i in range(2):
            frame[masks[i]] = soma[t, i] + 0.7 * surround[t]
        for i in range(2):
            raw[i] = frame[masks[i]].mean()
        neuropil.update(frame, None, raw, corrected[t])
        np.testing.assert_allclose(neuropil.values, surround[t], rtol=1e-6)
    np.testing.assert_allclose(corrected, soma, rtol=1e-5)


def test_offline_subtraction_and_bad_coefficients():
    f = np.array([[3.0, 4.0], [5.0, np.nan]])
    n = np.array([[1.0, 2.0], [1.0, 1.0]])
    out = np.empty_like(f)
    subtract_neuropil(f, n, [0.5, 1.0], out)
    np.testing.assert_array_equal(out, [[2.5, 2.0], [4.5, np.nan]])
    with pytest.raises(ValueError, match="between 0 and 2"):
        subtract_neuropil(f, n, -0.1, out)
    rois = RoiSet.from_masks(_discs((40, 40), [(20, 20)], 4))
    with pytest.raises(ValueError, match="between 0 and 2"):
        Neuropil(rois, coefficient=np.nan)
    with pytest.raises(ValueError, match="min_pixels must be an integer >= 1"):
        Neuropil(rois, min_pixels=0)
    neuropil = Neuropil(rois, min_pixels=50)
    out = np.zeros(1, np.float32)
    neuropil.update(np.ones((40, 40), np.float32), np.array([np.nan, np.nan]),
                    np.ones(1, np.float32), out)  # fmt: skip
    assert np.isnan(out[0])  # a flagged frame (NaN shift) gives NaN
