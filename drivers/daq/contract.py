"""The DAQ contract: what a laser-scanning rig needs from a data-acquisition board.

Two jobs share one board:

1. Scanning: galvo command waveforms out (AO) and photomultiplier samples in (AI) on ONE
   shared sample clock, started by one start trigger, so AI sample j belongs to AO sample
   j // ai_oversample exactly. AO is non-regenerating: the scanner writes one frame of AO
   ahead at a time, so waveforms can change between frames. AI is read into preallocated
   int16 arrays (raw ADC codes; `ai_volts_per_count` converts).
2. Pulses: on-demand finite AO waveforms for light stimulation (laser/LED power and, where
   present, photostimulation galvos), independent of the scan clock.

Back ends: `drivers.daq.nidaqmx_backend.NIDAQ` (NI-DAQmx hardware) and
`simulators.daq.SimulatedDAQ` (samples the simulated specimen along the beam path).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np

from drivers.base import Device


@dataclass(frozen=True)
class ScanTaskConfig:
    """One scan acquisition: channels, clock and buffer sizes.

    ao_rate_hz: galvo update rate (the shared sample clock runs at ai_rate_hz).
    ai_oversample: integer number of AI samples per AO sample (a pixel sums k of them).
    ao_samples_per_frame: AO samples in one frame, including turnarounds and flyback.
    ao_range_v / ai_range_v: symmetric output / input ranges (+-V).
    """

    ao_channels: tuple[str, ...]
    ai_channels: tuple[str, ...]
    ao_rate_hz: float
    ai_oversample: int
    ao_samples_per_frame: int
    ao_range_v: float = 10.0
    ai_range_v: float = 1.0

    @property
    def ai_rate_hz(self) -> float:
        return self.ao_rate_hz * self.ai_oversample

    @property
    def ai_samples_per_frame(self) -> int:
        return self.ao_samples_per_frame * self.ai_oversample


@dataclass(frozen=True)
class PulseTaskConfig:
    """On-demand stimulation outputs: channels (e.g. laser power, spot x, spot y), rate, range."""

    channels: tuple[str, ...]
    rate_hz: float
    range_v: float = 10.0


class ScanDAQ(Device):
    """A board that scans (AO + AI on one clock) and emits stimulation pulses."""

    role = "daq"

    # -- scanning --------------------------------------------------------------------------
    @abstractmethod
    def configure_scan(self, config: ScanTaskConfig) -> None:
        """Create the AO and AI tasks on one sample clock; nothing moves yet."""

    @abstractmethod
    def write_ao(self, waveform_v: np.ndarray) -> None:
        """Queue one frame of galvo commands, shape (n_ao, ao_samples_per_frame), volts."""

    @abstractmethod
    def start_scan(self) -> None:
        """Arm AI, start AO, whose start trigger starts both on the same clock edge."""

    @abstractmethod
    def read_ai(self, out: np.ndarray) -> int:
        """Fill `out` (int16, shape (n_ai, n)) with the next n AI samples of every channel.

        Blocks until they are acquired. Returns the index of the first sample since the
        start trigger (device time = index / ai_rate_hz). Raises DeviceTimeout if the
        samples do not arrive within the board's timeout.
        """

    @abstractmethod
    def stop_scan(self) -> None:
        """Stop and clear the scan tasks (the AO holds its last value; park after)."""

    @abstractmethod
    def park(self, volts: tuple[float, ...]) -> None:
        """Drive the scan AO channels to static voltages (the park position)."""

    @property
    @abstractmethod
    def scan_time_s(self) -> float:
        """Now, on the scan clock (s since the start trigger); an estimate where the board
        gives no hardware timestamp, NaN when no scan has started."""

    @property
    @abstractmethod
    def ai_volts_per_count(self) -> float:
        """Conversion of raw AI codes to volts."""

    # -- static outputs (focus piezo, shutters) --------------------------------------------
    @abstractmethod
    def write_static_ao(self, channel: str, volts: float, range_v: float = 10.0) -> None:
        """Drive one AO channel (not a scan or pulse channel) to a constant voltage now."""

    # -- stimulation pulses ----------------------------------------------------------------
    @abstractmethod
    def configure_pulses(self, config: PulseTaskConfig) -> None:
        """Prepare the on-demand stimulation outputs (output at 0 V until a pulse)."""

    @abstractmethod
    def write_pulses(self, waveform_v: np.ndarray) -> float:
        """Emit one finite waveform, shape (n_channels, n), volts; return its onset on the
        scan clock (seconds since the scan start trigger)."""

    @abstractmethod
    def zero_pulses(self) -> None:
        """Stop any pulse in progress and drive every pulse channel to 0 V."""
