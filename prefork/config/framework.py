"""prefork's own sections, ``[server]`` and ``[pool]``: their keys, defaults, parsers and help.

Every other section belongs to the application, which declares it the same way (prefork.settings). The
README's tables of keys are checked against these declarations (tests/test_docs.py).
"""

from __future__ import annotations

import keyword
import os
import re
from typing import Any

from prefork.config.address import Address, parse_address
from prefork.config.errors import ConfigError, did_you_mean
from prefork.config.parsers import boolean, checked, choice, count, optional, positive_int, positive_seconds, seconds
from prefork.config.section import Section, Setting, option
from prefork.db.dsn import DSN, parse_dsn
from prefork.logs import syslog_address
from prefork.protocol.allow import AllowList, parse_allow_from
from prefork.protocol.framers import ACK_MODES, FRAMINGS
from prefork.protocol.proxy import MODES as PROXY_MODES
from prefork.protocol.proxy import parse_networks
from prefork.tls import MIN_VERSIONS, check_ciphers

FRAMEWORK_SECTIONS = ("server", "pool")

# ---- value parsers of the framework's own keys (prefork.config.parsers has the general ones) ----


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


def _parse_log_file(text: str) -> str:
    """A file path, ``-`` (stderr), or ``syslog`` / ``syslog:ADDRESS`` (a socket path, HOST[:PORT], [v6][:PORT])."""
    text = text.strip()
    if not text:
        raise ValueError("expected a file path, - for stderr, or syslog[:ADDRESS]")
    syslog_address(text)  # ValueError naming a bad syslog address now, not when the log is opened
    return text


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


def _per_listener(name: str, words: tuple[str, ...], aliases: dict[str, str] | None = None) -> Any:
    """A parser of one word of ``words`` for all listeners, or one per server.bind address, comma separated."""
    aliases = aliases or {}

    def parse(text: str) -> tuple[str, ...]:
        values = tuple(aliases.get(item.strip().lower(), item.strip().lower()) for item in text.split(","))
        if not all(value in words for value in values):
            raise ValueError(f"expected {', '.join(words)}, or one of them per listener, comma separated")
        return values

    parse.__name__ = f"_parse_{name}"
    return parse


_parse_framings = _per_listener("framing", FRAMINGS)
# on/off as every boolean key takes them (true/false, yes/no, 1/0 too), and auto.
_parse_acks = _per_listener(
    "ack", ACK_MODES, {"true": "on", "yes": "on", "1": "on", "false": "off", "no": "off", "0": "off"}
)


def _parse_fd_names(text: str) -> tuple[str, ...]:
    names = tuple(item.strip() for item in text.split(","))
    # systemd's rule for FileDescriptorName=: printable ASCII, no ":" (LISTEN_FDNAMES is ":"-separated).
    if not all(len(n) <= 255 and n.isascii() and n.isprintable() and ":" not in n and " " not in n for n in names):
        raise ValueError(
            "expected names of up to 255 printable ASCII characters without ':' or spaces, one for all "
            "listeners or one per listener, comma separated"
        )
    return names


def _per_listener_text(name: str, check: Any = None) -> Any:
    """A parser of free text (a path, a cipher string, names) for all listeners, or one per server.bind
    address, comma separated; an empty entry is allowed (for TLS: that listener is plaintext)."""

    def parse(text: str) -> tuple[str, ...]:
        values = tuple(item.strip() for item in text.split(","))
        return tuple(check(v) for v in values) if check is not None else values

    parse.__name__ = f"_parse_{name}"
    return parse


_parse_tls_paths = _per_listener_text("tls_paths")
_parse_tls_ciphers = _per_listener_text("tls_ciphers", check_ciphers)
_parse_tls_names = _per_listener_text("tls_client_names", lambda t: " ".join(t.split()))
_parse_tls_versions = _per_listener("tls_min_version", tuple(MIN_VERSIONS))


def _parse_networks(text: str) -> tuple[Any, ...]:
    networks = parse_networks(text)
    if not networks:
        raise ValueError("expected one or more networks, e.g. 127.0.0.1/32,10.0.0.0/8")
    return networks


# ---- the framework's sections, in the order of README and etc/prefork.ini ----


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
    framing: tuple[str, ...] = option(
        "lines", _parse_framings,
        "how a client's bytes are cut into messages: lines (LF), octet-count (RFC 6587 LEN SP MSG) or syslog "
        "(octet-counted or LF/NUL-terminated, per message, as rsyslog takes them) or relp (rsyslog's omrelp, each "
        "message acked once the app answers OK); one for all listeners, or one "
        "per server.bind address, comma separated", flag="--framing")
    ack: tuple[str, ...] = option(
        "auto", _parse_acks,
        "on: one reply per message; off: none (clients that read nothing); auto: on for lines, off for the syslog "
        "framings; one for all listeners, or one per server.bind address, comma separated", flag="--ack")
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
    allow_from: tuple[AllowList, ...] = option(
        "any", parse_allow_from,
        "networks that may connect, e.g. 10.0.0.0/8 ::1 (any = everyone; any other peer is closed at accept); "
        "one list for all listeners, or one per server.bind address, comma separated, so the networks of one "
        "listener are separated by spaces; not for unix sockets", flag="--allow-from")
    backlog: int = option(
        "4096", positive_int,
        "connections the kernel queues for each listener before refusing (capped by net.core.somaxconn)",
        flag="--backlog")
    reuse_port: bool = option(
        "off", boolean, "set SO_REUSEPORT on TCP listeners (another process may bind the same port)",
        flag="--reuse-port")
    bind_attempts: int = option(
        "5", positive_int,
        "times a listener in use at start is tried, 1 s apart, before exit 2 (a restart racing the old "
        "process's exit); 1 = once")
    fd_name: tuple[str, ...] = option(
        "", _parse_fd_names,
        "socket activation: the FileDescriptorName= of the socket systemd passes for a server.bind address, "
        "when its address alone does not match it (empty = by address only); one for all listeners, or one per "
        "server.bind address, comma separated")
    unix_mode: int | None = option(
        "", _parse_mode, "file mode of unix socket listeners, e.g. 0660 (empty = as the umask leaves it)",
        flag="--unix-mode")
    tls_cert: tuple[str, ...] = option(
        "", _parse_tls_paths,
        "PEM certificate chain of a TLS listener (empty = plaintext); one for all listeners, or one per "
        "server.bind address, comma separated", flag="--tls-cert")
    tls_key: tuple[str, ...] = option(
        "", _parse_tls_paths,
        "PEM private key of the certificate (empty = in the tls_cert file); per listener like tls_cert",
        flag="--tls-key")
    tls_client_ca: tuple[str, ...] = option(
        "", _parse_tls_paths,
        "PEM CA certificates: set, a client certificate they signed is required (mutual TLS); per listener")
    tls_min_version: tuple[str, ...] = option(
        "1.2", _parse_tls_versions, "oldest TLS version accepted: 1.2 or 1.3; per listener")
    tls_ciphers: tuple[str, ...] = option(
        "", _parse_tls_ciphers,
        "OpenSSL cipher string for TLS 1.2, colon separated (empty = OpenSSL's defaults); per listener")
    tls_client_names: tuple[str, ...] = option(
        "", _parse_tls_names,
        "client certificate subjects allowed in (CN or DNS name), space separated (empty = any the client CA "
        "signed); per listener")
    tls_handshake_timeout: float = option(
        "10", positive_seconds, "seconds a client gets to complete its TLS handshake, then it is closed")
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
        "mysql://user:password@host:port/db?unix_socket=...&charset=...&ssl_mode=... (TLS: see 'The connection pool')",
        flag="--dsn")
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
BY_NAME = {s.name: s for s in SETTINGS}


def setting(name: str) -> Setting:
    """The framework setting called ``section.key``; ConfigError("unknown setting ...") if there is none."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown setting {name!r}{did_you_mean(name, BY_NAME)}") from None
