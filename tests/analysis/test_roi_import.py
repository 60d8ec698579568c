"""Importing ROIs: suite2p stat.npy / iscell.npy written in the test, mask images, bad files."""

import pickle

import numpy as np
import pytest
from PIL import Image

from analysis.roi_import import import_rois, load_mask_file, load_npy_safely, load_suite2p
from analysis.rois import extract

SHAPE = (40, 50)


def _roi(y0, x0, size, lam_scale=1.0, overlap=None):
    yy, xx = np.mgrid[y0 : y0 + size, x0 : x0 + size]
    lam = lam_scale * (1.0 + np.arange(size * size, dtype=np.float32))
    entry = {"ypix": yy.ravel().astype(np.int32), "xpix": xx.ravel().astype(np.int32),
             "lam": lam, "med": [y0 + size / 2, x0 + size / 2], "npix": np.int64(size * size),
             "radius": np.float64(size / 2)}  # fmt: skip
    entry["overlap"] = np.zeros(size * size, bool) if overlap is None else overlap
    return entry


def _write_suite2p(folder, stat, iscell=None):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "stat.npy", np.array(stat, dtype=object))  # suite2p's own format
    if iscell is not None:
        np.save(folder / "iscell.npy", np.asarray(iscell, dtype=np.float64))
    return folder


def test_suite2p_cells_are_imported_with_normalised_lam_weights(tmp_path):
    overlap = np.zeros(9, bool)
    overlap[:3] = True  # the first row of ROI 2 is shared with another ROI
    stat = [_roi(2, 3, 4), _roi(20, 20, 5, lam_scale=2.0), _roi(30, 40, 3, overlap=overlap)]
    folder = _write_suite2p(tmp_path / "plane0", stat, [[1, 0.9], [0, 0.2], [1, 0.7]])
    imported = load_suite2p(folder, SHAPE)
    assert imported.source_indices.tolist() == [0, 2]  # ROI 1 is not a cell
    rois = imported.rois
    assert rois.n_rois == 2 and rois.shape == SHAPE
    # ROI 0: pixels y*W + x with suite2p's lam normalised to sum to 1
    expected_pixels = np.repeat(np.arange(2, 6), 4) * 50 + np.tile(np.arange(3, 7), 4)
    np.testing.assert_array_equal(rois.roi_pixels(0), expected_pixels)
    lam = stat[0]["lam"]
    np.testing.assert_allclose(rois.weights[: rois.offsets[1]], lam / lam.sum(), rtol=1e-6)
    assert rois.roi_pixels(1).size == 6  # overlapping pixels left out, as suite2p extracts
    frame = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    out = np.zeros(2, np.float32)
    extract(frame, rois, out)
    values = frame[stat[0]["ypix"], stat[0]["xpix"]]
    assert out[0] == pytest.approx(np.sum(values * lam) / lam.sum(), rel=1e-5)


def test_suite2p_selection_by_probability_uniform_weights_and_overlap(tmp_path):
    overlap = np.ones(9, bool)
    stat = [_roi(2, 3, 4), _roi(20, 20, 5), _roi(30, 40, 3, overlap=overlap)]
    folder = _write_suite2p(tmp_path / "plane0", stat, [[1, 0.9], [0, 0.6], [1, 0.7]])
    imported = load_suite2p(folder / "stat.npy", SHAPE, min_probability=0.5,
                            weights="uniform", include_overlap=True)  # fmt: skip
    assert imported.source_indices.tolist() == [0, 1, 2]
    np.testing.assert_allclose(imported.rois.weights[: imported.rois.offsets[1]], 1 / 16)
    without_iscell = _write_suite2p(tmp_path / "other", stat[:2])
    assert load_suite2p(without_iscell, SHAPE).rois.n_rois == 2  # no iscell.npy: all ROIs
    assert import_rois(without_iscell, SHAPE).rois.n_rois == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.update(ypix=e["ypix"] + 38),
         r"ROI 1 field 'ypix' has pixels outside the frame \(allowed 0..39, got 58..62\)"),
        (lambda e: e.update(xpix=-e["xpix"]), r"ROI 1 field 'xpix' has pixels outside the frame"),
        (lambda e: e.pop("lam"), r"ROI 1 has no field 'lam'"),
        (lambda e: e.update(ypix=e["ypix"][:0], xpix=e["xpix"][:0], lam=e["lam"][:0],
                            overlap=e["overlap"][:0]), r"ROI 1 has no pixel \(empty 'ypix'\)"),
        (lambda e: e.update(overlap=np.ones(25, bool)), r"ROI 1 has no pixel left after removing"),
        (lambda e: e.update(lam=-e["lam"]), r"ROI 1 field 'lam' must hold 25 finite values >= 0"),
        (lambda e: e.update(ypix=e["ypix"].astype(float)), r"field 'ypix' must hold integers"),
    ],
)  # fmt: skip
def test_bad_suite2p_entries_raise_errors_naming_file_roi_and_field(tmp_path, change, message):
    stat = [_roi(2, 3, 4), _roi(20, 20, 5)]
    change(stat[1])
    folder = _write_suite2p(tmp_path / "plane0", stat)
    with pytest.raises(ValueError, match=message) as raised:
        load_suite2p(folder, SHAPE)
    assert str(folder / "stat.npy") in str(raised.value)


def test_bad_suite2p_files(tmp_path):
    folder = _write_suite2p(tmp_path / "plane0", [_roi(2, 3, 4)], [[1, 0.9], [1, 0.8]])
    with pytest.raises(ValueError, match=r"iscell.npy: expected shape \(1, 2\)"):
        load_suite2p(folder, SHAPE)
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        load_suite2p(tmp_path / "nowhere", SHAPE)
    np.save(tmp_path / "stat.npy", np.zeros(3))
    with pytest.raises(ValueError, match="expected a 1-D object array of dicts"):
        load_suite2p(tmp_path / "stat.npy", SHAPE)


class _Exploit:
    """Unpickling this would create a file: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_with_anything_but_numpy_data_is_refused_unexecuted(tmp_path):
    path = tmp_path / "stat.npy"
    marker = tmp_path / "marker"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|O", "fortran_order": False, "shape": (1,)}
        )
        pickle.dump(np.array([{"ypix": _Exploit(marker)}], dtype=object), handle, protocol=3)
    with pytest.raises(ValueError, match=r"refusing to load io.open"):
        load_npy_safely(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- mask files


def test_png_label_image_with_gaps_keeps_its_labels(tmp_path):
    labels = np.zeros(SHAPE, np.uint8)
    labels[5:10, 5:10] = 3
    labels[20:30, 30:35] = 7
    Image.fromarray(labels).save(tmp_path / "labels.png")
    imported = load_mask_file(tmp_path / "labels.png", SHAPE)
    assert imported.source_indices.tolist() == [3, 7]
    assert [imported.rois.roi_pixels(i).size for i in range(2)] == [25, 50]


def test_binary_mask_image_becomes_one_roi_per_connected_blob(tmp_path):
    mask = np.zeros(SHAPE, np.uint8)
    mask[5:10, 5:10] = 255
    mask[5:10, 12:15] = 255  # separate blob (a background column between)
    mask[30, 30] = 255
    mask[31, 31] = 255  # diagonal neighbours are not 4-connected: two ROIs
    Image.fromarray(mask).save(tmp_path / "mask.tif")
    imported = load_mask_file(tmp_path / "mask.tif", SHAPE)
    sizes = sorted(imported.rois.roi_pixels(i).size for i in range(imported.rois.n_rois))
    assert sizes == [1, 1, 15, 25]


def test_16_bit_tiff_labels_and_cellpose_seg_files(tmp_path):
    labels = np.zeros(SHAPE, np.uint16)
    labels[1:4, 1:4] = 1000
    labels[10:12, 10:14] = 2
    Image.fromarray(labels).save(tmp_path / "labels.tif")
    imported = load_mask_file(tmp_path / "labels.tif", SHAPE)
    assert imported.source_indices.tolist() == [2, 1000]
    np.save(tmp_path / "img_seg.npy", {"masks": labels.astype(np.int32), "diams": 12.0})
    assert load_mask_file(tmp_path / "img_seg.npy", SHAPE).rois.n_rois == 2


def test_plain_npy_label_image_goes_through_the_roi_file_loader(tmp_path):
    labels = np.zeros(SHAPE, np.int32)
    labels[1:4, 1:4] = 1
    np.save(tmp_path / "labels.npy", labels)
    assert import_rois(tmp_path / "labels.npy", SHAPE).rois.n_rois == 1


def test_bad_mask_files_raise_errors_naming_the_file(tmp_path):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"small.png: image has shape \(10, 10\), the frames"):
        load_mask_file(tmp_path / "small.png", SHAPE)
    Image.fromarray(np.zeros(SHAPE, np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ValueError, match=r"empty.png: no ROI"):
        load_mask_file(tmp_path / "empty.png", SHAPE)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken.png could not be read"):
        load_mask_file(tmp_path / "broken.png", SHAPE)
    np.save(tmp_path / "dict_seg.npy", {"outlines": np.zeros(SHAPE)})
    with pytest.raises(ValueError, match=r"dict with a 'masks' label image"):
        load_mask_file(tmp_path / "dict_seg.npy", SHAPE)
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        load_mask_file(tmp_path / "missing.png", SHAPE)
