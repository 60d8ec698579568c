"""The hardware contract of a resonant-galvo scanner: a digitizer and the timing I/O.

A resonant mirror is not driven sample by sample like a galvo: its controller keeps it
swinging at its own resonance (about 7.9-8 kHz, drifting with temperature and amplitude) and
outputs a line clock, one TTL edge per mirror period (hardware.md section 2). Everything is
timed from that clock:

    line clock ──┬──> digitizer: one record of PMT samples per edge (`Digitizer`)
                 ├──> counter input: the period of every line (`ResonantScanIO`)
                 └──> counter output: the frame clock, one pulse every `periods_per_frame`
                      edges, which retriggers the slow galvo's finite AO waveform

Two devices, two back ends each:

- `Digitizer`: PMT samples per line, triggered by the line clock, read as records into a
  preallocated int16 array (records, samples_per_record). Back ends: NI AI (retriggerable
  finite acquisition, `drivers.daq.nidaqmx_resonant.NIDigitizer`; fine for slow settings,
  X-series AI stops at about 2 MS/s), fast digitizers such as AlazarTech boards (records per
  trigger with AutoDMA; not written yet: a subclass of `Digitizer`), and the simulated
  digitizer (`simulators.resonant`).
- `ResonantScanIO`: the board next to it: the resonant controller's amplitude command
  (static AO; zoom), the line-clock counter (frequency before acquisition, the period of
  every line during it), the frame clock and the slow galvo. Back ends: NI-DAQmx
  (`drivers.daq.nidaqmx_resonant.NIResonantIO`) and the simulated scan head.

Alignment promise (both back ends): record 0 returned by the digitizer and period 0 returned
by the I/O belong to the same line-clock edge, the first edge of frame 0; the slow-galvo
waveform of frame j starts `slow_galvo_lead_periods` edges before frame j's first edge; every
frame is `periods_per_frame` edges long. How a back end keeps this (arm triggers, records
dropped before the first frame-clock pulse) is its business and is documented there.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np

from drivers.base import Device


@dataclass(frozen=True)
class DigitizerConfig:
    """One acquisition of line-clock-triggered records.

    channels: PMT inputs ("ai0", or a fast digitizer's "A", "B").
    sample_rate_hz: digitizer sample clock (tens to hundreds of MS/s on fast digitizers).
    samples_per_record: samples taken after every line-clock edge; shorter than the
        shortest expected period (the digitizer must re-arm before the next edge).
    records_per_read: records delivered by one `read_records` call (one frame).
    range_v: symmetric input range (+-V).
    skip_records: records acquired and dropped after start, so that record 0 is the first
        line of frame 0 (equal to the slow galvo's lead, `ResonantIOConfig`).

    Where the line clock enters the digitizer is wiring, given to the back end's constructor.
    """

    channels: tuple[str, ...]
    sample_rate_hz: float
    samples_per_record: int
    records_per_read: int
    range_v: float = 1.0
    skip_records: int = 0


class Digitizer(Device):
    """PMT samples per line, one record per line-clock edge (see the module doc)."""

    role = "digitizer"

    @abstractmethod
    def configure(self, config: DigitizerConfig) -> None:
        """Prepare the acquisition; nothing is acquired until `start`."""

    @abstractmethod
    def start(self) -> None:
        """Arm: records begin at the first edge of frame 0 (module doc, alignment)."""

    @abstractmethod
    def read_records(self, out: np.ndarray) -> int:
        """Fill `out` (int16, shape (channels, n, samples_per_record)) with the next n records.

        Blocks until they are acquired; returns the index of the first record since start.
        Raises DeviceTimeout when the line clock stops (no trigger within the timeout) and
        DeviceError when records were lost (buffer overflow).
        """

    @abstractmethod
    def stop(self) -> None:
        """Stop acquiring (idempotent)."""

    @property
    @abstractmethod
    def sample_rate_hz(self) -> float:
        """The sample rate the hardware really runs (after any coercion)."""

    @property
    @abstractmethod
    def volts_per_count(self) -> float:
        """Conversion of raw codes to volts."""


@dataclass(frozen=True)
class ResonantIOConfig:
    """Timing of one resonant acquisition.

    periods_per_frame: line-clock periods per frame (the frame clock's divisor).
    slow_galvo_rate_hz: the slow galvo's AO sample clock; its waveform (one frame) is finite
        and restarted by every frame-clock pulse, so it must end before the next pulse.
    slow_galvo_samples: samples in that waveform.
    slow_galvo_range_v: symmetric output range of the slow galvo AO.
    slow_galvo_lead_periods: the frame clock (and the waveform) runs this many line-clock
        periods ahead of the frames the digitizer delivers: the slow galvo gets a run-up
        onto its ramp, and the gap between the end of one waveform and the next trigger
        falls in the flyback. The period reader drops the same number of periods first.
    min_line_clock_hz / max_line_clock_hz: the frequencies the scanner accepts; the back end
        sizes its period measurement by them.

    The wiring (line-clock terminal, counters, the amplitude and slow-galvo channels) is
    given to the back end's constructor: the amplitude and the line clock are needed before
    any scan is configured.
    """

    periods_per_frame: int
    slow_galvo_rate_hz: float
    slow_galvo_samples: int
    slow_galvo_range_v: float = 10.0
    slow_galvo_lead_periods: int = 0
    min_line_clock_hz: float = 1000.0
    max_line_clock_hz: float = 30000.0


class ResonantScanIO(Device):
    """The resonant controller's amplitude, line clock, frame clock and slow galvo."""

    role = "resonant io"

    @abstractmethod
    def set_amplitude_v(self, volts: float) -> None:
        """Drive the controller's amplitude input (0 V stops the mirror). Limits checked
        before anything is sent (LimitError)."""

    @abstractmethod
    def measure_line_clock_hz(self, periods: int) -> float:
        """Mean line-clock frequency over `periods` periods, measured now (blocking).

        Used before an acquisition; raises DeviceTimeout when the clock does not arrive.
        """

    @abstractmethod
    def configure_scan(self, config: ResonantIOConfig) -> None:
        """Create the frame clock, the slow-galvo output and the period counter."""

    @abstractmethod
    def write_slow_galvo(self, waveform_v: np.ndarray) -> None:
        """Load one frame of slow-galvo volts (shape (slow_galvo_samples,)), played from the
        start on every frame-clock pulse; the output holds the last value in between."""

    @abstractmethod
    def start_scan(self) -> None:
        """Arm the frame clock, slow galvo and period counter; they start with the
        digitizer's first record (module doc, alignment). Call before `Digitizer.start`."""

    @abstractmethod
    def read_line_periods(self, out: np.ndarray) -> int:
        """Fill `out` (float64, shape (n,)) with the periods in seconds of the next n
        line-clock cycles (the cycles of the records read); return the index of the first.

        Raises DeviceTimeout when the line clock stops.
        """

    @abstractmethod
    def stop_scan(self) -> None:
        """Stop the frame clock, slow galvo and counter (idempotent)."""

    @abstractmethod
    def park_slow_galvo(self, volts: float) -> None:
        """Drive the slow galvo to a static voltage (stops a running scan first)."""
