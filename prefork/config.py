"""Configuration: the one place that turns strings into settings (SPEC section 4).

Every setting has a built-in default, and a value from a later source replaces one from an earlier one:

    built-in defaults < INI file (``-c FILE``) < environment ``PREFORK_<SECTION>_<KEY>`` < command line

so ``PREFORK_POOL_MAX_SIZE=20`` beats ``max_size = 5`` in the file's ``[pool]``, and ``--pool-max 30`` (or
``-s pool.max_size=30``) beats both. Every value from every source is validated, even one that a later
source replaces: a bad file is reported now, not on the first run without the override. Unknown sections,
keys and ``PREFORK_SERVER_*`` / ``PREFORK_POOL_*`` / ``PREFORK_INGEST_*`` variables are errors, not
warnings, so a typo never silently leaves a default in force; other ``PREFORK_*`` variables are ignored.

Errors are ConfigError: one line naming the key and the bad value. The database password never appears
in an error message or in ``Config.as_dict()``. SIGHUP calls ``Config.reload()``: the file is read again,
while the environment and the command line stay as they were given at start.
"""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import keyword
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, make_dataclass
from typing import Any
from urllib.parse import unquote

from prefork.dsn import DSN, DSNError, parse_dsn

ENV_PREFIX = "PREFORK_"
SECTIONS = ("server", "pool", "ingest")


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
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# ---- value parsers: each takes the raw string and raises ValueError(<what was expected>) ----

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


def _checked(expected: str, ok: Callable[[str], Any], convert: Callable[[str], Any] = str) -> Callable[[str], Any]:
    """A parser of the stripped text: ValueError(expected) unless ok(text), else convert(text)."""

    def parse(text: str) -> Any:
        text = text.strip()
        if not ok(text):
            raise ValueError(expected)
        return convert(text)

    return parse


def _int(minimum: int) -> Callable[[str], int]:
    # A strict pattern, not int() alone: int() would also take "1_000" and non-ASCII digits.
    expected = "expected a positive integer" if minimum == 1 else f"expected an integer >= {minimum}"
    return _checked(expected, lambda t: re.fullmatch(r"\+?[0-9]+", t) and int(t) >= minimum, int)


def _parse_workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return _usable_cpus()
    return _checked("expected a positive integer or 'auto'", lambda t: re.fullmatch(r"\+?0*[1-9][0-9]*", t), int)(text)


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _duration(positive: bool) -> Callable[[str], float]:
    expected = f"expected seconds {'> 0' if positive else '>= 0'}, e.g. 30, 2.5, 500ms, 5m"

    def parse(text: str) -> float:
        match = _DURATION.fullmatch(text.strip().lower())
        value = float(match[1]) * _UNITS[match[2]] if match else math.nan
        if not math.isfinite(value) or (positive and value <= 0):
            raise ValueError(expected)
        return value

    return parse


_SIZE = re.compile(r"([0-9]+)\s*(k|kb|kib|m|mb|mib|g|gb|gib)?")
_SIZE_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _parse_size(text: str) -> int:
    """Bytes, with an optional binary unit: 1048576, 512K, 64MiB, 1G."""
    match = _SIZE.fullmatch(text.strip().lower())
    value = int(match[1]) * _SIZE_UNITS[match[2] and match[2][0]] if match else 0
    if value < 1:
        raise ValueError("expected a positive size in bytes, e.g. 1048576, 512K, 64MiB, 1G")
    return value


def _is_app(text: str) -> bool:
    module, sep, attribute = text.partition(":")
    return bool(sep) and all(w.isidentifier() and not keyword.iskeyword(w) for w in [*module.split("."), attribute])


_BOOLS = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_parse_bool = _checked(
    "expected on/off, true/false, yes/no or 1/0", lambda t: t.lower() in _BOOLS, lambda t: _BOOLS[t.lower()]
)
_parse_app = _checked("expected module.path:attribute", _is_app)
# The name goes into process titles and log lines: no control characters.
_parse_name = _checked("expected a non-empty printable name", lambda t: t and t.isprintable())
_parse_optional = _checked("", lambda t: True, lambda t: t or None)  # empty = None
_parse_log_file = _checked("expected a file path, or - for stderr", bool)
_parse_log_level = _checked(f"expected one of {', '.join(_LOG_LEVELS)}", lambda t: t.lower() in _LOG_LEVELS, str.lower)
_parse_log_format = _checked("expected text or json", lambda t: t.lower() in ("text", "json"), str.lower)
_INGEST_METHODS = ("auto", "load", "insert")
_parse_ingest_method = _checked(
    f"expected one of {', '.join(_INGEST_METHODS)}", lambda t: t.lower() in _INGEST_METHODS, str.lower
)
_parse_mode = _checked(
    "expected an octal file mode such as 0660, or nothing",
    lambda t: t == "" or re.fullmatch(r"0?[0-7]{3}", t),
    lambda t: int(t, 8) if t else None,
)
_parse_paths = _checked(
    "expected directories, comma separated",
    lambda t: True,
    lambda t: tuple(p.strip() for p in t.split(",") if p.strip()),
)
_parse_table = _checked(
    "expected a table name of 1-64 characters without backticks or NUL",
    lambda t: 1 <= len(t) <= 64 and "`" not in t and "\0" not in t,
)


# ---- the settings, in the spec's order ----


@dataclass(frozen=True)
class Setting:
    """One configuration key: where it lives, its default (as a string), how to parse it, its help."""

    section: str
    key: str
    default: str
    parse: Callable[[str], Any]  # raw string -> value; raises ValueError (DSNError for pool.dsn)
    help: str
    flag: str | None = None  # long command-line flag, e.g. "--bind"

    @property
    def name(self) -> str:
        """``section.key``, e.g. ``server.bind``."""
        return f"{self.section}.{self.key}"


_POSITIVE_INT, _COUNT = _int(1), _int(0)
_POSITIVE_SECONDS, _SECONDS = _duration(True), _duration(False)

# fmt: off
SETTINGS: tuple[Setting, ...] = (
    Setting("server", "bind", "127.0.0.1:32777", _parse_bind,
            "HOST:PORT, [IPv6]:PORT or unix:PATH to listen on, comma separated; port 0 = any free port", "--bind"),
    Setting("server", "workers", "auto", _parse_workers,
            "number of worker processes; auto = CPUs usable by this process", "--workers"),
    Setting("server", "worker_connections", "1000", _POSITIVE_INT,
            "concurrent clients per worker; more wait in the backlog", "--worker-connections"),
    Setting("server", "app", "workers.ingest:app", _parse_app, "module:attribute of the line application"),
    Setting("server", "chdir", "", _parse_optional,
            "directory workers import the app from (empty = where prefork started, as $PWD names it, so a "
            "symlinked release directory is followed on reload)", "--chdir"),
    Setting("server", "pythonpath", "", _parse_paths,
            "directories put first on the workers' sys.path, comma separated", "--pythonpath"),
    Setting("server", "timeout", "30", _POSITIVE_SECONDS,
            "a worker silent (no heartbeat) this many seconds is killed and replaced", "--timeout"),
    Setting("server", "graceful_timeout", "30", _SECONDS,
            "seconds a stopping worker gets to finish before it is killed", "--graceful-timeout"),
    Setting("server", "max_requests", "0", _COUNT,
            "restart a worker after this many lines (0 = never)", "--max-requests"),
    Setting("server", "max_requests_jitter", "0", _COUNT,
            "add a random 0..N to each worker's max_requests, so workers do not restart together",
            "--max-requests-jitter"),
    Setting("server", "client_timeout", "300", _POSITIVE_SECONDS,
            "close a client that sends no complete line for this many seconds", "--client-timeout"),
    Setting("server", "max_line", "65536", _POSITIVE_INT,
            "longest accepted line in bytes, terminator (LF or CR LF) excluded", "--max-line"),
    Setting("server", "ack", "on", _parse_bool, "off: send no replies (fire-and-forget clients)", "--ack"),
    Setting("server", "backlog", "4096", _POSITIVE_INT,
            "connections the kernel queues for each listener before refusing (capped by net.core.somaxconn)",
            "--backlog"),
    Setting("server", "reuse_port", "off", _parse_bool,
            "set SO_REUSEPORT on TCP listeners (another process may bind the same port)", "--reuse-port"),
    Setting("server", "unix_mode", "", _parse_mode,
            "file mode of unix socket listeners, e.g. 0660 (empty = as the umask leaves it)", "--unix-mode"),
    Setting("server", "name", "prefork", _parse_name, "shown in process titles, logs and metrics", "--name"),
    Setting("server", "pidfile", "", _parse_optional,
            "file holding the master's pid (empty = none); reload/stop/status -c FILE use it", "--pidfile"),
    Setting("server", "daemon", "off", _parse_bool, "detach and run in the background", "--daemon"),
    Setting("server", "user", "", _parse_optional, "run workers as this user (empty = unchanged)", "--user"),
    Setting("server", "group", "", _parse_optional, "run workers as this group (empty = unchanged)", "--group"),
    Setting("server", "log_file", "-", _parse_log_file,
            "log file, - = stderr, syslog or syslog:ADDRESS (/dev/log, HOST:PORT); USR1 reopens a file",
            "--log-file"),
    Setting("server", "log_format", "text", _parse_log_format,
            "text, or json: one object per line (time, level, logger, pid, generation, message, exception)",
            "--log-format"),
    Setting("server", "log_level", "info", _parse_log_level,
            "debug, info, warning, error or critical", "--log-level"),
    Setting("server", "runtime_dir", "", _parse_optional,
            "where the master keeps its state directory (empty = $RUNTIME_DIRECTORY, else /run/prefork as root, "
            "else $XDG_RUNTIME_DIR or the temp dir)", "--runtime-dir"),
    Setting("server", "metrics_bind", "", _parse_metrics_bind,
            "HOST:PORT where the master serves Prometheus text at /metrics (empty = off)", "--metrics-bind"),
    Setting("pool", "dsn", "mysql://root@127.0.0.1:3306/test", parse_dsn,
            "mysql://user:password@host:port/db?unix_socket=...&charset=...", "--dsn"),
    Setting("pool", "min_size", "1", _COUNT, "connections kept open once the pool is first used", "--pool-min"),
    Setting("pool", "max_size", "10", _POSITIVE_INT,
            "hard upper bound of open connections per worker", "--pool-max"),
    Setting("pool", "timeout", "10", _POSITIVE_SECONDS,
            "seconds an acquire waits before PoolTimeout", "--pool-timeout"),
    Setting("pool", "max_uses", "0", _COUNT, "close a connection after this many checkouts (0 = unlimited)"),
    Setting("pool", "max_idle", "300", _SECONDS, "close connections idle this many seconds, down to min_size"),
    Setting("pool", "max_lifetime", "3600", _SECONDS, "close a connection this many seconds old at its next return"),
    Setting("pool", "ping_interval", "30", _SECONDS,
            "ping a connection on checkout if it was idle longer than this many seconds"),
    Setting("pool", "leak_timeout", "0", _SECONDS,
            "warn with the acquirer's stack when a checkout is held longer than this (0 = off)"),
    Setting("ingest", "table", "received_lines", _parse_table,
            "target table (always quoted with backticks in SQL)", "--table"),
    Setting("ingest", "batch_size", "1000", _POSITIVE_INT, "most rows per transaction", "--batch-size"),
    Setting("ingest", "flushers", "2", _POSITIVE_INT, "concurrent transactions per worker", "--flushers"),
    Setting("ingest", "commit_timeout", "30", _POSITIVE_SECONDS,
            "give up on a line (reply ERR unavailable) after this many seconds", "--commit-timeout"),
    Setting("ingest", "max_pending", "100000", _POSITIVE_INT,
            "lines buffered per worker before it stops reading from clients", "--max-pending"),
    Setting("ingest", "max_pending_bytes", "64MiB", _parse_size,
            "memory of buffered lines per worker before it stops reading from clients (512K, 64MiB, 1G)",
            "--max-pending-bytes"),
    Setting("ingest", "method", "auto", _parse_ingest_method,
            "how batches are sent: load (LOAD DATA LOCAL INFILE from memory), insert (multi-row INSERT), "
            "auto (load, falling back to insert when the server refuses it)", "--ingest-method"),
)
# fmt: on
_BY_NAME = {s.name: s for s in SETTINGS}
# The values of one section: attribute access (cfg.pool.max_size), read-only, comparable between reloads.
_SECTION_TYPES = {
    section: make_dataclass(
        f"{section.capitalize()}Config", [s.key for s in SETTINGS if s.section == section], frozen=True
    )
    for section in SECTIONS
}


def _suggest(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def setting(name: str) -> Setting:
    """The setting called ``section.key``; ConfigError("unknown setting ...") if there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown setting {name!r}{_suggest(name, _BY_NAME)}") from None


def parse_override(text: str) -> tuple[str, str]:
    """Split the CLI's ``-s section.key=value`` into (name, value); ConfigError if malformed or unknown."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        # A mistyped "-s pool.dsn:mysql://u:pw@h" must not show the password.
        raise ConfigError(_hide_password(f"invalid setting {text!r} (expected section.key=value)", text))
    setting(name)
    return name, value.strip()


# ---- loading ----

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/+")


def _hide_password(message: str, raw: str) -> str:
    """Mask whatever could be the password of a DSN, even of one too broken to parse."""
    userinfo = raw.strip().rpartition("@")[0]
    match = _SCHEME.match(userinfo)
    password = userinfo[match.end() if match else 0 :].partition(":")[2]
    for form in {password, unquote(password), repr(password)[1:-1]} - {""}:
        message = message.replace(form, "***")
    return message


def _convert(item: Setting, raw: str, source: str | None) -> Any:
    """Parse one raw value; a ConfigError names the source (file path or variable), the key and the value."""
    prefix = f"{source}: " if source else ""
    try:
        return item.parse(raw)
    except DSNError as exc:  # its message already names the (redacted) DSN
        message = f"{prefix}{item.name}: {exc}"
    except ValueError as exc:
        message = f"{prefix}{item.name}: invalid value {raw!r} ({exc})"
    if item.name == "pool.dsn":
        message = _hide_password(message, raw)
    raise ConfigError(message, item.name)


def _read_file(path: str) -> dict[str, str]:
    """The raw ``section.key`` values of an INI file; ConfigError naming the path for anything wrong."""
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
    for section in parser.sections():
        if section not in SECTIONS:
            hint = _suggest(section, SECTIONS) or " (expected [server], [pool] or [ingest])"
            raise ConfigError(f"{path}: unknown section [{section}]{hint}")
        for key, raw in parser.items(section):
            if f"{section}.{key}" not in _BY_NAME:
                keys = [s.key for s in SETTINGS if s.section == section]
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]{_suggest(key, keys)}")
            values[f"{section}.{key}"] = raw
    return values


def _env_setting(var: str) -> Setting | None:
    """The setting a PREFORK_<SECTION>_<KEY> variable names; None if it is no setting variable at all."""
    for section in SECTIONS:
        prefix = f"{ENV_PREFIX}{section.upper()}_"
        if var.startswith(prefix):
            name = f"{section}.{var[len(prefix) :].lower()}"
            if name not in _BY_NAME:
                raise ConfigError(f"{var}: unknown setting {name!r}{_suggest(name, _BY_NAME)}")
            return _BY_NAME[name]
    return None


def _json_safe(value: Any) -> Any:
    if isinstance(value, (Address, DSN)):
        return str(value)  # str(DSN) is redacted
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class Config:
    """Parsed, validated values.

    Attribute access per section: cfg.server.bind, cfg.pool.max_size, cfg.ingest.batch_size.
    """

    server: Any
    pool: Any
    ingest: Any

    def __init__(
        self,
        values: Mapping[str, Any],
        path: str | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, str] | None = None,
        file_keys: frozenset[str] = frozenset(),
    ) -> None:
        self.path = path  # the INI file, if any
        self.file_keys = file_keys  # the "section.key" names the file set
        self.env = dict(env or {})  # the PREFORK_* environment used
        self.overrides = dict(overrides or {})  # "section.key" -> raw string given on the command line
        self._values = dict(values)
        for section, kind in _SECTION_TYPES.items():
            setattr(self, section, kind(**{s.key: self._values[s.name] for s in SETTINGS if s.section == section}))

    def get(self, name: str) -> Any:
        """The value of ``section.key``, e.g. ``cfg.get("pool.max_size")``; ConfigError if unknown."""
        return self._values[setting(name).name]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """All values, JSON-safe: addresses as strings, the DSN with its password as ``***``."""
        result: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        for s in SETTINGS:
            result[s.section][s.key] = _json_safe(self._values[s.name])
        return result

    def sources(self) -> dict[str, str]:
        """Where each value came from: ``default``, ``file PATH``, ``env VAR`` or ``command line``."""
        result = {s.name: "default" for s in SETTINGS}
        for name in self.file_keys:
            result[name] = f"file {self.path}"
        for var in sorted(self.env):
            item = _env_setting(var)
            if item is not None:
                result[item.name] = f"env {var}"
        for name in self.overrides:
            result[setting(name).name] = "command line"
        return result

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
    means "not given" (handy for unset command-line flags).
    """
    environ = os.environ if env is None else env
    used_env = {var: value for var, value in environ.items() if var.startswith(ENV_PREFIX)}
    given = {name: str(value) for name, value in (overrides or {}).items() if value is not None}
    values = {s.name: _convert(s, s.default, "built-in default") for s in SETTINGS}
    file_keys: frozenset[str] = frozenset()
    if path is not None:
        from_file = _read_file(path)
        file_keys = frozenset(from_file)
        for name, raw in from_file.items():
            values[name] = _convert(_BY_NAME[name], raw, path)
    for var in sorted(used_env):
        item = _env_setting(var)
        if item is not None:
            values[item.name] = _convert(item, used_env[var], var)
    for name, raw in given.items():
        values[name] = _convert(setting(name), raw, None)
    if values["pool.min_size"] > values["pool.max_size"]:
        raise ConfigError(
            f"pool.min_size: invalid value {str(values['pool.min_size'])!r} "
            f"(must not exceed pool.max_size = {values['pool.max_size']})",
            "pool.min_size",
        )
    return Config(values, path=path, env=used_env, overrides=given, file_keys=file_keys)
