"""Pong in a dish (Kagan et al. 2022, "DishBrain"): the culture plays a ball-and-paddle game.

The game is simulated here, advanced by one spike block (4.3 ms) per call. The field is
[0, 1] x [0, 1]; the paddle (length `paddle_length`) moves along the left edge (x = 0), the
ball (speed `ball_speed` field widths per s) bounces off the other three walls. Reaching
x = 0 within the paddle is a hit (the ball leaves at a random angle up to `max_angle_deg`);
otherwise a miss: the rally ends, the game rests `miss_pause_s` (in every condition, so
the conditions differ only in the stimuli), and the ball restarts from the far wall at a
random height and angle. Rally length = hits before the miss.

Coding (science.md section 6):
- sensory, place: the ball's height picks one of the `sensory_electrodes` (first = bottom);
- sensory, rate: pulses on it at `rate_min_hz` (ball at the far wall) to `rate_max_hz` (ball
  at the paddle), linear in the distance, software-timed at the block rate;
- motor: every `decode_window_ms` the spikes on the `up_electrodes` and `down_electrodes`
  are counted; the paddle moves `paddle_speed` x window towards the larger count (no move on
  a tie);
- predictable feedback: `predictable_rate_hz` for `predictable_s` on all sensory electrodes
  at once (the sensory pulse: RHX holds one parameter set per electrode, so its amplitude is
  the sensory one; software-timed, each pulse within one block of its planned time);
  sensory coding pauses for the feedback's duration after every hit in every condition;
- unpredictable feedback: a hardware train of `unpredictable_rate_hz` for `unpredictable_s`
  (amplitude `unpredictable_ua`) on one of `random_sets` sets of `random_set_size`
  electrodes drawn at random (seed `feedback_seed`, without overlap: one parameter set per
  electrode) from those neither sensory nor motor; which set fires is drawn at every miss.
The commonly cited voltages (75 mV predictable, 150 mV unpredictable) are unverified; the
amplitudes here are currents (uA) and parameters, with the same 1:2 ratio by default.
Stimuli must fit the stimulator's trigger slots: len(sensory_electrodes) + random_sets <= 8
on the simulated RHX (F1-F8; digital input lines add up to 16).

`contingency` (the issue's names):
- `stop_on_output`  the closed loop, "feedback": predictable on a hit, unpredictable on a
                    miss;
- `start_on_output` the inverse: unpredictable on a hit, predictable on a miss;
- `yoked`           every stimulus of the session `yoked_from` (sensory and feedback) replayed
                    at its device time, open loop; the game still runs on this culture's motor
                    decoding for the metrics, but its ball is never shown to the culture;
- `none`            no feedback (sensory coding only); with `sensory_stimulation = false` as
                    well it is Kagan's "rest": no stimulation at all, the paddle moved by
                    spontaneous activity.

Metrics: rally lengths, `mean_rally_length` (hits per completed rally), `aces` (rallies
without a hit), `long_rallies` (>= 3 hits), their fractions, `hit_fraction`,
`rally_length_ratio` (mean of the last fifth of rallies over the first fifth), the fraction of
paddle moves that went up (a decoder bias shows here), and from the simulated culture's
ground truth (report only): `weight_in_out_start/end` when the preset has input and output
groups, and `weight_sensory_motor_start/end`, the mean weight of the synapses from the neurons
at the sensory electrodes to those at the motor electrodes (within half-effect distance).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from drivers.errors import LimitError
from drivers.mea.stimulus import MEAStimulus, Pulse
from rig.config import ConfigError
from rig.culture_truth import electrode_neurons, weight_metrics
from rig.protocol import Param, Protocol
from rig.yoked import load_pulses, yoked_source

CONTINGENCIES = ("stop_on_output", "start_on_output", "yoked", "none")
UP_DEFAULT = "B-005,B-006,B-007,B-013,B-014,B-015,B-021,B-022,B-023,B-029,B-030,B-031"
DOWN_DEFAULT = "A-005,A-006,A-007,A-013,A-014,A-015,A-021,A-022,A-023,A-029,A-030,A-031"


# -- the game and the codes (pure, tested directly) ------------------------------------------------


def place_index(y: float, n_places: int) -> int:
    """Which of n sensory electrodes codes height y in [0, 1] (0 = bottom electrode)."""
    return min(n_places - 1, max(0, int(y * n_places)))


def sensory_rate_hz(x: float, rate_min_hz: float, rate_max_hz: float) -> float:
    """Rate code of the ball's distance from the paddle: rate_max at x = 0, rate_min at 1."""
    d = min(1.0, max(0.0, x))
    return rate_max_hz + (rate_min_hz - rate_max_hz) * d


def decode_motor(up_count: int, down_count: int) -> int:
    """+1 (up) when the up region fired more, -1 (down) when the down region did, 0 on a tie."""
    return (up_count > down_count) - (up_count < down_count)


def rally_metrics(rally_lengths: list[int]) -> dict[str, Any]:
    """Kagan et al.'s measures over completed rallies: mean hits per rally, aces (a miss
    without a hit), long rallies (>= 3 hits)."""
    r = np.asarray(rally_lengths, int)
    n = int(r.size)
    out: dict[str, Any] = {
        "rallies": n,
        "mean_rally_length": float(r.mean()) if n else None,
        "aces": int((r == 0).sum()),
        "long_rallies": int((r >= 3).sum()),
        "ace_fraction": float((r == 0).mean()) if n else None,
        "long_rally_fraction": float((r >= 3).mean()) if n else None,
        "rally_length_ratio": None,
    }
    if n >= 5:
        fifth = max(1, n // 5)
        first, last = r[:fifth].mean(), r[-fifth:].mean()
        out["rally_length_ratio"] = float(last / first) if first > 0 else None
    return out


class PongGame:
    """Ball and paddle on [0, 1]^2, paddle on the left edge (see the module docstring)."""

    def __init__(
        self,
        rng: np.random.Generator,
        ball_speed: float,
        paddle_length: float,
        max_angle_deg: float,
    ) -> None:
        self.rng = rng
        self.speed = ball_speed
        self.half = paddle_length / 2
        self.max_angle = math.radians(max_angle_deg)
        self.paddle_y = 0.5
        self.x = self.y = self.vx = self.vy = 0.0
        self.reset()

    def _angle(self) -> float:
        return float(self.rng.uniform(-self.max_angle, self.max_angle))

    def reset(self) -> None:
        """The ball starts at the far wall, random height, heading for the paddle."""
        a = self._angle()
        self.x, self.y = 1.0, float(self.rng.uniform(0.0, 1.0))
        self.vx, self.vy = -self.speed * math.cos(a), self.speed * math.sin(a)

    def move_paddle(self, dy: float) -> None:
        self.paddle_y = min(1.0 - self.half, max(self.half, self.paddle_y + dy))

    def step(self, dt_s: float) -> str:
        """Advance the ball by dt; returns "hit", "miss" or ""."""
        self.x += self.vx * dt_s
        self.y += self.vy * dt_s
        if self.y < 0.0:
            self.y, self.vy = -self.y, -self.vy
        elif self.y > 1.0:
            self.y, self.vy = 2.0 - self.y, -self.vy
        if self.x > 1.0:
            self.x, self.vx = 2.0 - self.x, -self.vx
        if self.x > 0.0:
            return ""
        if abs(self.y - self.paddle_y) <= self.half:
            a = self._angle()
            self.x = -self.x
            self.vx, self.vy = self.speed * math.cos(a), self.speed * math.sin(a)
            return "hit"
        return "miss"


def split_names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


class Pong(Protocol):
    name = "pong"

    contingency = Param("stop_on_output", choices=CONTINGENCIES)
    yoked_from = Param("", help="session folder whose stimuli a yoked run replays")
    sensory_stimulation = Param(True, help="false with contingency none: Kagan's 'rest'")
    sensory_electrodes = Param(
        "A-017,A-025,B-001,B-009", help="place code, bottom to top (comma-separated)"
    )
    up_electrodes = Param(UP_DEFAULT, help="motor region 'up' (comma-separated)")
    down_electrodes = Param(DOWN_DEFAULT, help="motor region 'down' (comma-separated)")
    sensory_ua = Param(10.0, unit="uA", min=0.0, max=2550.0, help="sensory/predictable pulse")
    phase_us = Param(200.0, unit="us", min=10.0, max=5000.0, help="duration of each phase")
    rate_min_hz = Param(4.0, unit="Hz", min=0.1, max=200.0, help="sensory rate, ball far")
    rate_max_hz = Param(40.0, unit="Hz", min=0.1, max=200.0, help="sensory rate, ball near")
    predictable_rate_hz = Param(100.0, unit="Hz", min=1.0, max=200.0, help="predictable pulses")
    predictable_s = Param(0.1, unit="s", min=0.0, max=10.0, help="predictable duration")
    unpredictable_ua = Param(20.0, unit="uA", min=0.0, max=2550.0, help="unpredictable pulse")
    unpredictable_rate_hz = Param(5.0, unit="Hz", min=1.0, max=1000.0, help="its pulse rate")
    unpredictable_s = Param(4.0, unit="s", min=0.001, max=60.0, help="its duration")
    random_sets = Param(4, min=1, max=24, help="pre-programmed random electrode sets")
    random_set_size = Param(4, min=1, max=64, help="electrodes per random set")
    miss_pause_s = Param(4.0, unit="s", min=0.0, max=60.0, help="rest after a miss (all)")
    ball_speed = Param(0.5, unit="field/s", min=0.01, max=10.0, help="field widths per s")
    paddle_length = Param(0.25, unit="field", min=0.01, max=1.0, help="fraction of the height")
    paddle_speed = Param(1.0, unit="field/s", min=0.0, max=100.0, help="heights per s moving")
    max_angle_deg = Param(45.0, unit="deg", min=0.0, max=80.0, help="ball angle off horizontal")
    decode_window_ms = Param(
        20.0, unit="ms", min=1.0, max=10000.0, help="motor counts compared per window"
    )
    game_seed = Param(0, min=0, max=2**31 - 1, help="seed of the ball's starts and angles")
    feedback_seed = Param(0, min=0, max=2**31 - 1, help="seed of the random electrode sets")

    def check(self):
        if self.rate_max_hz < self.rate_min_hz:
            raise ConfigError("protocol parameters: rate_max_hz must be >= rate_min_hz")
        groups = {
            "sensory_electrodes": split_names(self.sensory_electrodes),
            "up_electrodes": split_names(self.up_electrodes),
            "down_electrodes": split_names(self.down_electrodes),
        }
        for key, names in groups.items():
            if not names:
                raise ConfigError(f"protocol parameter '{key}' names no electrode")
            if len(set(names)) != len(names):
                raise ConfigError(f"protocol parameter '{key}' names an electrode twice")
        seen: dict[str, str] = {}
        for key, names in groups.items():
            for n in names:
                if n in seen:
                    raise ConfigError(
                        f"electrode {n!r} is in both '{seen[n]}' and '{key}': sensory, up and "
                        "down electrodes must be different"
                    )
                seen[n] = key
        try:
            self.pulse = Pulse(self.sensory_ua, self.phase_us)
            self.strong_pulse = Pulse(self.unpredictable_ua, self.phase_us)
        except LimitError as e:
            raise ConfigError(f"protocol parameters sensory_ua / unpredictable_ua: {e}") from e
        self.n_unpredictable = max(1, int(round(self.unpredictable_s * self.unpredictable_rate_hz)))
        self.source: list[tuple[float, MEAStimulus]] = []
        source = yoked_source(self.contingency, self.yoked_from)
        if source is not None:
            self.source = load_pulses(source)

    # -- setup --------------------------------------------------------------------------------
    def setup(self, ctx):
        electrodes = ctx.electrodes
        self.sensory = split_names(self.sensory_electrodes)
        up, down = split_names(self.up_electrodes), split_names(self.down_electrodes)
        for name in self.sensory + up + down:
            if name not in electrodes:
                raise ConfigError(
                    f"electrode {name!r} is not recorded by this rig ({len(electrodes)} "
                    f"electrodes: {', '.join(electrodes[:4])} ...)"
                )
        self.fs = ctx.sample_rate_hz
        n = len(electrodes)
        self.sensory_index = [electrodes.index(e) for e in self.sensory]
        self.up_index = [electrodes.index(e) for e in up]
        self.down_index = [electrodes.index(e) for e in down]
        self.is_up = np.zeros(n, bool)
        self.is_up[self.up_index] = True
        self.is_down = np.zeros(n, bool)
        self.is_down[self.down_index] = True
        self.game = PongGame(
            np.random.default_rng(self.game_seed),
            self.ball_speed,
            self.paddle_length,
            self.max_angle_deg,
        )
        self.feedback_rng = np.random.default_rng(self.feedback_seed)
        pool = [e for e in electrodes if e not in set(self.sensory + up + down)]
        need = self.random_sets * self.random_set_size
        if len(pool) < need:
            raise ConfigError(
                f"random_sets x random_set_size = {need} electrodes exceed the {len(pool)} "
                "that are neither sensory nor motor (the sets must not overlap: each electrode "
                "holds one stimulation parameter set)"
            )
        self.sensory_stimuli = [
            MEAStimulus.on(e, self.pulse, label=f"sensory {k}") for k, e in enumerate(self.sensory)
        ]
        order = self.feedback_rng.permutation(len(pool))
        self.random_stimuli = []
        for k in range(self.random_sets):
            chunk = order[k * self.random_set_size : (k + 1) * self.random_set_size]
            self.random_stimuli.append(
                MEAStimulus.on(
                    [pool[i] for i in sorted(chunk)],
                    self.strong_pulse,
                    self.n_unpredictable,
                    self.unpredictable_rate_hz,
                    label=f"unpredictable {k}",
                )
            )
        if self.contingency == "yoked":
            unique = list(dict.fromkeys(s for _, s in self.source))
            ctx.prepare_stimuli(unique)
            self.schedule = list(self.source)
        else:
            self.schedule = []
            stimuli = list(self.sensory_stimuli) if self._sensory_on else []
            if self.contingency != "none":
                stimuli = self.sensory_stimuli + self.random_stimuli
            if stimuli:
                ctx.prepare_stimuli(stimuli)
        # state
        self.window_blocks = 0
        self.blocks_in_window = 0
        self.up_count = self.down_count = 0
        self.moves_up = self.moves_down = 0
        self.sensory_phase = 0.0
        self.resting = False  # the game rests after a miss until rest_until_s
        self.rest_until_s = 0.0
        self.quiet_until_s = 0.0  # sensory coding paused during predictable feedback
        self.predictable_due: list[float] = []
        self.hits_in_rally = 0
        self.rallies: list[tuple[float, int]] = []  # (end time s, hits)
        self.hits = self.misses = 0
        self.sensory_pulses = self.predictable_pulses = 0
        self.predictable_feedbacks = self.unpredictable_feedbacks = 0
        self.stimuli_delivered = 0
        self.trace: list[tuple[float, float, float, float]] = []  # t, ball x, ball y, paddle
        culture = self.culture = ctx.ground_truth
        self.truth_start = culture.ground_truth() if culture is not None else None
        self.truth_end = self.truth_start

    @property
    def _sensory_on(self) -> bool:
        return self.sensory_stimulation and self.contingency != "yoked"

    # -- every block ----------------------------------------------------------------------------
    def on_spikes(self, ctx):
        block = ctx.block
        block_s = block.n_samples / self.fs
        t = ctx.time_s
        onset_if_now_s = t + block_s  # a trigger issued now lands at the end of this block
        self._decode(ctx, block_s)
        if self.contingency == "yoked":
            while self.schedule and self.schedule[0][0] <= onset_if_now_s + block_s / 2:
                _, stimulus = self.schedule.pop(0)
                self._stimulate(ctx, stimulus)
        self._predictable(ctx, onset_if_now_s, block_s)
        if self.resting:
            if t < self.rest_until_s:
                return
            self.resting = False
            self.game.reset()
            self.sensory_phase = 0.0
        outcome = self.game.step(block_s)
        if outcome == "hit":
            self.hits += 1
            self.hits_in_rally += 1
            ctx.mark("hit", rally_hits=self.hits_in_rally)
            self._feedback(ctx, "predictable" if self._normal else "unpredictable", onset_if_now_s)
            self.quiet_until_s = t + self.predictable_s
        elif outcome == "miss":
            self.misses += 1
            self.rallies.append((t, self.hits_in_rally))
            ctx.mark("miss", rally_hits=self.hits_in_rally)
            self.hits_in_rally = 0
            self._feedback(ctx, "unpredictable" if self._normal else "predictable", onset_if_now_s)
            self.resting = True
            self.rest_until_s = t + self.miss_pause_s
            return
        if len(self.trace) < 200_000 and block.index % 8 == 0:
            self.trace.append((t, self.game.x, self.game.y, self.game.paddle_y))
        self._sensory(ctx, block_s)

    @property
    def _normal(self) -> bool:
        return self.contingency == "stop_on_output"

    def _decode(self, ctx, block_s: float) -> None:
        if self.window_blocks == 0:
            self.window_blocks = max(1, int(round(self.decode_window_ms * 1e-3 / block_s)))
        e, _, _ = ctx.spikes()
        if e.size:
            self.up_count += int(self.is_up[e].sum())
            self.down_count += int(self.is_down[e].sum())
        self.blocks_in_window += 1
        if self.blocks_in_window < self.window_blocks:
            return
        move = decode_motor(self.up_count, self.down_count)
        self.game.move_paddle(move * self.paddle_speed * self.window_blocks * block_s)
        self.moves_up += move > 0
        self.moves_down += move < 0
        self.blocks_in_window = self.up_count = self.down_count = 0

    def _sensory(self, ctx, block_s: float) -> None:
        if not self._sensory_on or ctx.time_s < self.quiet_until_s:
            return
        g = self.game
        self.sensory_phase += sensory_rate_hz(g.x, self.rate_min_hz, self.rate_max_hz) * block_s
        if self.sensory_phase >= 1.0:
            self.sensory_phase = min(self.sensory_phase - 1.0, 1.0)
            k = place_index(g.y, len(self.sensory_stimuli))
            self._stimulate(ctx, self.sensory_stimuli[k])
            self.sensory_pulses += 1

    def _feedback(self, ctx, kind: str, onset_if_now_s: float) -> None:
        """Feedback starting now: its first pulse lands at the end of this block."""
        if self.contingency in ("none", "yoked"):
            return
        if kind == "predictable":
            n = max(1, int(round(self.predictable_s * self.predictable_rate_hz)))
            period = 1.0 / self.predictable_rate_hz
            self.predictable_due = [onset_if_now_s + k * period for k in range(n)]
            self.predictable_feedbacks += 1
            self._predictable(ctx, onset_if_now_s, 0.0)
        else:
            k = int(self.feedback_rng.integers(len(self.random_stimuli)))
            self._stimulate(ctx, self.random_stimuli[k])
            self.unpredictable_feedbacks += 1

    def _predictable(self, ctx, onset_if_now_s: float, block_s: float) -> None:
        if not self.predictable_due or self.predictable_due[0] > onset_if_now_s + block_s / 2:
            return
        while self.predictable_due and self.predictable_due[0] <= onset_if_now_s + block_s / 2:
            self.predictable_due.pop(0)
        for stimulus in self.sensory_stimuli:
            self._stimulate(ctx, stimulus)
        self.predictable_pulses += 1

    def _stimulate(self, ctx, stimulus: MEAStimulus) -> None:
        ctx.stimulate(stimulus)
        self.stimuli_delivered += 1

    # -- end ------------------------------------------------------------------------------------
    def _weight_metrics(self) -> dict[str, Any]:
        """Ground truth of the simulated culture at the start and the end (report only)."""
        if self.truth_start is None:
            return {}
        culture = self.culture
        sensory = np.unique(
            np.concatenate([electrode_neurons(culture, e, "stim") for e in self.sensory_index])
        )
        motor = np.unique(
            np.concatenate(
                [electrode_neurons(culture, e, "rec") for e in self.up_index + self.down_index]
            )
        )
        hoods = {"from_sensory": (sensory, None), "sensory_motor": (sensory, motor)}
        groups = {g: culture.group(g) for g in ("input", "output")}
        start = weight_metrics(self.truth_start, groups, hoods)
        end = weight_metrics(self.truth_end, groups, hoods)
        out: dict[str, Any] = {}
        for key in start:
            out[f"weight_{key}_start"] = start[key]
            out[f"weight_{key}_end"] = end[key]
        return out

    def teardown(self, ctx):
        if self.culture is not None:
            self.truth_end = self.culture.ground_truth()
        if ctx.session_dir is not None:
            from rig.report import add_figure

            fig, caption = self._figure()
            add_figure(ctx.session_dir, "pong_rallies", fig, caption)

    def _figure(self):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 5.5))
        ax1, ax2 = fig.subplots(2, 1, gridspec_kw={"height_ratios": [2, 1]})
        if self.rallies:
            t = np.array([r[0] for r in self.rallies])
            n = np.array([r[1] for r in self.rallies])
            ax1.plot(t, n, "o", ms=4, label="rally length (hits)")
            ax1.plot(t[n == 0], n[n == 0], "x", color="C3", label="ace")
            k = min(5, n.size)
            running = np.convolve(n, np.ones(k) / k, mode="valid")
            ax1.plot(t[k - 1 :], running, "-", color="C1", label=f"mean of {k} rallies")
            ax1.axhline(3, color="0.6", ls=":", lw=1)
            ax1.legend(loc="upper left", fontsize="small")
        else:
            ax1.text(0.5, 0.5, "no completed rally", ha="center", transform=ax1.transAxes)
        ax1.set_xlabel("time (s)")
        ax1.set_ylabel("hits per rally")
        ax1.set_title(f"Pong, {self.contingency}" + ("" if self.sensory_stimulation else ", rest"))
        if self.trace:
            tr = np.array(self.trace)
            tr = tr[tr[:, 0] >= tr[-1, 0] - 30.0]
            ax2.plot(tr[:, 0], tr[:, 2], lw=0.8, label="ball height")
            ax2.plot(tr[:, 0], tr[:, 3], lw=1.2, label="paddle centre")
            ax2.set_ylim(0, 1)
            ax2.legend(loc="upper left", fontsize="small")
        ax2.set_xlabel("time (s), last 30 s")
        fig.tight_layout()
        m = rally_metrics([r[1] for r in self.rallies])
        caption = (
            f"Rally lengths over the session ({self.contingency}): {m['rallies']} rallies, "
            f"mean {_fmt(m['mean_rally_length'])} hits, {m['aces']} aces, "
            f"{m['long_rallies']} long rallies (>= 3 hits); below, ball and paddle height over "
            "the last 30 s."
        )
        return fig, caption

    def metrics(self):
        out = rally_metrics([r[1] for r in self.rallies])
        moves = self.moves_up + self.moves_down
        out.update(
            {
                "contingency": self.contingency,
                "sensory_stimulation": self.sensory_stimulation,
                "rally_lengths": [r[1] for r in self.rallies],
                "hits": self.hits,
                "misses": self.misses,
                "hit_fraction": self.hits / (self.hits + self.misses)
                if self.hits + self.misses
                else None,
                "sensory_pulses": self.sensory_pulses,
                "predictable_feedbacks": self.predictable_feedbacks,
                "unpredictable_feedbacks": self.unpredictable_feedbacks,
                "stimuli_delivered": self.stimuli_delivered,
                "paddle_up_fraction": self.moves_up / moves if moves else None,
            }
        )
        out.update(self._weight_metrics())
        return out


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2f}"
