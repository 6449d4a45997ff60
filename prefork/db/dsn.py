"""Parse ``mysql://user:password@host:port/db?param=value`` DSNs into PyMySQL connect arguments.

Several hosts may be listed, comma separated (``mysql://u:p@db1:3306,db2:3306,db3/test``): the nodes of a
MariaDB Galera cluster, say. A pool's new connections go to the host in use while it answers, else to the
first of the others in the order given (``prefork.db.hosts``), so a worker writes to one node at a time.

The password never leaves this module in readable form: ``str(dsn)``, ``repr(dsn)`` and
``dsn.redacted`` all show it as ``***``, so a DSN can be logged or put in an error message safely.

The user and password are percent-decoded; a password may also hold ``@``, ``:`` and ``/`` as they are (the
host list starts after the last ``@``), but ``?`` must be written ``%3F``. A host is a name, an IPv4 address
or an IPv6 address in brackets (``[::1]``, ``[fe80::1%25eth0]`` with a zone), each with an optional
``:port`` (3306 when absent or empty).

Query parameters: ``unix_socket``, ``charset`` (default utf8mb4), ``connect_timeout`` (10),
``read_timeout`` (60) and ``write_timeout`` (60), in seconds. Every connection gets read and write
timeouts so that no call on a dead network can hang forever; the pool's connections (``prefork.db.pool``)
read the server's greeting and the login within ``connect_timeout`` too, not only the TCP connect.

TLS to the server: ``ssl_mode`` (disabled, required, verify_ca, verify_identity), ``ssl_ca``, ``ssl_cert``
and ``ssl_key`` (PEM files), as ``prefork.db.tls`` describes; the paths show in the redacted form.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from prefork.config.address import format_host_port
from prefork.db import tls

DEFAULT_PORT = 3306
MASK = "***"  # what a password is shown as
MIN_PORT, MAX_PORT = 1, 65535
_TIMEOUT_PARAMS = {"connect_timeout": 10.0, "read_timeout": 60.0, "write_timeout": 60.0}
_KNOWN_PARAMS = {"unix_socket", "charset", *_TIMEOUT_PARAMS, *tls.PARAMS}


class DSNError(ValueError):
    """A DSN that cannot be parsed; the message never contains the password."""


@dataclass(frozen=True)
class DSN:
    """A parsed MySQL DSN."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    user: str = "root"
    password: str = field(default="", repr=False)
    database: str = ""
    params: tuple[tuple[str, str], ...] = ()
    failover: tuple[tuple[str, int], ...] = ()  # the hosts listed after the first, in order

    @property
    def hosts(self) -> tuple[tuple[str, int], ...]:
        """Every (host, port) of the DSN, in the order to try them."""
        return ((self.host, self.port), *self.failover)

    @property
    def redacted(self) -> str:
        """The DSN as a string with the password replaced by ``***``."""
        auth = quote(self.user, safe="")
        if self.password:
            auth += f":{MASK}"
        # An IPv6 host's zone is percent-encoded in a URL: [fe80::1%25eth0].
        hosts = ",".join(format_host_port(quote(h, safe=":") if ":" in h else h, port) for h, port in self.hosts)
        query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in self.params)
        return f"mysql://{auth}@{hosts}/{self.database}" + (f"?{query}" if query else "")

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"DSN({self.redacted!r})"

    @property
    def tls(self) -> tls.TlsOptions:
        """The DSN's TLS options (``ssl_mode`` and its files)."""
        return tls.tls_options(dict(self.params), read_files=False)

    def targets(self) -> list[dict[str, Any]]:
        """``connect_kwargs`` of every host, in order, sharing one SSLContext (the files read once)."""
        options = self.tls
        context = options.context() if options.enabled else None
        return [self.connect_kwargs(i, context) for i in range(len(self.hosts))]

    def connect_kwargs(self, host: int = 0, context: Any = None) -> dict[str, Any]:
        """Keyword arguments for ``pymysql.connect`` to the ``host``-th host of the DSN (0: the first); with
        TLS on, ``context`` is the SSLContext to use (a new one when None). PyMySQL checks the server's
        name against the host it connects to, so each host of a multi-host DSN is checked against its own."""
        params = dict(self.params)
        kwargs: dict[str, Any] = {
            "host": self.hosts[host][0],
            "port": self.hosts[host][1],
            "user": self.user,
            "password": self.password,
            "database": self.database or None,
            "charset": params.get("charset", "utf8mb4"),
            "autocommit": False,
        }
        if "unix_socket" in params:
            kwargs["unix_socket"] = params["unix_socket"]
        for name, default in _TIMEOUT_PARAMS.items():
            kwargs[name] = float(params.get(name, default))
        kwargs.update(self.tls.connect_kwargs(context))
        return kwargs


def parse_dsn(text: str) -> DSN:
    """Parse a ``mysql://`` DSN; raise DSNError naming what is wrong (never the password)."""
    raw = text.strip()

    def bad(reason: str) -> DSNError:
        return DSNError(hide_password(f"bad DSN {raw!r}: {reason}", raw))

    match = _URL_SCHEME.match(raw)
    if not match or match.group(1).lower() not in _SCHEMES:
        raise bad("the scheme must be mysql://")
    # Read by hand, not by urllib.parse: the urlsplit of some Pythons (Debian 12's 3.11.2) rejects a host
    # list holding a bracketed IPv6 address ("Invalid IPv6 URL").
    head, _, query = raw[match.end() :].partition("?")
    userinfo, _, location = head.rpartition("@")  # the last "@": a password may hold "@", ":" and "/"
    hostlist, _, path = location.partition("/")
    user, _, password = userinfo.partition(":")
    params = tuple(parse_qsl(query, keep_blank_values=True))
    for key, value in params:
        if key not in _KNOWN_PARAMS:
            raise bad(f"unknown parameter {key!r} (known: {', '.join(sorted(_KNOWN_PARAMS))})")
        if key in _TIMEOUT_PARAMS:
            try:
                if float(value) <= 0:
                    raise ValueError
            except ValueError:
                raise bad(f"{key} must be a positive number") from None
    try:
        tls.tls_options(dict(params))
    except ValueError as exc:
        raise bad(str(exc)) from None
    database = unquote(path)
    if "/" in database:
        raise bad("the path must be a single database name")
    try:
        hosts = _parse_hosts(hostlist)
    except ValueError as exc:
        raise bad(str(exc)) from None
    if not hosts:
        if not any(key == "unix_socket" for key, _ in params):
            raise bad("no host")
        hosts = [("localhost", DEFAULT_PORT)]
    return DSN(
        host=hosts[0][0],
        port=hosts[0][1],
        user=unquote(user) or "root",
        password=unquote(password),
        database=database,
        params=params,
        failover=tuple(hosts[1:]),
    )


def _parse_hosts(hostlist: str) -> list[tuple[str, int]]:
    """``host1:port,[v6]:port,host3`` as (host, port) pairs; [] for an empty list; ValueError naming the
    culprit (host names and ports are not secret)."""
    if not hostlist.strip():
        return []
    items = [item.strip() for item in hostlist.split(",")]
    if not all(items):
        raise ValueError("an empty host in the list")
    return [_parse_host(item) for item in items]


def _parse_host(item: str) -> tuple[str, int]:
    """One ``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` (an empty port is the default one)."""
    if item.startswith("["):
        address, bracket, port = item[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"{item!r}: an IPv6 address is written [address] or [address]:port")
        host = unquote(address)  # a zone is written %25: [fe80::1%25eth0]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{item!r}: {host!r} is not an IPv6 address") from None
        port = port[1:]
    else:
        if item.count(":") > 1:
            raise ValueError(f"{item!r}: an IPv6 address must be in brackets, as [{item}]")
        host, _, port = item.partition(":")
        if not host:
            raise ValueError(f"{item!r}: no host name before the port")
    return host, _parse_port(port, item)


def _parse_port(port: str, item: str) -> int:
    """A port number, or DEFAULT_PORT when the port is empty (``host:``)."""
    if not port:
        return DEFAULT_PORT
    if not port.isascii() or not port.isdigit():
        raise ValueError(f"{item!r}: the port {port!r} is not a number")
    if not MIN_PORT <= int(port) <= MAX_PORT:
        raise ValueError(f"{item!r}: the port {port} is out of range {MIN_PORT}-{MAX_PORT}")
    return int(port)


_SCHEMES = ("mysql", "mariadb", "mysql+pymysql")
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/+")


def hide_password(message: str, raw: str) -> str:
    """``message`` with whatever could be the password of the DSN text ``raw`` masked as ``***``, even when
    ``raw`` is too broken to parse or not a DSN at all (a mistyped ``-s pool.dsn:mysql://u:pw@h``, a DSN
    without its scheme). Every message that quotes a DSN text goes through here; a parsed DSN shows itself
    with ``redacted``, which never holds the password."""
    userinfo = raw.strip().rpartition("@")[0]
    match = _SCHEME.match(userinfo)
    password = userinfo[match.end() if match else 0 :].partition(":")[2]
    for form in {password, unquote(password), repr(password)[1:-1]} - {""}:
        message = message.replace(form, MASK)
    return message
