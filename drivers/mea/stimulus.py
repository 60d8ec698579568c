"""Electrical stimuli for MEAs: pulses, trains, electrode sets, and the rules they must obey.

A `Pulse` is one current pulse, phases in time order (Intan RHS conventions, hardware.md
section 4):

    biphasic   first phase (A1 for D1), optional interphase gap, second phase (A2 for D2) of
               opposite sign;                    charge balanced when A1 D1 = A2 D2
    triphasic  A1 for D1, A2 for D2 (opposite sign), A1 for D1 again (no gap);
                                                 charge balanced when 2 A1 D1 = A2 D2

Amplitudes are magnitudes in uA (the sign follows from `cathodic_first`: the usual
negative-first pulse depolarises the neurons near the electrode first); durations in us.
Charge per phase in nC = uA x us / 1000. Unbalanced pulses leave net charge on the electrode
(electrolysis, tissue and electrode damage): they are refused unless the stimulus says
`allow_unbalanced=True` (a protocol has to ask for it explicitly).

A `PulseTrain` repeats a pulse `n_pulses` times at `rate_hz`; an `MEAStimulus` delivers one
train on each of one or more electrode sets at the same trigger. `validate_stimulus`
checks a stimulus against a device's `StimulatorCapabilities` (electrodes, amplitude and
its step, phase durations and the device's time grid, pulse count, rate, charge per phase,
charge balance) *before anything is sent* and returns it quantised to the device grid: what
the device will really deliver. Every refusal is a LimitError naming the field, the value
and the allowed range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from drivers.errors import LimitError

SHAPES = ("biphasic", "triphasic")

BALANCE_TOLERANCE_NC = 1e-9
"""Net charge per pulse below this counts as balanced (float rounding, not physics)."""


def _finite_positive(name: str, value: Any, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LimitError(f"{name} = {value!r} must be a finite number of {unit}")
    if value <= 0:
        raise LimitError(f"{name} = {value:g} {unit} must be > 0")
    return float(value)


@dataclass(frozen=True)
class Pulse:
    """One current pulse (see the module docstring). `second_phase_ua` None means "the
    amplitude that balances the charge"; `second_phase_us` None means "as long as the first
    phase"."""

    first_phase_ua: float
    first_phase_us: float
    second_phase_ua: float | None = None
    second_phase_us: float | None = None
    interphase_us: float = 0.0
    shape: str = "biphasic"
    cathodic_first: bool = True

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise LimitError(f"shape = {self.shape!r} must be one of {', '.join(SHAPES)}")
        a1 = _finite_positive("first_phase_ua", self.first_phase_ua, "uA")
        d1 = _finite_positive("first_phase_us", self.first_phase_us, "us")
        d2 = self.second_phase_us if self.second_phase_us is not None else d1
        d2 = _finite_positive("second_phase_us", d2, "us")
        if self.second_phase_ua is None:
            phases_of_first = 2.0 if self.shape == "triphasic" else 1.0
            a2 = phases_of_first * a1 * d1 / d2
        else:
            a2 = _finite_positive("second_phase_ua", self.second_phase_ua, "uA")
        gap = self.interphase_us
        if (
            isinstance(gap, bool)
            or not isinstance(gap, (int, float))
            or not math.isfinite(gap)
            or gap < 0
        ):
            raise LimitError(f"interphase_us = {gap!r} must be a finite number of us >= 0")
        if self.shape == "triphasic" and gap > 0:
            raise LimitError(
                f"interphase_us = {gap:g} us: triphasic pulses have no interphase "
                "gap; use shape='biphasic' or interphase_us=0"
            )
        object.__setattr__(self, "first_phase_ua", a1)
        object.__setattr__(self, "first_phase_us", d1)
        object.__setattr__(self, "second_phase_ua", float(a2))
        object.__setattr__(self, "second_phase_us", float(d2))
        object.__setattr__(self, "interphase_us", float(gap))
        if not isinstance(self.cathodic_first, bool):
            raise LimitError(f"cathodic_first = {self.cathodic_first!r} must be True or False")

    # -- physics ----------------------------------------------------------------------------
    @property
    def phases(self) -> tuple[tuple[float, float], ...]:
        """(signed current uA, duration us) in time order, gaps as (0, duration)."""
        s = -1.0 if self.cathodic_first else 1.0
        a1, d1 = self.first_phase_ua, self.first_phase_us
        a2, d2 = float(self.second_phase_ua), float(self.second_phase_us)  # type: ignore[arg-type]
        if self.shape == "triphasic":
            return ((s * a1, d1), (-s * a2, d2), (s * a1, d1))
        if self.interphase_us > 0:
            return ((s * a1, d1), (0.0, self.interphase_us), (-s * a2, d2))
        return ((s * a1, d1), (-s * a2, d2))

    @property
    def duration_us(self) -> float:
        return sum(d for _, d in self.phases)

    @property
    def leading_charge_nc(self) -> float:
        """Charge of the first phase (nC): what drives the neurons near the electrode."""
        return self.first_phase_ua * self.first_phase_us * 1e-3

    @property
    def max_phase_charge_nc(self) -> float:
        return max(abs(a) * d for a, d in self.phases) * 1e-3

    @property
    def net_charge_nc(self) -> float:
        """Charge left on the electrode per pulse (0 when balanced)."""
        return sum(a * d for a, d in self.phases) * 1e-3

    @property
    def balanced(self) -> bool:
        return abs(self.net_charge_nc) <= BALANCE_TOLERANCE_NC

    def summary(self) -> str:
        order = "cathodic-first" if self.cathodic_first else "anodic-first"
        phases = ", ".join(
            "gap" + f" {d:g} us" if a == 0 else f"{a:+g} uA x {d:g} us" for a, d in self.phases
        )
        balance = "balanced" if self.balanced else f"UNBALANCED, net {self.net_charge_nc:+.3g} nC"
        return (
            f"{self.shape} {order} pulse: {phases} "
            f"({self.leading_charge_nc:.3g} nC leading phase, {balance})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "first_phase_ua": self.first_phase_ua,
            "first_phase_us": self.first_phase_us,
            "second_phase_ua": self.second_phase_ua,
            "second_phase_us": self.second_phase_us,
            "interphase_us": self.interphase_us,
            "shape": self.shape,
            "cathodic_first": self.cathodic_first,
        }


@dataclass(frozen=True)
class PulseTrain:
    """`n_pulses` pulses, one every 1 / rate_hz (rate needed only when n_pulses > 1)."""

    pulse: Pulse
    n_pulses: int = 1
    rate_hz: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pulse, Pulse):
            raise LimitError(f"pulse must be a Pulse, not {type(self.pulse).__name__}")
        if (
            isinstance(self.n_pulses, bool)
            or not isinstance(self.n_pulses, int)
            or self.n_pulses < 1
        ):
            raise LimitError(f"n_pulses = {self.n_pulses!r} must be an integer >= 1")
        if self.n_pulses > 1:
            if self.rate_hz is None:
                raise LimitError(f"n_pulses = {self.n_pulses}: give rate_hz for a train")
            _finite_positive("rate_hz", self.rate_hz, "Hz")
            if self.period_us < self.pulse.duration_us:
                raise LimitError(
                    f"rate_hz = {self.rate_hz:g} Hz gives a period of {self.period_us:g} us, "
                    f"shorter than the pulse ({self.pulse.duration_us:g} us): pulses would "
                    f"overlap; use rate_hz <= {1e6 / self.pulse.duration_us:g}"
                )

    @property
    def period_us(self) -> float:
        return 1e6 / self.rate_hz if self.rate_hz else 0.0

    @property
    def duration_us(self) -> float:
        return (self.n_pulses - 1) * self.period_us + self.pulse.duration_us

    def summary(self) -> str:
        if self.n_pulses == 1:
            return f"1 x {self.pulse.summary()}"
        return f"{self.n_pulses} x {self.pulse.summary()} at {self.rate_hz:g} Hz"

    def to_dict(self) -> dict[str, Any]:
        return {"pulse": self.pulse.to_dict(), "n_pulses": self.n_pulses, "rate_hz": self.rate_hz}


@dataclass(frozen=True)
class ElectrodeTrain:
    """One pulse train on a set of electrodes (names as the stimulator lists them)."""

    electrodes: tuple[str, ...]
    train: PulseTrain

    def __post_init__(self) -> None:
        names = (self.electrodes,) if isinstance(self.electrodes, str) else self.electrodes
        if not isinstance(names, (tuple, list)) or not names:
            raise LimitError(f"electrodes = {self.electrodes!r}: give at least one electrode")
        if not all(isinstance(e, str) for e in names):
            raise LimitError(f"electrodes = {self.electrodes!r} must be electrode names (text)")
        object.__setattr__(self, "electrodes", tuple(names))
        if not isinstance(self.train, PulseTrain):
            raise LimitError(f"train must be a PulseTrain, not {type(self.train).__name__}")


@dataclass(frozen=True)
class MEAStimulus:
    """Everything delivered at one trigger: a train on each electrode set.

    repeat_while_held: the stimulus repeats for as long as it is held on (`Stimulator.start`
    ... `stop`, level triggering on RHX): one train, then again when the previous one and the
    pause that makes up the period are over, with period = n_pulses / rate_hz (for a single
    pulse: 1 / rate_hz). LSA's "stimulation on until the output fires" is a held stimulus.
    """

    trains: tuple[ElectrodeTrain, ...]
    allow_unbalanced: bool = False
    repeat_while_held: bool = False
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        trains = tuple(self.trains)
        if not trains or not all(isinstance(t, ElectrodeTrain) for t in trains):
            raise LimitError("an MEAStimulus needs at least one ElectrodeTrain")
        object.__setattr__(self, "trains", trains)
        seen: set[str] = set()
        for t in trains:
            for e in t.electrodes:
                if e in seen:
                    raise LimitError(
                        f"electrode {e!r} appears twice in one stimulus: each "
                        "electrode has one set of stimulation parameters"
                    )
                seen.add(e)
        if self.repeat_while_held:
            for t in trains:
                if t.train.rate_hz is None:
                    raise LimitError(
                        "repeat_while_held needs rate_hz on every train (the "
                        "repetition period is n_pulses / rate_hz)"
                    )

    @classmethod
    def on(
        cls,
        electrodes: str | Sequence[str],
        pulse: Pulse,
        n_pulses: int = 1,
        rate_hz: float | None = None,
        *,
        allow_unbalanced: bool = False,
        repeat_while_held: bool = False,
        label: str = "",
    ) -> MEAStimulus:
        """One train on one electrode set: MEAStimulus.on(["45"], Pulse(10, 200))."""
        names = (electrodes,) if isinstance(electrodes, str) else tuple(electrodes)
        return cls(
            (ElectrodeTrain(names, PulseTrain(pulse, n_pulses, rate_hz)),),
            allow_unbalanced=allow_unbalanced,
            repeat_while_held=repeat_while_held,
            label=label,
        )

    @property
    def electrodes(self) -> tuple[str, ...]:
        return tuple(e for t in self.trains for e in t.electrodes)

    @property
    def repeat_period_us(self) -> float:
        """Period of repetition while held (longest train's n_pulses / rate)."""
        return max(t.train.n_pulses * 1e6 / float(t.train.rate_hz or math.inf) for t in self.trains)

    def summary(self) -> str:
        parts = [f"{t.train.summary()} on {', '.join(t.electrodes)}" for t in self.trains]
        held = " (repeats while held)" if self.repeat_while_held else ""
        name = f"{self.label}: " if self.label else ""
        return name + "; ".join(parts) + held

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "mea",
            "label": self.label,
            "allow_unbalanced": self.allow_unbalanced,
            "repeat_while_held": self.repeat_while_held,
            "trains": [
                {"electrodes": list(t.electrodes), **t.train.to_dict()} for t in self.trains
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MEAStimulus:
        trains = tuple(
            ElectrodeTrain(
                tuple(t["electrodes"]), PulseTrain(Pulse(**t["pulse"]), t["n_pulses"], t["rate_hz"])
            )
            for t in d["trains"]
        )
        return cls(
            trains,
            allow_unbalanced=d.get("allow_unbalanced", False),
            repeat_while_held=d.get("repeat_while_held", False),
            label=d.get("label", ""),
        )


@dataclass(frozen=True)
class StimulatorCapabilities:
    """What a stimulator can deliver (device limits), narrowed by the lab's safety limits.

    Durations are quantised to `time_step_us` (the device's timing grid, e.g. one sample
    of the RHS controller: 1e6 / sample rate), amplitudes to `amplitude_step_ua`.
    """

    name: str
    electrodes: tuple[str, ...]
    amplitude_step_ua: float
    max_amplitude_ua: float
    time_step_us: float
    max_phase_us: float
    max_interphase_us: float
    max_pulses: int
    max_rate_hz: float
    min_rate_hz: float = 0.0
    shapes: tuple[str, ...] = SHAPES
    interphase_shapes: tuple[str, ...] = ("biphasic",)
    max_charge_per_phase_nc: float = math.inf
    max_electrodes: int = 10_000

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["electrodes"] = list(self.electrodes)
        d["shapes"], d["interphase_shapes"] = list(self.shapes), list(self.interphase_shapes)
        if math.isinf(self.max_charge_per_phase_nc):
            d["max_charge_per_phase_nc"] = None
        return d


def _on_grid(name: str, value: float, step: float, low: float, high: float, unit: str) -> float:
    """value rounded to the nearest multiple of step, within [low, high] (checked on the
    requested value and on the rounded one)."""
    if value > high + 1e-9 * max(1.0, high):
        raise LimitError(
            f"{name} = {value:g} {unit} is outside the allowed range [{low:g}, {high:g}] {unit}"
        )
    q = round(value / step) * step
    q = float(f"{q:.12g}")  # strip float noise (0.1 * 3 = 0.30000000000000004)
    if q < low - 1e-9 * max(1.0, low) or q <= 0:
        raise LimitError(
            f"{name} = {value:g} {unit} rounds to {q:g} {unit} on the device "
            f"grid of {step:g} {unit}; the allowed range is [{low:g}, {high:g}] "
            f"{unit}"
        )
    return min(q, high)


def _quantise_pulse(p: Pulse, caps: StimulatorCapabilities, where: str) -> Pulse:
    if p.shape not in caps.shapes:
        raise LimitError(
            f"{where}shape = {p.shape!r}: {caps.name} delivers {', '.join(caps.shapes)} pulses"
        )
    if p.interphase_us > 0 and p.shape not in caps.interphase_shapes:
        raise LimitError(
            f"{where}interphase_us = {p.interphase_us:g} us: {caps.name} has an "
            f"interphase gap only for {', '.join(caps.interphase_shapes)} pulses"
        )
    a_step, t_step = caps.amplitude_step_ua, caps.time_step_us
    a1 = _on_grid(
        f"{where}first_phase_ua", p.first_phase_ua, a_step, a_step, caps.max_amplitude_ua, "uA"
    )
    a2 = _on_grid(
        f"{where}second_phase_ua",
        float(p.second_phase_ua),
        a_step,
        a_step,  # type: ignore[arg-type]
        caps.max_amplitude_ua,
        "uA",
    )
    d1 = _on_grid(
        f"{where}first_phase_us", p.first_phase_us, t_step, t_step, caps.max_phase_us, "us"
    )
    d2 = _on_grid(
        f"{where}second_phase_us",
        float(p.second_phase_us),
        t_step,
        t_step,  # type: ignore[arg-type]
        caps.max_phase_us,
        "us",
    )
    gap = 0.0
    if p.interphase_us > 0:
        gap = _on_grid(
            f"{where}interphase_us", p.interphase_us, t_step, t_step, caps.max_interphase_us, "us"
        )
    q = replace(
        p,
        first_phase_ua=a1,
        second_phase_ua=a2,
        first_phase_us=d1,
        second_phase_us=d2,
        interphase_us=gap,
    )
    if q.max_phase_charge_nc > caps.max_charge_per_phase_nc:
        raise LimitError(
            f"{where}charge per phase = {q.max_phase_charge_nc:.4g} nC exceeds "
            f"max_charge_per_phase_nc = {caps.max_charge_per_phase_nc:g} nC (electrode safety "
            "limit): lower the amplitude or shorten the phase"
        )
    return q


def validate_stimulus(stimulus: MEAStimulus, caps: StimulatorCapabilities) -> MEAStimulus:
    """The stimulus as `caps` will deliver it (quantised), or LimitError naming the field,
    its value and the allowed range. Sends nothing."""
    if not isinstance(stimulus, MEAStimulus):
        raise LimitError(f"{caps.name} delivers MEAStimulus, not {type(stimulus).__name__}")
    known = set(caps.electrodes)
    for e in stimulus.electrodes:
        if e not in known:
            shown = ", ".join(caps.electrodes[:8]) + (" ..." if len(caps.electrodes) > 8 else "")
            raise LimitError(
                f"electrode {e!r} does not exist on {caps.name} "
                f"({len(caps.electrodes)} electrodes: {shown})"
            )
    if len(stimulus.electrodes) > caps.max_electrodes:
        raise LimitError(
            f"{len(stimulus.electrodes)} electrodes exceed max_electrodes = "
            f"{caps.max_electrodes} per stimulus"
        )
    trains = []
    for k, et in enumerate(stimulus.trains):
        where = f"train {k} ({', '.join(et.electrodes)}): " if len(stimulus.trains) > 1 else ""
        tr = et.train
        pulse = _quantise_pulse(tr.pulse, caps, where)
        if tr.n_pulses > caps.max_pulses:
            raise LimitError(
                f"{where}n_pulses = {tr.n_pulses} is outside the allowed range "
                f"[1, {caps.max_pulses}]"
            )
        rate = tr.rate_hz
        if rate is not None:
            if not caps.min_rate_hz <= rate <= caps.max_rate_hz:
                raise LimitError(
                    f"{where}rate_hz = {rate:g} Hz is outside the allowed range "
                    f"[{caps.min_rate_hz:g}, {caps.max_rate_hz:g}] Hz"
                )
            period = _on_grid(
                f"{where}pulse period (1 / rate_hz)",
                1e6 / rate,
                caps.time_step_us,
                caps.time_step_us,
                1e6 / caps.min_rate_hz if caps.min_rate_hz > 0 else math.inf,
                "us",
            )
            rate = 1e6 / period
        if rate is not None and 1e6 / rate < pulse.duration_us:
            raise LimitError(
                f"{where}rate_hz = {tr.rate_hz:g} Hz: the pulse period is shorter "
                f"than the pulse ({pulse.duration_us:g} us)"
            )
        if not pulse.balanced and not stimulus.allow_unbalanced:
            raise LimitError(
                f"{where}unbalanced charge: {pulse.summary()} leaves "
                f"{pulse.net_charge_nc:+.4g} nC per pulse on the electrode (as delivered on "
                f"the device grid of {caps.amplitude_step_ua:g} uA and {caps.time_step_us:g} "
                "us); balance the phases (biphasic A1 D1 = A2 D2, triphasic 2 A1 D1 = A2 D2) "
                "or set allow_unbalanced=True if the protocol really needs it"
            )
        trains.append(ElectrodeTrain(et.electrodes, PulseTrain(pulse, tr.n_pulses, rate)))
    return replace(stimulus, trains=tuple(trains))
