"""Settings sections: how the framework and applications declare their configuration keys.

A section is a class; each field is one key with its default (a string, parsed like any other value), a
parser and a one-line meaning::

    from prefork.config.section import Section, option, positive_int, table_name

    class LookupSettings(Section, name="lookup"):
        table: str = option("lookup_values", table_name, "table holding the keys and their values")
        batch_size: int = option("500", positive_int, "most keys per query", flag="--lookup-batch")

Declaring it makes ``[lookup]`` in the file, ``PREFORK_LOOKUP_TABLE`` and ``-s lookup.table=...`` (and the
flag, if any) valid keys, validated as strictly as ``[server]`` and ``[pool]``: an unknown key or a bad
value is exit 2 naming it. An app lists its sections in its ``settings`` attribute and reads the values,
typed, with ``worker.config.section(LookupSettings)``. Instances are frozen dataclasses.

A parser takes the raw string and returns the value, or raises ValueError saying what it expected (the
error becomes "lookup.batch_size: invalid value 'x' (expected a positive integer)").
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # Python 3.10: type checkers then see plain classes

    def dataclass_transform(**kwargs: Any) -> Callable[[Any], Any]:
        return lambda cls: cls


# A section name is one lowercase word, so that PREFORK_<SECTION>_<KEY> splits in one way only.
SECTION_NAME = re.compile(r"[a-z][a-z0-9]*")
KEY_NAME = re.compile(r"[a-z][a-z0-9_]*")

Parser = Callable[[str], Any]


@dataclass(frozen=True)
class Setting:
    """One configuration key: where it lives, its default (as a string), how to parse it, its help."""

    section: str
    key: str
    default: str
    parse: Parser  # raw string -> value; raises ValueError (DSNError for pool.dsn)
    help: str
    flag: str | None = None  # long command-line flag, e.g. "--bind"

    @property
    def name(self) -> str:
        """``section.key``, e.g. ``server.bind``."""
        return f"{self.section}.{self.key}"


_OPTION = "prefork.option"


def option(default: str, parse: Parser, help: str, *, flag: str | None = None) -> Any:
    """One key of a Section: ``default`` is the raw string (parsed at declaration: a bad default fails at
    import, not in a worker), ``help`` one line, ``flag`` an optional long command-line flag."""
    if flag is not None and not re.fullmatch(r"--[a-z][a-z0-9-]*", flag):
        raise ValueError(f"bad flag {flag!r}: expected --lowercase-words")
    value = parse(default)  # a ValueError here is a bug in the declaration
    meta = {_OPTION: (default, parse, help, flag)}
    # A factory, not a default: a list value must not be shared between instances.
    return dataclasses.field(default_factory=lambda: value, metadata=meta)


S = TypeVar("S", bound="Section")


@dataclass_transform(frozen_default=True, field_specifiers=(option,))
class Section:
    """Base of a settings section: ``class MySettings(Section, name="mysection")``; fields use option()."""

    section_name: ClassVar[str]
    _settings: ClassVar[tuple[Setting, ...]]

    def __init_subclass__(cls, name: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not SECTION_NAME.fullmatch(name):
            raise ValueError(f"bad section name {name!r}: expected one lowercase word (letters, digits)")
        cls.section_name = name
        dataclass(frozen=True)(cls)
        found = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if _OPTION not in f.metadata:
                raise TypeError(f"{cls.__name__}.{f.name}: declare it with option(default, parse, help)")
            if not KEY_NAME.fullmatch(f.name):
                raise ValueError(f"{cls.__name__}.{f.name}: a key is lowercase letters, digits and _")
            default, parse, help_text, flag = f.metadata[_OPTION]
            found.append(Setting(name, f.name, default, parse, help_text, flag))
        cls._settings = tuple(found)

    @classmethod
    def settings(cls) -> tuple[Setting, ...]:
        """The section's keys, in declaration order."""
        return cls._settings


def sections_of(declared: Any) -> tuple[type[Section], ...]:
    """An app's ``settings`` attribute as a tuple of Section classes: one class, a sequence, or None."""
    if declared is None:
        return ()
    items: Iterable[Any] = (declared,) if isinstance(declared, type) else declared
    result = tuple(items)
    for item in result:
        if not (isinstance(item, type) and issubclass(item, Section)):
            raise TypeError(f"settings must be Section classes, not {item!r}")
    return result


# ---- value parsers for option(): each takes the raw string and raises ValueError(<what was expected>) ----


def checked(expected: str, ok: Callable[[str], Any], convert: Callable[[str], Any] = str) -> Parser:
    """A parser of the stripped text: ValueError(expected) unless ok(text), else convert(text)."""

    def parse(text: str) -> Any:
        text = text.strip()
        if not ok(text):
            raise ValueError(expected)
        return convert(text)

    return parse


def integer(minimum: int) -> Parser:
    """Decimal integers >= minimum (no "1_000", no non-ASCII digits, which int() alone would take)."""
    expected = "expected a positive integer" if minimum == 1 else f"expected an integer >= {minimum}"
    return checked(expected, lambda t: re.fullmatch(r"\+?[0-9]+", t) and int(t) >= minimum, int)


positive_int = integer(1)
count = integer(0)

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(positive: bool) -> Parser:
    """Seconds as a float, with an optional unit: 30, 2.5, 500ms, 5m, 1h."""
    expected = f"expected seconds {'> 0' if positive else '>= 0'}, e.g. 30, 2.5, 500ms, 5m"

    def parse(text: str) -> float:
        match = _DURATION.fullmatch(text.strip().lower())
        value = float(match[1]) * _UNITS[match[2]] if match else math.nan
        if not math.isfinite(value) or (positive and value <= 0):
            raise ValueError(expected)
        return value

    return parse


positive_seconds = duration(True)
seconds = duration(False)

_SIZE = re.compile(r"([0-9]+)\s*(k|kb|kib|m|mb|mib|g|gb|gib)?")
_SIZE_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def size(text: str) -> int:
    """Bytes, with an optional binary unit: 1048576, 512K, 64MiB, 1G."""
    match = _SIZE.fullmatch(text.strip().lower())
    value = int(match[1]) * _SIZE_UNITS[match[2] and match[2][0]] if match else 0
    if value < 1:
        raise ValueError("expected a positive size in bytes, e.g. 1048576, 512K, 64MiB, 1G")
    return value


_BOOLS = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}
boolean = checked(
    "expected on/off, true/false, yes/no or 1/0", lambda t: t.lower() in _BOOLS, lambda t: _BOOLS[t.lower()]
)
string = checked("", lambda t: True)  # any text, stripped
optional = checked("", lambda t: True, lambda t: t or None)  # empty = None


def choice(*words: str) -> Parser:
    """One of ``words``, case-insensitive; the value is the lowercase word."""
    return checked(f"expected one of {', '.join(words)}", lambda t: t.lower() in words, str.lower)


table_name = checked(
    "expected a table name of 1-64 characters without backticks or NUL",
    lambda t: 1 <= len(t) <= 64 and "`" not in t and "\0" not in t,
)
