"""The online processing pipeline: explicit stages run by the processing thread per frame.

Stages, in order (names as in config, summary.json `stage_ms_median` and session.h5
`timing/stage_ms`):

1. `motion`        rigid subpixel phase correlation against a reference built from the
                   reference period (analysis.motion); the shift is applied by reading ROI
                   pixels at the shifted position, never by moving the frame. Frames that
                   cannot be registered are flagged (events.jsonl) and give NaN traces.
2. `rois`          collects the reference period (or uses an ROI file / suite2p output),
                   builds the mean image (motion-corrected) and detects ROIs once. In
                   realtime sessions the detection (seconds on a 512 x 512 field) runs on a
                   worker thread while frames keep flowing (without traces), and the result
                   is installed by the processing thread at the next frame; in max-speed
                   sessions it runs in place, so the install frame is deterministic.
                   Optional (rois.zstack_range_um > 0): a reference z-stack follows
                   (rig.reference_zstack; the focus device steps, each frame is registered
                   and accumulated into its plane, no traces), and only the detected ROIs
                   whose soma the imaging plane cuts (analysis.rois.axial_fraction >=
                   rois.min_axial_fraction) are installed, back at z = 0.
3. `extract`       weighted mean fluorescence per ROI (numba, no allocation).
4. `neuropil`      square-ring neuropil means; F_corrected = F - r F_neuropil (r = 0.7).
5. `dff`           causal dF/F against a running percentile baseline (trailing window).
6. `noise_level`   CASCADE noise level per ROI over a trailing window.
7. `deconvolution` online OASIS AR(1) or AR(2) per ROI, s_min from the noise level: denoised calcium
                   and spike estimates with exact zeros.
8. `rg`            incremental coarse-graining of the chosen signal (analysis.rg), re-paired
                   on a schedule (realtime: on a worker thread, the new tree swapped in
                   between frames; max speed: in place), observables published for the GUI.

Each stage can be switched off in the rig config (`motion.enabled`, ...), except `rois`,
`extract` and `dff`. Each stage's time is measured per frame (`stage_ms`). State is allocated
once, when the ROIs are known (logged as an event).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from analysis import motion as motion_numerics
from analysis.deconvolution import OnlineOasis, OnlineOasisAR2, online_deconvolution
from analysis.dff import OnlineDff
from analysis.neuropil import Neuropil
from analysis.noise import OnlineNoiseLevel
from analysis.roi_import import import_rois
from analysis.rois import RoiSet, axial_fraction, detect_rois, extract
from rig.reference_zstack import ReferenceZStack
from rig.ring import FrameRing

STAGES = ("motion", "rois", "extract", "neuropil", "dff", "noise_level", "deconvolution", "rg")
MOTION_STATUS_TEXT = {
    motion_numerics.OK: "ok",
    motion_numerics.NONFINITE: "frame has NaN or inf values",
    motion_numerics.FLAT: "frame is flat (all equal: dark or saturated)",
    motion_numerics.AT_LIMIT: "shift at the search limit",
    motion_numerics.NO_MATCH: "no match with the reference",
}


@dataclass(frozen=True)
class PipelineSettings:
    frame_rate_hz: float
    frame_shape: tuple[int, int]
    pixel_size_um: tuple[float, float]
    roi_source: str = "detect"
    reference_s: float = 8.0
    cell_diameter_um: float = 12.0
    max_rois: int = 2000
    min_relative_excess: float = 0.0
    zstack_range_um: float = 0.0  # > 0: reference z-stack after the reference period
    zstack_step_um: float = 1.0
    zstack_frames_per_plane: int = 30
    zstack_settle_frames: int = 1
    min_axial_fraction: float = 0.5
    baseline_window_s: float = 60.0
    percentile: float = 8.0
    noise_window_s: float = 30.0
    history_s: float = 20.0
    motion: bool = False
    motion_max_shift_um: float = 15.0
    motion_registration_px: int = 256
    detect_in_background: bool = False
    neuropil: bool = False
    neuropil_coefficient: float = 0.7
    noise: bool = True
    deconvolution: bool = False
    decay_tau_s: float = 0.2
    deconvolution_model: str = "ar1"
    rise_tau_s: float = 0.02
    s_min_sds: float = 3.0
    spike_lag_s: float = 0.2
    rg: bool = False
    rg_signal: str = "spikes"
    rg_repair_every_s: float = 30.0
    rg_publish_every_s: float = 2.0

    @property
    def reference_frames(self) -> int:
        return max(20, int(math.ceil(self.reference_s * self.frame_rate_hz)))

    def check(self) -> None:
        if self.deconvolution and not self.noise:
            raise ValueError(
                "deconvolution.enabled needs noise.enabled: s_min comes from the noise level"
            )
        if self.rg and self.rg_signal in ("spikes", "calcium") and not self.deconvolution:
            raise ValueError(
                f"rg.signal = {self.rg_signal!r} needs deconvolution.enabled "
                '(or set rg.signal = "dff")'
            )


@dataclass(frozen=True)
class ReferenceResult:
    """What the reference period gives: the motion corrector (None without motion
    correction), how many reference frames registered, the mean image, detected ROIs (None
    when ROIs came from a file)."""

    motion_corrector: motion_numerics.MotionCorrector | None
    good_reference_frames: int
    mean_image: np.ndarray
    rois: RoiSet | None


class Pipeline:
    def __init__(
        self,
        settings: PipelineSettings,
        post_event: Callable[[dict[str, Any]], None],
        publish: Callable[[str, Any], None] | None = None,
        trace_source: Any = None,
        focus: Any = None,
        focus_faults: Any = None,
    ) -> None:
        settings.check()
        self.settings = settings
        self.post_event = post_event
        self.publish = publish
        self.focus = focus  # steps the reference z-stack (settings.zstack_range_um > 0)
        self.focus_faults = focus_faults  # rig.focus.FocusFaults: focus.on_fault
        # traces recorded elsewhere (suite2p replay: simulators.replay.TraceSource): the ROIs
        # are given (`rois`, `mean_image`, `how`) and `read(frame_index, out)` fills each
        # frame's fluorescence in place of the extract stage
        self.trace_source = trace_source
        h, w = settings.frame_shape
        self._reference = np.zeros((settings.reference_frames, h, w), np.float32)
        self._n_reference = 0
        self.mean_image: np.ndarray | None = None
        self.rois: RoiSet | None = None
        self.roi_start_frame: int | None = None
        self.reference_end_frame: int | None = None  # the first frame after the reference
        self._zstack: ReferenceZStack | None = None
        self._pending_rois: RoiSet | None = None  # detected, waiting for the z-stack
        self.zstack_result: dict[str, np.ndarray] | None = None
        self.stage_ms = np.zeros(len(STAGES))
        self.history_frames = max(2, int(round(settings.history_s * settings.frame_rate_hz)))
        self.history: np.ndarray | None = None  # (history_frames, n_rois) ring of dF/F
        self.history_count = 0
        self.roi_centroids_um: np.ndarray | None = None
        self.motion_corrector: motion_numerics.MotionCorrector | None = None
        self._motion_out = np.zeros(3)
        self.flagged_frames = 0
        self._extraction: motion_numerics.ShiftedExtraction | None = None
        self._neuropil: Neuropil | None = None
        self._dff: OnlineDff | None = None
        self._noise: OnlineNoiseLevel | None = None
        self._deconvolution: OnlineOasis | OnlineOasisAR2 | None = None
        self.rg: Any = None
        self._corrected: np.ndarray | None = None
        self._rg_row: np.ndarray | None = None
        self._frames_since_publish = 0
        self._background: _BackgroundJob | None = None  # detection / z-stack check (realtime)
        self._rg_job: Any = None
        self.rg_columns: np.ndarray | None = None  # the ROIs the coarse-graining uses
        self._rg_worker: threading.Thread | None = None

    @property
    def stage_names(self) -> tuple[str, ...]:
        return STAGES

    def setup(self) -> None:
        if self.trace_source is not None:
            self.mean_image = self.trace_source.mean_image
            self._n_reference = self._reference.shape[0]  # no reference period to collect
            self._install_rois(self.trace_source.rois, frame_index=0, how=self.trace_source.how)
            return
        if self.settings.roi_source != "detect":
            rois = load_rois(self.settings.roi_source, self.settings.frame_shape)
            self._install_rois(rois, frame_index=0, how=f"file {self.settings.roi_source}")
        elif self.settings.zstack_range_um > 0:
            s = self.settings
            self._zstack = ReferenceZStack(
                half_range_um=s.zstack_range_um,
                step_um=s.zstack_step_um,
                frames_per_plane=s.zstack_frames_per_plane,
                settle_frames=s.zstack_settle_frames,
                frame_shape=s.frame_shape,
                focus=self.focus,
                max_shift_px=s.motion_max_shift_um / min(s.pixel_size_um) if s.motion else None,
                registration_px=s.motion_registration_px,
                post_event=self.post_event,
                faults=self.focus_faults,
            )

    @property
    def n_rois(self) -> int:
        return 0 if self.rois is None else self.rois.n_rois

    @property
    def noise_level(self) -> np.ndarray | None:
        return None if self._noise is None else self._noise.values

    def process(self, ring: FrameRing, slot: int, frame_index: int) -> None:
        s = self.settings
        frame = ring.frames[slot]
        shift = ring.shift[slot]
        times = self.stage_ms
        times[:] = 0.0
        t0 = time.perf_counter()
        ring.motion_status[slot] = motion_numerics.OK
        if self._zstack is not None and self._zstack.active:
            ring.n_rois[slot] = 0
            ring.motion_status[slot] = self._zstack.take(frame, frame_index, shift)
            if self._zstack.done:
                self._zstack_finished(frame_index)
            times[0] = (time.perf_counter() - t0) * 1e3
            return
        if self.motion_corrector is not None:
            status = self.motion_corrector.register(frame, self._motion_out)
            shift[0], shift[1] = self._motion_out[0], self._motion_out[1]
            ring.motion_status[slot] = status
            if status != motion_numerics.OK and status != motion_numerics.AT_LIMIT:
                self.flagged_frames += 1
                self.post_event(
                    {
                        "type": "frame_flagged",
                        "frame": frame_index,
                        "reason": MOTION_STATUS_TEXT.get(status, str(status)),
                    }
                )
        else:
            shift[:] = 0.0
        t1 = time.perf_counter()
        times[0] = (t1 - t0) * 1e3
        if self._background is not None:
            self._poll_background(frame_index)
        elif self._pending_rois is None and (
            self.rois is None or self._n_reference < self._reference.shape[0]
        ):
            self._collect_reference(frame, frame_index)
        t2 = time.perf_counter()
        times[1] = (t2 - t1) * 1e3
        n = self.n_rois
        ring.n_rois[slot] = n
        if n == 0 or self._dff is None:
            return
        fluor = ring.fluorescence[slot, :n]
        if self.trace_source is not None:
            self.trace_source.read(frame_index, fluor)
        elif self._extraction is not None:
            self._extraction.extract(frame, shift, fluor)
        else:
            extract(frame, self.rois, fluor)
        t3 = time.perf_counter()
        times[2] = (t3 - t2) * 1e3
        corrected = fluor
        if self._neuropil is not None:
            assert self._corrected is not None
            corrected = self._neuropil.update(
                frame, shift if s.motion else None, fluor, self._corrected
            )
            ring.neuropil[slot, :n] = self._neuropil.values
        t4 = time.perf_counter()
        times[3] = (t4 - t3) * 1e3
        dff = ring.dff[slot, :n]
        self._dff.update(corrected, dff)
        t5 = time.perf_counter()
        times[4] = (t5 - t4) * 1e3
        if self._noise is not None:
            self._noise.update(dff)
        t6 = time.perf_counter()
        times[5] = (t6 - t5) * 1e3
        if self._deconvolution is not None and self._noise is not None:
            dec = self._deconvolution
            dec.set_noise_level(self._noise.values, s.frame_rate_hz, s.s_min_sds, s.percentile)
            calcium, spikes = dec.update(dff)
            ring.calcium[slot, :n] = calcium
            ring.spikes[slot, :n] = spikes
        t7 = time.perf_counter()
        times[6] = (t7 - t6) * 1e3
        if self.rg is not None:
            self._update_rg(ring, slot, dff)
        times[7] = (time.perf_counter() - t7) * 1e3
        assert self.history is not None
        self.history[self.history_count % self.history_frames] = dff
        self.history_count += 1

    def recent_dff(self, n_frames: int) -> np.ndarray:
        """The last n frames of dF/F (chronological, shape (n, n_rois)); fewer at the start."""
        if self.history is None:
            return np.zeros((0, 0), np.float32)
        n = min(n_frames, self.history_count, self.history_frames)
        idx = (np.arange(self.history_count - n, self.history_count)) % self.history_frames
        return self.history[idx]

    # -- ROI stage -------------------------------------------------------------------------
    def _collect_reference(self, frame: np.ndarray, frame_index: int) -> None:
        if self._n_reference < self._reference.shape[0]:
            self._reference[self._n_reference] = frame
            self._n_reference += 1
        if self._n_reference < self._reference.shape[0]:
            return
        self.reference_end_frame = frame_index + 1
        self._in_background(
            "ROI detection on the reference period",
            self._analyse_reference,
            self._install_reference,
            frame_index,
        )

    def _in_background(
        self,
        what: str,
        work: Callable[[], Any],
        install: Callable[[Any, int], None],
        frame_index: int,
    ) -> None:
        """Realtime sessions: run ``work`` (which touches no pipeline state) on a worker thread
        while frames keep flowing, and ``install`` its result on the processing thread at the
        first frame after it finished. Max-speed sessions: both in place, so the install frame
        is deterministic."""
        if not self.settings.detect_in_background:
            install(work(), frame_index)
            return
        self._background = _BackgroundJob(what, work, install)
        self.post_event(
            {
                "type": "pipeline",
                "event": f"{what} started on a worker thread",
                "frame": frame_index,
            }
        )

    def _poll_background(self, frame_index: int) -> None:
        job = self._background
        assert job is not None
        if job.thread.is_alive():
            return
        job.thread.join()
        self._background = None
        if job.error is not None:
            raise RuntimeError(f"{job.what} failed: {job.error}") from job.error
        job.install(job.result, frame_index)

    def _analyse_reference(self) -> ReferenceResult:
        """Motion reference, mean image and ROIs from the reference period. Touches no
        pipeline state, so it can run on a worker thread."""
        s = self.settings
        reference = self._reference
        corrector = None
        good_frames = reference.shape[0]
        if s.motion:
            max_shift_px = s.motion_max_shift_um / min(s.pixel_size_um)
            image = motion_numerics.build_reference(reference, max_shift_px)
            corrector = motion_numerics.MotionCorrector(
                image, max_shift_px, registration_size_px=s.motion_registration_px
            )
            shifts, _, _ = motion_numerics.register_frames(reference, corrector)
            good = np.isfinite(shifts).all(axis=1)
            good_frames = int(good.sum())
            reference = motion_numerics.corrected_frames(reference[good], shifts[good])
        rois = None
        if self.rois is None:
            px = s.pixel_size_um
            diameter_px = s.cell_diameter_um / float(np.sqrt(px[0] * px[1]))
            rois = detect_rois(
                reference,
                cell_diameter_px=diameter_px,
                max_rois=s.max_rois,
                min_relative_excess=s.min_relative_excess,
            )
        return ReferenceResult(corrector, good_frames, reference.mean(axis=0), rois)

    def _install_reference(self, result: ReferenceResult, frame_index: int) -> None:
        if result.motion_corrector is not None:
            self.motion_corrector = result.motion_corrector
            self.post_event(
                {
                    "type": "motion",
                    "event": "reference built",
                    "frame": frame_index,
                    "reference_frames": result.good_reference_frames,
                }
            )
        self.mean_image = result.mean_image
        if result.rois is not None and self._zstack is not None:
            self._pending_rois = result.rois
            self._zstack.start(result.mean_image, frame_index)
            if self._zstack.done:  # the first focus command failed
                self._zstack_finished(frame_index)
        elif result.rois is not None:
            self._install_rois(result.rois, frame_index, how="detected on the reference period")

    def _zstack_finished(self, frame_index: int) -> None:
        """Check the detected ROIs against the completed stack (on a worker thread in
        realtime); after a focus fault that let the session go on, keep them all."""
        assert self._zstack is not None and self._pending_rois is not None
        if self._zstack.failed is not None:
            detected, self._pending_rois = self._pending_rois, None
            self._install_rois(
                detected,
                frame_index,
                how="detected on the reference period; all kept, the reference z-stack "
                f"stopped early ({self._zstack.failed})",
            )
            return
        detected, stack = self._pending_rois, self._zstack.stack()
        self._in_background(
            "checking the ROIs against the reference z-stack",
            lambda: self._check_against_zstack(detected, stack),
            self._install_checked,
            frame_index,
        )

    def _check_against_zstack(
        self, detected: RoiSet, stack: np.ndarray
    ) -> tuple[RoiSet, dict[str, np.ndarray]]:
        """The detected ROIs whose soma the imaging plane cuts (axial fraction >=
        rois.min_axial_fraction, or not measurable), and what reference_zstack.npz keeps.
        Touches no pipeline state."""
        s = self.settings
        assert self._zstack is not None
        px = s.pixel_size_um
        fraction = axial_fraction(
            stack, self._zstack.z_um, detected, s.cell_diameter_um / float(np.sqrt(px[0] * px[1]))
        )
        keep = ~(fraction < s.min_axial_fraction)  # NaN (not measurable): kept
        kept = np.flatnonzero(keep)
        rois = RoiSet._from_lists(
            detected.shape,
            [detected.roi_pixels(i) for i in kept],
            [detected.weights[detected.offsets[i] : detected.offsets[i + 1]] for i in kept],
        )
        record = {
            "stack": stack.astype(np.float32),
            "z_um": self._zstack.z_um.copy(),
            "frames": self._zstack.frames.copy(),
            "first_frame": self._zstack.first_frame.copy(),
            "axial_fraction": fraction,
            "kept": keep,
            "min_axial_fraction": np.asarray(s.min_axial_fraction),
        }
        return rois, record

    def _install_checked(
        self, checked: tuple[RoiSet, dict[str, np.ndarray]], frame_index: int
    ) -> None:
        rois, record = checked
        detected = record["kept"].size
        self._pending_rois = None
        self.zstack_result = record
        self.post_event(
            {
                "type": "zstack",
                "event": "ROIs checked",
                "frame": frame_index,
                "detected": int(detected),
                "kept": rois.n_rois,
                "not_measurable": int(np.isnan(record["axial_fraction"]).sum()),
                "min_axial_fraction": self.settings.min_axial_fraction,
            }
        )
        self._install_rois(
            rois,
            frame_index,
            how=f"detected on the reference period; {rois.n_rois} of {detected} in focus "
            "by the reference z-stack",
        )

    def _install_rois(self, rois: RoiSet, frame_index: int, how: str) -> None:
        s = self.settings
        if rois.shape != tuple(s.frame_shape):
            raise ValueError(f"ROI set has shape {rois.shape} but frames are {s.frame_shape}")
        if rois.n_rois > s.max_rois:
            raise ValueError(f"{rois.n_rois} ROIs exceed rois.max_rois = {s.max_rois}")
        self.rois = rois
        self.roi_start_frame = frame_index
        n = rois.n_rois
        if s.motion:
            self._extraction = motion_numerics.ShiftedExtraction(rois)
        if s.neuropil and n:
            self._neuropil = Neuropil(rois, coefficient=s.neuropil_coefficient)
            self._corrected = np.zeros(n, np.float32)
        self._dff = OnlineDff(
            n, s.frame_rate_hz, baseline_window_s=s.baseline_window_s, percentile=s.percentile
        )
        if s.noise:
            window = max(2, int(round(s.noise_window_s * s.frame_rate_hz)))
            self._noise = OnlineNoiseLevel(n, window, s.frame_rate_hz)
        if s.deconvolution:
            lag = int(round(s.spike_lag_s * s.frame_rate_hz))
            self._deconvolution = online_deconvolution(
                s.deconvolution_model,
                n,
                s.frame_rate_hz,
                s.decay_tau_s,
                s.rise_tau_s,
                spike_lag_frames=lag,
                pool_capacity=max(256, lag + 2),
            )
        if s.rg:
            self._start_rg(n)
        self.history = np.zeros((self.history_frames, n), np.float32)
        self.history_count = 0
        # centroids in field coordinates (x, y) um, field centred on 0, as stimulation targets
        h, w = s.frame_shape
        py, px = s.pixel_size_um
        cy, cx = rois.centroids_px[:, 0], rois.centroids_px[:, 1]
        self.roi_centroids_um = np.column_stack([(cx + 0.5 - w / 2) * px, (cy + 0.5 - h / 2) * py])
        self.post_event({"type": "rois", "frame": frame_index, "n_rois": n, "how": how})

    # -- coarse-graining stage -------------------------------------------------------------
    def _start_rg(self, n_rois: int) -> None:
        from analysis.rg.streaming import OnlineCoarseGraining

        s = self.settings
        assert self.rois is not None
        # ROIs the brain's motion can carry wholly out of the field would give NaN frames,
        # and a frame with any NaN is left out of the coarse-graining: use the ROIs that
        # stay imaged at any shift within the motion search range (same set offline)
        margin_px = s.motion_max_shift_um / min(s.pixel_size_um) if s.motion else 0.0
        self.rg_columns = rois_always_imaged(self.rois, s.frame_shape, margin_px)
        n = int(self.rg_columns.size)
        levels = int(math.floor(math.log2(n))) if n >= 2 else 0
        if levels < 2:
            self.post_event(
                {
                    "type": "rg",
                    "event": "disabled",
                    "reason": f"{n} of {n_rois} ROIs stay in the field: coarse-graining "
                    "needs at least 4",
                }
            )
            return
        if n < n_rois:
            self.post_event(
                {
                    "type": "rg",
                    "event": "ROIs chosen",
                    "n_rois": n,
                    "left_out": n_rois - n,
                    "reason": f"within {margin_px:.1f} px of the field's edge (motion range)",
                }
            )
        repair = max(2, int(round(s.rg_repair_every_s * s.frame_rate_hz)))
        self.rg = OnlineCoarseGraining(
            n,
            levels=min(levels, 8),
            block_frames=16,
            repair_every_frames=repair,
            repair_in_update=False,
        )
        self._rg_row = np.zeros(n, np.float32)
        self._publish_every = max(1, int(round(s.rg_publish_every_s * s.frame_rate_hz)))

    def _finish_rg_repair(self, job: Any) -> None:
        try:
            self.rg.finish_repair(job)
            self.post_event({"type": "rg", "event": "re-paired", "frames": int(job.n_frames)})
        except ValueError as e:
            self.post_event({"type": "rg", "event": "re-pairing skipped", "reason": str(e)})

    def _update_rg(self, ring: FrameRing, slot: int, dff: np.ndarray) -> None:
        s = self.settings
        n = self.n_rois
        source = {"spikes": ring.spikes, "calcium": ring.calcium}.get(s.rg_signal)
        assert self._rg_row is not None and self.rg_columns is not None
        np.take(dff if source is None else source[slot, :n], self.rg_columns, out=self._rg_row)
        if not np.isfinite(self._rg_row).all():
            return  # the first frames of the deconvolution lag, flagged frames: not counted
        np.maximum(self._rg_row, 0.0, out=self._rg_row)
        rg = self.rg
        rg.update(self._rg_row)
        worker = self._rg_worker
        if self._rg_job is not None and worker is not None and not worker.is_alive():
            worker.join()
            job, self._rg_job, self._rg_worker = self._rg_job, None, None
            self._finish_rg_repair(job)
        elif self._rg_job is None and rg.repair_due:
            try:
                job = rg.begin_repair()
            except ValueError as e:
                self.post_event({"type": "rg", "event": "re-pairing skipped", "reason": str(e)})
            else:
                if s.detect_in_background:  # realtime: re-pair off the processing thread
                    self._rg_job = job
                    self._rg_worker = threading.Thread(
                        target=_run_rg_job, args=(job,), name="rg-repair", daemon=True
                    )
                    self._rg_worker.start()
                else:  # max speed: in place, so the swap frame is deterministic
                    job.run()
                    self._finish_rg_repair(job)
        self._frames_since_publish += 1
        if self.publish is not None and self._frames_since_publish >= self._publish_every:
            self._frames_since_publish = 0
            live = rg_live_values(rg)
            if live:
                self.publish("rg", live)


class _BackgroundJob:
    """One piece of work on a worker thread: its result or error, and how to install it."""

    def __init__(
        self, what: str, work: Callable[[], Any], install: Callable[[Any, int], None]
    ) -> None:
        self.what = what
        self.install = install
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(work,), name=what, daemon=True)
        self.thread.start()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self.result = work()
        except BaseException as e:  # noqa: BLE001 - handed to the processing thread
            self.error = e


def rois_always_imaged(rois: RoiSet, frame_shape: tuple[int, int], margin_px: float) -> np.ndarray:
    """Indices of the ROIs whose bounding box stays inside the frame when shifted by up to
    `margin_px` in any direction (all ROIs for margin 0): they never leave the field."""
    h, w = frame_shape
    m = int(math.ceil(margin_px))
    if rois.n_rois == 0:
        return np.zeros(0, np.int64)
    starts = rois.offsets[:-1]
    rows, cols = np.divmod(rois.pixels.astype(np.int64), w)
    keep = (
        (np.minimum.reduceat(rows, starts) - m >= 0)
        & (np.maximum.reduceat(rows, starts) + m + 1 < h)
        & (np.minimum.reduceat(cols, starts) - m >= 0)
        & (np.maximum.reduceat(cols, starts) + m + 1 < w)
    )
    return np.flatnonzero(keep)


def _run_rg_job(job: Any) -> None:
    try:
        job.run()
    except Exception:  # noqa: BLE001 - kept in job.error; finish_repair re-raises it
        pass


def rg_live_values(rg: Any) -> dict[str, Any] | None:
    """The running coarse-graining observables in the form the GUI panel reads."""
    if rg.tree is None or rg.frames_since_repair < 2:
        return None
    try:
        obs = rg.observables()
        exps = rg.exponents()
    except (RuntimeError, ValueError):
        return None
    ks = [int(k) for k in obs.cluster_sizes]
    edges = obs.q_edges
    centres = (edges[:-1] + edges[1:]) / 2
    spectra = {}
    for k, spec in obs.spectra.items():
        if spec.valid:
            rank = np.arange(1, spec.eigenvalues.size + 1)
            spectra[int(k)] = ((rank / k).tolist(), spec.eigenvalues.tolist())
    c_k = {}
    for i, k in enumerate(ks):
        tau = obs.tau_c_frames[i]
        if np.isfinite(tau) and tau > 0:
            c_k[k] = ((obs.lags_frames / tau).tolist(), obs.c_k[i].tolist())
    return {
        "K": ks,
        "p0": obs.p0.tolist(),
        "beta": exps.beta.value if exps.beta.valid else None,
        "q_k": {k: (centres.tolist(), obs.q_density[i].tolist()) for i, k in enumerate(ks)},
        "spectra": spectra,
        "c_k": c_k,
        "frames": int(obs.n_frames),
    }


def load_rois(source: str, frame_shape: tuple[int, int]) -> RoiSet:
    """An ROI file (.npy/.npz label image or masks, PNG/TIFF labels, Cellpose _seg.npy) or a
    suite2p output folder / stat.npy."""
    return import_rois(source, frame_shape).rois
