"""How a run option is written down once: its flag, its job-file key, its docs row, its checks.

Each option of a run is a field of RunSettings (pipeline.orchestrator.settings) made with
`option(...)`: the field's metadata holds the flag, its help, the argparse group, the job file's
table and the option's kind of value. The CLI builds its run flags from it, the job file its
keys and checks, docs/reference.py its rows, and RunSettings.check its checks, so adding an
option is one edit. A kind of value (Number, Choice, Switch, Text) reads a flag's text, checks a
job file's TOML value and checks a setting, each with the words its reader expects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import InputError


class Invalid(ValueError):
    """A job file's value of the wrong type or range; the loader adds the file, line and key."""


def kind_of(value: Any) -> str:
    """A TOML value's type as a job file's author names it: "an integer", "a table"."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def got(value: Any) -> str:
    return f"got {value!r} ({kind_of(value)})"


def toml_text(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, {got(value)}")
    return value


def toml_boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, {got(value)}")
    return value


@dataclass(frozen=True)
class Number:
    """A number of `kind` (int or float) from `low` (or above it) up to `high`: the one range
    check of every numeric option, on the command line, in a job file and in RunSettings."""

    kind: type[int] | type[float]
    low: float
    high: float | None = None
    #: `low` itself is out of range ("must be above 0").
    above: bool = False
    #: What the number counts, in RunSettings.check's words: "0 or more seconds".
    unit: str = ""
    #: The command line's own lowest value, when it asks more than the setting does.
    flag_low: float | None = None
    #: "unlimited" stands for None (no limit).
    unlimited: bool = False

    def from_text(self, text: str) -> Any:
        """A flag's value; ValueError with the argparse message."""
        if self.unlimited and text.strip().lower() == "unlimited":
            return None
        try:
            value = self.kind(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        low = self.low if self.flag_low is None else self.flag_low
        if not value >= low:
            raise ValueError(f"{text!r} must be at least {low:g}")
        if self.above and not value > self.low:
            unlimited = " (or 'unlimited')" if self.unlimited else ""
            raise ValueError(f"{text!r} must be above {self.low:g}{unlimited}")
        return value

    def from_toml(self, value: Any) -> Any:
        """A job file's value; Invalid naming what was expected and what was found."""
        if self.unlimited:
            if value == "unlimited":
                return None
            if isinstance(value, str):
                raise Invalid(f'expected {self.unit} or "unlimited", {got(value)}')
        number: float
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise Invalid(f"expected a whole number of at least {self.low:g}, {got(value)}")
            number = value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise Invalid(f"expected a number, {got(value)}")
            number = float(value)
        if self.above:
            if not number > self.low:
                raise Invalid(f"must be above {self.low:g}, {got(value)}")
        elif number < self.low or (self.high is not None and number > self.high):
            span = (
                f"between {self.low:g} and {self.high:g}"
                if self.high is not None
                else f"at least {self.low:g}"
            )
            raise Invalid(f"must be {span}, {got(value)}")
        return number

    def check(self, flag: str, value: Any) -> None:
        """A setting's value; InputError naming the flag. None is "no limit"."""
        if value is None:
            return
        if self.above:
            if not value > self.low:
                raise InputError(f"{flag} must be a positive number of {self.unit}")
        elif not value >= self.low:
            if self.unit:
                raise InputError(f"{flag} must be {self.low:g} or more {self.unit}")
            raise InputError(f"{flag} must be at least {self.low:g}")
        if self.high is not None and value > self.high:
            raise InputError(f"{flag} must be at most {self.high:g}")


@dataclass(frozen=True)
class Choice:
    """One of a few words."""

    choices: tuple[str, ...]

    def from_toml(self, value: Any) -> str:
        if toml_text(value) not in self.choices:
            raise Invalid(f"must be one of {', '.join(self.choices)}, {got(value)}")
        return str(value)

    def check(self, flag: str, value: Any) -> None:
        if value not in self.choices:
            raise InputError(f"{flag} must be one of {', '.join(self.choices)}")


@dataclass(frozen=True)
class Switch:
    """On or off: a flag without a value that turns the default around (--wait, --no-guard)."""

    def from_toml(self, value: Any) -> bool:
        return toml_boolean(value)

    def check(self, flag: str, value: Any) -> None:
        pass


@dataclass(frozen=True)
class Text:
    """A string (a Path with `path`), checked in a job file by `toml` and as a setting by
    `setting`; a flag takes it as written."""

    toml: Callable[[Any], Any] = toml_text
    setting: Callable[[Any], Any] | None = None
    path: bool = False

    def from_toml(self, value: Any) -> Any:
        return self.toml(value)

    def check(self, flag: str, value: Any) -> None:
        if self.setting is not None and value is not None:
            self.setting(value)


Kind = Number | Choice | Switch | Text


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    group: str,
    table: str,
    kind: Kind,
    flag: str | None = None,
    metavar: str | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A RunSettings field that is also a flag (in `group` of `--help`) and a job-file key (in
    `[table]`, named as the field). The flag is the field's name with dashes unless given."""
    metadata = {
        "help": help,
        "group": group,
        "table": table,
        "kind": kind,
        "flag": flag,
        "metavar": metavar,
    }
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class RunOption:
    """One option as its readers see it, made from a field of `option(...)`."""

    name: str
    flag: str
    help: str
    group: str
    table: str
    kind: Kind
    metavar: str | None
    #: The value when neither a flag nor a job file gives one; None for a computed default
    #: (base_url: MATEO_BASE_URL or Mateo's own URL).
    default: Any

    @classmethod
    def of(cls, spec: dataclasses.Field[Any]) -> RunOption:
        meta = spec.metadata
        return cls(
            name=spec.name,
            flag=meta["flag"] or "--" + spec.name.replace("_", "-"),
            help=meta["help"],
            group=meta["group"],
            table=meta["table"],
            kind=meta["kind"],
            metavar=meta["metavar"],
            default=None if spec.default is dataclasses.MISSING else spec.default,
        )

    @property
    def job_key(self) -> str:
        """Where a job file gives it: `[limits] rate`."""
        return f"[{self.table}] {self.name}"

    def from_toml(self, value: Any) -> Any:
        return self.kind.from_toml(value)

    def check(self, value: Any) -> None:
        self.kind.check(self.flag, value)


def options_of(cls: type) -> tuple[RunOption, ...]:
    """The options among a dataclass's fields, in field order (the order of `--help`)."""
    return tuple(RunOption.of(spec) for spec in dataclasses.fields(cls) if "kind" in spec.metadata)
