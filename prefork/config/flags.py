"""The command line as a source: the framework's flags on a command's parser, ``-s section.key=value``,
the positional APP, and the flags of the app's own sections, which only those sections can resolve.

The command line wins over the environment and the file (prefork.config.loader), and a flag over ``-s``.
A flag the framework does not know is left over by the command line (``prefork.cli.split_app_flags``) and
resolved against the app's sections once the app is imported (``resolve_flags``, called by ``settle()``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from prefork.config.errors import ConfigError
from prefork.config.framework import SETTINGS
from prefork.config.section import Section
from prefork.config.sources import check_name
from prefork.db.dsn import hide_password

_DEST = "flag:"  # the argparse dest of a framework flag: "flag:section.key"


def add_setting_flags(p: argparse.ArgumentParser) -> None:
    """Give a command's parser the framework's flags (their values: ``overrides()``); the flags of the app's
    sections are the command line's leftovers (``resolve_flags``)."""
    for s in SETTINGS:
        if not s.flag:
            continue
        if s.name == "server.daemon":
            p.add_argument(s.flag, dest=_DEST + s.name, action="store_const", const="on", help=s.help)
        else:
            p.add_argument(s.flag, dest=_DEST + s.name, metavar=s.key.upper(), help=f"{s.help} ({s.name})")


def parse_override(text: str) -> tuple[str, str]:
    """Split the CLI's ``-s section.key=value`` into (name, value); ConfigError if malformed or unknown."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        # A mistyped "-s pool.dsn:mysql://u:pw@h" must not show the password.
        raise ConfigError(hide_password(f"invalid setting {text!r} (expected section.key=value)", text))
    check_name(name)
    return name, value.strip()


def overrides(sets: Sequence[str], app: str | None, args: argparse.Namespace) -> dict[str, str]:
    """The command line's values as ``section.key`` -> raw string: the ``-s`` texts ``sets`` in order, then
    the positional ``app``, then the framework's flags parsed into ``args`` (a flag wins over ``-s``)."""
    result: dict[str, str] = {}
    for text in sets:
        key, value = parse_override(text)
        result[key] = value
    if app:
        result["server.app"] = app
    for dest, value in vars(args).items():
        if dest.startswith(_DEST) and value is not None:
            result[dest[len(_DEST) :]] = value
    return result


def resolve_flags(tokens: Sequence[str], sections: Sequence[type[Section]]) -> dict[str, str]:
    """``--flag VALUE`` / ``--flag=VALUE`` tokens the framework's parser left over, as ``section.key``
    overrides of the app's sections; ConfigError for a token that is none of their flags."""
    flags = {s.flag: s.name for kind in sections for s in kind.settings() if s.flag}
    result: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        flag, eq, value = tokens[i].partition("=")
        if flag not in flags:
            offered = f" (the app's flags: {', '.join(sorted(flags))})" if flags else ""
            raise ConfigError(f"unrecognized argument {tokens[i]!r}{offered}")
        if not eq:
            if i + 1 >= len(tokens):
                raise ConfigError(f"{flag}: expected a value ({flags[flag]})", flags[flag])
            i += 1
            value = tokens[i]
        result[flags[flag]] = value
        i += 1
    return result
