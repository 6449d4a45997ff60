"""Value parsers for option(): each takes the raw string and returns the value, or raises ValueError
saying what it expected (the error becomes "lookup.batch_size: invalid value 'x' (expected a positive
integer)"). Apps import them from prefork.settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from prefork.config.section import Parser


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
