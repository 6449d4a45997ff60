"""The configuration as loaded: ``load_config()`` reads every source in order and validates every value;
``Config`` holds them, typed (``cfg.server``, ``cfg.pool``, ``cfg.section(AppSettings)``), knows where
each came from (``prefork config``) and reads the file again on SIGHUP (``Config.reload()``).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from prefork.config.address import Address
from prefork.config.errors import ConfigError, did_you_mean
from prefork.config.framework import BY_NAME, FRAMEWORK, FRAMEWORK_SECTIONS, SETTINGS, PoolConfig, ServerConfig, setting
from prefork.config.section import Section
from prefork.config.sources import ENV_PREFIX, RawValue, check_name, convert, read_file, setting_of_variable
from prefork.db.dsn import DSN
from prefork.protocol.allow import AllowList
from prefork.tls import listener_settings

S = TypeVar("S", bound=Section)

TLS_KEYS = (
    "server.tls_cert", "server.tls_key", "server.tls_client_ca", "server.tls_min_version", "server.tls_ciphers",
    "server.tls_client_names",
)  # fmt: skip

# Keys with one value for all listeners or one per server.bind address (prefork.master.per_listener).
PER_LISTENER = (
    "server.proxy_protocol", "server.framing", "server.ack", "server.allow_from", "server.fd_name", *TLS_KEYS,
)  # fmt: skip
# What a wrong count of a per-listener key most likely means, besides.
_COUNT_HINTS = {"server.allow_from": "; the networks of one listener are separated by spaces, not commas"}


def _json_safe(value: Any) -> Any:
    if isinstance(value, (Address, DSN, AllowList, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)  # str(DSN) is redacted
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class Config:
    """Parsed, validated values: ``cfg.server`` and ``cfg.pool`` (typed sections), and an app's sections
    through ``cfg.section(TheirClass)``."""

    server: ServerConfig
    pool: PoolConfig

    def __init__(
        self,
        values: Mapping[str, Any],
        path: str | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, str] | None = None,
        file_keys: frozenset[str] = frozenset(),
        app_values: Iterable[RawValue] = (),
    ) -> None:
        self.path = path  # the INI file, if any
        self.file_keys = file_keys  # the "section.key" names of the framework the file set
        self.env = dict(env or {})  # the PREFORK_* environment used
        self.overrides = dict(overrides or {})  # "section.key" -> raw string given on the command line
        self.app_values = tuple(app_values)  # values of the app's sections, in the order of precedence
        self._values = dict(values)
        self.server = ServerConfig(**{s.key: self._values[s.name] for s in ServerConfig.settings()})
        self.pool = PoolConfig(**{s.key: self._values[s.name] for s in PoolConfig.settings()})

    def get(self, name: str) -> Any:
        """The value of a framework key, e.g. ``cfg.get("pool.max_size")``; ConfigError if unknown."""
        return self._values[setting(name).name]

    def section(self, kind: type[S]) -> S:
        """The app section ``kind`` (a prefork.settings.Section), its values parsed from every source in
        order; ConfigError (naming key, value and source) for an unknown key or a bad value."""
        if kind in FRAMEWORK:
            return getattr(self, kind.section_name)  # type: ignore[no-any-return]
        items = {s.key: s for s in kind.settings()}
        values: dict[str, Any] = {key: convert(s, s.default, "built-in default") for key, s in items.items()}
        for value in self.app_values:
            section, _, key = value.name.partition(".")
            if section != kind.section_name or not key:
                continue
            if key not in items:
                where = f"{value.where}: " if value.where else ""
                raise ConfigError(f"{where}unknown key {key!r} in [{section}]{did_you_mean(key, items)}", value.name)
            values[key] = convert(items[key], value.raw, value.where)
        return kind(**values)

    def check_sections(self, sections: Iterable[type[Section]], app: str = "") -> None:
        """Validate the app's values against the sections it declares: an unknown section in the file or
        on the command line, an unknown key or a bad value is a ConfigError; a PREFORK_<SECTION>_* variable
        of an undeclared section is ignored, like any other PREFORK_* variable."""
        declared = {kind.section_name: kind for kind in sections}
        for name in declared:
            if name in FRAMEWORK_SECTIONS:
                raise ConfigError(f"{app or 'the app'} declares the section [{name}], which is the framework's")
        for value in self.app_values:
            section = value.name.partition(".")[0]
            if section in declared or value.origin == "env":
                continue
            known = ", ".join(f"[{s}]" for s in (*FRAMEWORK_SECTIONS, *declared))
            hint = did_you_mean(section, [*FRAMEWORK_SECTIONS, *declared]) or f" (expected {known})"
            if value.origin == "file":
                raise ConfigError(f"{value.where}: unknown section [{section}]{hint}")
            raise ConfigError(f"unknown setting {value.name!r}{hint}", value.name)
        for kind in declared.values():
            self.section(kind)

    def as_dict(self, sections: Iterable[type[Section]] = ()) -> dict[str, dict[str, Any]]:
        """All values, JSON-safe: addresses as strings, the DSN with its password as ``***``; the app's
        ``sections`` after the framework's."""
        result: dict[str, dict[str, Any]] = {}
        kinds: tuple[type[Section], ...] = (*FRAMEWORK, *sections)
        for kind in kinds:
            values = self.section(kind)
            result[kind.section_name] = {s.key: _json_safe(getattr(values, s.key)) for s in kind.settings()}
        return result

    def sources(self, sections: Iterable[type[Section]] = ()) -> dict[str, str]:
        """Where each value came from: ``default``, ``file PATH``, ``env VAR`` or ``command line``."""
        kinds: tuple[type[Section], ...] = (*FRAMEWORK, *sections)
        result = {s.name: "default" for kind in kinds for s in kind.settings()}
        for name in self.file_keys:
            result[name] = f"file {self.path}"
        for var in sorted(self.env):
            env_name = setting_of_variable(var)
            if env_name in BY_NAME:
                result[env_name] = f"env {var}"
        for name in self.overrides:
            if name in BY_NAME:
                result[name] = "command line"
        for value in self.app_values:
            if value.name in result:
                result[value.name] = value.source
        return result

    def with_app_flags(self, overrides: Mapping[str, str]) -> Config:
        """This config with command-line values of the app's sections (its flags, resolved once its
        sections are known), after every other source. The file is not read again: the config stays the
        one that was checked."""
        added = []
        for name, raw in overrides.items():
            check_name(name)
            if name in BY_NAME:
                raise ConfigError(f"{name}: not a key of the app's sections", name)
            added.append(RawValue(name, raw, "command line"))
        return Config(
            self._values,
            path=self.path,
            env=self.env,
            overrides={**self.overrides, **overrides},
            file_keys=self.file_keys,
            app_values=(*self.app_values, *added),
        )

    def reload(self) -> Config:
        """A new Config from the file read again; env and overrides stay as given (SIGHUP). Raises ConfigError."""
        return load_config(self.path, self.env, self.overrides)

    def __repr__(self) -> str:
        return f"<Config path={self.path!r} overrides={sorted(self.overrides)}>"


def load_config(
    path: str | None = None, env: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None
) -> Config:
    """Defaults < file < environment < overrides, all validated; raise ConfigError on the first problem.

    ``env`` defaults to ``os.environ``. ``overrides`` maps ``"section.key"`` to a raw string; a None value
    means "not given" (handy for unset command-line flags). Values of sections other than the framework's
    are kept raw for the app's declaration (Config.check_sections).
    """
    environ = os.environ if env is None else env
    used_env = {var: value for var, value in environ.items() if var.startswith(ENV_PREFIX)}
    given = {name: str(value) for name, value in (overrides or {}).items() if value is not None}
    values = {s.name: convert(s, s.default, "built-in default") for s in SETTINGS}
    app_values: list[RawValue] = []
    file_keys: frozenset[str] = frozenset()
    if path is not None:
        from_file, app_values = read_file(path)
        file_keys = frozenset(from_file)
        for name, raw in from_file.items():
            values[name] = convert(BY_NAME[name], raw, path)
    for var in sorted(used_env):
        env_name = setting_of_variable(var)
        if env_name in BY_NAME:
            values[env_name] = convert(BY_NAME[env_name], used_env[var], var)
        elif env_name is not None:
            app_values.append(RawValue(env_name, used_env[var], "env", var))
    for name, raw in given.items():
        check_name(name)
        if name in BY_NAME:
            values[name] = convert(BY_NAME[name], raw, None)
        else:
            app_values.append(RawValue(name, raw, "command line"))
    binds = values["server.bind"]
    for name in PER_LISTENER:
        if len(values[name]) not in (1, len(binds)):
            raise ConfigError(
                f"{name}: {len(values[name])} values for the {len(binds)} addresses of server.bind "
                f"(give one for all, or one per address{_COUNT_HINTS.get(name, '')})",
                name,
            )
    _check_unix_allow_from(values["server.allow_from"], binds)
    listener_settings({name: values[name] for name in TLS_KEYS}, len(binds))  # ConfigError: a key without a cert
    if values["pool.min_size"] > values["pool.max_size"]:
        raise ConfigError(
            f"pool.min_size: invalid value {str(values['pool.min_size'])!r} "
            f"(must not exceed pool.max_size = {values['pool.max_size']})",
            "pool.min_size",
        )
    return Config(values, path=path, env=used_env, overrides=given, file_keys=file_keys, app_values=app_values)


def _check_unix_allow_from(lists: tuple[AllowList, ...], binds: list[Address]) -> None:
    """server.allow_from does not apply to a unix socket listener (its peers have no address: its file mode,
    server.unix_mode, says who may connect). One list for all listeners applies to the TCP ones; networks
    that would apply to unix sockets alone are a ConfigError, not ignored in silence."""
    if len(lists) == 1:  # one list for all listeners: an error only when none is TCP
        named = [] if lists[0].everyone or any(a.kind == "tcp" for a in binds) else binds
    else:
        named = [a for a, allow in zip(binds, lists, strict=True) if not allow.everyone and a.kind == "unix"]
    if named:
        raise ConfigError(
            f"server.allow_from: invalid value {', '.join(map(str, lists))!r} (networks for {named[0]}, a unix "
            "socket listener: allow_from applies to TCP listeners only; give any for it, and restrict the socket "
            "with server.unix_mode)",
            "server.allow_from",
        )
