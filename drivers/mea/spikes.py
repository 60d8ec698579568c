"""Spike blocks and the SpikeSource role: spikes as a closed-loop input, on the device clock.

A SpikeSource delivers the recording in blocks (for RHX: one TCP write of
`blocks_per_write` x 128 frames, 4.3 ms at 30 kHz per 128 frames). `read_block(block)`
blocks until the next one is complete and fills a preallocated `SpikeBlock` in place (no
allocation per block; arrays grow only if a block holds more spikes than ever before):

    block.first_sample, block.n_samples     samples [first, first + n) on the device clock
    block.device_time_s, block.end_time_s   the same in seconds (sample / sample rate)
    block.host_time_s                       time.monotonic() when the block was in host memory
    block.spikes()                          (electrode index, device sample, unit id) views
    block.onsets()                          stimulation pulse onsets read back from the device
                                            (electrode index, device sample)
    block.wideband_uv                       (n_samples, n_wideband) float32 when enabled
    block.lost_samples_before               samples the device produced but we never got
    block.late_spikes                       spikes in this block from before first_sample

Electrode indices refer to `source.electrodes` (names, in a fixed order).
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np

from drivers.base import Device


class SpikeBlock:
    """One block of spikes, onsets and (optionally) wideband data, in reusable arrays."""

    def __init__(
        self,
        sample_rate_hz: float,
        max_samples: int,
        n_wideband: int = 0,
        spike_capacity: int = 4096,
        onset_capacity: int = 256,
    ) -> None:
        self.sample_rate_hz = float(sample_rate_hz)
        self.index = -1
        self.first_sample = 0
        self.n_samples = 0
        self.host_time_s = math.nan
        self.lost_samples_before = 0
        self.late_spikes = 0
        self.n_spikes = 0
        self.spike_electrode = np.zeros(spike_capacity, np.int32)
        self.spike_sample = np.zeros(spike_capacity, np.int64)
        self.spike_unit = np.zeros(spike_capacity, np.uint8)
        self.n_onsets = 0
        self.onset_electrode = np.zeros(onset_capacity, np.int32)
        self.onset_sample = np.zeros(onset_capacity, np.int64)
        self.wideband_uv = np.zeros((max_samples, n_wideband), np.float32)

    # -- reading -----------------------------------------------------------------------------
    @property
    def device_time_s(self) -> float:
        return self.first_sample / self.sample_rate_hz

    @property
    def end_time_s(self) -> float:
        return (self.first_sample + self.n_samples) / self.sample_rate_hz

    def spikes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.n_spikes
        return self.spike_electrode[:n], self.spike_sample[:n], self.spike_unit[:n]

    def spike_times_s(self) -> np.ndarray:
        return self.spike_sample[: self.n_spikes] / self.sample_rate_hz

    def onsets(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.n_onsets
        return self.onset_electrode[:n], self.onset_sample[:n]

    def wideband(self) -> np.ndarray:
        return self.wideband_uv[: self.n_samples]

    # -- filling (sources) ---------------------------------------------------------------------
    def clear(self) -> None:
        self.n_spikes = 0
        self.n_onsets = 0
        self.late_spikes = 0
        self.lost_samples_before = 0

    def add_spikes(self, electrodes: np.ndarray, samples: np.ndarray, units: np.ndarray) -> None:
        k = electrodes.shape[0]
        need = self.n_spikes + k
        if need > self.spike_electrode.shape[0]:
            cap = max(need, 2 * self.spike_electrode.shape[0])
            self.spike_electrode = np.resize(self.spike_electrode, cap)
            self.spike_sample = np.resize(self.spike_sample, cap)
            self.spike_unit = np.resize(self.spike_unit, cap)
        n = self.n_spikes
        self.spike_electrode[n:need] = electrodes
        self.spike_sample[n:need] = samples
        self.spike_unit[n:need] = units
        self.n_spikes = need

    def add_onsets(self, electrode: int, samples: np.ndarray) -> None:
        k = samples.shape[0]
        need = self.n_onsets + k
        if need > self.onset_electrode.shape[0]:
            cap = max(need, 2 * self.onset_electrode.shape[0])
            self.onset_electrode = np.resize(self.onset_electrode, cap)
            self.onset_sample = np.resize(self.onset_sample, cap)
        self.onset_electrode[self.n_onsets : need] = electrode
        self.onset_sample[self.n_onsets : need] = samples
        self.n_onsets = need


class SpikeSource(Device):
    """Delivers spike blocks with device timestamps (see the module docstring)."""

    role = "spikes"

    @property
    @abstractmethod
    def electrodes(self) -> tuple[str, ...]:
        """Electrode names; SpikeBlock electrode indices point into this tuple."""

    @property
    @abstractmethod
    def sample_rate_hz(self) -> float:
        """Device clock rate: device time = sample / sample_rate_hz."""

    @property
    @abstractmethod
    def samples_per_block(self) -> int:
        """Samples in every block (blocks are back to back on the device clock)."""

    @property
    def block_duration_s(self) -> float:
        return self.samples_per_block / self.sample_rate_hz

    @abstractmethod
    def new_block(self) -> SpikeBlock:
        """A SpikeBlock sized for this source (allocate once, reuse for every read)."""

    @abstractmethod
    def start(self) -> None:
        """Start acquisition."""

    @abstractmethod
    def read_block(self, block: SpikeBlock) -> SpikeBlock:
        """Block until the next block is complete; fill `block` in place and return it."""

    @abstractmethod
    def stop(self) -> None:
        """Stop acquisition (idempotent)."""
