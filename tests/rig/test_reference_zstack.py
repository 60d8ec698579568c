"""The reference z-stack stage (rig.reference_zstack): plane order and focus commands,
settling, registration of a moving brain onto the session reference, and the config checks
that refuse a z-stack the rig cannot take before anything opens."""

import numpy as np
import pytest

from analysis import motion as motion_numerics
from rig.config import ConfigError, load_rig_config
from rig.focus import focus_settings
from rig.reference_zstack import ReferenceZStack


class RecordingFocus:
    def __init__(self) -> None:
        self.moves: list[float] = []

    def move_to_um(self, z_um: float) -> None:
        self.moves.append(z_um)


def _blobs(rng: np.random.Generator, shape=(96, 96), n=40) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    image = np.full(shape, 20.0)
    for y, x in rng.uniform(8, shape[0] - 8, size=(n, 2)):
        image += 60.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 3.0**2))
    return image


def _stack(focus, events, **kw) -> ReferenceZStack:
    args = dict(half_range_um=2.0, step_um=1.0, frames_per_plane=3, settle_frames=1,
                frame_shape=(96, 96), focus=focus, max_shift_px=8.0, registration_px=96,
                post_event=events.append)
    args.update(kw)
    return ReferenceZStack(**args)


def test_planes_go_out_from_the_imaging_plane_and_come_back_with_settling_frames_unused():
    focus, events = RecordingFocus(), []
    zstack = _stack(focus, events, max_shift_px=None)
    image = _blobs(np.random.default_rng(1))
    zstack.start(image, frame_index=100)
    shift = np.zeros(2)
    frame = 100
    while zstack.active:
        frame += 1
        zstack.take(image, frame, shift)
    assert focus.moves == [0.0, -1.0, -2.0, 1.0, 2.0, 0.0]
    np.testing.assert_array_equal(zstack.z_um, [-2.0, -1.0, 0.0, 1.0, 2.0])
    np.testing.assert_array_equal(zstack.frames, 3)
    # per plane 1 settling + 3 used frames, then 1 settling frame back at z = 0 and done
    assert frame - 100 == 5 * 4 + 1 + 1
    assert zstack.first_frame.tolist() == [110, 106, 102, 114, 118]  # z = -2, -1, 0, 1, 2
    np.testing.assert_allclose(zstack.stack(), np.broadcast_to(image, (5, 96, 96)))
    assert [e["event"] for e in events].count("plane done") == 5
    assert events[-1]["event"] == "complete"


def test_frames_of_a_moving_brain_are_aligned_to_the_session_reference():
    """Each plane's content is the same image displaced by the brain's motion: after the
    stack every plane matches the reference where data exist."""
    rng = np.random.default_rng(2)
    image = _blobs(rng)
    focus, events = RecordingFocus(), []
    zstack = _stack(focus, events)
    zstack.start(image, frame_index=0)
    shift = np.zeros(2)
    shifts_seen = []
    frame = 0
    while zstack.active:
        frame += 1
        dy, dx = rng.integers(-4, 5, size=2)
        moved = motion_numerics.shift_image(image, (dy, dx)) + rng.normal(0, 0.5, image.shape)
        status = zstack.take(moved.astype(np.float32), frame, shift)
        if np.isfinite(shift).all():
            assert status == motion_numerics.OK
            shifts_seen.append((shift.copy(), (dy, dx)))
    assert len(shifts_seen) == 15
    for measured, true in shifts_seen:  # frames are accumulated at the whole-pixel shift
        np.testing.assert_array_equal(np.round(measured), true)
    stack = zstack.stack()
    inner = (slice(None), slice(8, -8), slice(8, -8))  # away from the wrapped edges
    # noise SD 0.5 / sqrt(3) per pixel; one pixel of misalignment would cost ~10 on the blobs
    np.testing.assert_allclose(stack[inner], np.broadcast_to(image, stack.shape)[inner], atol=1.5)


def test_a_plane_that_cannot_be_registered_is_closed_with_a_warning():
    focus, events = RecordingFocus(), []
    zstack = _stack(focus, events, half_range_um=1.0, settle_frames=0)
    zstack.start(_blobs(np.random.default_rng(3)), frame_index=0)
    shift = np.zeros(2)
    flat = np.full((96, 96), 7.0, np.float32)  # nothing to register
    for frame in range(1, 10):
        assert zstack.take(flat, frame, shift) == motion_numerics.FLAT
        assert np.isnan(shift).all()
    done = [e for e in events if e["event"] == "plane done"]
    assert len(done) == 1 and done[0]["frames"] == 0 and "0 of 3" in done[0]["warning"]
    assert np.isnan(zstack.stack()[1]).all()  # the imaging plane got nothing
    assert focus.moves[-1] == -1.0  # and the stack went on


def test_a_z_stack_the_rig_cannot_take_is_refused_naming_the_fix():
    def settings(**values):
        return focus_settings(load_rig_config("sim", values))

    ok = settings(**{"focus.kind": "optotune", "rois.zstack_range_um": 10.0})
    assert ok.kind == "optotune"
    with pytest.raises(ConfigError, match='needs a focus device.*focus.kind = "optotune"'):
        settings(**{"rois.zstack_range_um": 10.0})
    with pytest.raises(ConfigError, match="volume.planes_um"):
        settings(**{"focus.kind": "optotune", "rois.zstack_range_um": 10.0,
                    "volume.planes_um": [0.0, 20.0]})
    with pytest.raises(ConfigError, match='rois.source = "detect"'):
        settings(**{"focus.kind": "optotune", "rois.zstack_range_um": 10.0,
                    "rois.source": "rois.npy"})
    with pytest.raises(ConfigError, match="zstack_step_um = 20 is larger"):
        settings(**{"focus.kind": "optotune", "rois.zstack_range_um": 10.0,
                    "rois.zstack_step_um": 20.0})
    with pytest.raises(ConfigError, match="leaves the focus range"):
        settings(**{"focus.kind": "optotune", "rois.zstack_range_um": 199.0})


class FailingFocus(RecordingFocus):
    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at

    def move_to_um(self, z_um: float) -> None:
        if len(self.moves) == self.fail_at:
            raise TimeoutError("lens did not answer")
        super().move_to_um(z_um)


def test_a_focus_fault_stops_the_stack_as_focus_on_fault_says():
    from rig.focus import FocusFaults

    image = _blobs(np.random.default_rng(4))
    with pytest.raises(TimeoutError):  # no policy: the error reaches the loop (abort, safe)
        zs = _stack(FailingFocus(fail_at=1), [], max_shift_px=None)
        zs.start(image, 0)
        while zs.active:
            zs.take(image, 1, np.zeros(2))

    events, aborted = [], []
    faults = FocusFaults("record", events.append, lambda exc, where: aborted.append(where))
    focus = FailingFocus(fail_at=2)
    zstack = _stack(focus, events, max_shift_px=None, faults=faults)
    zstack.start(image, frame_index=0)
    frame = 0
    while zstack.active:
        frame += 1
        zstack.take(image, frame, np.zeros(2))
    assert focus.moves == [0.0, -1.0] and zstack.done and "TimeoutError" in zstack.failed
    assert not aborted and faults.faulted.is_set()
    assert [e["event"] for e in events if e["type"] == "focus"] == ["fault"]
    stopped = [e for e in events if e.get("event") == "stopped"]
    assert len(stopped) == 1 and "all detected ROIs are kept" in stopped[0]["warning"]
