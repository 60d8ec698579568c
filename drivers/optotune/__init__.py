"""Optotune electrically tunable lens on a Lens Driver 4 (hardware.md section 1).

    from drivers.optotune import OptotuneLens, crc16
    with OptotuneLens("Optotune", calibration) as lens:   # port, description text or URL
        lens.move_to_um(-20.0)

`optotune_sim://` opens the simulated lens once `simulators.optotune` is imported.
"""

from drivers.optotune.codec import LensMode, crc16
from drivers.optotune.connection import SIMULATOR_URL, LensConnection, resolve_port
from drivers.optotune.errors import (
    IncompleteReplyError,
    LensRefusedError,
    ModeMismatchError,
    ReplyCrcError,
    UnexpectedReplyError,
)
from drivers.optotune.lens import FirmwareVersion, FocalPowerRange, OptotuneLens, ZCalibration

__all__ = [
    "SIMULATOR_URL",
    "FirmwareVersion",
    "FocalPowerRange",
    "IncompleteReplyError",
    "LensConnection",
    "LensMode",
    "LensRefusedError",
    "ModeMismatchError",
    "OptotuneLens",
    "ReplyCrcError",
    "UnexpectedReplyError",
    "ZCalibration",
    "crc16",
    "resolve_port",
]
