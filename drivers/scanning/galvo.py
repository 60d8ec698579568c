"""Galvo-galvo scanner: the Scanner role on top of any ScanDAQ back end.

The same code drives an NI board on a rig and the simulated DAQ in tests: it writes galvo
waveforms (non-regenerating, one frame ahead), reads PMT samples into a preallocated buffer,
bins them into pixels and stamps each frame with its device time (first sample / AI rate)
and host time (time.monotonic() when the frame was assembled).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from drivers.daq.contract import ScanDAQ, ScanTaskConfig
from drivers.errors import DeviceStateError
from drivers.roles import FrameInfo, Scanner
from drivers.scanning.binning import bin_pixels
from drivers.scanning.galvo_waveforms import (
    GalvoScanSettings,
    build_waveforms,
    pixel_sample_starts,
    plan_raster,
)

#: frames of AO written ahead of the beam (non-regenerating output needs a margin)
AO_FRAMES_AHEAD = 2


class GalvoGalvoScanner(Scanner):
    """Raster scanning with two galvos, one PMT channel per AI channel.

    `settings` are validated when the scanner is constructed (impossible settings raise
    LimitError before any device is touched). Channels name the DAQ terminals.
    """

    def __init__(
        self,
        daq: ScanDAQ,
        settings: GalvoScanSettings,
        *,
        galvo_channels: tuple[str, str] = ("ao0", "ao1"),
        pmt_channels: tuple[str, ...] = ("ai0",),
        ai_range_v: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(name or "galvo-galvo scanner")
        self.daq = daq
        self.raster = plan_raster(settings)
        self.galvo_channels = tuple(galvo_channels)
        self.pmt_channels = tuple(pmt_channels)
        self.ai_range_v = ai_range_v
        self._waveform = build_waveforms(self.raster)
        self._starts = pixel_sample_starts(self.raster)
        k = settings.ai_oversample
        # the pixel map may reach into the next frame's first samples by the line phase;
        # the raster planner keeps it inside the flyback lines, asserted here
        assert self._starts.max() + k <= self.raster.frame_samples * k
        self._raw = np.zeros((len(self.pmt_channels), self.raster.frame_samples * k), np.int16)
        self._running = False
        self._configured = False
        self._frame_index = 0

    # -- Scanner role ----------------------------------------------------------------------
    @property
    def settings(self) -> GalvoScanSettings:
        return self.raster.settings

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.settings.lines, self.settings.pixels_per_line)

    @property
    def n_channels(self) -> int:
        return len(self.pmt_channels)

    @property
    def frame_rate_hz(self) -> float:
        return self.raster.frame_rate_hz

    @property
    def pixel_size_um(self) -> tuple[float, float]:
        return self.raster.pixel_size_um

    def task_config(self) -> ScanTaskConfig:
        s = self.settings
        return ScanTaskConfig(
            ao_channels=self.galvo_channels,
            ai_channels=self.pmt_channels,
            ao_rate_hz=self.raster.ao_rate_hz,
            ai_oversample=s.ai_oversample,
            ao_samples_per_frame=self.raster.frame_samples,
            ao_range_v=s.max_volts,
            ai_range_v=self.ai_range_v,
        )

    def start(self) -> None:
        self.require_open()
        if self._running:
            raise DeviceStateError(f"{self.name} is already scanning")
        self.daq.configure_scan(self.task_config())
        self._configured = True
        for _ in range(AO_FRAMES_AHEAD):
            self.daq.write_ao(self._waveform)
        self._frame_index = 0
        self.daq.start_scan()
        self._running = True

    def read_frame(self, out: np.ndarray) -> FrameInfo:
        """Acquire the next frame into `out` (int16, (lines, pixels) or (channels, lines,
        pixels)). Keeps the AO queue one frame ahead of the beam."""
        if not self._running:
            raise DeviceStateError(f"{self.name} is not scanning: call start() first")
        first_sample = self.daq.read_ai(self._raw)
        self.daq.write_ao(self._waveform)
        k = self.settings.ai_oversample
        planes = out.reshape((self.n_channels,) + self.frame_shape)
        for c in range(self.n_channels):
            bin_pixels(self._raw[c], self._starts, k, planes[c])
        info = FrameInfo(
            index=self._frame_index,
            device_time_s=first_sample / self.raster.settings.sample_rate_hz,
            host_time_s=time.monotonic(),
        )
        self._frame_index += 1
        return info

    def stop(self) -> None:
        """Stop scanning and park the beam (idempotent)."""
        self._safe()

    def park(self) -> None:
        s = self.settings
        self.daq.park((s.park_um[0] / s.um_per_volt[0], s.park_um[1] / s.um_per_volt[1]))

    def with_settings(self, **changes: Any) -> GalvoScanSettings:
        """Settings with changes applied and validated (raises LimitError if impossible)."""
        new = replace(self.settings, **changes)
        plan_raster(new)
        return new

    # -- Device hooks ----------------------------------------------------------------------
    def _open(self) -> None:
        self.daq.open()

    def _close(self) -> None:
        pass  # the DAQ is shared (stimulation pulses); the rig closes it

    def _safe(self) -> None:
        if self._running:
            self._running = False
            self.daq.stop_scan()
        if self._configured and self.daq.is_open:
            self.park()

    def _snapshot(self) -> dict[str, Any]:
        r = self.raster
        return {
            "settings": self.settings.to_dict(),
            "frame_rate_hz": r.frame_rate_hz,
            "line_rate_hz": r.line_rate_hz,
            "pixel_size_um": r.pixel_size_um,
            "pixel_dwell_us": r.pixel_dwell_s * 1e6,
            "field_um": r.field_um,
            "galvo_channels": self.galvo_channels,
            "pmt_channels": self.pmt_channels,
        }
