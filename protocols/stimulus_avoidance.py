"""Shahaf & Marom 2001: focal stimulation until a chosen electrode responds, then a pause.

The experiment (science.md section 6): stimulate one electrode at 0.3-1 Hz until a chosen
"response" electrode responds within 50 +- 10 ms after the stimuli in a predefined way - here
at least `criterion_responses` of the last `criterion_window` stimuli of the cycle (2 of 10
by default) each followed by at least `response_spikes` spikes on the response electrode in
[`window_start_ms`, `window_end_ms`] after the pulse onset (read back from the device). Then
stimulation stops for `pause_s` (5 min in the paper); repeat for `cycles`. The learning curve
is the number of stimuli (and the time) each cycle needs to reach the criterion; a cycle that
needs more than `give_up_stimuli` fails.

Before the first cycle `baseline_stimuli` stimuli measure each electrode's responses/stimuli
ratio. The design needs a response electrode whose baseline is below the criterion ratio
(criterion_responses / criterion_window): with `response_electrode = "auto"` the protocol
takes the electrode with the highest baseline ratio still below it (the stimulated electrode
excluded; ties: lowest index), as Shahaf & Marom chose a site with a weak response in the
window; a named electrode whose baseline is not below the criterion is kept but flagged
(`baseline_below_criterion` false).

`contingency` (the issue's names; science.md 6 asks for every closed loop to have controls):
- `stop_on_output`  the closed loop above: reaching the criterion removes the stimulation;
- `start_on_output` the inverse: no stimulation until the response criterion is met on
                    "virtual" stimuli (the times stimuli would come at `rate_hz`, no pulse:
                    the same detector on spontaneous activity), which switches stimulation on
                    (open loop, at `rate_hz`) for `pause_s`; then the next cycle waits again;
- `yoked`           replays every stimulus of the session `yoked_from` at its device time,
                    open loop; the learning curve is the one this culture would have shown:
                    per replayed cycle (the source's `cycle_start` marks), the stimuli until
                    its responses met the criterion (null if they did not within the cycle);
                    with `response_electrode = auto` it picks its own electrode from its own
                    responses to the replayed baseline by the same rule (adopting the source's
                    would favour the closed loop: that electrode was selected on the source
                    culture's baseline and regresses to the mean elsewhere);
- `none`            no stimulation at all: the detector runs on virtual stimuli with the same
                    cycles and pauses (the chance level of the learning curve).

Metrics: `stimuli_to_criterion` per cycle (null when the cycle failed) and
`time_to_criterion_s` (from the cycle's first stimulus to the end of the response window of
the stimulus that met the criterion), `reaction_time_ratio` (median time to criterion of the
last fifth of cycles over the first fifth, failed cycles left out), `stimuli_per_cycle` and
`responses_per_cycle`, `response_ratio_cycles` (all responses over all stimuli of the cycles:
unlike `cycles_met`, not favoured by the closed loop's stopping rule, by Wald's identity),
the baseline and late response ratios of the response electrode, and from the simulated
culture's ground truth (report only, never used to decide): `weight_in_out_start/end` when
the culture preset has input and output groups (all their synapses), and over plastic
(excitatory-to-excitatory) synapses `weight_from_stim_start/end` (leaving the neurons at the
stimulated electrode) and `weight_stim_resp_start/end` (from those to the neurons at the
response electrode; null when there is none); "at an electrode" = within its half-effect
distance (falloff >= 0.5).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from drivers.errors import LimitError
from drivers.mea.stimulus import MEAStimulus, Pulse
from rig.config import ConfigError
from rig.culture_truth import electrode_neurons, weight_metrics
from rig.protocol import Param, Protocol
from rig.yoked import load_pulses, source_events, yoked_source

CONTINGENCIES = ("stop_on_output", "start_on_output", "yoked", "none")


# -- decisions (pure functions, tested directly) --------------------------------------------------


def window_responses(
    electrodes: np.ndarray,
    samples: np.ndarray,
    onset_sample: int,
    window_samples: tuple[int, int],
    n_electrodes: int,
    min_spikes: int,
) -> np.ndarray:
    """Per electrode: did it fire at least `min_spikes` spikes with sample in
    [onset + window start, onset + window end] (both ends included)?"""
    lo, hi = onset_sample + window_samples[0], onset_sample + window_samples[1]
    inside = (samples >= lo) & (samples <= hi)
    counts = np.bincount(electrodes[inside], minlength=n_electrodes)[:n_electrodes]
    return counts >= min_spikes


def criterion_met(responses: list[bool], needed: int, window: int) -> bool:
    """At least `needed` responses among the last `window` stimuli (fewer stimuli so far
    count as non-responses: 2 of the first 2 stimuli already make 2 of the last 10)."""
    return sum(responses[-window:]) >= needed


def choose_response_electrode(
    baseline_ratios: np.ndarray, criterion_ratio: float, excluded: set[int]
) -> int | None:
    """The electrode with the highest baseline responses/stimuli ratio still below the
    criterion ratio (ties: lowest index); None if every candidate is at or above it."""
    best, best_ratio = None, -1.0
    for e, r in enumerate(baseline_ratios):
        if e in excluded or not r < criterion_ratio:
            continue
        if r > best_ratio:
            best, best_ratio = e, float(r)
    return best


def stimuli_until_criterion(responses: list[bool], needed: int, window: int) -> int | None:
    """1-based number of the stimulus at which the criterion was first met, or None."""
    for k in range(1, len(responses) + 1):
        if criterion_met(responses[:k], needed, window):
            return k
    return None


def fifth_ratio(values: list[float]) -> float | None:
    """Median of the last fifth over the median of the first fifth (NaN values ignored);
    None with fewer than 5 values or an undefined median."""
    v = np.array([np.nan if x is None else x for x in values], float)
    if v.size < 5:
        return None
    fifth = max(1, v.size // 5)
    first, last = v[:fifth], v[-fifth:]
    if not (np.isfinite(first).any() and np.isfinite(last).any()):
        return None
    a, b = np.nanmedian(first), np.nanmedian(last)
    return float(b / a) if a > 0 else None


# -- the protocol -------------------------------------------------------------------------------


class Trial:
    """One stimulus (or virtual stimulus) whose response window is being watched."""

    __slots__ = ("phase", "cycle", "real", "time_s", "onset_sample", "confirmed", "responses")

    def __init__(self, phase: str, cycle: int, real: bool, time_s: float, onset: int) -> None:
        self.phase = phase
        self.cycle = cycle
        self.real = real
        self.time_s = time_s
        self.onset_sample = onset
        self.confirmed = not real  # virtual stimuli have no onset to read back
        self.responses: np.ndarray | None = None


class StimulusAvoidance(Protocol):
    name = "stimulus_avoidance"

    contingency = Param("stop_on_output", choices=CONTINGENCIES)
    yoked_from = Param("", help="session folder whose stimuli a yoked run replays")
    stim_electrode = Param("A-027", help="the focally stimulated electrode")
    response_electrode = Param(
        "auto", help="electrode whose response is conditioned, or 'auto' (from the baseline)"
    )
    amplitude_ua = Param(10.0, unit="uA", min=0.0, max=2550.0, help="first phase amplitude")
    phase_us = Param(200.0, unit="us", min=10.0, max=5000.0, help="duration of each phase")
    rate_hz = Param(1.0, unit="Hz", min=0.05, max=10.0, help="stimuli per second (paper: 0.3-1 Hz)")
    window_start_ms = Param(40.0, unit="ms", min=0.0, max=1000.0, help="50 - 10 ms")
    window_end_ms = Param(60.0, unit="ms", min=0.0, max=1000.0, help="50 + 10 ms")
    response_spikes = Param(1, min=1, max=10000, help="spikes in the window that make a response")
    criterion_responses = Param(2, min=1, max=1000, help="responses needed ...")
    criterion_window = Param(10, min=1, max=1000, help="... among the last this many stimuli")
    baseline_stimuli = Param(20, min=1, max=100000, help="stimuli before the first cycle")
    pause_s = Param(300.0, unit="s", min=0.0, max=86400.0, help="pause after the criterion")
    cycles = Param(20, min=1, max=100000, help="the session stops after this many cycles")
    give_up_stimuli = Param(600, min=1, max=1000000, help="a cycle fails after this many")

    def check(self):
        if self.window_end_ms <= self.window_start_ms:
            raise ConfigError(
                f"protocol parameters: window_end_ms = {self.window_end_ms:g} must be > "
                f"window_start_ms = {self.window_start_ms:g}"
            )
        if self.window_end_ms >= 1000.0 / self.rate_hz:
            raise ConfigError(
                f"protocol parameters: window_end_ms = {self.window_end_ms:g} ms must be "
                f"shorter than the stimulus period 1 / rate_hz = {1000.0 / self.rate_hz:g} ms "
                "(each response window ends before the next stimulus)"
            )
        if self.criterion_responses > self.criterion_window:
            raise ConfigError(
                f"protocol parameters: criterion_responses = {self.criterion_responses} "
                f"cannot exceed criterion_window = {self.criterion_window}"
            )
        try:
            self.pulse = Pulse(self.amplitude_ua, self.phase_us)
        except LimitError as e:
            raise ConfigError(f"protocol parameters amplitude_ua / phase_us: {e}") from e
        self.source: dict[str, Any] = {}
        source = yoked_source(self.contingency, self.yoked_from)
        if source is not None:
            self.source = load_source(source)

    # -- setup --------------------------------------------------------------------------------
    def setup(self, ctx):
        electrodes = ctx.electrodes
        names = [self.stim_electrode]
        if self.response_electrode != "auto":
            names.append(self.response_electrode)
        for name in names:
            if name not in electrodes:
                raise ConfigError(
                    f"electrode {name!r} is not recorded by this rig ({len(electrodes)} "
                    f"electrodes: {', '.join(electrodes[:4])} ...)"
                )
        self.n_electrodes = len(electrodes)
        self._electrode_names = electrodes
        self.stim_index = electrodes.index(self.stim_electrode)
        self.response_index = (
            -1 if self.response_electrode == "auto" else electrodes.index(self.response_electrode)
        )
        fs = ctx.sample_rate_hz
        self.fs = fs
        self.window_samples = (
            int(round(self.window_start_ms * 1e-3 * fs)),
            int(round(self.window_end_ms * 1e-3 * fs)),
        )
        self.period_s = 1.0 / self.rate_hz
        self.stimulus = MEAStimulus.on(self.stim_electrode, self.pulse, label="focal")
        self.schedule: list[tuple[float, MEAStimulus]] = []
        if self.contingency == "yoked":
            self.schedule = list(self.source["stimuli"])
            unique = list(dict.fromkeys(s for _, s in self.schedule))
            if unique:
                ctx.prepare_stimuli(unique)
        elif self.contingency != "none":
            ctx.prepare_stimuli([self.stimulus])
        # state
        self.phase = "baseline"  # baseline | cycle | pause | stimulating | done
        self.cycle = 0
        self.phase_until_s = 0.0
        self.next_probe_s: float | None = None
        self.probes_this_cycle = 0
        self.cycle_responses: list[bool] = []
        self.pending: list[Trial] = []
        self.buffer: list[tuple[np.ndarray, np.ndarray]] = []
        self.trials: list[Trial] = []
        self.baseline_counts = np.zeros(self.n_electrodes, np.int64)
        self.baseline_n = 0
        self.baseline_issued = 0
        self.baseline_ratio: float | None = None
        self.baseline_below: bool | None = None
        self.results: list[dict[str, Any]] = []  # one per cycle
        self.stimuli_delivered = 0
        self.stop_reason = ""
        self.unfinished: dict[str, int] | None = None  # the cycle running when the run ended
        culture = self.culture = ctx.ground_truth
        self.truth_start = culture.ground_truth() if culture is not None else None
        self.truth_end = self.truth_start

    @property
    def criterion_ratio(self) -> float:
        return self.criterion_responses / self.criterion_window

    # -- every block ----------------------------------------------------------------------------
    def on_spikes(self, ctx):
        block = ctx.block
        block_s = block.n_samples / self.fs
        self._collect(ctx)
        self._finish_due_trials(ctx, block.first_sample, block.n_samples)
        if self.phase == "done":
            return
        onset_if_now_s = ctx.time_s + block_s  # a trigger issued now lands at this block's end
        if self.contingency == "yoked":
            self._replay(ctx, onset_if_now_s, block_s)
            return
        if self.phase in ("pause", "stimulating") and (
            onset_if_now_s >= self.phase_until_s - block_s / 2
        ):
            self._start_cycle(ctx, onset_if_now_s, keep_schedule=False)
        if self.phase in ("pause", "done"):
            return
        if self.next_probe_s is None:
            self.next_probe_s = onset_if_now_s
        if onset_if_now_s < self.next_probe_s - block_s / 2:
            return
        self.next_probe_s += self.period_s
        if self.phase == "baseline" and self.baseline_issued >= self.baseline_stimuli:
            return  # waiting for the last baseline verdict
        if self.phase == "cycle" and self.probes_this_cycle >= self.give_up_stimuli:
            return  # waiting for the last verdict of a cycle about to fail
        self._probe(ctx, self._probe_is_real(), onset_if_now_s)

    def _probe_is_real(self) -> bool:
        if self.contingency == "none":
            return False
        if self.contingency == "start_on_output":
            return self.phase in ("baseline", "stimulating")
        return self.phase in ("baseline", "cycle")

    def _probe(self, ctx, real: bool, onset_s: float) -> None:
        onset = int(round(onset_s * self.fs))
        if real:
            record = ctx.stimulate(self.stimulus)
            self.stimuli_delivered += 1
            if math.isfinite(record.device_time_s):
                onset = int(round(record.device_time_s * self.fs))
        self.pending.append(Trial(self.phase, self.cycle, real, onset / self.fs, onset))
        if self.phase == "baseline":
            self.baseline_issued += 1
        elif self.phase == "cycle":
            self.probes_this_cycle += 1

    def _replay(self, ctx, onset_if_now_s: float, block_s: float) -> None:
        while self.schedule and self.schedule[0][0] <= onset_if_now_s + block_s / 2:
            planned_s, stimulus = self.schedule.pop(0)
            record = ctx.stimulate(stimulus)
            self.stimuli_delivered += 1
            t = record.device_time_s if math.isfinite(record.device_time_s) else onset_if_now_s
            phase, cycle = self._source_phase(planned_s)
            trial = Trial(phase, cycle, True, t, int(round(t * self.fs)))
            trial.confirmed = self.stim_index not in stimulus_electrode_indices(
                stimulus, ctx.electrodes
            )
            self.pending.append(trial)

    def _source_phase(self, t: float) -> tuple[str, int]:
        starts = self.source.get("cycle_starts", [])
        k = int(np.searchsorted(starts, t, side="right"))
        return ("baseline", 0) if k == 0 else ("cycle", k)

    # -- trials -----------------------------------------------------------------------------------
    def _collect(self, ctx) -> None:
        if not self.pending:
            self.buffer.clear()
            return
        oe, os_ = ctx.onsets()
        if oe.size:
            mine = os_[oe == self.stim_index]
            for trial in self.pending:
                if trial.confirmed or mine.size == 0:
                    continue
                near = mine[np.abs(mine - trial.onset_sample) <= 2 * ctx.block.n_samples]
                if near.size:
                    trial.onset_sample = int(near.min())
                    trial.confirmed = True
        e, s, _ = ctx.spikes()
        if e.size:
            self.buffer.append((e.copy(), s.copy()))

    def _finish_due_trials(self, ctx, first_sample: int, n_samples: int) -> None:
        while self.pending:
            trial = self.pending[0]
            # one block of grace: RHX may deliver a spike one block late
            if first_sample < trial.onset_sample + self.window_samples[1] + n_samples:
                return
            self.pending.pop(0)
            if self.buffer:
                e = np.concatenate([b[0] for b in self.buffer])
                s = np.concatenate([b[1] for b in self.buffer])
            else:
                e, s = np.zeros(0, np.int32), np.zeros(0, np.int64)
            trial.responses = window_responses(
                e,
                s,
                trial.onset_sample,
                self.window_samples,
                self.n_electrodes,
                self.response_spikes,
            )
            self.trials.append(trial)
            self._verdict(ctx, trial)
            if not self.pending:
                self.buffer.clear()
            else:  # drop spikes no pending trial needs any more
                keep = self.pending[0].onset_sample - 2 * n_samples
                self.buffer = [(be[bs >= keep], bs[bs >= keep]) for be, bs in self.buffer]

    def _verdict(self, ctx, trial: Trial) -> None:
        if trial.phase == "baseline":
            self.baseline_counts += trial.responses
            self.baseline_n += 1
            if self.contingency != "yoked" and self.baseline_n == self.baseline_stimuli:
                self._end_baseline(ctx)
            return
        if self.contingency == "yoked" or trial.phase != "cycle" or self.phase != "cycle":
            return
        self.cycle_responses.append(bool(trial.responses[self.response_index]))
        if criterion_met(self.cycle_responses, self.criterion_responses, self.criterion_window):
            self._end_cycle(ctx, trial, met=True)
        elif len(self.cycle_responses) >= self.give_up_stimuli:
            self._end_cycle(ctx, trial, met=False)

    def _end_baseline(self, ctx) -> None:
        ratios = self.baseline_counts / max(1, self.baseline_n)
        chosen = "given"
        if self.response_index < 0:
            pick = choose_response_electrode(ratios, self.criterion_ratio, {self.stim_index})
            if pick is None:
                self.baseline_ratio = None
                ctx.mark("baseline", ratios=ratios.tolist(), response_electrode=None)
                self._finish(
                    ctx,
                    "no electrode's baseline response ratio is below the criterion "
                    f"{self.criterion_responses}/{self.criterion_window}",
                )
                return
            self.response_index, chosen = pick, "auto"
        self.baseline_ratio = float(ratios[self.response_index])
        self.baseline_below = self.baseline_ratio < self.criterion_ratio
        ctx.mark(
            "baseline",
            response_electrode=ctx.electrodes[self.response_index],
            chosen=chosen,
            baseline_ratio=self.baseline_ratio,
            below_criterion=self.baseline_below,
            ratios=ratios.tolist(),
        )
        self._start_cycle(ctx, ctx.time_s, keep_schedule=True)

    def _start_cycle(self, ctx, t: float, keep_schedule: bool) -> None:
        if self.cycle >= self.cycles:
            self._finish(ctx, f"{self.cycles} cycles done")
            return
        self.cycle += 1
        self.phase = "cycle"
        if not keep_schedule:
            self.next_probe_s = t
        self.probes_this_cycle = 0
        self.cycle_responses = []
        ctx.mark("cycle_start", cycle=self.cycle)

    def _end_cycle(self, ctx, trial: Trial, met: bool) -> None:
        n = len(self.cycle_responses)
        first = next(
            (t.time_s for t in self.trials if t.phase == "cycle" and t.cycle == self.cycle),
            trial.time_s,
        )
        elapsed = trial.time_s + self.window_end_ms * 1e-3 - first
        self.results.append(
            {
                "cycle": self.cycle,
                "met": met,
                "stimuli": n if met else None,
                "time_s": elapsed if met else None,
                "probes": n,
                "responses": int(sum(self.cycle_responses)),
            }
        )
        ctx.mark("criterion" if met else "gave_up", cycle=self.cycle, stimuli=n, time_s=elapsed)
        self.pending.clear()
        self.buffer.clear()
        if self.cycle >= self.cycles:
            self._finish(ctx, f"{self.cycles} cycles done")
            return
        self.phase = "stimulating" if self.contingency == "start_on_output" else "pause"
        self.phase_until_s = ctx.time_s + self.pause_s
        self.next_probe_s = ctx.time_s

    def _finish(self, ctx, reason: str) -> None:
        self.phase = "done"
        self.stop_reason = reason
        ctx.mark("finished", reason=reason)
        ctx.stop(reason)

    # -- end ------------------------------------------------------------------------------------
    def _weight_metrics(self) -> dict[str, Any]:
        """Ground truth of the simulated culture at the start and the end (report only)."""
        if self.truth_start is None:
            return {}
        culture = self.culture
        hoods: dict[str, tuple] = {}
        stim = electrode_neurons(culture, self.stim_index, "stim")
        hoods["from_stim"] = (stim, None)
        if self.response_index >= 0:
            hoods["stim_resp"] = (stim, electrode_neurons(culture, self.response_index, "rec"))
        groups = {g: culture.group(g) for g in ("input", "output")}
        start = weight_metrics(self.truth_start, groups, hoods)
        end = weight_metrics(self.truth_end, groups, hoods)
        out: dict[str, Any] = {}
        for key in start:
            out[f"weight_{key}_start"] = start[key]
            out[f"weight_{key}_end"] = end[key]
        return out

    def _yoked_results(self) -> list[dict[str, Any]]:
        """Per replayed cycle: the stimuli until this culture's responses met the criterion."""
        by_cycle: dict[int, list[Trial]] = {}
        for t in self.trials:
            if t.phase == "cycle":
                by_cycle.setdefault(t.cycle, []).append(t)
        out = []
        for cycle, trials in sorted(by_cycle.items()):
            responses = [bool(t.responses[self.response_index]) for t in trials]
            k = stimuli_until_criterion(responses, self.criterion_responses, self.criterion_window)
            out.append(
                {
                    "cycle": cycle,
                    "met": k is not None,
                    "stimuli": k,
                    "time_s": None
                    if k is None
                    else trials[k - 1].time_s + self.window_end_ms * 1e-3 - trials[0].time_s,
                    "probes": len(trials),
                    "responses": int(sum(responses)),
                }
            )
        return out

    def teardown(self, ctx):
        if self.contingency == "yoked":
            if self.response_index < 0 and self.baseline_n:
                ratios = self.baseline_counts / self.baseline_n
                pick = choose_response_electrode(ratios, self.criterion_ratio, {self.stim_index})
                self.response_index = -1 if pick is None else pick
        if self.contingency == "yoked" and self.response_index >= 0:
            if self.baseline_ratio is None and self.baseline_n:
                self.baseline_ratio = float(
                    self.baseline_counts[self.response_index] / self.baseline_n
                )
                self.baseline_below = self.baseline_ratio < self.criterion_ratio
            self.results = self._yoked_results()
        if self.phase == "cycle" and self.contingency != "yoked" and self.cycle_responses:
            self.unfinished = {
                "cycle": self.cycle,
                "probes": len(self.cycle_responses),
                "responses": int(sum(self.cycle_responses)),
            }
        self.culture = ctx.ground_truth
        if self.culture is not None:
            self.truth_end = self.culture.ground_truth()
        if ctx.session_dir is not None:
            from rig.report import add_figure

            fig, caption = self._figure(ctx)
            add_figure(ctx.session_dir, "stimulus_avoidance_learning_curve", fig, caption)

    def _late_response_ratio(self) -> float | None:
        if self.response_index < 0:
            return None
        real = [t for t in self.trials if t.real and t.phase != "baseline"]
        if not real:
            return None
        late = real[-max(1, len(real) // 5) :]
        return float(np.mean([t.responses[self.response_index] for t in late]))

    def _figure(self, ctx):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 7))
        ax1, ax3, ax2 = fig.subplots(3, 1, sharex=True)
        cycles = [r["cycle"] for r in self.results]
        met = [r for r in self.results if r["met"]]
        failed = [r for r in self.results if not r["met"]]
        ax1.plot([r["cycle"] for r in met], [r["stimuli"] for r in met], "o-", label="met")
        if failed:
            ax1.plot(
                [r["cycle"] for r in failed],
                [r["probes"] for r in failed],
                "x",
                color="C3",
                label="not met (stimuli given)",
            )
        if self.unfinished:
            ax1.plot(
                [self.unfinished["cycle"]],
                [self.unfinished["probes"]],
                ">",
                color="0.4",
                label="running at the end (stimuli so far)",
            )
        ax1.set_ylabel("stimuli to criterion")
        ax1.xaxis.get_major_locator().set_params(integer=True)
        ax1.legend(loc="best", fontsize="small")
        ax3.plot([r["cycle"] for r in met], [r["time_s"] for r in met], "o-", color="C1")
        ax3.set_ylabel("time to criterion (s)")
        ratios = [r["responses"] / r["probes"] if r["probes"] else np.nan for r in self.results]
        ax2.plot(cycles, ratios, "s-", color="C2", label="responses / stimuli in the cycle")
        if self.baseline_ratio is not None:
            ax2.axhline(self.baseline_ratio, color="0.5", ls="--", label="baseline")
        ax2.axhline(self.criterion_ratio, color="C3", ls=":", label="criterion ratio")
        ax2.set_xlabel("cycle")
        ax2.set_ylabel("response ratio")
        ax2.legend(loc="upper right", fontsize="small")
        electrode = ctx.electrodes[self.response_index] if self.response_index >= 0 else "none"
        fig.suptitle(f"Shahaf & Marom, {self.contingency}: {self.stim_electrode} -> {electrode}")
        fig.tight_layout()
        caption = (
            f"Learning curve ({self.contingency}): stimuli needed per cycle to reach "
            f"{self.criterion_responses} responses in the last {self.criterion_window} "
            f"stimuli ({self.window_start_ms:g}-{self.window_end_ms:g} ms after the pulse, on "
            f"{electrode}); the time each met cycle took (first stimulus to the end of the "
            "response window that met the criterion); below, each cycle's response ratio "
            "(responses / stimuli) against the baseline "
            f"({self.baseline_ratio if self.baseline_ratio is not None else 'n/a'}) and the "
            "criterion ratio."
        )
        if not self.results:
            caption += " No cycle completed in this session."
        return fig, caption

    def metrics(self):
        stimuli = [r["stimuli"] for r in self.results]
        times = [r["time_s"] for r in self.results]
        finite = [x for x in stimuli if x is not None]
        probes = sum(r["probes"] for r in self.results)
        pooled = sum(r["responses"] for r in self.results) / probes if probes else None
        out: dict[str, Any] = {
            "contingency": self.contingency,
            "stim_electrode": self.stim_electrode,
            "response_electrode": None,
            "baseline_stimuli": self.baseline_n,
            "baseline_ratio": self.baseline_ratio,
            "baseline_below_criterion": self.baseline_below,
            "cycles": len(self.results),
            "cycles_met": sum(1 for r in self.results if r["met"]),
            "cycles_failed": sum(1 for r in self.results if not r["met"]),
            "stimuli_to_criterion": stimuli,
            "stimuli_per_cycle": [r["probes"] for r in self.results],
            "responses_per_cycle": [r["responses"] for r in self.results],
            "response_ratio_cycles": pooled,
            "time_to_criterion_s": times,
            "mean_stimuli_to_criterion": float(np.mean(finite)) if finite else None,
            "reaction_time_ratio": fifth_ratio(times),
            "response_ratio_late": self._late_response_ratio(),
            "stimuli_delivered": self.stimuli_delivered,
            "unfinished_cycle": self.unfinished,
            "stop_reason": self.stop_reason or None,
        }
        if self.response_index >= 0:
            out["response_electrode"] = self._electrode_names[self.response_index]
        out.update(self._weight_metrics())
        return out


def stimulus_electrode_indices(stimulus: MEAStimulus, electrodes: tuple[str, ...]) -> set[int]:
    return {electrodes.index(e) for e in stimulus.electrodes if e in electrodes}


def load_source(folder: Path) -> dict[str, Any]:
    """What a yoked run needs from the session it replays: every single-trigger stimulus
    (device time, stimulus) in the order delivered (rig/yoked.py), the device times of its
    cycle starts and its response electrode. Raises ConfigError naming the problem."""
    stimuli = load_pulses(folder)
    _, events = source_events(folder)
    cycle_starts: list[float] = []
    response = None
    for _, e in events:
        if e.get("type") == "protocol" and e.get("label") == "cycle_start":
            cycle_starts.append(float(e["device_time_s"]))
        elif e.get("type") == "protocol" and e.get("label") == "baseline":
            response = e.get("response_electrode")
    return {
        "stimuli": stimuli,
        "cycle_starts": sorted(cycle_starts),
        "response_electrode": response,
    }
