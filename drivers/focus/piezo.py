"""Objective piezo positioner commanded by an analog voltage (the FocusDevice role).

Most objective piezos (PI, Piezosystem Jena, Thorlabs) take 0-10 V for their full travel:
position_um = zero_um + um_per_volt * V. The limits are the travel the lab allows (tighter
than the piezo's to protect the objective); a move outside them is refused before anything
is written. The safe state is the rest position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from drivers.daq.contract import ScanDAQ
from drivers.errors import LimitError
from drivers.roles import FocusDevice


@dataclass(frozen=True)
class PiezoCalibration:
    um_per_volt: float = 40.0  # 400 um travel over 0-10 V
    zero_um: float = -200.0  # position at 0 V, relative to the nominal focal plane
    min_um: float = -200.0
    max_um: float = 200.0
    rest_um: float = 0.0
    range_v: float = 10.0


class AnalogPiezo(FocusDevice):
    def __init__(
        self,
        daq: ScanDAQ,
        channel: str = "ao5",
        calibration: PiezoCalibration = PiezoCalibration(),
        name: str | None = None,
    ) -> None:
        super().__init__(name or "objective piezo")
        c = calibration
        if not c.min_um <= c.rest_um <= c.max_um:
            raise LimitError(f"rest_um = {c.rest_um:g} is outside [{c.min_um:g}, {c.max_um:g}] um")
        for label, um in (("min_um", c.min_um), ("max_um", c.max_um)):
            v = (um - c.zero_um) / c.um_per_volt
            if not -c.range_v <= v <= c.range_v:
                raise LimitError(f"{label} = {um:g} um needs {v:g} V, beyond +-{c.range_v:g} V")
        self.daq = daq
        self.channel = channel
        self.calibration = c
        self._position_um = c.rest_um

    def volts_for(self, z_um: float) -> float:
        c = self.calibration
        if not c.min_um <= z_um <= c.max_um:
            raise LimitError(
                f"focus z = {z_um:g} um is outside the allowed travel "
                f"[{c.min_um:g}, {c.max_um:g}] um"
            )
        return (z_um - c.zero_um) / c.um_per_volt

    def move_to_um(self, z_um: float) -> None:
        volts = self.volts_for(float(z_um))  # limits first, nothing written on error
        self.require_open()
        self.daq.write_static_ao(self.channel, volts, self.calibration.range_v)
        self._position_um = float(z_um)

    def position_um(self) -> float:
        return self._position_um

    def _open(self) -> None:
        self.daq.open()

    def _close(self) -> None:
        pass

    def _safe(self) -> None:
        if self.daq.is_open:
            self.move_to_um(self.calibration.rest_um)

    def _snapshot(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "calibration": asdict(self.calibration),
            "position_um": self._position_um,
        }
