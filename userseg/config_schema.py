"""Low-level reading of TOML tables that records every problem instead of stopping.

An admin editing /etc/userseg/userseg.toml wants the whole list of mistakes
in one go, each pointing at the exact key (`policies[2].mode`), rather than a
fix-one-rerun loop.  So the readers here never raise: they append a message
naming the key path to a shared list and hand back a harmless fallback, and
the caller raises once at the end if anything was recorded.  Every key a
`Section` hands out is remembered, which is how unknown keys (typos such as
`gateway.colour`) are found without keeping a second list of allowed names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from enum import Enum
from typing import TypeVar

from userseg.model import ModelError, Service

E = TypeVar("E", bound=Enum)
T = TypeVar("T")

# Names of applications, policies and infrastructure entries: short, shell- and
# nft-comment-safe, so they can appear in CLI arguments, URLs and rule comments.
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
NAME_RULE = "1-64 characters of A-Z a-z 0-9 _ . -"

# Linux IFNAMSIZ is 16 including the NUL; nft accepts these characters in ifname sets.
IFNAME_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")

# Service presets so that the boring but error-prone port lists (what a client
# needs to log on to a domain) are spelled once, here, and not in every config.
SERVICE_PRESETS: dict[str, tuple[str, ...]] = {
    "ad-dc": (
        "tcp/53",
        "udp/53",
        "tcp/88",
        "udp/88",
        "udp/123",
        "tcp/135",
        "tcp/389",
        "udp/389",
        "tcp/445",
        "tcp/464",
        "udp/464",
        "tcp/636",
        "tcp/3268-3269",
    ),
    "dhcp": ("udp/67",),
    "dns": ("tcp/53", "udp/53"),
}


def expand_service(text: str) -> tuple[Service, ...]:
    """One config service string -> services; a preset name expands to several."""
    preset = SERVICE_PRESETS.get(text.strip().lower())
    if preset is not None:
        return tuple(Service.parse(s) for s in preset)
    return (Service.parse(text),)


def toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, for 'must be X, got Y' messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, datetime | date | time):
        return "date/time"
    return type(value).__name__


def describe(value: object) -> str:
    """A short rendering of a bad value: strings quoted, other types named."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list | dict):
        return toml_type(value)
    return f"{toml_type(value)} {value!r}"


class Section:
    """One TOML table at a known key path, read key by key with errors collected."""

    def __init__(self, data: Mapping[str, object], path: str, errors: list[str]) -> None:
        self._data = data
        self.path = path
        self.errors = errors
        self._used: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str | None, problem: str) -> None:
        where = self.key_path(key) if key is not None else self.path
        self.errors.append(f"{where}: {problem}")

    def _get(self, key: str, required: bool) -> object | None:
        self._used.add(key)
        value = self._data.get(key)
        if value is None and required:
            self.error(key, "missing required key")
        return value

    def has(self, key: str) -> bool:
        return key in self._data

    def has_any(self) -> bool:
        """Whether the table holds any key at all (an absent optional section is empty)."""
        return bool(self._data)

    def string(self, key: str, default: str, *, required: bool = False) -> str:
        value = self._get(key, required)
        if value is None:
            return default
        if not isinstance(value, str):
            self.error(key, f"must be a string, got {describe(value)}")
            return default
        return value

    def name(self, key: str) -> str | None:
        """A required object name obeying NAME_RE; None when missing or bad."""
        value = self._get(key, True)
        if value is None:
            return None
        if not isinstance(value, str):
            self.error(key, f"must be a string, got {describe(value)}")
            return None
        if not NAME_RE.fullmatch(value):
            self.error(key, f"bad name {value!r} (use {NAME_RULE})")
            return None
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._get(key, False)
        if value is None:
            return default
        # bool is an int subclass in Python; `log_group = true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"must be an integer, got {describe(value)}")
            return default
        if not low <= value <= high:
            self.error(key, f"must be between {low} and {high}, got {value}")
            return default
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self._get(key, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(key, f"must be a number, got {describe(value)}")
            return default
        if not low <= value <= high:
            self.error(key, f"must be between {low:g} and {high:g}, got {value:g}")
            return default
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(key, f"must be true or false, got {describe(value)}")
            return default
        return value

    def choice(self, key: str, enum: type[E], default: E | None, *, required: bool = False) -> E | None:
        value = self._get(key, required)
        if value is None:
            return default
        options = [str(m.value) for m in enum]
        if len(options) == 2:
            wanted = f"{options[0]!r} or {options[1]!r}"
        else:
            wanted = "one of " + ", ".join(repr(o) for o in options)
        if isinstance(value, str):
            for member in enum:
                if member.value == value.strip().lower():
                    return member
        self.error(key, f"must be {wanted}, got {describe(value)}")
        return default

    def strings(self, key: str, *, required: bool = False) -> list[tuple[str, str]]:
        """An array of strings as (key path of the element, value) pairs.

        `required` means present and non-empty: a policy with no subjects or an
        application with no destinations can never match and is surely a typo.
        """
        value = self._get(key, required)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(key, f"must be an array of strings, got {describe(value)}")
            return []
        if required and not value:
            self.error(key, "must not be empty")
        out: list[tuple[str, str]] = []
        for i, item in enumerate(value):
            where = f"{key}[{i}]"
            if not isinstance(item, str):
                self.error(where, f"must be a string, got {describe(item)}")
            elif not item.strip():
                self.error(where, "must not be empty")
            else:
                out.append((where, item))
        return out

    def integers(self, key: str, low: int, high: int) -> list[int] | None:
        """An array of integers within [low, high]; None when absent or wrong (error recorded)."""
        value = self._get(key, False)
        if value is None:
            return None
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in value
        ):
            self.error(key, f"must be an array of integers between {low} and {high}, got {describe(value)}")
            return None
        return list(value)

    def is_empty(self, key: str) -> bool:
        """True when `key` is absent or an empty array (without marking it used)."""
        value = self._data.get(key)
        return value is None or value == []

    def parsed(self, key: str, parse: Callable[[str], T], *, required: bool = False) -> list[T]:
        """An array of strings each turned into a model value; ModelError text -> key-path error."""
        return self.parse_items(self.strings(key, required=required), parse)

    def parse_items(self, items: list[tuple[str, str]], parse: Callable[[str], T]) -> list[T]:
        """Parse (key path, text) pairs from strings(); each ModelError becomes that path's error."""
        out: list[T] = []
        for where, text in items:
            try:
                out.append(parse(text))
            except ModelError as exc:
                self.error(where, str(exc))
        return out

    def table(self, key: str) -> Section:
        """A sub-table; missing gives an empty one so defaults apply uniformly."""
        value = self._get(key, False)
        if value is None:
            return Section({}, self.key_path(key), self.errors)
        if not isinstance(value, dict):
            self.error(key, f"must be a table ([{self.key_path(key)}]), got {describe(value)}")
            return Section({}, self.key_path(key), self.errors)
        return Section(value, self.key_path(key), self.errors)

    def tables(self, key: str) -> list[Section]:
        """An array of tables (`[[key]]`), each a Section at `key[i]`."""
        value = self._get(key, False)
        if value is None:
            return []
        where = self.key_path(key)
        if not isinstance(value, list):
            self.error(key, f"must be an array of tables ([[{where}]]), got {describe(value)}")
            return []
        out: list[Section] = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                self.error(f"{key}[{i}]", f"must be a table, got {describe(item)}")
                continue
            out.append(Section(item, f"{where}[{i}]", self.errors))
        return out

    def finish(self) -> None:
        """Report every key of this table that no reader asked for."""
        for key in self._data:
            if key not in self._used:
                self.error(key, "unknown key")
