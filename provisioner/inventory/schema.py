"""One declaration per setting: a model field that carries how its value is read and combined.

A setting is a dataclass field whose metadata holds a `Setting` (the kind of value, its
default, its CLI flag and help), in the way Warewulf tags the fields of its node type. The
parser, profile merging, the CLI options and the JSON view read these declarations, so
adding a setting is one field line. A `Kind` says how one type of value is parsed from YAML,
merged over profiles, taken from a CLI flag and shown as JSON.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, ClassVar, Literal

from .hostlist import HostlistError, expand

Merge = Literal["replace", "append", "merge"]
PathPart = str | int


class Invalid(ValueError):
    """A value that does not parse; `at` is the path below the setting's key that is wrong."""

    def __init__(self, message: str, at: tuple[PathPart, ...] = ()):
        super().__init__(message)
        self.message = message
        self.at = at


class Kind:
    """One type of value: how YAML gives it, how profile layers combine, how the CLI sets it."""

    what: ClassVar[str] = "a value"
    merge: ClassVar[Merge] = "replace"  # later layer wins; "append" lists; "merge" mappings
    multiple: ClassVar[bool] = False  # the CLI flag may be repeated

    def convert(self, raw: Any) -> Any:
        """The value, or ValueError/TypeError (whose text, if any, becomes a detail)."""
        return raw

    def parse(self, raw: Any) -> Any:
        try:
            return self.convert(raw)
        except Invalid:
            raise
        except (ValueError, TypeError) as e:
            detail = f" ({e})" if str(e) and self.what not in str(e) else ""
            raise Invalid(f"{raw!r} is not {self.what}{detail}") from None

    def empty(self) -> Any:
        """The value of an unset setting."""
        return None

    def to_json(self, value: Any) -> Any:
        return value

    def from_cli(self, given: Any) -> Any:
        """The YAML value for what the CLI flag got; None when the flag was not given."""
        return given

    @property
    def bounds(self) -> tuple[int, int] | None:
        """The range a numeric CLI flag accepts."""
        return None


class Text(Kind):
    what = "a string"

    def convert(self, raw: Any) -> str:
        if isinstance(raw, (dict, list)):
            raise TypeError("")
        return str(raw)


@dataclass(frozen=True)
class Choice(Text):
    choices: tuple[str, ...]

    def convert(self, raw: Any) -> str:
        text = super().convert(raw)
        if text not in self.choices:
            raise Invalid(f"{text!r} must be " + " or ".join(repr(c) for c in self.choices))
        return text


class Label(Text):
    """A DNS label: the cluster's name."""

    def convert(self, raw: Any) -> str:
        text = super().convert(raw)
        if not valid_hostname(text):
            raise Invalid(f"{text!r} is not a valid name (letters, digits, '-')")
        return text


class Hostlist(Text):
    """A hostlist expression such as node[01-64]."""

    def convert(self, raw: Any) -> str:
        text = super().convert(raw)
        try:
            expand(text)
        except HostlistError as e:
            raise Invalid(str(e)) from None
        return text


@dataclass(frozen=True)
class Count(Kind):
    lo: int = 0
    hi: int = 2**31
    what: ClassVar[str] = "a whole number"

    def convert(self, raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise TypeError("")
        if not self.lo <= raw <= self.hi:
            raise ValueError(f"out of range {self.lo}..{self.hi}")
        return raw

    @property
    def bounds(self) -> tuple[int, int]:
        return self.lo, self.hi


class Flag(Kind):
    def convert(self, raw: Any) -> bool:
        if not isinstance(raw, bool):
            raise Invalid("must be true or false")
        return raw


class Address(Kind):
    what = "an IPv4 address"

    def convert(self, raw: Any) -> IPv4Address:
        return IPv4Address(str(raw))

    def to_json(self, value: Any) -> Any:
        return None if value is None else str(value)


class Subnet(Kind):
    what = "an IPv4 subnet (like 10.0.0.0/24)"

    def convert(self, raw: Any) -> IPv4Network:
        return IPv4Network(str(raw), strict=True)


class AddressRange(Kind):
    """FIRST-LAST (whether FIRST <= LAST is the setting's check, which can name the subnet)."""

    def convert(self, raw: Any) -> tuple[IPv4Address, IPv4Address]:
        parts = [p.strip() for p in str(raw).split("-")]
        try:
            if len(parts) != 2:
                raise ValueError
            return IPv4Address(parts[0]), IPv4Address(parts[1])
        except ValueError:
            raise Invalid(f"{str(raw)!r} must be 'FIRST-LAST' (two IPv4 addresses)") from None


class Words(Kind):
    """A list of strings; a single string is split on whitespace (kernel arguments). On the
    CLI each flag is one item, commas and all."""

    merge = "append"
    multiple = True

    def convert(self, raw: Any) -> tuple[str, ...]:
        if isinstance(raw, (str, int, float)):
            return self.one(str(raw))
        if not isinstance(raw, list) or not all(isinstance(v, (str, int, float)) for v in raw):
            raise Invalid("must be a list of strings")
        return tuple(str(v) for v in raw)

    def one(self, text: str) -> tuple[str, ...]:
        return tuple(text.split())

    def empty(self) -> tuple[str, ...]:
        return ()

    def to_json(self, value: Any) -> list[str]:
        return list(value)

    def from_cli(self, given: Sequence[str]) -> list[str] | None:
        return list(given) or None


class Names(Words):
    """A list of names; a single string is one name, and a CLI flag takes a comma list."""

    def one(self, text: str) -> tuple[str, ...]:
        return (text,)

    def from_cli(self, given: Sequence[str]) -> list[str] | None:
        return [v for item in given for v in item.split(",") if v] or None


class Addresses(Kind):
    """A list of IPv4 addresses; a single one is a list of one."""

    def convert(self, raw: Any) -> tuple[IPv4Address, ...]:
        items = raw if isinstance(raw, list) else [raw]
        out = []
        for i, v in enumerate(items):
            try:
                out.append(IPv4Address(str(v)))
            except ValueError:
                raise Invalid(f"{v!r} is not an IPv4 address", (i,) if isinstance(raw, list) else ()) from None
        return tuple(out)

    def empty(self) -> tuple[IPv4Address, ...]:
        return ()


class Table(Kind):
    """A mapping, merged key by key over profile layers; the CLI flag takes KEY=VALUE."""

    merge = "merge"
    multiple = True

    def convert(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise Invalid("must be a mapping")
        return {str(k): v for k, v in raw.items()}

    def empty(self) -> dict[str, Any]:
        return {}

    def to_json(self, value: Any) -> dict[str, Any]:
        return dict(value)

    def from_cli(self, given: Sequence[str]) -> dict[str, str] | None:
        out = {}
        for item in given:
            if "=" not in item:
                raise Invalid(f"takes KEY=VALUE, not {item!r}")
            k, v = item.split("=", 1)
            out[k] = v
        return out or None


@dataclass(frozen=True)
class Options(Table):
    """A mapping of text to text handed to another program's configuration."""

    of: str = "keys to values"

    def convert(self, raw: Any) -> dict[str, str]:
        if not isinstance(raw, dict):
            raise Invalid(f"must be a mapping of {self.of}")
        return {str(k): str(v) for k, v in raw.items()}


@dataclass(frozen=True)
class Section(Kind):
    """A nested mapping whose keys are the settings of a model dataclass."""

    model: type


@dataclass(frozen=True)
class Sections(Kind):
    """A list of such mappings."""

    model: type

    def empty(self) -> tuple[Any, ...]:
        return ()


class Scope:
    """What a derived default or a check may read: the section's settings parsed so far, then
    those of the sections around it (`s.subnet`, `s.network.master`)."""

    def __init__(self, values: Mapping[str, Any], outer: Scope | None = None):
        self._values = values
        self._outer = outer

    def __getattr__(self, name: str) -> Any:
        if self._values.get(name) is not None:
            return self._values[name]
        if self._outer is None:
            raise Unresolved(name)
        return getattr(self._outer, name)


class Unresolved(LookupError):
    """A derived default needs a setting that is missing or did not parse (already reported)."""


@dataclass(frozen=True)
class Setting:
    """One setting. `key` is the field's name, filled in by `settings_of`."""

    kind: Kind
    flag: str | None = None
    help: str | None = None
    required: bool = False
    derive: Callable[[Scope], Any] | None = None  # the default, computed from other settings
    check: Callable[[Any, Scope], str | None] | None = None  # a problem with the value, or None
    default: Any = dataclasses.field(default_factory=lambda: dataclasses.MISSING)  # MISSING: none
    key: str = ""

    def fallback(self) -> Any:
        """The value when the setting is not given (MISSING: derived, or given by the parser)."""
        return dict(self.default) if isinstance(self.default, dict) else self.default


def setting(
    kind: Kind,
    flag: str | None = None,
    help: str | None = None,
    *,
    default: Any = dataclasses.MISSING,
    required: bool = False,
    derive: Callable[[Scope], Any] | None = None,
    check: Callable[[Any, Scope], str | None] | None = None,
) -> Any:
    """A model field declaring a setting. Unless it is required, derived or a section (which
    the parser always supplies), it defaults to `default` or else to the kind's empty value."""
    if default is dataclasses.MISSING and not (required or derive or isinstance(kind, Section)):
        default = kind.empty()
    meta = {"setting": Setting(kind, flag, help, required, derive, check, default)}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def settings_of(model: type) -> Mapping[str, Setting]:
    """The settings a model dataclass declares, by key, in declaration order."""
    return {
        f.name: dataclasses.replace(f.metadata["setting"], key=f.name)
        for f in dataclasses.fields(model)
        if "setting" in f.metadata
    }


def valid_hostname(name: str) -> bool:
    return bool(_LABEL.match(name))


_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)
