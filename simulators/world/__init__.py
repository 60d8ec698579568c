"""The simulated world that simulated devices observe and act on (see world.py)."""

from simulators.world.config import (
    ActivityConfig,
    AnimalConfig,
    CouplingConfig,
    IndicatorConfig,
    StimulationConfig,
    WorldConfig,
    WorldConfigError,
)
from simulators.world.specimen import PlaneMaps
from simulators.world.world import GroundTruth, World

__all__ = [
    "ActivityConfig",
    "AnimalConfig",
    "CouplingConfig",
    "GroundTruth",
    "IndicatorConfig",
    "PlaneMaps",
    "StimulationConfig",
    "World",
    "WorldConfig",
    "WorldConfigError",
]
