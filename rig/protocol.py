"""Protocols: experiment scripts with declared, typed, range-checked parameters.

A protocol is one file in protocols/ with one subclass of `Protocol`:

    class OpenLoopTrain(Protocol):
        '''Periodic stimulation of a chosen cell set.'''
        rate_hz = Param(0.5, unit="Hz", min=0.01, max=10, help="stimuli per second")

        def on_frame(self, ctx):
            if ctx.time_s >= self.next_s:
                ctx.stimulate(...)

Parameters are checked before the run starts (a bad value names the parameter, the value and
the allowed range). Hooks: `setup(ctx)` once before the first frame, `on_frame(ctx)` after
the pipeline processed each frame, `teardown(ctx)` once at the end (also after an abort).
`metrics()` returns the numbers that go into summary.json. Commands available through `ctx`:
`ctx.stimulate(stimulus)` (validated by the stimulator, issued immediately),
`ctx.mark(label, **data)` (an event in events.jsonl) and `ctx.stop(reason)`.
An exception in any hook aborts the run: every device goes to its safe state and the
session is closed with status "aborted" and the error recorded.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any

from rig.config import ConfigError, parse_value


class Param:
    """A protocol parameter: default, unit, limits or choices, and a help text.

    The type follows the default: float, int, bool, str, or a list of numbers (e.g. an (x, y)
    position in um). `length` fixes the length of a list parameter.
    """

    def __init__(
        self,
        default: Any,
        *,
        unit: str = "",
        min: float | None = None,
        max: float | None = None,
        choices: tuple[str, ...] | None = None,
        length: int | None = None,
        help: str = "",
    ) -> None:
        self.default = default
        self.unit = unit
        self.min = min
        self.max = max
        self.choices = choices
        self.length = length
        self.help = help
        self.name = ""
        if isinstance(default, bool):
            self.kind = "bool"
        elif isinstance(default, int):
            self.kind = "int"
        elif isinstance(default, float):
            self.kind = "float"
        elif isinstance(default, str):
            self.kind = "str"
        elif isinstance(default, (list, tuple)):
            self.kind = "list"
        else:
            raise TypeError(
                f"Param default {default!r}: use float, int, bool, str or a list of numbers"
            )

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return obj._values[self.name]

    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        lo = "-inf" if self.min is None else f"{self.min:g}"
        hi = "inf" if self.max is None else f"{self.max:g}"
        unit = f" {self.unit}" if self.unit else ""
        return f"[{lo}, {hi}]{unit}"

    def validate(self, value: Any, protocol: str = "") -> Any:
        """Return the value converted to this parameter's type, or raise ConfigError."""
        who = f"protocol parameter '{self.name}'" + (f" of {protocol}" if protocol else "")
        if isinstance(value, str) and self.kind != "str":
            value = parse_value(value)
        unit = f" {self.unit}" if self.unit else ""

        def check_number(x: Any) -> float:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise ConfigError(f"{who} = {value!r} must be a number{unit}")
            if (self.min is not None and x < self.min) or (self.max is not None and x > self.max):
                raise ConfigError(
                    f"{who} = {x:g}{unit} is outside the allowed range {self.range_text()}"
                )
            return x

        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{who} = {value!r} must be true or false")
            return value
        if self.kind == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{who} = {value!r} must be an integer in {self.range_text()}")
            return int(check_number(value))
        if self.kind == "float":
            return float(check_number(value))
        if self.kind == "str":
            if not isinstance(value, str):
                raise ConfigError(f"{who} = {value!r} must be text")
            if self.choices and value not in self.choices:
                raise ConfigError(f"{who} = {value!r} must be {self.range_text()}")
            return value
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{who} = {value!r} must be a list like [1.0, 2.0]")
        if self.length is not None and len(value) != self.length:
            raise ConfigError(f"{who} = {value!r} must have {self.length} elements")
        return [float(check_number(v)) for v in value]


class Protocol:
    """Base class of all protocols (see the module docstring)."""

    #: shown in reports; defaults to the file name
    name: str = ""
    parameters: dict[str, Param] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        params: dict[str, Param] = {}
        for base in reversed(cls.__mro__):
            for key, value in vars(base).items():
                if isinstance(value, Param):
                    params[key] = value
        cls.parameters = params

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - set(self.parameters)
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(
                f"unknown parameter '{name}' for protocol {self.protocol_name()}; its parameters "
                f"are: {', '.join(self.parameters) or '(none)'}"
            )
        self._values = {}
        for key, param in self.parameters.items():
            raw = values.get(key, param.default)
            self._values[key] = param.validate(raw, self.protocol_name())
        self.check()

    @classmethod
    def protocol_name(cls) -> str:
        return cls.name or cls.__name__

    def check(self) -> None:
        """Cross-parameter checks; raise ConfigError. Called after each value is validated."""

    @property
    def values(self) -> dict[str, Any]:
        return dict(self._values)

    # -- hooks -----------------------------------------------------------------------------
    def setup(self, ctx: Any) -> None:
        """Once, before the first frame."""

    def on_frame(self, ctx: Any) -> None:
        """After the pipeline processed each frame."""

    def on_spikes(self, ctx: Any) -> None:
        """After each block of spikes arrived (MEA rigs): ctx.spikes(), ctx.onsets()."""

    def teardown(self, ctx: Any) -> None:
        """Once at the end, also after an abort (devices are already safe then)."""

    def metrics(self) -> dict[str, Any]:
        """Numbers for summary.json (JSON-serialisable)."""
        return {}

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        return [
            {
                "name": p.name,
                "default": p.default,
                "unit": p.unit,
                "range": p.range_text(),
                "help": p.help,
            }
            for p in cls.parameters.values()
        ]


def protocol_dirs() -> list[Path]:
    """Where protocol names are looked up: ./protocols, then the repository's protocols/."""
    here = Path(__file__).resolve().parent.parent / "protocols"
    dirs = [Path.cwd() / "protocols", here]
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen


def available_protocols() -> list[str]:
    names: set[str] = set()
    for d in protocol_dirs():
        names.update(p.stem for p in d.glob("*.py") if not p.name.startswith("_"))
    return sorted(names)


def resolve_protocol_path(spec: str) -> Path:
    path = Path(spec)
    if path.suffix == ".py" or "/" in spec:
        if not path.is_file():
            raise ConfigError(f"protocol file {spec!r} does not exist")
        return path
    for d in protocol_dirs():
        candidate = d / f"{spec}.py"
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"unknown protocol {spec!r}: give a file path or one of: "
        f"{', '.join(available_protocols()) or '(no protocols found)'}"
    )


def load_protocol_class(spec: str) -> type[Protocol]:
    """The Protocol subclass defined in a protocol file (by path or by name in protocols/)."""
    path = resolve_protocol_path(spec)
    module_name = f"looprig_protocol_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"cannot import protocol file {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    classes = [
        c
        for c in vars(module).values()
        if inspect.isclass(c)
        and issubclass(c, Protocol)
        and c is not Protocol
        and c.__module__ == module_name
    ]
    if len(classes) != 1:
        raise ConfigError(
            f"protocol file {path} must define exactly one Protocol subclass, found {len(classes)}"
        )
    cls = classes[0]
    if not cls.__doc__ and module.__doc__:
        cls.__doc__ = module.__doc__
    if not cls.name:
        cls.name = path.stem
    cls.source_file = str(path)  # type: ignore[attr-defined]
    return cls
