"""ROI sets: representation, validation, extraction, files, and detection of somata."""

import numpy as np
import pytest

from analysis.dff import dff_offline
from analysis.noise import noise_level
from analysis.rois import (
    RoiSet,
    axial_fraction,
    detect_rois,
    extract,
    load_roi_file,
    relative_excess,
)

# --------------------------------------------------------------------------- helpers


def _random_masks(rng: np.random.Generator, n_rois: int, shape: tuple[int, int]) -> np.ndarray:
    """Overlapping disc masks of random size and position."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    masks = np.zeros((n_rois, *shape), dtype=bool)
    for i in range(n_rois):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        radius = rng.uniform(1.5, 6.0)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        masks[i, int(cy) % shape[0], int(cx) % shape[1]] = True  # never empty
    return masks


def _simulate_two_photon_movie(
    rng: np.random.Generator,
    shape: tuple[int, int] = (96, 96),
    n_cells: int = 20,
    n_frames: int = 600,
    frame_rate_hz: float = 30.0,
    brightness: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Somata 8-14 px across (soft discs and Gaussians) on neuropil, spike-driven calcium
    transients (0.5 dF/F per spike, tau 0.6 s, ~1 Hz), Poisson photon counts (~0.7 photons per
    soma pixel per frame, 0.2 on neuropil; ``brightness`` (n_cells,) scales each cell).

    Returns frames (T, H, W) float32, centres (n, 2) (y, x), radii (n,), footprints (n, H, W).
    """
    height, width = shape
    diameters = rng.uniform(8.0, 14.0, size=n_cells)
    centres: list[np.ndarray] = []
    radii: list[float] = []
    while len(centres) < n_cells:  # non-overlapping somata (they may touch)
        radius = diameters[len(centres)] / 2
        centre = rng.uniform([radius + 1, radius + 1], [height - radius - 1, width - radius - 1])
        if all(np.hypot(*(centre - c)) >= radius + r for c, r in zip(centres, radii)):
            centres.append(centre)
            radii.append(radius)
    yy, xx = np.mgrid[0:height, 0:width]
    footprints = np.empty((n_cells, height, width))
    for i, (centre, radius) in enumerate(zip(centres, radii)):
        distance = np.hypot(yy - centre[0], xx - centre[1])
        if i % 2 == 0:
            footprints[i] = 1 / (1 + np.exp((distance - radius) / 0.5))  # soft-edged disc
        else:
            footprints[i] = np.exp(-0.5 * (distance / (0.6 * radius)) ** 2)  # Gaussian soma
    spikes = rng.poisson(1.0 / frame_rate_hz, size=(n_cells, n_frames))
    decay = np.exp(-1 / (0.6 * frame_rate_hz))
    calcium = np.zeros((n_cells, n_frames))
    for t in range(n_frames):
        calcium[:, t] = (calcium[:, t - 1] * decay if t else 0.0) + 0.5 * spikes[:, t]
    cell_photons = 0.5 * rng.uniform(0.7, 1.3, size=n_cells)  # photons / pixel / frame
    if brightness is not None:
        cell_photons = cell_photons * brightness
    neuropil_photons = 0.2
    expected = neuropil_photons + np.einsum(
        "ct,cyx->tyx", cell_photons[:, None] * (1 + calcium), footprints
    )
    frames = rng.poisson(expected).astype(np.float32)
    return frames, np.array(centres), np.array(radii), footprints


def _match_by_centroid(
    found: np.ndarray, centres: np.ndarray, radii: np.ndarray
) -> tuple[float, float]:
    """Recall and precision of a one-to-one matching: a detected centroid matches a planted
    cell if it lies closer than the cell's radius to its centre."""
    used: set[int] = set()
    hits = 0
    for centre, radius in zip(centres, radii):
        if len(found) == 0:
            break
        distance = np.hypot(*(found - centre).T)
        for j in np.argsort(distance):
            if distance[j] >= radius:
                break
            if j not in used:
                used.add(int(j))
                hits += 1
                break
    return hits / len(centres), hits / max(1, len(found))


# --------------------------------------------------------------------------- representation


def test_masks_and_label_image_round_trip():
    labels = np.zeros((6, 7), dtype=np.int32)
    labels[1:3, 1:4] = 1
    labels[4, 2:7] = 2
    labels[0, 6] = 3
    rois = RoiSet.from_label_image(labels)
    assert rois.n_rois == 3
    np.testing.assert_array_equal(rois.label_image(), labels)
    np.testing.assert_array_equal(rois.masks(), np.stack([labels == k for k in (1, 2, 3)]))
    np.testing.assert_array_equal(RoiSet.from_masks(rois.masks()).label_image(), labels)
    # centroids (y, x) are the mask centres; weights of each ROI sum to 1
    np.testing.assert_allclose(rois.centroids_px, [[1.5, 2.0], [4.0, 4.0], [0.0, 6.0]])
    sums = np.add.reduceat(rois.weights.astype(np.float64), rois.offsets[:-1])
    np.testing.assert_allclose(sums, 1.0, rtol=1e-6)
    assert rois.pixels.dtype == np.int32 and rois.offsets.dtype == np.int32
    assert rois.weights.dtype == np.float32 and rois.centroids_px.dtype == np.float64


def test_invalid_rois_raise_value_errors_naming_the_roi_and_the_problem():
    shape = (5, 5)
    with pytest.raises(ValueError, match=r"ROI 1 .*outside the 5 x 5 frame"):
        RoiSet(shape, np.array([0, 1, 25]), np.array([0, 2, 3]), np.array([0.5, 0.5, 1.0]))
    with pytest.raises(ValueError, match="ROI 1 is empty"):
        RoiSet(shape, np.array([0, 1]), np.array([0, 2, 2]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="ROI 0 weights sum to"):
        RoiSet(shape, np.array([0, 1]), np.array([0, 2]), np.array([0.5, 0.2]))
    with pytest.raises(ValueError, match="ROI 0 lists the same pixel"):
        RoiSet(shape, np.array([3, 3]), np.array([0, 2]), np.array([0.5, 0.5]))
    masks = np.zeros((3, 5, 5), dtype=bool)
    masks[0, 1, 1] = masks[2, 3, 3] = True
    with pytest.raises(ValueError, match="ROI 1 is empty"):
        RoiSet.from_masks(masks)
    with pytest.raises(ValueError, match="weights must have the masks' shape"):
        RoiSet.from_masks(masks[[0, 2]], weights=np.ones((2, 4, 5)))
    labels = np.zeros((5, 5), dtype=np.int32)
    labels[0, 0], labels[2, 2] = 1, 3
    with pytest.raises(ValueError, match=r"ROI 1 \(label 2\) is empty"):
        RoiSet.from_label_image(labels)
    with pytest.raises(ValueError, match="integer dtype"):
        RoiSet.from_label_image(labels.astype(float))


# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32, np.float64])
def test_extraction_equals_the_masked_mean_computed_by_numpy(dtype):
    rng = np.random.default_rng(30)
    shape = (40, 50)
    masks = _random_masks(rng, 25, shape)
    rois = RoiSet.from_masks(masks)
    frame = rng.integers(0, 4000, size=shape).astype(dtype)
    out = np.empty(rois.n_rois, dtype=np.float32)
    extract(frame, rois, out)
    expected = [frame[mask].astype(np.float64).mean() for mask in masks]
    np.testing.assert_allclose(out, expected, rtol=2e-6)


def test_weighted_extraction_equals_the_weighted_mean():
    rng = np.random.default_rng(31)
    shape = (30, 30)
    masks = _random_masks(rng, 10, shape)
    footprints = rng.uniform(0.1, 1.0, size=masks.shape)
    rois = RoiSet.from_masks(masks, weights=footprints)
    frame = rng.normal(100, 20, size=shape)
    out = np.empty(rois.n_rois, dtype=np.float32)
    extract(frame, rois, out)
    expected = [np.average(frame[m], weights=w[m]) for m, w in zip(masks, footprints)]
    np.testing.assert_allclose(out, expected, rtol=2e-6)


def test_extraction_rejects_frames_and_outputs_of_the_wrong_shape():
    rois = RoiSet.from_masks(np.ones((2, 4, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"frame .*\(4, 4\)"):
        extract(np.zeros((4, 5)), rois, np.empty(2, np.float32))
    with pytest.raises(ValueError, match="out must be a float32"):
        extract(np.zeros((4, 4)), rois, np.empty(2, np.float64))


# --------------------------------------------------------------------------- files


def test_roi_files_load_from_label_images_mask_stacks_and_npz(tmp_path):
    rng = np.random.default_rng(32)
    masks = _random_masks(rng, 4, (20, 24))
    labels = np.zeros((20, 24), dtype=np.int32)
    labels[2:5, 3:9] = 1
    labels[10:15, 10:12] = 2
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "stack.npy", masks)
    np.savez(tmp_path / "rois.npz", masks=masks, weights=rng.uniform(0.5, 1, masks.shape))
    from_labels = load_roi_file(tmp_path / "labels.npy", (20, 24))
    np.testing.assert_array_equal(from_labels.label_image(), labels)
    np.testing.assert_array_equal(load_roi_file(tmp_path / "stack.npy", (20, 24)).masks(), masks)
    from_npz = load_roi_file(str(tmp_path / "rois.npz"), (20, 24))
    np.testing.assert_array_equal(from_npz.masks(), masks)


def test_bad_roi_files_raise_errors_naming_the_file_and_the_problem(tmp_path):
    labels = np.zeros((8, 8), dtype=np.int32)
    labels[1:3, 1:3] = 1
    cases = {
        "wrong_shape.npy": (labels, "shape"),
        "float_labels.npy": (labels.astype(np.float32), "integer dtype"),
        "gap.npy": (labels * 2, "empty"),
        "int_stack.npy": (np.ones((2, 8, 8), dtype=np.int32), "boolean"),
        "four_d.npy": (np.ones((1, 2, 8, 8), dtype=bool), "expected a label image"),
    }
    for name, (array, problem) in cases.items():
        path = tmp_path / name
        np.save(path, array)
        expected_shape = (8, 9) if name == "wrong_shape.npy" else (8, 8)
        with pytest.raises(ValueError, match=problem) as error:
            load_roi_file(path, expected_shape)
        assert name in str(error.value)
    np.savez(tmp_path / "no_masks.npz", labels=labels)
    with pytest.raises(ValueError, match="masks") as error:
        load_roi_file(tmp_path / "no_masks.npz", (8, 8))
    assert "no_masks.npz" in str(error.value)
    (tmp_path / "corrupt.npy").write_bytes(b"not a numpy file at all")
    with pytest.raises(ValueError, match="could not be read") as error:
        load_roi_file(tmp_path / "corrupt.npy", (8, 8))
    assert "corrupt.npy" in str(error.value)
    np.save(tmp_path / "objects.npy", np.array([{"roi": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="objects.npy"):
        load_roi_file(tmp_path / "objects.npy", (8, 8))
    (tmp_path / "rois.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match=r"rois\.txt.*extension"):
        load_roi_file(tmp_path / "rois.txt", (8, 8))
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_roi_file(tmp_path / "missing.npy", (8, 8))


# --------------------------------------------------------------------------- detection


def test_detection_finds_the_somata_of_a_simulated_shot_noise_movie():
    rng = np.random.default_rng(33)
    frames, centres, radii, footprints = _simulate_two_photon_movie(rng)
    # the regime asked for: ROI traces of the planted cells have noise levels ~2-4
    planted = RoiSet.from_masks(footprints > 0.3)
    F = np.empty((planted.n_rois, frames.shape[0]), dtype=np.float32)
    for t, frame in enumerate(frames):
        extract(frame, planted, F[:, t])
    nu = noise_level(dff_offline(F, 30.0, 10.0, 8.0, centered=True), 30.0)
    assert 2.0 <= np.median(nu) <= 4.0

    rois = detect_rois(frames, cell_diameter_px=11.0)
    recall, precision = _match_by_centroid(rois.centroids_px, centres, radii)
    assert recall >= 0.8
    assert precision >= 0.8
    # ROIs are soma-sized
    areas = np.diff(rois.offsets)
    assert np.all(areas >= 0.2 * np.pi * 5.5**2) and np.all(areas <= 2.5 * np.pi * 5.5**2)


def test_min_relative_excess_drops_somata_much_dimmer_than_the_others():
    """Out-of-focus cells (the focal plane misses the soma) look like dim somata: with
    min_relative_excess = 0.5 only somata at least half as bright above background as the
    median ROI are kept."""
    rng = np.random.default_rng(35)
    brightness = np.where(np.arange(20) % 4 == 3, 0.3, 1.0)  # every 4th cell at 30 %
    frames, centres, radii, _ = _simulate_two_photon_movie(rng, brightness=brightness)
    dim = brightness < 1.0

    everything = detect_rois(frames, cell_diameter_px=11.0)
    found_dim, _ = _match_by_centroid(everything.centroids_px, centres[dim], radii[dim])
    assert found_dim >= 0.4  # visible: some are found when nothing is filtered

    in_focus = detect_rois(frames, cell_diameter_px=11.0, min_relative_excess=0.5)
    kept_dim, _ = _match_by_centroid(in_focus.centroids_px, centres[dim], radii[dim])
    kept_bright, _ = _match_by_centroid(in_focus.centroids_px, centres[~dim], radii[~dim])
    assert kept_dim == 0.0
    assert kept_bright >= 0.8

    # relative_excess reports, for any ROI set, the quantity the filter thresholds: applied to
    # the unfiltered ROIs it keeps exactly the filtered ones
    excess = relative_excess(everything, frames.mean(axis=0, dtype=np.float64), 11.0)
    assert np.median(excess) == pytest.approx(1.0)
    kept = [i for i in range(everything.n_rois) if excess[i] >= 0.5]
    assert len(kept) == in_focus.n_rois
    for i, j in zip(kept, range(in_focus.n_rois)):
        np.testing.assert_array_equal(everything.roi_pixels(i), in_focus.roi_pixels(j))
    with pytest.raises(ValueError, match="mean_image has shape"):
        relative_excess(everything, frames[0, :10], 11.0)
    with pytest.raises(ValueError, match="min_relative_excess"):
        detect_rois(frames[:30], cell_diameter_px=11.0, min_relative_excess=1.5)


def test_detection_on_pure_noise_finds_nothing_and_max_rois_caps_the_count():
    rng = np.random.default_rng(34)
    noise_only = rng.poisson(0.5, size=(300, 64, 64)).astype(np.float32)
    assert detect_rois(noise_only, cell_diameter_px=10.0).n_rois == 0
    frames, *_ = _simulate_two_photon_movie(rng, shape=(64, 64), n_cells=8, n_frames=200)
    assert detect_rois(frames.astype(np.uint16), cell_diameter_px=11.0, max_rois=3).n_rois == 3


def test_detection_needs_a_reference_period_of_at_least_20_frames():
    with pytest.raises(ValueError, match="at least 20 frames"):
        detect_rois(np.zeros((19, 32, 32), dtype=np.float32), cell_diameter_px=10.0)
    with pytest.raises(ValueError, match="cell_diameter_px"):
        detect_rois(np.zeros((30, 32, 32), dtype=np.float32), cell_diameter_px=0.5)
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        detect_rois(np.zeros((32, 32), dtype=np.float32), cell_diameter_px=10.0)


def test_axial_fraction_is_the_brightness_at_the_plane_over_the_brightest_plane():
    """Three discs on a flat background in a z-stack: one brightest in the imaging plane, one
    whose soma lies above it (at z = 0 it shows 30 % of its brightest plane), one not
    brighter than its surround anywhere (not measurable: NaN). The field's edge may be NaN."""
    z_um = np.arange(-4.0, 5.0, 1.0)
    yy, xx = np.mgrid[0:64, 0:64]
    masks = np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 <= 25 for cy, cx in ((20, 20), (44, 44),
                                                                          (20, 44))])
    rois = RoiSet.from_masks(masks)
    stack = np.full((z_um.size, 64, 64), 10.0)
    stack[:, masks[0]] += 5.0 * np.exp(-0.5 * (z_um / 2.0) ** 2)[:, None]
    stack[:, masks[1]] += 8.0 * (0.3 + 0.7 * (z_um == 3.0))[:, None]
    stack[:, masks[2]] -= 1.0
    stack[:, :, :2] = np.nan  # no data at the edge after alignment
    fraction = axial_fraction(stack, z_um, rois, cell_diameter_px=10.0)
    np.testing.assert_allclose(fraction[:2], [1.0, 0.3])
    assert np.isnan(fraction[2])
    with pytest.raises(ValueError, match="z = 0 once"):
        axial_fraction(stack, z_um + 0.5, rois, 10.0)
    with pytest.raises(ValueError, match="planes, H, W"):
        axial_fraction(stack[:, :32], z_um, rois, 10.0)
