"""Import ROIs made elsewhere: suite2p output (stat.npy, iscell.npy) and plain mask files.

suite2p (Pachitariu et al. 2017) writes per plane:

- ``stat.npy``: an object array of dicts, one per ROI, with ``ypix`` and ``xpix`` (integer pixel
  coordinates in the registered frame), ``lam`` (non-negative pixel weights) and ``overlap``
  (bool per pixel: shared with another ROI), among other fields;
- ``iscell.npy``: float (n_rois, 2): column 0 is 1 for ROIs classified as cells, column 1 the
  classifier's probability.

As suite2p extracts fluorescence, each imported ROI's weights are its ``lam`` normalised to sum
to 1, without the pixels marked ``overlap`` (suite2p's default ``allow_overlap = False``);
``weights="uniform"`` and ``include_overlap=True`` change that. Only cells are kept by default
(iscell column 0, or a minimum probability).

stat.npy is a pickle. Unpickling can run arbitrary code, so it is read with an unpickler that
only rebuilds numpy arrays, dtypes and numpy scalars inside plain dicts and lists; any other
object in the file is refused with an error naming it.

Plain mask files (``load_mask_file``): ``.npy`` / ``.npz`` label images or mask stacks (as
analysis.rois.load_roi_file), a Cellpose ``*_seg.npy`` (a dict holding a ``masks`` label
image), and ``.png`` / ``.tif`` / ``.tiff`` images (read with Pillow): a label image (0 =
background, labels need not be consecutive) or a binary mask whose 4-connected components
become the ROIs.

Every error names the file, and where it applies the ROI and the field.
"""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from analysis.rois import RoiSet, load_roi_file

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


@dataclass(frozen=True)
class ImportedRois:
    """ROIs read from a file: ``rois`` and, per ROI, its index (suite2p) or label (mask image)
    in the source, so results can be traced back."""

    rois: RoiSet
    source_indices: np.ndarray
    source: str


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dtypes and scalars; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays, dtypes and scalars in "
                "dicts and lists are allowed"
            )
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core" + module[len("numpy.core") :]  # written by numpy 1.x
        elif module.startswith("numpy._core") and int(np.__version__.split(".")[0]) < 2:
            module = "numpy.core" + module[len("numpy._core") :]
        return getattr(importlib.import_module(module), name)


def load_npy_safely(path: str | Path) -> np.ndarray:
    """np.load of a .npy file, with object arrays (pickles) restricted to numpy data in dicts
    and lists (see the module docstring). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            if not dtype.hasobject:
                return np.load(path, allow_pickle=False)
            array = _NumpyOnlyUnpickler(handle).load()
    except (ValueError, pickle.UnpicklingError, EOFError, OSError) as error:
        raise ValueError(f"{path} could not be read as a .npy file: {error}") from error
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise ValueError(f"{path}: the pickled content is not the array its header announces")
    return array


# --------------------------------------------------------------------------- suite2p


def _suite2p_paths(path: Path, iscell_path: str | Path | None) -> tuple[Path, Path | None]:
    stat_path = path / "stat.npy" if path.is_dir() else path
    if not stat_path.is_file():
        raise FileNotFoundError(
            f"suite2p stat file {stat_path} does not exist (give stat.npy or its plane folder)"
        )
    if iscell_path is None:
        candidate = stat_path.parent / "iscell.npy"
        return stat_path, candidate if candidate.is_file() else None
    iscell = Path(iscell_path)
    if not iscell.is_file():
        raise FileNotFoundError(f"suite2p iscell file {iscell} does not exist")
    return stat_path, iscell


def _field(stat_path: Path, index: int, entry: dict, name: str) -> np.ndarray:
    if name not in entry:
        raise ValueError(
            f"{stat_path}: ROI {index} has no field {name!r} (fields: {', '.join(sorted(entry))})"
        )
    return np.asarray(entry[name]).ravel()


def load_suite2p(
    path: str | Path,
    frame_shape: tuple[int, int],
    iscell_path: str | Path | None = None,
    cells_only: bool = True,
    min_probability: float | None = None,
    weights: str = "lam",
    include_overlap: bool = False,
) -> ImportedRois:
    """ROIs from suite2p's stat.npy (a file, or the plane folder holding it) for frames of
    ``frame_shape`` (H, W).

    iscell_path: defaults to iscell.npy next to stat.npy, if present. cells_only: keep the ROIs
    classified as cells (iscell column 0 > 0.5; all ROIs when there is no iscell.npy);
    min_probability: instead keep those with classifier probability >= this. weights: "lam"
    (suite2p's, normalised) or "uniform".
    include_overlap: keep pixels shared with other ROIs (suite2p's allow_overlap).
    """
    stat_path, iscell_file = _suite2p_paths(Path(path), iscell_path)
    height, width = (int(s) for s in frame_shape)
    if weights not in ("lam", "uniform"):
        raise ValueError(f"weights = {weights!r}: choose 'lam' or 'uniform'")
    stat = load_npy_safely(stat_path)
    if stat.dtype != object or stat.ndim != 1:
        raise ValueError(
            f"{stat_path}: expected a 1-D object array of dicts (suite2p stat), got dtype "
            f"{stat.dtype} and shape {stat.shape}"
        )
    n = stat.shape[0]
    keep = np.ones(n, dtype=bool)
    if iscell_file is not None and (cells_only or min_probability is not None):
        iscell = load_npy_safely(iscell_file)
        if iscell.ndim != 2 or iscell.shape[0] != n or iscell.shape[1] < 2:
            raise ValueError(
                f"{iscell_file}: expected shape ({n}, 2) for the {n} ROIs of {stat_path}, got "
                f"{iscell.shape}"
            )
        if min_probability is not None:
            if not 0.0 <= float(min_probability) <= 1.0:
                raise ValueError(f"min_probability must be in [0, 1], got {min_probability!r}")
            keep = iscell[:, 1] >= float(min_probability)
        else:
            keep = iscell[:, 0] > 0.5
    elif min_probability is not None:
        raise ValueError(f"min_probability needs iscell.npy, not found next to {stat_path}")
    pixel_lists, weight_lists, indices = [], [], []
    for index in np.flatnonzero(keep):
        entry = stat[index]
        if not isinstance(entry, dict):
            raise ValueError(f"{stat_path}: ROI {index} is a {type(entry).__name__}, not a dict")
        ypix = _field(stat_path, index, entry, "ypix")
        xpix = _field(stat_path, index, entry, "xpix")
        for name, values, size in (("ypix", ypix, height), ("xpix", xpix, width)):
            if not np.issubdtype(values.dtype, np.integer):
                raise ValueError(
                    f"{stat_path}: ROI {index} field {name!r} must hold integers, got "
                    f"{values.dtype}"
                )
            if values.size and (values.min() < 0 or values.max() >= size):
                raise ValueError(
                    f"{stat_path}: ROI {index} field {name!r} has pixels outside the frame "
                    f"(allowed 0..{size - 1}, got {values.min()}..{values.max()}); are the "
                    f"frames {height} x {width} like the registered movie suite2p saw?"
                )
        if ypix.size != xpix.size:
            raise ValueError(
                f"{stat_path}: ROI {index} fields 'ypix' ({ypix.size}) and 'xpix' ({xpix.size}) "
                "differ in length"
            )
        if weights == "lam":
            lam = _field(stat_path, index, entry, "lam").astype(np.float64)
            if lam.size != ypix.size or not np.isfinite(lam).all() or (lam < 0).any():
                raise ValueError(
                    f"{stat_path}: ROI {index} field 'lam' must hold {ypix.size} finite values "
                    f">= 0, got {lam.size} values (min {lam.min() if lam.size else 'n/a'})"
                )
        else:
            lam = np.ones(ypix.size)
        use = np.ones(ypix.size, dtype=bool)
        if not include_overlap and "overlap" in entry:
            overlap = np.asarray(entry["overlap"], dtype=bool).ravel()
            if overlap.size != ypix.size:
                raise ValueError(
                    f"{stat_path}: ROI {index} field 'overlap' has {overlap.size} values for "
                    f"{ypix.size} pixels"
                )
            use = ~overlap
        pixels = ypix[use].astype(np.int64) * width + xpix[use]
        roi_weights = lam[use]
        if pixels.size == 0 or roi_weights.sum() <= 0:
            reason = (
                "no pixel left after removing the pixels shared with other ROIs (field "
                "'overlap'; pass include_overlap=True to keep them)"
                if ypix.size
                else "no pixel (empty 'ypix')"
            )
            if ypix.size and roi_weights.size and roi_weights.sum() <= 0:
                reason = "weights ('lam') summing to 0"
            raise ValueError(f"{stat_path}: ROI {index} has {reason}")
        if np.unique(pixels).size != pixels.size:
            raise ValueError(f"{stat_path}: ROI {index} lists the same pixel more than once")
        order = np.argsort(pixels)
        pixel_lists.append(pixels[order])
        weight_lists.append(roi_weights[order] / roi_weights.sum())
        indices.append(index)
    if not pixel_lists:
        raise ValueError(f"{stat_path}: no ROI left to import (none classified as a cell?)")
    rois = RoiSet._from_lists((height, width), pixel_lists, weight_lists)
    return ImportedRois(rois, np.array(indices, dtype=np.int64), str(stat_path))


# --------------------------------------------------------------------------- mask files


@numba.njit(cache=True, nogil=True)
def _label_components(mask: np.ndarray, labels: np.ndarray, queue: np.ndarray) -> int:
    """4-connected components of mask into labels (1..n, row-major order of first pixel)."""
    height, width = mask.shape
    n = 0
    for y in range(height):
        for x in range(width):
            if mask[y, x] and labels[y, x] == 0:
                n += 1
                labels[y, x] = n
                head = 0
                tail = 0
                queue[tail] = y * width + x
                tail += 1
                while head < tail:
                    p = queue[head]
                    head += 1
                    py = p // width
                    px = p % width
                    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                        ny = py + dy
                        nx = px + dx
                        if 0 <= ny < height and 0 <= nx < width:
                            if mask[ny, nx] and labels[ny, nx] == 0:
                                labels[ny, nx] = n
                                queue[tail] = ny * width + nx
                                tail += 1
    return n


def _rois_from_label_image(
    labels: np.ndarray, path: Path, frame_shape: tuple[int, int]
) -> ImportedRois:
    if labels.ndim != 2:
        raise ValueError(f"mask file {path}: expected a 2-D image, got shape {labels.shape}")
    if labels.shape != frame_shape:
        raise ValueError(
            f"mask file {path}: image has shape {labels.shape}, the frames have shape {frame_shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer) and not np.issubdtype(labels.dtype, np.bool_):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError(
                f"mask file {path}: pixel values must be integer labels, got dtype {labels.dtype}"
            )
    values = labels.astype(np.int64)
    if values.min() < 0:
        raise ValueError(f"mask file {path}: labels must be >= 0 (0 = background)")
    present = np.unique(values[values > 0])
    if present.size == 0:
        raise ValueError(f"mask file {path}: no ROI (every pixel is 0 = background)")
    if present.size == 1:  # a binary mask: its connected blobs are the ROIs
        component = np.zeros(values.shape, dtype=np.int64)
        queue = np.empty(values.size, dtype=np.int64)
        n = _label_components(values > 0, component, queue)
        values, present = component, np.arange(1, n + 1)
    flat = values.ravel()
    order = np.argsort(flat, kind="stable")
    starts = np.searchsorted(flat[order], present, side="left")
    stops = np.searchsorted(flat[order], present, side="right")
    pixel_lists = [np.sort(order[a:b]) for a, b in zip(starts, stops)]
    weight_lists = [np.full(p.size, 1.0 / p.size) for p in pixel_lists]
    rois = RoiSet._from_lists(frame_shape, pixel_lists, weight_lists)
    return ImportedRois(rois, present.astype(np.int64), str(path))


def load_mask_file(path: str | Path, frame_shape: tuple[int, int]) -> ImportedRois:
    """ROIs from a plain mask file (formats in the module docstring) for frames of frame_shape.
    source_indices are the labels (label images), the component numbers (binary images) or
    the stack indices (mask stacks)."""
    path = Path(path)
    frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".png", ".tif", ".tiff"):
        try:
            from PIL import Image  # Pillow (a matplotlib dependency)
        except ImportError as error:  # pragma: no cover - Pillow ships with matplotlib
            raise ValueError(f"mask file {path}: reading {suffix} needs Pillow") from error
        try:
            with Image.open(path) as image:
                if getattr(image, "n_frames", 1) > 1:
                    raise ValueError(f"has {image.n_frames} pages; expected one label image")
                array = np.array(image)
        except (OSError, ValueError) as error:
            raise ValueError(f"mask file {path} could not be read: {error}") from error
        if array.ndim == 3:  # RGB(A) of a binary or grey mask: all channels must agree
            if not (array[..., :3] == array[..., :1]).all():
                raise ValueError(f"mask file {path}: a colour image is not a label image")
            array = array[..., 0]
        return _rois_from_label_image(array, path, frame_shape)
    if suffix == ".npy":
        array = load_npy_safely(path)
        if array.dtype == object:  # Cellpose *_seg.npy: a 0-d array holding a dict
            content = array.item() if array.ndim == 0 else None
            if not isinstance(content, dict) or "masks" not in content:
                raise ValueError(
                    f"mask file {path}: an object .npy must hold a dict with a 'masks' label "
                    "image (Cellpose _seg.npy)"
                )
            return _rois_from_label_image(np.asarray(content["masks"]), path, frame_shape)
    rois = load_roi_file(path, frame_shape)
    return ImportedRois(rois, np.arange(rois.n_rois, dtype=np.int64), str(path))


def import_rois(path: str | Path, frame_shape: tuple[int, int]) -> ImportedRois:
    """Any supported source: a suite2p plane folder or stat.npy, or a plain mask file."""
    path = Path(path)
    if path.is_dir() or path.name == "stat.npy":
        return load_suite2p(path, frame_shape)
    return load_mask_file(path, frame_shape)
