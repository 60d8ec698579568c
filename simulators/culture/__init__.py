"""The simulated culture on an MEA: Izhikevich neurons with STDP, stimulated and recorded
through electrodes (science.md section 6). See docs/devices/culture.md."""

from simulators.culture.config import PRESETS, CultureConfig, CultureConfigError, preset_config
from simulators.culture.culture import Culture, CultureGroundTruth

__all__ = [
    "PRESETS",
    "Culture",
    "CultureConfig",
    "CultureConfigError",
    "CultureGroundTruth",
    "preset_config",
]
