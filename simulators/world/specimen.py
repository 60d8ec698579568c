"""The specimen: cell bodies in a 3D volume, and how they look in one focal plane.

Cells: the number is Poisson(density x volume); soma radii are normal (truncated at
+-2.5 SD); centres are placed by random sequential addition of non-overlapping spheres
(somata touch but never interpenetrate; at ~10 % volume fraction this is far from jamming).
Brightness (expression level) is lognormal with median 1; opsin expression is Bernoulli.

A plane (PlaneMaps) is rendered on a grid of pixel centres covering the lateral extent:
each cell's weight at (x, y) is the fraction of the axial excitation profile (Gaussian, SD
`axial_psf_sigma_um`) that falls inside its soma column, with the nucleus counting only
`nucleus_brightness_fraction` (GCaMP is excluded from the nucleus), see
kernels.render_cells. Overlap rule: each pixel belongs to the single cell with the largest
brightness x weight there (the weaker contribution is dropped; with non-overlapping somata
this happens only where one cell lies above another, out of focus). Neuropil is a smooth
random texture (mean 1, relative SD `neuropil_contrast`, Gaussian correlation length
`neuropil_texture_um`, varying smoothly in z) multiplied by the fraction of the excitation
column outside somata.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from simulators.world.config import WorldConfig
from simulators.world.kernels import place_somata, render_cells

FOOTPRINT_FRACTION_OF_PEAK = 0.5
"""A footprint holds a cell's labelled pixels with weight >= this fraction of its peak."""

_MAX_CACHED_NEUROPIL_KNOTS = 4


@dataclass(frozen=True)
class PlaneMaps:
    """What the beam sees in one focal plane, on the rendering grid.

    Arrays are indexed [iy, ix]; pixel (iy, ix) is centred at
    (x0_um + (ix + 0.5) * resolution_um, y0_um + (iy + 0.5) * resolution_um); a flat index is
    iy * nx + ix.
    label: int32, the cell dominating the pixel (-1: none).
    weight: float32, that cell's shape factor there (1 = in-focus cytosol; multiplied by the
        cell's brightness and its current relative fluorescence when photons are counted).
    neuropil: float32, relative neuropil brightness (mean ~1 away from somata).
    peak_weight: float32 per cell, its largest weight in this plane (0: not visible).
    in_focus_cells: cells whose peak weight reaches the config's in_focus_min_peak_weight.
    footprints: for each in-focus cell, the flat indices of its labelled pixels with weight
        >= FOOTPRINT_FRACTION_OF_PEAK * peak (ground truth for ROI comparisons).
    """

    z_um: float
    x0_um: float
    y0_um: float
    resolution_um: float
    label: np.ndarray
    weight: np.ndarray
    neuropil: np.ndarray
    peak_weight: np.ndarray
    in_focus_cells: np.ndarray
    footprints: dict[int, np.ndarray]

    @property
    def shape(self) -> tuple[int, int]:
        return self.label.shape  # type: ignore[return-value]

    def pixel_centres_um(self, flat_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) in um of the centres of the given flat pixel indices."""
        iy, ix = np.divmod(np.asarray(flat_index), self.shape[1])
        return (self.x0_um + (ix + 0.5) * self.resolution_um,
                self.y0_um + (iy + 0.5) * self.resolution_um)


class NeuropilTexture:
    """A smooth random 3D texture, unit variance, evaluated plane by plane.

    Independent Gaussian-filtered white-noise fields sit at z knots `texture_um` apart; a plane
    between two knots blends them with weights (1 - w, w) divided by sqrt((1 - w)^2 + w^2), which
    keeps unit variance and changes the texture continuously with z. Each knot's noise comes
    from its own seed (derived from the world's), so the texture does not depend on which
    planes were rendered before.
    """

    def __init__(self, shape: tuple[int, int], resolution_um: float, texture_um: float,
                 seed: np.random.SeedSequence) -> None:
        self.shape = shape
        self.resolution_um = resolution_um
        self.texture_um = texture_um
        self._seed = seed
        self._knots: OrderedDict[int, np.ndarray] = OrderedDict()
        ny, nx = shape
        fy = np.fft.fftfreq(ny, d=resolution_um)[:, None]
        fx = np.fft.rfftfreq(nx, d=resolution_um)[None, :]
        # Fourier transform of a Gaussian kernel of SD texture_um (cycles per um)
        self._filter = np.exp(-2.0 * np.pi ** 2 * texture_um ** 2 * (fx ** 2 + fy ** 2))

    def _knot(self, index: int) -> np.ndarray:
        if index in self._knots:
            self._knots.move_to_end(index)
            return self._knots[index]
        key = index + (1 << 30)  # SeedSequence spawn keys must be non-negative
        rng = np.random.default_rng(np.random.SeedSequence(
            entropy=self._seed.entropy, spawn_key=(*self._seed.spawn_key, key)))
        noise = rng.standard_normal(self.shape)
        smooth = np.fft.irfft2(np.fft.rfft2(noise) * self._filter, s=self.shape)
        sd = smooth.std()
        field = (smooth / sd if sd > 0 else smooth).astype(np.float32)
        self._knots[index] = field
        if len(self._knots) > _MAX_CACHED_NEUROPIL_KNOTS:
            self._knots.popitem(last=False)
        return field

    def at(self, z_um: float) -> np.ndarray:
        """The unit-variance texture in the plane z_um (float32, new array)."""
        position = z_um / self.texture_um
        k = int(np.floor(position))
        w = position - k
        a, b = (1.0 - w), w
        norm = np.sqrt(a * a + b * b)
        return ((a / norm) * self._knot(k) + (b / norm) * self._knot(k + 1)).astype(np.float32)


class Specimen:
    """Cells in the volume (ground truth) and the renderer of focal planes."""

    def __init__(self, config: WorldConfig, rng: np.random.Generator,
                 neuropil_seed: np.random.SeedSequence) -> None:
        self.config = config
        ex, ey, ez = config.extent_um
        half = np.array([ex, ey, ez]) / 2.0

        n_cells = int(rng.poisson(config.cell_density_per_mm3 * config.volume_mm3))
        mean, sd = config.soma_radius_mean_um, config.soma_radius_sd_um
        radii = np.clip(rng.normal(mean, sd, n_cells), mean - 2.5 * sd, mean + 2.5 * sd)
        self.radii_um = radii.astype(np.float64)
        self.positions_um = self._place(rng, half)
        self.n_cells = n_cells
        self.nucleus_radii_um = self.radii_um * config.nucleus_radius_fraction
        self.brightness = rng.lognormal(0.0, config.brightness_log_sd, n_cells)
        self.opsin = rng.random(n_cells) < config.stimulation.opsin_fraction

        coupling = config.coupling
        self.sensory_cells = self._group(coupling.sensory_centre_um, coupling.radius_um,
                                         coupling.group_depth_um)
        self.motor_cells = self._group(coupling.motor_centre_um, coupling.radius_um,
                                       coupling.group_depth_um)

        res = config.grid_resolution_um
        self.grid_shape = (max(1, round(ey / res)), max(1, round(ex / res)))
        self.grid_x0_um = -self.grid_shape[1] * res / 2.0
        self.grid_y0_um = -self.grid_shape[0] * res / 2.0
        self.neuropil_texture = NeuropilTexture(self.grid_shape, res,
                                                config.neuropil_texture_um, neuropil_seed)

    def _place(self, rng: np.random.Generator, half_extent_um: np.ndarray) -> np.ndarray:
        """Non-overlapping centres, uniform in the box, by random sequential addition."""
        n = self.radii_um.shape[0]
        positions = np.zeros((n, 3))
        placed = 0
        for _ in range(50):
            if placed >= n:
                return positions
            candidates = rng.uniform(-half_extent_um, half_extent_um, size=(2 * n + 16, 3))
            placed = place_somata(candidates, self.radii_um, positions, placed)
        if placed < n:
            raise ValueError(
                f"cell_density_per_mm3 = {self.config.cell_density_per_mm3:g} is too high to "
                f"pack somata of radius {self.config.soma_radius_mean_um:g} um without overlap "
                f"(placed {placed} of {n}); lower the density or the soma radius")
        return positions

    def _group(self, centre_um: tuple[float, float], radius_um: float,
               depth_um: float) -> np.ndarray:
        """Indices of cells within radius_um laterally of centre_um and |z| < depth_um."""
        p = self.positions_um
        lateral = np.hypot(p[:, 0] - centre_um[0], p[:, 1] - centre_um[1])
        return np.flatnonzero((lateral < radius_um) & (np.abs(p[:, 2]) < depth_um))

    def render_plane(self, z_um: float) -> PlaneMaps:
        """Label, weight and neuropil maps of the focal plane z_um (see PlaneMaps)."""
        cfg = self.config
        ny, nx = self.grid_shape
        label = np.full((ny, nx), -1, dtype=np.int32)
        weight = np.zeros((ny, nx), dtype=np.float32)
        occupancy = np.zeros((ny, nx), dtype=np.float32)
        score = np.zeros((ny, nx), dtype=np.float64)
        peak = np.zeros(self.n_cells, dtype=np.float64)
        render_cells(float(z_um), self.positions_um, self.radii_um, self.nucleus_radii_um,
                     self.brightness, cfg.nucleus_brightness_fraction, cfg.axial_psf_sigma_um,
                     self.grid_x0_um, self.grid_y0_um, cfg.grid_resolution_um,
                     label, weight, occupancy, score, peak)
        texture = self.neuropil_texture.at(float(z_um))
        neuropil = np.maximum(1.0 + cfg.neuropil_contrast * texture, 0.0) * (1.0 - occupancy)
        in_focus = np.flatnonzero(peak >= cfg.in_focus_min_peak_weight)
        return PlaneMaps(
            z_um=float(z_um), x0_um=self.grid_x0_um, y0_um=self.grid_y0_um,
            resolution_um=cfg.grid_resolution_um, label=label, weight=weight,
            neuropil=neuropil.astype(np.float32), peak_weight=peak.astype(np.float32),
            in_focus_cells=in_focus, footprints=self._footprints(label, weight, peak, in_focus))

    @staticmethod
    def _footprints(label: np.ndarray, weight: np.ndarray, peak: np.ndarray,
                    in_focus: np.ndarray) -> dict[int, np.ndarray]:
        flat_label = label.ravel()
        pixels = np.flatnonzero(flat_label >= 0)
        owners = flat_label[pixels]
        keep = weight.ravel()[pixels] >= FOOTPRINT_FRACTION_OF_PEAK * peak[owners]
        focus_mask = np.zeros(peak.shape[0], dtype=bool)
        focus_mask[in_focus] = True
        keep &= focus_mask[owners]
        pixels, owners = pixels[keep], owners[keep]
        order = np.argsort(owners, kind="stable")
        pixels, owners = pixels[order], owners[order]
        bounds = np.searchsorted(owners, in_focus)
        ends = np.searchsorted(owners, in_focus, side="right")
        return {int(c): pixels[b:e] for c, b, e in zip(in_focus, bounds, ends)}
