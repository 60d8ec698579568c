"""The preallocated frame ring shared by the acquisition, processing and recorder threads.

A slot travels one way: free -> (acquisition fills it) -> ready -> (processing) -> record ->
(recorder copies what it needs) -> free. Nothing is allocated per frame: frames, per-frame
results and timestamps live in arrays sized once; the queues carry slot numbers only and are
bounded by the number of slots.
"""

from __future__ import annotations

import queue

import numpy as np


class FrameRing:
    def __init__(self, n_slots: int, frame_shape: tuple[int, int], max_rois: int) -> None:
        self.n_slots = n_slots
        self.frames = np.zeros((n_slots,) + tuple(frame_shape), np.int16)
        self.index = np.full(n_slots, -1, np.int64)
        self.device_time_s = np.zeros(n_slots)
        self.frame_complete_s = np.zeros(n_slots)
        self.processing_done_s = np.zeros(n_slots)
        self.stimulus_issued_s = np.full(n_slots, np.nan)
        self.n_rois = np.zeros(n_slots, np.int32)
        self.fluorescence = np.zeros((n_slots, max_rois), np.float32)
        self.neuropil = np.full((n_slots, max_rois), np.nan, np.float32)
        self.dff = np.zeros((n_slots, max_rois), np.float32)
        self.calcium = np.full((n_slots, max_rois), np.nan, np.float32)
        self.spikes = np.full((n_slots, max_rois), np.nan, np.float32)
        self.shift = np.zeros((n_slots, 2))  # (dy, dx) px of the content vs the reference
        self.motion_status = np.zeros(n_slots, np.int8)
        self.free: queue.Queue[int] = queue.Queue(maxsize=n_slots)
        self.ready: queue.Queue[int] = queue.Queue(maxsize=n_slots)
        self.record: queue.Queue[int] = queue.Queue(maxsize=n_slots)
        for slot in range(n_slots):
            self.free.put_nowait(slot)
