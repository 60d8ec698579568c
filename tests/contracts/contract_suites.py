"""Shared contract tests: every implementation of a role passes these by subclassing the
suite and providing two fixtures:

    device   a fresh, closed instance of the implementation
    sent     a callable returning how many commands/bytes the device has emitted so far
             (to prove that refused input sends nothing)

Modelled on python-microscope's testsuite: a new driver gets the whole suite for free.
"""

import json

import numpy as np
import pytest

from drivers.errors import DeviceStateError, LimitError
from drivers.roles import FrameInfo, StimulusRecord


class DeviceContract:
    def test_open_close_is_idempotent(self, device):
        device.open()
        assert device.is_open
        device.close()
        device.close()
        assert not device.is_open

    def test_context_manager_closes(self, device):
        with device as d:
            assert d is device and device.is_open
        assert not device.is_open

    def test_context_manager_closes_on_error(self, device):
        with pytest.raises(RuntimeError):
            with device:
                raise RuntimeError("boom")
        assert not device.is_open

    def test_safe_is_harmless_when_closed_and_repeatable_when_open(self, device):
        device.safe()
        with device:
            device.safe()
            device.safe()

    def test_snapshot_is_json_and_names_role(self, device):
        with device:
            snap = device.snapshot()
        json.dumps(snap)
        assert snap["role"] == device.role and snap["name"] == device.name


class ScannerContract(DeviceContract):
    def test_geometry_and_rate_are_known_before_opening(self, device):
        lines, pixels = device.frame_shape
        assert lines >= 1 and pixels >= 2
        assert device.frame_rate_hz > 0
        assert all(p > 0 for p in device.pixel_size_um)

    def test_frames_arrive_in_order_with_device_times(self, device):
        out = np.zeros(device.frame_shape, np.int16)
        with device:
            device.start()
            infos = [device.read_frame(out) for _ in range(3)]
            device.stop()
        assert all(isinstance(i, FrameInfo) for i in infos)
        assert [i.index for i in infos] == [0, 1, 2]
        np.testing.assert_allclose(
            np.diff([i.device_time_s for i in infos]), 1 / device.frame_rate_hz, rtol=1e-9
        )

    def test_read_before_start_is_refused(self, device):
        with device:
            with pytest.raises(DeviceStateError):
                device.read_frame(np.zeros(device.frame_shape, np.int16))

    def test_stop_is_idempotent_and_safe_stops_a_running_scan(self, device):
        out = np.zeros(device.frame_shape, np.int16)
        with device:
            device.start()
            device.read_frame(out)
            device.safe()
            with pytest.raises(DeviceStateError):
                device.read_frame(out)
            device.stop()
            device.stop()


class StimulatorContract(DeviceContract):
    """Needs fixtures `good_stimulus` and `bad_stimuli` (a list of stimuli over a limit)."""

    def test_validate_returns_what_will_be_delivered(self, device, good_stimulus):
        assert device.validate(good_stimulus) is not None

    def test_refused_stimulus_sends_nothing(self, device, bad_stimuli, sent):
        with device:
            before = sent()
            for stim in bad_stimuli:
                with pytest.raises(LimitError):
                    device.stimulate(stim)
            assert sent() == before

    def test_stimulate_reports_host_and_device_time(self, device, good_stimulus, sent):
        with device:
            before = sent()
            record = device.stimulate(good_stimulus)
            assert sent() > before
        assert isinstance(record, StimulusRecord)
        assert record.host_time_s > 0 and np.isfinite(record.device_time_s)
        json.dumps(record.description)

    def test_stimulate_on_a_closed_device_is_refused(self, device, good_stimulus):
        with pytest.raises(DeviceStateError):
            device.stimulate(good_stimulus)


class FocusContract(DeviceContract):
    """Needs fixture `travel_um` (min, max) of the allowed travel."""

    def test_move_within_travel(self, device, travel_um, sent):
        lo, hi = travel_um
        with device:
            before = sent()
            device.move_to_um((lo + hi) / 2 + 1.0)
            assert device.position_um() == pytest.approx((lo + hi) / 2 + 1.0)
            assert sent() > before

    def test_move_outside_travel_is_refused_before_sending(self, device, travel_um, sent):
        lo, hi = travel_um
        with device:
            before = sent()
            for z in (hi + 1.0, lo - 1.0):
                with pytest.raises(LimitError):
                    device.move_to_um(z)
            assert sent() == before
