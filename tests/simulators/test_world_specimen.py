"""The simulated specimen: cell placement, plane rendering, and the world's configuration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from simulators.world.config import WorldConfig, WorldConfigError
from simulators.world.specimen import FOOTPRINT_FRACTION_OF_PEAK
from simulators.world.world import World


def small_config(**overrides: object) -> WorldConfig:
    d: dict[str, object] = {"extent_um": [200.0, 200.0, 60.0]}
    d.update(overrides)
    return WorldConfig.from_dict(d)


# -- configuration ---------------------------------------------------------------------------

def test_config_round_trips_through_a_nested_dict():
    cfg = WorldConfig.from_dict({
        "extent_um": [300, 200, 100],
        "dt_s": 0.0005,
        "activity": {"model": "latent", "latent_n_fields": 4},
        "coupling": {"enabled": False, "sensory_centre_um": [-50, 0]},
    })
    assert cfg.extent_um == (300.0, 200.0, 100.0)
    assert cfg.activity.latent_n_fields == 4
    assert cfg.coupling.sensory_centre_um == (-50.0, 0.0)
    d = cfg.to_dict()
    assert d["activity"]["model"] == "latent" and d["extent_um"] == [300.0, 200.0, 100.0]
    assert WorldConfig.from_dict(d) == cfg


def test_unknown_keys_are_rejected_with_the_valid_keys_listed():
    with pytest.raises(ValueError, match=r"unknown key 'cell_densty'.*cell_density_per_mm3"):
        WorldConfig.from_dict({"cell_densty": 1.0})
    with pytest.raises(ValueError, match=r"'tau_decay_s'.*indicator.*decay_tau_s"):
        WorldConfig.from_dict({"indicator": {"tau_decay_s": 0.2}})


@pytest.mark.parametrize("d, fragment", [
    ({"dt_s": 0.5}, r"dt_s = 0.5 s is outside the allowed range \[1e-05, 0.1\]"),
    ({"stimulation": {"opsin_fraction": 1.5}}, r"stimulation.opsin_fraction = 1.5"),
    ({"indicator": {"rise_tau_s": 0.3, "decay_tau_s": 0.2}}, r"must exceed"),
    ({"activity": {"model": "izhikevich"}}, r"activity.model = 'izhikevich' is not one of"),
    ({"extent_um": [100, 100]}, r"extent_um .* sequence of 3 numbers"),
    ({"coupling": {"motor_centre_um": [-60, -60]}}, r"coupling groups overlap"),
])
def test_out_of_range_values_are_rejected_by_name(d, fragment):
    with pytest.raises(WorldConfigError, match=fragment):
        WorldConfig.from_dict(d)
    assert issubclass(WorldConfigError, ValueError)


# -- cells -----------------------------------------------------------------------------------

def test_cell_count_follows_the_density_within_poisson_error():
    cfg = small_config(extent_um=[300.0, 300.0, 100.0])
    expected = cfg.cell_density_per_mm3 * cfg.volume_mm3  # 810 cells
    counts = [World(cfg, seed).n_cells for seed in range(4)]
    for n in counts:
        assert abs(n - expected) < 4.0 * math.sqrt(expected)
    assert abs(np.mean(counts) - expected) < 4.0 * math.sqrt(expected / len(counts))


def test_somata_do_not_overlap_and_fill_the_volume():
    cfg = small_config()
    gt = World(cfg, 1).ground_truth
    p, r = gt.positions_um, gt.radii_um
    d = np.linalg.norm(p[:, None, :] - p[None, :, :], axis=-1)
    touching = r[:, None] + r[None, :]
    np.fill_diagonal(d, np.inf)
    assert (d >= touching - 1e-9).all()
    half = np.array(cfg.extent_um) / 2
    assert (np.abs(p) <= half).all()
    # uniform in depth: the two halves of the volume hold similar numbers of cells
    upper = int((p[:, 2] > 0).sum())
    assert abs(upper - len(p) / 2) < 4 * math.sqrt(len(p) / 4)


def test_groups_are_the_cells_near_their_centres_in_the_focal_region():
    cfg = small_config()
    gt = World(cfg, 2).ground_truth
    c = cfg.coupling
    for cells, centre in ((gt.sensory_cells, c.sensory_centre_um),
                          (gt.motor_cells, c.motor_centre_um)):
        lateral = np.hypot(gt.positions_um[:, 0] - centre[0], gt.positions_um[:, 1] - centre[1])
        inside = np.flatnonzero((lateral < c.radius_um)
                                & (np.abs(gt.positions_um[:, 2]) < c.group_depth_um))
        np.testing.assert_array_equal(np.sort(cells), inside)


# -- planes ----------------------------------------------------------------------------------

def test_footprints_are_centred_on_the_cells():
    world = World(small_config(), 5)
    plane, gt = world.plane, world.ground_truth
    checked = 0
    for cell, pixels in plane.footprints.items():
        x, y = plane.pixel_centres_um(pixels)
        cx, cy, _ = gt.positions_um[cell]
        if abs(cx) > 90 or abs(cy) > 90:  # footprint cut by the grid edge
            continue
        assert math.hypot(x.mean() - cx, y.mean() - cy) < 0.25  # half a grid step
        assert np.all(plane.label.ravel()[pixels] == cell)
        checked += 1
    assert checked >= 10


def _column_weight_by_quadrature(dz_um: float, rho_um: float, radius_um: float,
                                 nucleus_radius_um: float, nucleus_brightness: float,
                                 sigma_um: float) -> float:
    """Density x normalised axial Gaussian, integrated numerically along the optical axis."""
    z = np.linspace(-radius_um - 12 * sigma_um, radius_um + 12 * sigma_um, 200_001)
    r = np.sqrt(rho_um ** 2 + (z - dz_um) ** 2)  # z measured from the focal plane
    density = np.where(r < radius_um, 1.0, 0.0)
    density = np.where(r < nucleus_radius_um, nucleus_brightness, density)
    gauss = np.exp(-0.5 * (z / sigma_um) ** 2) / (sigma_um * math.sqrt(2 * math.pi))
    return float(np.sum(density * gauss) * (z[1] - z[0]))


def test_weight_falls_with_defocus_as_the_axial_psf_predicts():
    cfg = small_config(cell_density_per_mm3=20_000.0)
    world = World(cfg, 3)
    gt = world.ground_truth
    p = gt.positions_um
    # an isolated cell away from the edges, so no neighbour takes over its pixels
    lateral = np.hypot(p[:, None, 0] - p[None, :, 0], p[:, None, 1] - p[None, :, 1])
    np.fill_diagonal(lateral, np.inf)
    ok = (lateral.min(axis=1) > 30.0) & (np.abs(p[:, :2]) < 80).all(axis=1)
    cell = int(np.flatnonzero(ok)[0])
    cx, cy, cz = p[cell]
    radius = gt.radii_um[cell]
    weights = []
    for dz in (0.0, 2.0, 4.0, radius, radius + 4.0):
        world.set_focus_z_um(cz - dz)  # the cell sits dz above the plane
        plane = world.plane
        pixels = np.flatnonzero(plane.label.ravel() == cell)
        x, y = plane.pixel_centres_um(pixels)
        rho = np.hypot(x - cx, y - cy)
        for target in (0.0, 0.7 * radius):  # the nucleus centre and the cytosol ring
            k = int(np.argmin(np.abs(rho - target)))
            expected = _column_weight_by_quadrature(
                dz, rho[k], radius, cfg.nucleus_radius_fraction * radius,
                cfg.nucleus_brightness_fraction, cfg.axial_psf_sigma_um)
            assert plane.weight.ravel()[pixels[k]] == pytest.approx(expected, abs=2e-3)
        weights.append(float(plane.peak_weight[cell]))
    assert all(a > b for a, b in itertools.pairwise(weights))  # monotonic fall with |dz|
    assert weights[0] > 0.95 and weights[-1] < 0.1


def test_in_focus_cells_are_those_cut_by_the_plane_and_change_with_focus():
    world = World(small_config(), 4)
    gt = world.ground_truth
    z, r = gt.positions_um[:, 2], gt.radii_um
    sets = {}
    for focus in (0.0, 20.0):
        world.set_focus_z_um(focus)
        in_focus = world.ground_truth.in_focus_cells
        dz = np.abs(z - focus)
        # peak weight >= 0.5 needs the plane inside the soma: |dz| <= R
        assert (dz[in_focus] <= r[in_focus]).all()
        # and cells centred near the plane are always in focus
        assert set(np.flatnonzero(dz < 0.25 * r)) <= set(in_focus.tolist())
        assert len(in_focus) >= 5
        sets[focus] = set(in_focus.tolist())
    assert not sets[0.0] & sets[20.0]
    for cell, pixels in world.plane.footprints.items():
        w = world.plane.weight.ravel()[pixels]
        assert w.min() >= FOOTPRINT_FRACTION_OF_PEAK * world.plane.peak_weight[cell] - 1e-6


def test_neuropil_is_textured_and_displaced_by_somata():
    cfg = small_config()
    plane = World(cfg, 6).plane
    outside = plane.neuropil[plane.label < 0]
    assert outside.mean() == pytest.approx(1.0, abs=0.1)
    assert outside.std() / outside.mean() == pytest.approx(cfg.neuropil_contrast, rel=0.35)
    cytosol = (plane.label >= 0) & (plane.weight > 0.9)
    assert plane.neuropil[cytosol].mean() < 0.15 * outside.mean()
