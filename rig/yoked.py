"""What a yoked control replays: the stimulation of the session named by `yoked_from`.

A yoked control (science.md section 6: Bakkum, Chao & Potter 2008; every closed loop needs
one) delivers the stimulation another session delivered, at the same device times, open loop:
not contingent on the activity of the culture it now acts on. The MEA protocols (lsa,
stimulus_avoidance, pong) read that schedule from the source session's events.jsonl (the
append-only record, so a session that crashed can be replayed up to its torn last line):

- `load_pulses`: every single-trigger stimulus as (device time s, MEAStimulus);
- `load_held_changes`: the on/off times of held stimulation (a train held while on);
- `source_events`: the parsed events, for anything else a protocol needs (cycle marks).

A stimulus whose device time runs backwards is not replayed: a trigger sent after the source
session's acquisition had stopped restarts the RHX clock. Problems raise ConfigError naming
the protocol parameter, the file and the line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from drivers.mea.stimulus import MEAStimulus
from rig.config import ConfigError


def yoked_source(contingency: str, yoked_from: str) -> Path | None:
    """The session a yoked protocol replays (None for other contingencies); ConfigError
    before anything runs when `contingency = "yoked"` names none."""
    if contingency != "yoked":
        return None
    if not yoked_from:
        raise ConfigError(
            "protocol parameter 'yoked_from' must name the session to replay "
            "when contingency = 'yoked'"
        )
    return Path(yoked_from)


def source_events(folder: str | os.PathLike[str]) -> tuple[Path, list[tuple[int, dict[str, Any]]]]:
    """(path of events.jsonl, [(line number from 1, event)]) of the session `folder`; lines
    that are not JSON objects (a torn last line of a crashed session) are skipped."""
    path = Path(folder) / "events.jsonl"
    if not path.is_file():
        raise ConfigError(f"protocol parameter 'yoked_from': {path} does not exist")
    events = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append((number, event))
    return path, events


def load_pulses(folder: str | os.PathLike[str]) -> list[tuple[float, MEAStimulus]]:
    """Every single-trigger stimulus of the session as (device time s, stimulus), in the
    order delivered (see the module docstring for the clock rule)."""
    path, events = source_events(folder)
    out: list[tuple[float, MEAStimulus]] = []
    for number, e in events:
        if e.get("type") != "stimulus" or e.get("action") != "pulse":
            continue
        try:
            t = float(e["device_time_s"])
            if out and t < out[-1][0]:
                continue  # the device clock restarted (a trigger after acquisition ended)
            out.append((t, MEAStimulus.from_dict(e["stimulus"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"yoked_from: {path} line {number}: the stimulus cannot be replayed ({exc!r})"
            ) from exc
    if not out:
        raise ConfigError(f"yoked_from: {path} holds no single-trigger stimuli to replay")
    return out


def load_held_changes(folder: str | os.PathLike[str]) -> list[tuple[float, str]]:
    """The on/off changes of held stimulation as (device time s, "start" or "stop"), sorted by
    time (at the same time, a start before a stop)."""
    path, events = source_events(folder)
    changes: list[tuple[float, str]] = []
    for number, e in events:
        if e.get("type") not in ("stimulus", "stimulus_stop"):
            continue
        if e.get("action") not in ("start", "stop"):
            continue
        try:
            changes.append((float(e["device_time_s"]), e["action"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"yoked_from: {path} line {number}: the stimulation change has no device "
                f"time ({exc!r})"
            ) from exc
    if not changes:
        raise ConfigError(f"yoked_from: {path} holds no held-stimulation start/stop events")
    return sorted(changes)
