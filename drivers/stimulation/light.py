"""Light (optogenetic) stimulation driven by DAQ analog outputs.

A stimulus is a train of light pulses delivered to one or more target spots (cells) in the
imaging field. The hardware is three analog outputs of a DAQ, in this order: laser power (a
Pockels cell or LED driver, volts -> mW by a calibration) and the two photostimulation
galvos x and y (volts -> um). Targets of one pulse are visited one after the other
(galvo-steered point stimulation, as ScanImage's photostim does on galvo-galvo paths), each
lit for `pulse_ms`.

Safety is not optional: every stimulus is checked against the device's limits (power,
pulse length, pulse count, rate, duty cycle, train length, targets inside the reachable
field, and a trailing-second average power that protects tissue from heating) *before*
anything is written to the DAQ. `safe()` drives every pulse channel to 0 V.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from drivers.daq.contract import PulseTaskConfig, ScanDAQ
from drivers.errors import DeviceStateError, LimitError, check_range
from drivers.roles import StimulusRecord, Stimulator


@dataclass(frozen=True)
class LightStimulus:
    """A train of `n_pulses` pulses at `pulse_rate_hz`; in each pulse every target in
    `targets_um` ((x, y) in the imaging field, um) is lit for `pulse_ms` at `power_mw`."""

    targets_um: tuple[tuple[float, float], ...]
    power_mw: float
    pulse_ms: float = 10.0
    n_pulses: int = 1
    pulse_rate_hz: float = 20.0

    @property
    def train_s(self) -> float:
        return (self.n_pulses - 1) / self.pulse_rate_hz + len(self.targets_um) * self.pulse_ms / 1e3

    @property
    def energy_mj(self) -> float:
        return self.power_mw * self.pulse_ms / 1e3 * len(self.targets_um) * self.n_pulses

    def summary(self) -> str:
        return (
            f"{self.n_pulses} x {self.pulse_ms:g} ms at {self.pulse_rate_hz:g} Hz, "
            f"{self.power_mw:g} mW, {len(self.targets_um)} target(s)"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets_um"] = [list(t) for t in self.targets_um]
        return d


@dataclass(frozen=True)
class LightStimulatorLimits:
    """What the light path may deliver. Defaults are conservative for two-photon
    photostimulation of somata (a few to tens of mW per spot, ms-long pulses)."""

    max_power_mw: float = 50.0
    max_pulse_ms: float = 100.0
    max_pulses: int = 200
    max_pulse_rate_hz: float = 100.0
    max_duty_cycle: float = 0.5  # light-on fraction within one pulse period
    max_train_s: float = 10.0
    max_targets: int = 50
    max_mean_power_mw: float = 20.0  # average over any trailing second (heating)
    field_um: tuple[float, float] = (300.0, 300.0)  # reachable (x, y) field, centred on 0


@dataclass(frozen=True)
class LightPathCalibration:
    """Volts for the three outputs: power_mw = mw_per_volt * V; position_um = um_per_volt * V."""

    mw_per_volt: float = 10.0
    um_per_volt: tuple[float, float] = (30.0, 30.0)
    output_rate_hz: float = 20_000.0
    range_v: float = 10.0


class LightStimulator(Stimulator):
    """Stimulator role for DAQ-driven light pulses (`channels` = power, x galvo, y galvo)."""

    def __init__(
        self,
        daq: ScanDAQ,
        *,
        channels: tuple[str, str, str] = ("ao2", "ao3", "ao4"),
        limits: LightStimulatorLimits = LightStimulatorLimits(),
        calibration: LightPathCalibration = LightPathCalibration(),
        name: str | None = None,
    ) -> None:
        super().__init__(name or "light stimulator")
        self.daq = daq
        self.channels = tuple(channels)
        self.limits = limits
        self.calibration = calibration
        self._recent: deque[tuple[float, float]] = deque()  # (clock time s, energy mJ)
        self._lock = threading.Lock()
        self.delivered = 0
        if limits.max_power_mw / calibration.mw_per_volt > calibration.range_v:
            raise LimitError(
                f"max_power_mw = {limits.max_power_mw:g} needs "
                f"{limits.max_power_mw / calibration.mw_per_volt:g} V, beyond the "
                f"output range +-{calibration.range_v:g} V: fix mw_per_volt or the limit"
            )

    # -- Stimulator role -------------------------------------------------------------------
    def validate(self, stimulus: LightStimulus) -> LightStimulus:
        """Check every limit and quantise durations to the output sample clock."""
        lim, cal = self.limits, self.calibration
        if not isinstance(stimulus, LightStimulus):
            raise LimitError(f"{self.name} delivers LightStimulus, not {type(stimulus).__name__}")
        if not stimulus.targets_um:
            raise LimitError("targets_um is empty: give at least one (x, y) target in um")
        if len(stimulus.targets_um) > lim.max_targets:
            raise LimitError(
                f"{len(stimulus.targets_um)} targets exceed max_targets = {lim.max_targets}"
            )
        for i, (x, y) in enumerate(stimulus.targets_um):
            if abs(x) > lim.field_um[0] / 2 or abs(y) > lim.field_um[1] / 2:
                raise LimitError(
                    f"target {i} at ({x:g}, {y:g}) um is outside the reachable field "
                    f"+-{lim.field_um[0] / 2:g} x +-{lim.field_um[1] / 2:g} um"
                )
        check_range("power_mw", stimulus.power_mw, 0.0, lim.max_power_mw, "mW")
        check_range("n_pulses", stimulus.n_pulses, 1, lim.max_pulses)
        check_range("pulse_rate_hz", stimulus.pulse_rate_hz, 1e-3, lim.max_pulse_rate_hz, "Hz")
        dt_ms = 1e3 / cal.output_rate_hz
        pulse_ms = max(1, round(stimulus.pulse_ms / dt_ms)) * dt_ms
        check_range("pulse_ms", stimulus.pulse_ms, dt_ms, lim.max_pulse_ms, "ms")
        lit_ms = pulse_ms * len(stimulus.targets_um)
        period_ms = 1e3 / stimulus.pulse_rate_hz
        if stimulus.n_pulses > 1 and lit_ms > lim.max_duty_cycle * period_ms:
            raise LimitError(
                f"duty cycle {lit_ms / period_ms:.2f} ({len(stimulus.targets_um)} targets x "
                f"{pulse_ms:g} ms every {period_ms:g} ms) exceeds max_duty_cycle = "
                f"{lim.max_duty_cycle:g}: lower pulse_rate_hz, pulse_ms or the number of targets"
            )
        quantised = replace(
            stimulus,
            pulse_ms=pulse_ms,
            targets_um=tuple((float(x), float(y)) for x, y in stimulus.targets_um),
        )
        check_range("train duration", quantised.train_s, 0.0, lim.max_train_s, "s")
        return quantised

    def stimulate(self, stimulus: LightStimulus) -> StimulusRecord:
        self.require_open()
        if self._pulses_configured is False:
            raise DeviceStateError(f"{self.name}: pulse outputs are not configured")
        stim = self.validate(stimulus)
        now = time.monotonic()
        with self._lock:
            # light is delivered on the scan clock (which runs faster than the wall clock in a
            # max-speed simulation); the host clock only stands in before a scan starts
            clock_now = self.daq.scan_time_s
            if not np.isfinite(clock_now):
                clock_now = now
            self._check_mean_power(stim, clock_now)
            waveform = self.waveform(stim)
            device_time = self.daq.write_pulses(waveform)
            self._recent.append((clock_now, stim.energy_mj))
            self.delivered += 1
        return StimulusRecord(
            host_time_s=now,
            device_time_s=device_time,
            description={"kind": "light", **stim.to_dict(), "summary": stim.summary()},
        )

    def waveform(self, stim: LightStimulus) -> np.ndarray:
        """The (3, n) volts written for a validated stimulus; ends with all channels at 0 V
        (power off, galvos centred)."""
        cal = self.calibration
        rate = cal.output_rate_hz
        n_pulse = int(round(stim.pulse_ms * 1e-3 * rate))
        period = int(round(rate / stim.pulse_rate_hz))
        n_total = (stim.n_pulses - 1) * period + n_pulse * len(stim.targets_um) + 1
        w = np.zeros((3, n_total))
        power_v = stim.power_mw / cal.mw_per_volt
        for p in range(stim.n_pulses):
            for i, (x, y) in enumerate(stim.targets_um):
                a = p * period + i * n_pulse
                w[0, a : a + n_pulse] = power_v
                w[1, a : a + n_pulse] = x / cal.um_per_volt[0]
                w[2, a : a + n_pulse] = y / cal.um_per_volt[1]
        return w

    def _check_mean_power(self, stim: LightStimulus, now: float) -> None:
        while self._recent and now - self._recent[0][0] > 1.0:
            self._recent.popleft()
        energy = sum(e for _, e in self._recent) + stim.energy_mj
        if energy > self.limits.max_mean_power_mw * 1.0:
            raise LimitError(
                f"stimulus refused: {energy:.1f} mJ of light within the last second exceeds "
                f"max_mean_power_mw = {self.limits.max_mean_power_mw:g} mW averaged over 1 s "
                "(tissue heating): stimulate less often or with less power"
            )

    # -- Device hooks ----------------------------------------------------------------------
    _pulses_configured = False

    def _open(self) -> None:
        self.daq.open()
        cal = self.calibration
        self.daq.configure_pulses(
            PulseTaskConfig(channels=self.channels, rate_hz=cal.output_rate_hz, range_v=cal.range_v)
        )
        self._pulses_configured = True

    def _close(self) -> None:
        self._pulses_configured = False

    def _safe(self) -> None:
        if self.daq.is_open:
            self.daq.zero_pulses()

    def _snapshot(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "limits": asdict(self.limits),
            "calibration": asdict(self.calibration),
            "delivered": self.delivered,
        }
