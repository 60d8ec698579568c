"""Sample-level tests of the galvo scan engine on the simulated DAQ.

The world here is a single bright bead (a stand-in with the World's sampling interface), so
the test isolates the beam path: AO waveform -> galvo lag -> beam position per AI sample ->
photons -> pixel binning.
"""

import numpy as np
import pytest

from drivers.errors import DeviceStateError, LimitError
from drivers.scanning.galvo import GalvoGalvoScanner
from drivers.scanning.galvo_waveforms import GalvoScanSettings
from simulators.daq import SimulatedDAQ, SimulatedOptics


class BeadWorld:
    """A Gaussian bead of 1.5 um SD at (x0, y0); photon counts without noise (expected value,
    rounded) so that positions can be measured exactly."""

    def __init__(self, x0_um, y0_um, peak_photons=50.0, sd_um=1.5):
        self.x0, self.y0, self.peak, self.sd = x0_um, y0_um, peak_photons, sd_um
        self._t = 0.0
        self.stimulations = []

    @property
    def t_s(self):
        return self._t

    def sample_photons(self, x_um, y_um, t0_s, dt_s, power_mw, out):
        r2 = (x_um - self.x0) ** 2 + (y_um - self.y0) ** 2
        out[:] = np.rint(self.peak * np.exp(-r2 / (2 * self.sd**2)))
        self._t = t0_s + len(x_um) * dt_s

    def stimulate_spots(self, xy_um, radius_um, power_mw, onset_s, duration_s):
        self.stimulations.append((xy_um.copy(), radius_um, power_mw, onset_s, duration_s))
        return np.zeros(0, np.int64)


def scan_one_frame(settings, world, lag_s):
    optics = SimulatedOptics(
        galvo_lag_s=lag_s, read_noise_counts=0.0, pmt_gain_spread=0.0, pmt_counts_per_photon=100.0
    )
    daq = SimulatedDAQ(world, optics=optics)
    scanner = GalvoGalvoScanner(daq, settings)
    frame = np.zeros(scanner.frame_shape, np.int16)
    with daq, scanner:
        scanner.start()
        info = scanner.read_frame(frame)
        scanner.stop()
    return frame, info, scanner


def centroid_x(row):
    row = row.astype(float)
    return float((row * np.arange(row.size)).sum() / row.sum())


SMALL = dict(
    pixels_per_line=128,
    lines=64,
    fov_um=(128.0, 64.0),
    sample_rate_hz=2e6,
    ai_oversample=4,
    turnaround_us=300.0,
    flyback_lines=2,
)


def test_a_bead_appears_at_its_pixel():
    x0, y0 = 20.3, -10.2  # um in the field (centre 0, 0)
    frame, info, scanner = scan_one_frame(
        GalvoScanSettings(**SMALL, line_phase_us=0.0), BeadWorld(x0, y0), lag_s=0.0
    )
    py, px = scanner.pixel_size_um
    iy, ix = np.unravel_index(np.argmax(frame), frame.shape)
    expect_x = x0 / px + frame.shape[1] / 2 - 0.5
    expect_y = y0 / py + frame.shape[0] / 2 - 0.5
    assert abs(ix - expect_x) <= 0.5 and abs(iy - expect_y) <= 0.5
    assert info.index == 0 and info.device_time_s == 0.0


def test_galvo_lag_shifts_bidirectional_lines_by_the_predicted_amount():
    """A first-order galvo trails a ramp by tau: the forward lines image the bead v*tau late,
    the backward lines v*tau early, a comb of 2*tau/dwell pixels (hardware.md section 2)."""
    tau = 40e-6
    settings = GalvoScanSettings(**SMALL, line_phase_us=0.0, bidirectional=True)
    frame, _, scanner = scan_one_frame(settings, BeadWorld(0.0, 0.0), lag_s=tau)
    dwell = settings.ai_oversample / settings.sample_rate_hz
    rows = np.argsort(frame.sum(axis=1))[-6:]
    fwd = [centroid_x(frame[r]) for r in rows if r % 2 == 0]
    bwd = [centroid_x(frame[r]) for r in rows if r % 2 == 1]
    comb = np.mean(fwd) - np.mean(bwd)
    assert comb == pytest.approx(2 * tau / dwell, abs=0.3)  # 20 pixels


def test_line_phase_equal_to_the_lag_removes_the_comb():
    tau = 40e-6
    settings = GalvoScanSettings(**SMALL, line_phase_us=tau * 1e6, bidirectional=True)
    frame, _, scanner = scan_one_frame(settings, BeadWorld(10.0, 0.0), lag_s=tau)
    rows = np.argsort(frame.sum(axis=1))[-6:]
    fwd = [centroid_x(frame[r]) for r in rows if r % 2 == 0]
    bwd = [centroid_x(frame[r]) for r in rows if r % 2 == 1]
    assert abs(np.mean(fwd) - np.mean(bwd)) < 0.3
    px = scanner.pixel_size_um[1]
    assert np.mean(fwd) == pytest.approx(10.0 / px + frame.shape[1] / 2 - 0.5, abs=0.5)


def test_frames_carry_device_times_one_frame_period_apart():
    settings = GalvoScanSettings(**SMALL, line_phase_us=0.0)
    daq = SimulatedDAQ(BeadWorld(0, 0), optics=SimulatedOptics(galvo_lag_s=0.0))
    scanner = GalvoGalvoScanner(daq, settings)
    frame = np.zeros(scanner.frame_shape, np.int16)
    with daq, scanner:
        scanner.start()
        infos = [scanner.read_frame(frame) for _ in range(3)]
    assert [i.index for i in infos] == [0, 1, 2]
    np.testing.assert_allclose(np.diff([i.device_time_s for i in infos]), 1 / scanner.frame_rate_hz)
    assert infos[0].host_time_s < infos[1].host_time_s < infos[2].host_time_s


def test_reading_before_start_is_refused():
    daq = SimulatedDAQ(BeadWorld(0, 0))
    scanner = GalvoGalvoScanner(daq, GalvoScanSettings(**SMALL))
    with daq, scanner:
        with pytest.raises(DeviceStateError, match="start"):
            scanner.read_frame(np.zeros(scanner.frame_shape, np.int16))


def test_impossible_settings_are_refused_before_the_daq_is_touched():
    daq = SimulatedDAQ(BeadWorld(0, 0))
    with pytest.raises(LimitError, match="zoom"):
        GalvoGalvoScanner(daq, GalvoScanSettings(zoom=0.2))
    assert not daq.is_open
