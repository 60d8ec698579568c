"""Yoked control: deliver another session's stimuli at the same times, whatever happens now.

A closed-loop effect means something only against a control that receives the same stimuli
without the contingency (Bakkum, Chao & Potter 2008: replaying the stimuli open loop produced
no learning; science.md section 6). `yoked_from` names a session folder - a closed-loop run,
or a replay of one (`rig replay ... --protocol P`); its stimuli (events.jsonl: device time and
the stimulus as the stimulator validated it) are delivered again, identical, at the same
device times counted from the start of acquisition, plus `time_offset_s`.

Timing: a stimulus issued while frame i is processed starts when frame i has been acquired
(the end of frame i on the device clock, as in the session it came from). Stimulus k is
therefore issued on the first frame whose end is no earlier than half a frame before its
time, which puts its onset within half a frame of the original. Stimuli after the end of this
session are not delivered and are counted in the metrics. Targets are positions (light:
(x, y) um in the field) or electrode names (MEA), not ROI numbers: the control gets light at
the same places, whichever cells are there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drivers.stimulation.light import LightStimulus
from rig.config import ConfigError
from rig.protocol import Param, Protocol
from rig.session import SessionStreamError, read_stimuli


def stimulus_from_description(description: dict[str, Any], where: str) -> Any:
    """Rebuild the stimulus object a stimulator delivered from its recorded description."""
    kind = description.get("kind")
    try:
        if kind == "light":
            return LightStimulus(
                targets_um=tuple((float(x), float(y)) for x, y in description["targets_um"]),
                power_mw=float(description["power_mw"]),
                pulse_ms=float(description["pulse_ms"]),
                n_pulses=int(description["n_pulses"]),
                pulse_rate_hz=float(description["pulse_rate_hz"]),
            )
        if kind == "mea":
            from drivers.mea.stimulus import MEAStimulus

            return MEAStimulus.from_dict(description)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: the recorded {kind} stimulus is incomplete ({e!r})") from e
    raise ConfigError(f"{where}: stimulus kind {kind!r} cannot be replayed (light or mea)")


class YokedReplay(Protocol):
    name = "yoked_replay"

    yoked_from = Param("", help="session folder whose stimuli are delivered again")
    time_offset_s = Param(
        0.0, unit="s", min=-3600.0, max=3600.0, help="added to every recorded stimulus time"
    )

    def check(self):
        self._schedule: list[tuple[float, Any]] | None = None
        if self.yoked_from:  # an empty default is refused when the run starts (setup)
            self._schedule = self._load_schedule()

    def _load_schedule(self) -> list[tuple[float, Any]]:
        folder = Path(self.yoked_from)
        if not folder.is_dir():
            raise ConfigError(
                f"protocol parameter 'yoked_from' = {self.yoked_from!r} is not a folder"
            )
        try:
            recorded = read_stimuli(folder)
        except (FileNotFoundError, SessionStreamError) as e:
            raise ConfigError(f"protocol parameter 'yoked_from': {e}") from e
        return [
            (
                float(e["device_time_s"]) + self.time_offset_s,
                stimulus_from_description(e["stimulus"], f"{folder} stimulus {k}"),
            )
            for k, e in enumerate(recorded)
        ]

    def setup(self, ctx):
        if self._schedule is None:
            raise ConfigError(
                "protocol parameter 'yoked_from' is empty: name the session folder whose "
                "stimuli to replay (--set protocol.yoked_from=sessions/...)"
            )
        self.next_index = 0
        self.timing_errors_s: list[float] = []

    def on_frame(self, ctx):
        period = 1.0 / ctx.frame_rate_hz
        onset_if_now = ctx.time_s + period  # a stimulus issued now starts at this frame's end
        while (
            self.next_index < len(self._schedule)
            and self._schedule[self.next_index][0] <= onset_if_now + period / 2
        ):
            planned_s, stimulus = self._schedule[self.next_index]
            record = ctx.stimulate(stimulus)
            self.timing_errors_s.append(record.device_time_s - planned_s)
            self.next_index += 1

    def metrics(self):
        errors = [abs(e) for e in self.timing_errors_s]
        return {
            "planned": len(self._schedule or []),
            "delivered": self.next_index,
            "not_reached": len(self._schedule or []) - self.next_index,
            "max_abs_timing_error_s": max(errors) if errors else None,
            "yoked_from": str(self.yoked_from),
        }
