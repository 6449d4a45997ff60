"""The sources of values: the INI file (``-c FILE``) and the ``PREFORK_<SECTION>_<KEY>`` environment read,
each value kept with where it came from (the command line's values: prefork.config.flags).

A value of a framework key is parsed here, naming its source when it is bad; a value of any other section
is kept raw (RawValue) until the app's declaration can parse it.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from typing import Any

from prefork.config.errors import ConfigError, did_you_mean
from prefork.config.framework import BY_NAME, FRAMEWORK_SECTIONS, SETTINGS, setting
from prefork.config.section import KEY_NAME, SECTION_NAME, Setting
from prefork.db.dsn import DSNError, hide_password, parse_dsn

ENV_PREFIX = "PREFORK_"


def check_name(name: str) -> None:
    """A framework setting, or a well-formed name in an app's section (known only once the app is)."""
    section, _, key = name.partition(".")
    if section in FRAMEWORK_SECTIONS or not (SECTION_NAME.fullmatch(section) and KEY_NAME.fullmatch(key)):
        setting(name)


def convert(item: Setting, raw: str, source: str | None) -> Any:
    """Parse one raw value; a ConfigError names the source (file path or variable), the key and the value."""
    prefix = f"{source}: " if source else ""
    try:
        return item.parse(raw)
    except DSNError as exc:  # its message already names the (redacted) DSN
        message = f"{prefix}{item.name}: {exc}"
    except ValueError as exc:
        message = f"{prefix}{item.name}: invalid value {raw!r} ({exc})"
    if item.parse is parse_dsn:
        message = hide_password(message, raw)
    raise ConfigError(message, item.name)


@dataclass(frozen=True)
class RawValue:
    """A value of an app's section as given, before the app's declaration can parse it."""

    name: str  # section.key
    raw: str
    origin: str  # "file", "env" or "command line"
    where: str | None = None  # the file's path or the variable's name

    @property
    def source(self) -> str:
        """As ``prefork config`` shows it: ``file PATH``, ``env VAR`` or ``command line``."""
        return f"{self.origin} {self.where}" if self.where else self.origin


def read_file(path: str) -> tuple[dict[str, str], list[RawValue]]:
    """The raw ``section.key`` values of an INI file: the framework's, and the rest (app sections, or
    unknown ones: checked once the app's sections are known). ConfigError naming the path."""
    # default_section that no header can name: a [DEFAULT] section is then reported as unknown instead of
    # silently feeding its keys into every section.
    parser = configparser.ConfigParser(interpolation=None, default_section="\0")
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh, source=path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read config file: not UTF-8 text") from None
    # configparser's own messages quote the offending line, which may hold a password: say it ourselves.
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(f"{path}: line {exc.lineno}: a key before the first [section] header") from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(f"{path}: line {exc.lineno}: duplicate key {exc.option!r} in [{exc.section}]") from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(f"{path}: line {exc.lineno}: duplicate section [{exc.section}]") from None
    except configparser.ParsingError as exc:
        line = exc.errors[0][0] if exc.errors else "?"
        raise ConfigError(f"{path}: line {line}: expected 'key = value', a [section] or a # comment") from None
    except configparser.Error as exc:
        raise ConfigError(f"{path}: cannot parse config file ({type(exc).__name__})") from None
    values: dict[str, str] = {}
    others: list[RawValue] = []
    for section in parser.sections():
        for key, raw in parser.items(section):
            name = f"{section}.{key}"
            if section not in FRAMEWORK_SECTIONS:
                others.append(RawValue(name, raw, "file", path))
            elif name not in BY_NAME:
                keys = [s.key for s in SETTINGS if s.section == section]
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]{did_you_mean(key, keys)}")
            else:
                values[name] = raw
        if not parser.items(section) and section not in FRAMEWORK_SECTIONS:
            others.append(RawValue(f"{section}.", "", "file", path))  # an empty section is still checked
    return values, others


def setting_of_variable(var: str) -> str | None:
    """The ``section.key`` a PREFORK_<SECTION>_<KEY> variable names (None: not a setting variable);
    ConfigError for an unknown key of a framework section."""
    section, sep, key = var[len(ENV_PREFIX) :].partition("_")
    if not var.startswith(ENV_PREFIX) or not sep:
        return None
    section, key = section.lower(), key.lower()
    name = f"{section}.{key}"
    if section in FRAMEWORK_SECTIONS:
        if name not in BY_NAME:
            raise ConfigError(f"{var}: unknown setting {name!r}{did_you_mean(name, BY_NAME)}")
        return name
    return name if SECTION_NAME.fullmatch(section) and KEY_NAME.fullmatch(key) else None
