"""Settings sections: how an application declares its configuration keys (the import apps use).

A section is a class; each field is one key with its default (a string, parsed like any other value), a
parser and a one-line meaning::

    from prefork.settings import Section, option, positive_int, table_name

    class LookupSettings(Section, name="lookup"):
        table: str = option("lookup_values", table_name, "table holding the keys and their values")
        batch_size: int = option("500", positive_int, "most keys per query", flag="--lookup-batch")

Declaring it makes ``[lookup]`` in the file, ``PREFORK_LOOKUP_TABLE`` and ``-s lookup.table=...`` (and the
flag, if any) valid keys, validated as strictly as ``[server]`` and ``[pool]``: an unknown key or a bad
value is exit 2 naming it. An app lists its sections in its ``settings`` attribute and reads the values,
typed, with ``worker.config.section(LookupSettings)``. Instances are frozen dataclasses.

A parser takes the raw string and returns the value, or raises ValueError saying what it expected (the
error becomes "lookup.batch_size: invalid value 'x' (expected a positive integer)").

This module is the public face of prefork.config.section and prefork.config.parsers, where they live.
"""

from prefork.config.parsers import (
    boolean,
    checked,
    choice,
    count,
    duration,
    integer,
    optional,
    positive_int,
    positive_seconds,
    seconds,
    size,
    string,
    table_name,
)
from prefork.config.section import Parser, Section, Setting, option, sections_of

__all__ = [
    "Parser",
    "Section",
    "Setting",
    "boolean",
    "checked",
    "choice",
    "count",
    "duration",
    "integer",
    "option",
    "optional",
    "positive_int",
    "positive_seconds",
    "seconds",
    "sections_of",
    "size",
    "string",
    "table_name",
]
