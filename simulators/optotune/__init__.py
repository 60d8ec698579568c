"""The simulated Optotune lens behind the real driver's transport (hardware.md section 3).

Importing this package registers the pyserial URL scheme `optotune_sim://` by appending
"simulators.optotune" to `serial.protocol_handler_packages`; pyserial then finds
`simulators.optotune.protocol_optotune_sim.Serial` when the driver calls
`serial.serial_for_url("optotune_sim://...")`. The driver itself never imports this package.

    import simulators.optotune                     # registers optotune_sim://
    lens = OptotuneLens("optotune_sim://")         # a fresh simulated lens on the wall clock

    sim = SimulatedLens(clock=my_virtual_clock)    # a lens on the simulation's time axis
    lens = OptotuneLens(sim.url, calibration)      # optotune_sim://lens1
    sim.focal_power_dpt_at(t_s)                    # what the simulated world images
"""

import serial

from simulators.optotune.clock import LensClock, ManualClock, RealTimeClock
from simulators.optotune.device import LensFaults, SimulatedLens, lens_for_url, lens_on_clock
from simulators.optotune.model import LensMechanics, LensModel

if __name__ not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append(__name__)

__all__ = [
    "LensClock",
    "LensFaults",
    "LensMechanics",
    "LensModel",
    "ManualClock",
    "RealTimeClock",
    "SimulatedLens",
    "lens_for_url",
    "lens_on_clock",
]
