"""Configuration: the one place that turns strings into settings (SPEC section 4).

Every setting has a built-in default, and a value from a later source replaces one from an earlier one:

    built-in defaults < INI file (``-c FILE``) < environment ``PREFORK_<SECTION>_<KEY>`` < command line

so ``PREFORK_POOL_MAX_SIZE=20`` beats ``max_size = 5`` in the file's ``[pool]``, and ``--pool-max 30`` (or
``-s pool.max_size=30``) beats both. Every value from every source is validated, even one that a later
source replaces: a bad file is reported now, not on the first run without the override. Unknown sections,
keys and ``PREFORK_SERVER_*`` / ``PREFORK_POOL_*`` variables are errors, not warnings, so a typo never
silently leaves a default in force.

The framework owns ``[server]`` and ``[pool]`` (ServerConfig, PoolConfig). Every other section belongs to
the application, which declares it (prefork.settings): the master never imports the app, so a Config
keeps those values as raw strings, in the order of their sources, and ``check_sections()`` validates
them once the app's sections are known (prefork.appconfig does that in a forked probe for the master).
``PREFORK_<SECTION>_*`` variables of a section the app does not declare are ignored, as are other
``PREFORK_*`` variables.

Errors are ConfigError: one line naming the key and the bad value. The database password never appears
in an error message or in ``Config.as_dict()``. SIGHUP calls ``Config.reload()``: the file is read again,
while the environment and the command line stay as they were given at start.
"""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import keyword
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from prefork.db.dsn import DSN, DSNError, hide_password, parse_dsn
from prefork.proxy_protocol import MODES as PROXY_MODES
from prefork.proxy_protocol import parse_networks
from prefork.settings import (
    KEY_NAME,
    SECTION_NAME,
    Section,
    Setting,
    boolean,
    checked,
    choice,
    count,
    option,
    optional,
    positive_int,
    positive_seconds,
    seconds,
)

ENV_PREFIX = "PREFORK_"
FRAMEWORK_SECTIONS = ("server", "pool")

__all__ = [
    "Address",
    "Config",
    "ConfigError",
    "PoolConfig",
    "RawValue",
    "SETTINGS",
    "ServerConfig",
    "Setting",
    "load_config",
    "parse_address",
    "parse_override",
    "setting",
]


class ConfigError(Exception):
    """A bad config: the message is ONE line naming the key (section.key) and the bad value, e.g.
    "server.workers: invalid value 'abc' (expected a positive integer or 'auto')".

    ``key`` is the setting's name when the error is about one known setting (the CLI may map it to a flag).
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        # One line always: the CLI prints it as it is and exits 2.
        super().__init__(" ".join(str(message).splitlines()))
        self.key = key


@dataclass(frozen=True)
class Address:
    """A listening address: TCP ``host:port`` or a unix socket ``path``."""

    kind: str  # "tcp" or "unix"
    host: str = ""  # tcp only; IPv6 without brackets
    port: int = 0  # tcp only; 0 = any free port
    path: str = ""  # unix only

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return format_host_port(self.host, self.port)


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets: the one way addresses are written."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---- value parsers of the framework's own keys (prefork.settings has the general ones) ----

_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_ADDRESS = "expected HOST:PORT, [IPv6]:PORT or unix:PATH with a port 0-65535"


def parse_address(text: str) -> Address:
    """Parse one ``HOST:PORT``, ``[v6]:PORT`` or ``unix:PATH``; raise ValueError saying what was expected."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path or "\0" in path:
            raise ValueError("expected unix:PATH with a non-empty path")
        return Address("unix", path=path)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not _PORT.fullmatch(port) or int(port) > 65535:
        raise ValueError(_ADDRESS)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("expected an IPv6 address inside the brackets") from None
    elif ":" in host:
        raise ValueError("an IPv6 address needs brackets: [v6]:PORT")
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError("expected a valid IPv4 address") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError("expected a valid host name")
    return Address("tcp", host=host, port=int(port))


def _parse_bind(text: str) -> list[Address]:
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ValueError("expected one or more addresses, comma separated")
    addresses: list[Address] = []
    for item in items:
        if not item:
            raise ValueError("an empty address in the list")
        try:
            address = parse_address(item)
        except ValueError as exc:
            if len(items) > 1:  # say which one of the list is bad
                raise ValueError(f"{item!r}: {exc}") from None
            raise
        if address in addresses and not (address.kind == "tcp" and address.port == 0):
            raise ValueError(f"{item!r} is listed twice")
        addresses.append(address)
    return addresses


def _parse_metrics_bind(text: str) -> Address | None:
    if not text.strip():
        return None
    address = parse_address(text)
    if address.kind != "tcp":
        raise ValueError("expected HOST:PORT; the metrics endpoint is TCP only")
    return address


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on every platform
        return os.cpu_count() or 1


def _parse_workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return _usable_cpus()
    return checked("expected a positive integer or 'auto'", lambda t: re.fullmatch(r"\+?0*[1-9][0-9]*", t), int)(text)


def _is_app(text: str) -> bool:
    module, sep, attribute = text.partition(":")
    return bool(sep) and all(w.isidentifier() and not keyword.iskeyword(w) for w in [*module.split("."), attribute])


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_parse_app = checked("expected module.path:attribute", _is_app)
# The name goes into process titles and log lines: no control characters.
_parse_name = checked("expected a non-empty printable name", lambda t: t and t.isprintable())
_parse_log_file = checked("expected a file path, or - for stderr", bool)
_parse_log_level = choice(*_LOG_LEVELS)
_parse_log_format = choice("text", "json")
_parse_mode = checked(
    "expected an octal file mode such as 0660, or nothing",
    lambda t: t == "" or re.fullmatch(r"0?[0-7]{3}", t),
    lambda t: int(t, 8) if t else None,
)
_parse_paths = checked(
    "expected directories, comma separated",
    lambda t: True,
    lambda t: tuple(p.strip() for p in t.split(",") if p.strip()),
)


def _parse_proxy_modes(text: str) -> tuple[str, ...]:
    modes = tuple(item.strip().lower() for item in text.split(","))
    if not all(mode in PROXY_MODES for mode in modes):
        raise ValueError(f"expected {', '.join(PROXY_MODES)}, or one of them per listener, comma separated")
    return modes


def _parse_networks(text: str) -> tuple[Any, ...]:
    networks = parse_networks(text)
    if not networks:
        raise ValueError("expected one or more networks, e.g. 127.0.0.1/32,10.0.0.0/8")
    return networks


# ---- the framework's sections, in the spec's order ----


# fmt: off
class ServerConfig(Section, name="server"):
    """``[server]``: the master, the workers and the line protocol."""

    bind: list[Address] = option(
        "127.0.0.1:32777", _parse_bind,
        "HOST:PORT, [IPv6]:PORT or unix:PATH to listen on, comma separated; port 0 = any free port", flag="--bind")
    workers: int = option(
        "auto", _parse_workers, "number of worker processes; auto = CPUs usable by this process", flag="--workers")
    worker_connections: int = option(
        "1000", positive_int, "concurrent clients per worker; more wait in the backlog", flag="--worker-connections")
    app: str = option("workers.ingest:app", _parse_app, "module:attribute of the line application")
    chdir: str | None = option(
        "", optional,
        "directory workers import the app from (empty = where prefork started, as $PWD names it, so a "
        "symlinked release directory is followed on reload)", flag="--chdir")
    pythonpath: tuple[str, ...] = option(
        "", _parse_paths, "directories put first on the workers' sys.path, comma separated", flag="--pythonpath")
    timeout: float = option(
        "30", positive_seconds, "a worker silent (no heartbeat) this many seconds is killed and replaced",
        flag="--timeout")
    graceful_timeout: float = option(
        "30", seconds, "seconds a stopping worker gets to finish before it is killed", flag="--graceful-timeout")
    max_requests: int = option(
        "0", count, "restart a worker after this many lines (0 = never)", flag="--max-requests")
    max_requests_jitter: int = option(
        "0", count, "add a random 0..N to each worker's max_requests, so workers do not restart together",
        flag="--max-requests-jitter")
    client_timeout: float = option(
        "300", positive_seconds, "close a client that sends no complete line for this many seconds",
        flag="--client-timeout")
    max_line: int = option(
        "65536", positive_int, "longest accepted line in bytes, terminator (LF or CR LF) and line id prefix excluded",
        flag="--max-line")
    ack: bool = option("on", boolean, "off: send no replies (fire-and-forget clients)", flag="--ack")
    line_ids: bool = option(
        "off", boolean, "on: a line may begin with @ID and a space, a client-chosen id the app stores once (the app "
        "must accept ids)", flag="--line-ids")
    proxy_protocol: tuple[str, ...] = option(
        "off", _parse_proxy_modes,
        "a PROXY protocol header (HAProxy send-proxy) begins each connection from proxy_allow_from: off, v1, v2 "
        "or auto (either); one for all listeners, or one per server.bind address, comma separated",
        flag="--proxy-protocol")
    proxy_allow_from: tuple[Any, ...] = option(
        "127.0.0.1/32,::1/128", _parse_networks,
        "networks whose connections must begin with a PROXY header (any other peer sending one is closed)",
        flag="--proxy-allow-from")
    backlog: int = option(
        "4096", positive_int,
        "connections the kernel queues for each listener before refusing (capped by net.core.somaxconn)",
        flag="--backlog")
    reuse_port: bool = option(
        "off", boolean, "set SO_REUSEPORT on TCP listeners (another process may bind the same port)",
        flag="--reuse-port")
    unix_mode: int | None = option(
        "", _parse_mode, "file mode of unix socket listeners, e.g. 0660 (empty = as the umask leaves it)",
        flag="--unix-mode")
    name: str = option("prefork", _parse_name, "shown in process titles, logs and metrics", flag="--name")
    pidfile: str | None = option(
        "", optional, "file holding the master's pid (empty = none); reload/stop/status -c FILE use it",
        flag="--pidfile")
    daemon: bool = option("off", boolean, "detach and run in the background", flag="--daemon")
    user: str | None = option("", optional, "run workers as this user (empty = unchanged)", flag="--user")
    group: str | None = option("", optional, "run workers as this group (empty = unchanged)", flag="--group")
    log_file: str = option(
        "-", _parse_log_file,
        "log file, - = stderr, syslog or syslog:ADDRESS (/dev/log, HOST:PORT); USR1 reopens a file",
        flag="--log-file")
    log_format: str = option(
        "text", _parse_log_format,
        "text, or json: one object per line (time, level, logger, pid, generation, message, exception)",
        flag="--log-format")
    log_level: str = option(
        "info", _parse_log_level, "debug, info, warning, error or critical", flag="--log-level")
    runtime_dir: str | None = option(
        "", optional,
        "where the master keeps its state directory (empty = $RUNTIME_DIRECTORY, else /run/prefork as root, "
        "else $XDG_RUNTIME_DIR or the temp dir)", flag="--runtime-dir")
    metrics_bind: Address | None = option(
        "", _parse_metrics_bind, "HOST:PORT where the master serves Prometheus text at /metrics (empty = off)",
        flag="--metrics-bind")


class PoolConfig(Section, name="pool"):
    """``[pool]``: each worker's MySQL connection pool (prefork.pool.Pool.from_config)."""

    dsn: DSN = option(
        "mysql://root@127.0.0.1:3306/test", parse_dsn,
        "mysql://user:password@host:port/db?unix_socket=...&charset=...", flag="--dsn")
    min_size: int = option("1", count, "connections kept open once the pool is first used", flag="--pool-min")
    max_size: int = option(
        "10", positive_int, "hard upper bound of open connections per worker", flag="--pool-max")
    timeout: float = option(
        "10", positive_seconds, "seconds an acquire waits before PoolTimeout", flag="--pool-timeout")
    max_uses: int = option("0", count, "close a connection after this many checkouts (0 = unlimited)")
    max_idle: float = option("300", seconds, "close connections idle this many seconds, down to min_size")
    max_lifetime: float = option("3600", seconds, "close a connection this many seconds old at its next return")
    ping_interval: float = option(
        "30", seconds, "ping a connection on checkout if it was idle longer than this many seconds")
    leak_timeout: float = option(
        "0", seconds, "warn with the acquirer's stack when a checkout is held longer than this (0 = off)")
# fmt: on

FRAMEWORK = (ServerConfig, PoolConfig)
SETTINGS: tuple[Setting, ...] = ServerConfig.settings() + PoolConfig.settings()
_BY_NAME = {s.name: s for s in SETTINGS}

S = TypeVar("S", bound=Section)


def _suggest(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def setting(name: str) -> Setting:
    """The framework setting called ``section.key``; ConfigError("unknown setting ...") if there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown setting {name!r}{_suggest(name, _BY_NAME)}") from None


def _check_name(name: str) -> None:
    """A framework setting, or a well-formed name in an app's section (known only once the app is)."""
    section, _, key = name.partition(".")
    if section in FRAMEWORK_SECTIONS or not (SECTION_NAME.fullmatch(section) and KEY_NAME.fullmatch(key)):
        setting(name)


def parse_override(text: str) -> tuple[str, str]:
    """Split the CLI's ``-s section.key=value`` into (name, value); ConfigError if malformed or unknown."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        # A mistyped "-s pool.dsn:mysql://u:pw@h" must not show the password.
        raise ConfigError(hide_password(f"invalid setting {text!r} (expected section.key=value)", text))
    _check_name(name)
    return name, value.strip()


# ---- loading ----


def _convert(item: Setting, raw: str, source: str | None) -> Any:
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


def _read_file(path: str) -> tuple[dict[str, str], list[RawValue]]:
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
            elif name not in _BY_NAME:
                keys = [s.key for s in SETTINGS if s.section == section]
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]{_suggest(key, keys)}")
            else:
                values[name] = raw
        if not parser.items(section) and section not in FRAMEWORK_SECTIONS:
            others.append(RawValue(f"{section}.", "", "file", path))  # an empty section is still checked
    return values, others


def _env_name(var: str) -> str | None:
    """The ``section.key`` a PREFORK_<SECTION>_<KEY> variable names (None: not a setting variable);
    ConfigError for an unknown key of a framework section."""
    section, sep, key = var[len(ENV_PREFIX) :].partition("_")
    if not var.startswith(ENV_PREFIX) or not sep:
        return None
    section, key = section.lower(), key.lower()
    name = f"{section}.{key}"
    if section in FRAMEWORK_SECTIONS:
        if name not in _BY_NAME:
            raise ConfigError(f"{var}: unknown setting {name!r}{_suggest(name, _BY_NAME)}")
        return name
    return name if SECTION_NAME.fullmatch(section) and KEY_NAME.fullmatch(key) else None


def _json_safe(value: Any) -> Any:
    if isinstance(value, (Address, DSN, ipaddress.IPv4Network, ipaddress.IPv6Network)):
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
        values: dict[str, Any] = {key: _convert(s, s.default, "built-in default") for key, s in items.items()}
        for value in self.app_values:
            section, _, key = value.name.partition(".")
            if section != kind.section_name or not key:
                continue
            if key not in items:
                where = f"{value.where}: " if value.where else ""
                raise ConfigError(f"{where}unknown key {key!r} in [{section}]{_suggest(key, items)}", value.name)
            values[key] = _convert(items[key], value.raw, value.where)
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
            hint = _suggest(section, [*FRAMEWORK_SECTIONS, *declared]) or f" (expected {known})"
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
            env_name = _env_name(var)
            if env_name in _BY_NAME:
                result[env_name] = f"env {var}"
        for name in self.overrides:
            if name in _BY_NAME:
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
            _check_name(name)
            if name in _BY_NAME:
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
    values = {s.name: _convert(s, s.default, "built-in default") for s in SETTINGS}
    app_values: list[RawValue] = []
    file_keys: frozenset[str] = frozenset()
    if path is not None:
        from_file, app_values = _read_file(path)
        file_keys = frozenset(from_file)
        for name, raw in from_file.items():
            values[name] = _convert(_BY_NAME[name], raw, path)
    for var in sorted(used_env):
        env_name = _env_name(var)
        if env_name in _BY_NAME:
            values[env_name] = _convert(_BY_NAME[env_name], used_env[var], var)
        elif env_name is not None:
            app_values.append(RawValue(env_name, used_env[var], "env", var))
    for name, raw in given.items():
        _check_name(name)
        if name in _BY_NAME:
            values[name] = _convert(_BY_NAME[name], raw, None)
        else:
            app_values.append(RawValue(name, raw, "command line"))
    modes, binds = values["server.proxy_protocol"], values["server.bind"]
    if len(modes) not in (1, len(binds)):
        raise ConfigError(
            f"server.proxy_protocol: {len(modes)} values for the {len(binds)} addresses of server.bind "
            "(give one for all, or one per address)",
            "server.proxy_protocol",
        )
    if values["pool.min_size"] > values["pool.max_size"]:
        raise ConfigError(
            f"pool.min_size: invalid value {str(values['pool.min_size'])!r} "
            f"(must not exceed pool.max_size = {values['pool.max_size']})",
            "pool.min_size",
        )
    return Config(values, path=path, env=used_env, overrides=given, file_keys=file_keys, app_values=app_values)
