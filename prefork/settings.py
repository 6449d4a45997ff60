"""Settings sections: how an application declares its configuration keys (the import apps use).

The public face of prefork.config.section, where the mechanism and the value parsers live.
"""

from prefork.config.section import (
    Parser,
    Section,
    Setting,
    boolean,
    checked,
    choice,
    count,
    duration,
    integer,
    option,
    optional,
    positive_int,
    positive_seconds,
    seconds,
    sections_of,
    size,
    string,
    table_name,
)

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
