"""How far image features separate in-focus cells from cells just beyond the focal plane
(rig.roi_separability; the figures in docs/PIPELINE.md)."""

import numpy as np
import pytest

from rig.config import load_rig_config, world_config
from rig.roi_separability import best_threshold, noise_free_separability
from simulators.world.world import World


def test_best_threshold_keeps_ties_together_and_counts_recall_against_all_positives():
    values = np.array([5.0, 4.0, 4.0, 3.0, 1.0])
    positive = np.array([True, True, False, True, False])
    rule = best_threshold("x", values, positive)
    # >= 5: 1/1, 1/3; >= 4 (both 4s): 2/3, 2/3; >= 3: 3/4, 3/3; >= 1: 3/5, 3/3
    assert (rule.threshold, rule.precision, rule.recall) == (3.0, 0.75, 1.0)
    missed_elsewhere = best_threshold("x", values, positive, n_positive=6)
    assert (missed_elsewhere.precision, missed_elsewhere.recall) == (0.75, 0.5)
    with pytest.raises(ValueError, match="at least one positive"):
        best_threshold("x", values, np.zeros(5, bool))


def test_noise_free_brightness_cannot_tell_in_focus_cells_but_their_size_can():
    """The default world's cells visible in the focal plane, rendered alone without noise:
    brightness (expression spread, log-SD 0.35) overlaps between cells the plane cuts and
    cells it just misses, while the area at half maximum separates them - a soma seen
    through the axial PSF's tail looks small."""
    config = load_rig_config("sim")
    world = World(world_config(config), seed=1)
    fov_x, fov_y = config["scanner.fov_um"]
    pixel_um = fov_x / config["scanner.pixels_per_line"]
    result = noise_free_separability(world, (fov_x, fov_y), pixel_um)
    assert result["in_focus_cells"] > 200 and result["visible_cells"] > result["in_focus_cells"]
    brightness, area = result["rules"][0], result["rules"][1]
    assert min(brightness.precision, brightness.recall) < 0.95
    assert area.precision >= 0.95 and area.recall >= 0.9

