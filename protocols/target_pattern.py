"""Stimulate sensory cells until motor cells show a target pattern (the blog seed's in-vivo
closed loop: optogenetic input, two-photon readout, stop when the network "does X").

Each cycle: deliver a light train to the "sensory" ROIs, then look at the "motor" ROIs. A
motor ROI responds when its mean dF/F over `response_window_s` after the train's onset
exceeds its mean over the `baseline_s` before the onset by at least `target_dff`; the target
pattern is reached when at least `fraction_active` of the motor ROIs respond. Window means
(not single frames) keep the criterion well above the shot noise: with a per-frame dF/F noise
sigma and n frames per window, a response difference has noise sigma * sqrt(2 / n).
If the pattern is reached, pause for `pause_s` and start the next cycle; otherwise deliver
the next train 1 / stim_rate_hz after the previous one. A cycle that needs more than
`max_stimuli_per_cycle` trains fails. Groups are the ROIs within a radius of a centre
(x, y um in the field).

Metrics: stimuli per cycle and time to criterion per cycle (the learning curve of
Shahaf & Marom 2001, science.md section 6), cycles met and failed.
"""

from __future__ import annotations

import numpy as np

from drivers.stimulation.light import LightStimulus
from rig.config import ConfigError
from rig.protocol import Param, Protocol


class TargetPattern(Protocol):
    name = "target_pattern"

    sensory_centre_um = Param(
        [-70.0, -60.0],
        unit="um",
        min=-5000,
        max=5000,
        length=2,
        help="(x, y) centre of the sensory (stimulated) cells",
    )
    sensory_radius_um = Param(30.0, unit="um", min=1.0, max=2000.0)
    motor_centre_um = Param(
        [70.0, 60.0],
        unit="um",
        min=-5000,
        max=5000,
        length=2,
        help="(x, y) centre of the motor (read-out) cells",
    )
    motor_radius_um = Param(30.0, unit="um", min=1.0, max=2000.0)
    max_targets = Param(8, min=1, max=50, help="at most this many sensory targets")
    stim_rate_hz = Param(0.25, unit="Hz", min=0.01, max=10.0, help="trains per second while trying")
    power_mw = Param(15.0, unit="mW", min=0.0, max=1000.0, help="power per target spot")
    pulse_ms = Param(5.0, unit="ms", min=0.05, max=1000.0)
    n_pulses = Param(10, min=1, max=1000)
    pulse_rate_hz = Param(10.0, unit="Hz", min=0.1, max=1000.0)
    response_window_s = Param(
        1.0,
        unit="s",
        min=0.1,
        max=60.0,
        help="window after a train's onset whose mean dF/F is the response",
    )
    baseline_s = Param(
        2.0,
        unit="s",
        min=0.1,
        max=60.0,
        help="window before the onset whose mean dF/F is the reference",
    )
    target_dff = Param(
        0.2,
        unit="dF/F",
        min=0.0,
        max=100.0,
        help="response (window mean minus baseline mean) a motor ROI must reach",
    )
    fraction_active = Param(0.6, min=0.0, max=1.0, help="fraction of motor ROIs that must respond")
    pause_s = Param(20.0, unit="s", min=0.0, max=3600.0, help="rest after the criterion is met")
    cycles = Param(5, min=1, max=10000)
    max_stimuli_per_cycle = Param(
        20, min=1, max=100000, help="a cycle fails after this many trains"
    )
    start_after_s = Param(
        5.0,
        unit="s",
        min=0.0,
        max=3600.0,
        help="wait after the ROIs exist (lets the dF/F baseline settle)",
    )

    def check(self):
        if self.fraction_active <= 0:
            raise ConfigError(
                "protocol parameter 'fraction_active' must be > 0: a criterion met "
                "by no active cell is always met"
            )
        if self.stim_rate_hz * self.response_window_s > 1.0:
            raise ConfigError(
                f"protocol parameters: response_window_s = {self.response_window_s:g} s is longer "
                "than the interval between trains "
                f"(1 / stim_rate_hz = {1 / self.stim_rate_hz:g} s): "
                "lower stim_rate_hz or shorten the window"
            )

    def setup(self, ctx):
        self.state = "waiting for ROIs"
        self.sensory_rois = np.zeros(0, np.int64)
        self.motor_rois = np.zeros(0, np.int64)
        self.targets_um: tuple = ()
        self.cycle = 0
        self.cycle_start_s = 0.0
        self.stimuli_in_cycle = 0
        self.next_stim_s = 0.0
        self.last_onset_s: float | None = None
        self.resume_s = 0.0
        self.stimuli_per_cycle: list[int] = []
        self.time_to_criterion_s: list[float | None] = []
        self.cycle_met: list[bool] = []
        self.responses: list[list[float]] = []
        self._response_n = 0
        self._baseline = None

    def on_frame(self, ctx):
        t = ctx.time_s
        if self.state == "waiting for ROIs":
            if ctx.rois_ready:
                self._choose_groups(ctx)
                self.resume_s = t + self.start_after_s
                self.state = "pause"
            return
        if self.state == "pause":
            if t >= self.resume_s:
                self._start_cycle(ctx)
            return
        # state "stimulating": collect the response window of the last train, then judge it
        if self.last_onset_s is not None:
            if t >= self.last_onset_s and t < self.last_onset_s + self.response_window_s:
                self._response_sum += ctx.dff[self.motor_rois]
                self._response_n += 1
                return
            if self._response_n:
                self._judge(ctx, t)
                if self.state != "stimulating":
                    return
        if t >= self.next_stim_s:
            if self.stimuli_in_cycle >= self.max_stimuli_per_cycle:
                self._end_cycle(ctx, met=False, t=t, active=0)
                return
            n_base = max(1, int(round(self.baseline_s * ctx.frame_rate_hz)))
            recent = ctx.recent_dff(n_base)
            self._baseline = recent[:, self.motor_rois].mean(axis=0)
            record = ctx.stimulate(
                LightStimulus(
                    targets_um=ctx.roi_positions_um(self.sensory_rois),
                    power_mw=self.power_mw,
                    pulse_ms=self.pulse_ms,
                    n_pulses=self.n_pulses,
                    pulse_rate_hz=self.pulse_rate_hz,
                )
            )
            self.last_onset_s = record.device_time_s
            self._response_sum[:] = 0.0
            self._response_n = 0
            self.stimuli_in_cycle += 1
            self.next_stim_s = t + 1.0 / self.stim_rate_hz

    def _judge(self, ctx, t):
        response = self._response_sum / self._response_n - self._baseline
        self.responses.append(response.tolist())
        self._response_n = 0
        active = int(np.count_nonzero(response >= self.target_dff))
        if active >= self.fraction_active * self.motor_rois.size:
            self._end_cycle(ctx, met=True, t=t, active=active)

    def _choose_groups(self, ctx):
        self.sensory_rois = ctx.rois_near_um(
            self.sensory_centre_um, self.sensory_radius_um, self.max_targets, required="sensory"
        )
        motor = ctx.rois_near_um(self.motor_centre_um, self.motor_radius_um, required="motor")
        self.motor_rois = np.setdiff1d(motor, self.sensory_rois)
        if self.motor_rois.size == 0:
            raise RuntimeError("the motor ROIs are all sensory ROIs: separate the two groups")
        self._response_sum = np.zeros(self.motor_rois.size)
        self.targets_um = tuple(
            tuple(map(float, xy)) for xy in ctx.roi_centroids_um[self.sensory_rois]
        )
        ctx.mark(
            "groups", sensory_rois=self.sensory_rois.tolist(), motor_rois=self.motor_rois.tolist()
        )

    def _start_cycle(self, ctx):
        self.cycle += 1
        self.state = "stimulating"
        self.cycle_start_s = ctx.time_s
        self.stimuli_in_cycle = 0
        self.next_stim_s = ctx.time_s
        self.last_onset_s = None
        ctx.mark("cycle start", cycle=self.cycle)

    def _end_cycle(self, ctx, *, met: bool, t: float, active: int):
        self.stimuli_per_cycle.append(self.stimuli_in_cycle)
        self.time_to_criterion_s.append(t - self.cycle_start_s if met else None)
        self.cycle_met.append(met)
        ctx.mark(
            "criterion met" if met else "cycle failed",
            cycle=self.cycle,
            stimuli=self.stimuli_in_cycle,
            active_motor_rois=active,
        )
        if self.cycle >= self.cycles:
            self.state = "done"
            ctx.stop(f"{self.cycles} cycles done")
            return
        self.state = "pause"
        self.resume_s = t + self.pause_s

    def metrics(self):
        met = [s for s, m in zip(self.stimuli_per_cycle, self.cycle_met) if m]
        times = [x for x in self.time_to_criterion_s if x is not None]
        return {
            "cycles_run": len(self.cycle_met),
            "cycles_met": int(sum(self.cycle_met)),
            "cycles_failed": int(len(self.cycle_met) - sum(self.cycle_met)),
            "stimuli_per_cycle": self.stimuli_per_cycle,
            "time_to_criterion_s": self.time_to_criterion_s,
            "mean_stimuli_to_criterion": float(np.mean(met)) if met else None,
            "median_time_to_criterion_s": float(np.median(times)) if times else None,
            "sensory_rois": self.sensory_rois.tolist(),
            "motor_rois": self.motor_rois.tolist(),
            "motor_responses": self.responses,
        }
