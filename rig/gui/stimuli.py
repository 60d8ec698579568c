"""Reading stimulus events (LiveSnapshot.stimuli) for display.

An event is what `ProtocolContext.stimulate` posts: {"frame", "host_time_s", "device_time_s",
"stimulus": record description}. For light stimuli the description is the validated
LightStimulus (targets_um, power_mw, pulse_ms, n_pulses, pulse_rate_hz) plus a summary; other
stimulators may describe themselves differently, so every field is optional here.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def onset_s(event: dict[str, Any]) -> float:
    """Onset on the device clock (the frames' clock), s."""
    return float(event.get("device_time_s", np.nan))


def duration_s(event: dict[str, Any]) -> float:
    """Train duration: (n_pulses - 1) / pulse_rate_hz + targets x pulse_ms, as LightStimulus
    defines it; 0 when the description does not say."""
    d = event.get("stimulus", {}) or {}
    try:
        n_targets = max(1, len(d.get("targets_um", ())))
        n_pulses = int(d.get("n_pulses", 1))
        rate_hz = float(d.get("pulse_rate_hz", 0.0))
        pulse_ms = float(d.get("pulse_ms", 0.0))
    except (TypeError, ValueError):
        return 0.0
    between = (n_pulses - 1) / rate_hz if rate_hz > 0 and n_pulses > 1 else 0.0
    return between + n_targets * pulse_ms / 1e3


def targets_um(event: dict[str, Any]) -> np.ndarray:
    """(n, 2) targets (x, y) um, empty if the stimulus has none."""
    d = event.get("stimulus", {}) or {}
    try:
        return np.asarray(d.get("targets_um", []), dtype=float).reshape(-1, 2)
    except ValueError:
        return np.zeros((0, 2))


def summary(event: dict[str, Any]) -> str:
    d = event.get("stimulus", {}) or {}
    return str(d.get("summary") or d.get("kind") or "stimulus")
