"""Learning by stimulation avoidance (Sinapayen, Masumori & Ikegami 2017) on an MEA.

Stimulate the input electrode continuously (a held pulse train) until the output electrode
shows the target event, then stop; pause 1-2 s (uniform) and start the next trial; give up a
trial after `give_up_s`. The target event: at least `output_units` distinct units on the
output electrode within the same millisecond while the dummy electrode has fewer than
`dummy_max_units` (the paper's selective-learning task: output_units = 4, dummy_max_units =
4 for the 100-neuron `lsa_paper` culture; output_units = 1 for the two-neuron `lsa_minimal`).

`contingency` chooses the feedback, so the honest comparisons are easy (science.md 6):
- `stop_on_output`  the closed loop above;
- `start_on_output` the inverse: stimulation is off until the output event, which switches
                    it on for 1-2 s;
- `yoked`           replays the stimulation on/off times of the session `yoked_from`, open
                    loop (not contingent on this culture's activity);
- `none`            no stimulation at all.

Metrics: reaction time per trial and `reaction_time_ratio` (median of the last fifth of
trials over the first fifth); `weight_in_out_start/end/change` and
`weight_in_dummy_start/end/change` (mean synaptic weights read from the simulated culture's
ground truth - for the report only, the protocol never decides from them).

A yoked run has a reaction time too, so its curve can be set beside the closed loop's: per
replayed stimulation period, the time from its start to this culture's first target event
while the stimulation is on (the same detector; the event does not stop anything). A period
that ends (at the source's stop) without an event counts as `gave_up` and its reaction time is
null (a period cut by the end of the session is left out, as the closed loop's running
trial is). This measure is censored by the source's own reaction times (a replayed period
is never longer than the closed loop's trial), so compare yoked reaction times with that in
mind; the weights carry no such bias.
"""

from __future__ import annotations


import numpy as np

from drivers.mea.stimulus import MEAStimulus, Pulse
from rig.config import ConfigError
from rig.protocol import Param, Protocol
from rig.yoked import load_held_changes, yoked_source


class LSA(Protocol):
    name = "lsa"

    contingency = Param(
        "stop_on_output", choices=("stop_on_output", "start_on_output", "yoked", "none")
    )
    yoked_from = Param("", help="session folder whose stimulation a yoked run replays")
    input_electrode = Param("A-020", help="stimulated electrode (input group)")
    output_electrode = Param("A-027", help="electrode read as the output group")
    dummy_electrode = Param("A-028", help="electrode of the dummy group ('' for none)")
    output_units = Param(1, min=1, max=1000, help="distinct output units in the same ms")
    dummy_max_units = Param(4, min=1, max=1000, help="the dummy must have fewer units then")
    amplitude_ua = Param(10.0, unit="uA", min=0.0, max=2550.0, help="first phase amplitude")
    phase_us = Param(100.0, unit="us", min=10.0, max=5000.0, help="duration of each phase")
    train_rate_hz = Param(
        1000.0, unit="Hz", min=1.0, max=5000.0, help="pulse rate while stimulation is held on"
    )
    give_up_s = Param(10.0, unit="s", min=0.1, max=3600.0)
    pause_min_s = Param(1.0, unit="s", min=0.0, max=3600.0)
    pause_max_s = Param(2.0, unit="s", min=0.0, max=3600.0)
    pause_seed = Param(0, min=0, max=2**31 - 1, help="seed of the pause durations")

    def check(self):
        if self.pause_max_s < self.pause_min_s:
            raise ConfigError("protocol parameters: pause_max_s must be >= pause_min_s")
        yoked_source(self.contingency, self.yoked_from)  # ConfigError if yoked names none

    def setup(self, ctx):
        self.rng = np.random.default_rng(self.pause_seed)
        self.stimulus = MEAStimulus.on(
            self.input_electrode,
            Pulse(self.amplitude_ua, self.phase_us),
            1,
            self.train_rate_hz,
            repeat_while_held=True,
        )
        electrodes = ctx.electrodes
        for name in (self.input_electrode, self.output_electrode, self.dummy_electrode):
            if name and name not in electrodes:
                raise ConfigError(
                    f"electrode {name!r} is not recorded by this rig "
                    f"({len(electrodes)} electrodes: {electrodes[0]} ...)"
                )
        self.out_index = electrodes.index(self.output_electrode)
        self.dummy_index = electrodes.index(self.dummy_electrode) if self.dummy_electrode else -1
        if self.contingency != "none":
            ctx.prepare_stimuli([self.stimulus])
        self.schedule = self._load_schedule() if self.contingency == "yoked" else []
        self.on = False
        self.trial_start_s: float | None = None
        self.pause_until_s = 0.0
        self.reaction_times_s: list[float] = []
        self.gave_up = 0
        self.period_answered = True
        culture = ctx.ground_truth
        self.weights_start = self._weights(culture)
        self.weights_end = self.weights_start

    def _load_schedule(self) -> list[tuple[float, str]]:
        return load_held_changes(self.yoked_from)

    def _weights(self, culture):
        if culture is None:
            return {}
        g = culture.group
        w = {"in_out": culture.mean_weight(g("input"), g("output"))}
        if len(g("dummy")):
            w["in_dummy"] = culture.mean_weight(g("input"), g("dummy"))
        return w

    def _output_event(self, ctx) -> bool:
        electrode, sample, unit = ctx.spikes()
        if electrode.size == 0:
            return False
        ms = sample // int(round(ctx.sample_rate_hz / 1000))
        out = electrode == self.out_index
        if not out.any():
            return False
        for m in np.unique(ms[out]):
            units = np.unique(unit[out & (ms == m)]).size
            if units >= self.output_units:
                if self.dummy_index < 0:
                    return True
                dummy = np.unique(unit[(electrode == self.dummy_index) & (ms == m)]).size
                if dummy < self.dummy_max_units:
                    return True
        return False

    def _set(self, ctx, on: bool):
        if on and not self.on:
            ctx.start_stimulus(self.stimulus)
        elif not on and self.on:
            ctx.stop_stimulus(self.stimulus)
        self.on = on

    def _yoked_change(self, ctx, t: float, on: bool) -> None:
        if on and not self.on:
            self.trial_start_s = t
            self.period_answered = False
        elif not on and self.on and not self.period_answered:
            self.gave_up += 1
            self.reaction_times_s.append(float("nan"))
        self._set(ctx, on)

    def _pause(self):
        return float(self.rng.uniform(self.pause_min_s, self.pause_max_s))

    def on_spikes(self, ctx):
        t = ctx.time_s
        if self.contingency == "none":
            return
        if self.contingency == "yoked":
            # this block's spikes came while the stimulation was as it is now: look at them
            # before applying the replayed changes (as the closed loop does)
            if self.on and not self.period_answered and self._output_event(ctx):
                self.reaction_times_s.append(t - self.trial_start_s)
                self.period_answered = True
            while self.schedule and self.schedule[0][0] <= t:
                _, action = self.schedule.pop(0)
                self._yoked_change(ctx, t, action == "start")
            return
        event = self._output_event(ctx)
        if self.contingency == "stop_on_output":
            if self.on:
                if event:
                    self.reaction_times_s.append(t - self.trial_start_s)
                    self._set(ctx, False)
                    self.pause_until_s = t + self._pause()
                elif t - self.trial_start_s >= self.give_up_s:
                    self.gave_up += 1
                    self.reaction_times_s.append(float("nan"))
                    self._set(ctx, False)
                    self.pause_until_s = t + self._pause()
            elif t >= self.pause_until_s:
                self.trial_start_s = t
                self._set(ctx, True)
        else:  # start_on_output: the output event switches stimulation on for 1-2 s
            if self.on and t >= self.pause_until_s:
                self._set(ctx, False)
            elif not self.on and event:
                self.reaction_times_s.append(t - (self.trial_start_s or 0.0))
                self._set(ctx, True)
                self.pause_until_s = t + self._pause()
                self.trial_start_s = self.pause_until_s

    def teardown(self, ctx):
        if self.on:
            try:
                self._set(ctx, False)
            except Exception:  # noqa: BLE001 - devices are made safe by the loop anyway
                pass
        self.weights_end = self._weights(ctx.ground_truth)

    def metrics(self):
        rt = np.array(self.reaction_times_s, float)
        ratio = None
        if rt.size >= 5:
            fifth = max(1, rt.size // 5)
            first, last = np.nanmedian(rt[:fifth]), np.nanmedian(rt[-fifth:])
            if np.isfinite(first) and np.isfinite(last) and first > 0:
                ratio = float(last / first)
        out = {
            "trials": int(rt.size),
            "gave_up": self.gave_up,
            "reaction_times_s": [None if np.isnan(x) else float(x) for x in rt],
            "median_reaction_time_s": float(np.nanmedian(rt)) if np.isfinite(rt).any() else None,
            "reaction_time_ratio": ratio,
        }
        for key, value in self.weights_start.items():
            out[f"weight_{key}_start"] = value
            end = self.weights_end.get(key)
            out[f"weight_{key}_end"] = end
            out[f"weight_{key}_change"] = (
                None if end is None or value is None else float(end - value)
            )
        return out
