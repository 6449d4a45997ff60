"""Parse ``mysql://user:password@host:port/db?param=value`` DSNs into PyMySQL connect arguments.

Several hosts may be listed, comma separated (``mysql://u:p@db1:3306,db2:3306,db3/test``): the nodes of a
MariaDB Galera cluster, say. A pool's new connections go to the host in use while it answers, else to the
first of the others in the order given (``prefork.pool``), so a worker writes to one node at a time.

The password never leaves this module in readable form: ``str(dsn)``, ``repr(dsn)`` and
``dsn.redacted`` all show it as ``***``, so a DSN can be logged or put in an error message safely.

Query parameters: ``unix_socket``, ``charset`` (default utf8mb4), ``connect_timeout`` (10),
``read_timeout`` (60) and ``write_timeout`` (60), in seconds. Every connection gets read and write
timeouts so that no call on a dead network can hang forever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

DEFAULT_PORT = 3306
_TIMEOUT_PARAMS = {"connect_timeout": 10.0, "read_timeout": 60.0, "write_timeout": 60.0}
_KNOWN_PARAMS = {"unix_socket", "charset", *_TIMEOUT_PARAMS}


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
            auth += ":***"
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.hosts)
        query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in self.params)
        return f"mysql://{auth}@{hosts}/{self.database}" + (f"?{query}" if query else "")

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"DSN({self.redacted!r})"

    def connect_kwargs(self, host: int = 0) -> dict[str, Any]:
        """Keyword arguments for ``pymysql.connect`` to the ``host``-th host of the DSN (0: the first)."""
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
        return kwargs


def parse_dsn(text: str) -> DSN:
    """Parse a ``mysql://`` DSN; raise DSNError naming what is wrong (never the password)."""
    try:
        parts = urlsplit(text.strip())
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        # Each host of a list is read as a netloc of its own, so brackets and ports mean the same.
        others = [urlsplit(f"//{item.strip()}") for item in hostlist.split(",")[1:]]
        if others:
            parts = urlsplit(text.strip().replace(parts.netloc, f"{userinfo}@{hostlist.split(',')[0]}", 1))
        port = parts.port
        failover = tuple((other.hostname or "", other.port or DEFAULT_PORT) for other in others)
    except ValueError as exc:
        raise DSNError(f"bad DSN {_redact_raw(text)!r}: {exc}") from None
    if any(not host for host, _ in failover):
        raise DSNError(f"bad DSN {_redact_raw(text)!r}: an empty host in the list")
    if parts.scheme not in ("mysql", "mariadb", "mysql+pymysql"):
        raise DSNError(f"bad DSN {_redact_raw(text)!r}: the scheme must be mysql://")
    params = tuple(parse_qsl(parts.query, keep_blank_values=True))
    for key, value in params:
        if key not in _KNOWN_PARAMS:
            known = ", ".join(sorted(_KNOWN_PARAMS))
            raise DSNError(f"bad DSN {_redact_raw(text)!r}: unknown parameter {key!r} (known: {known})")
        if key in _TIMEOUT_PARAMS:
            try:
                if float(value) <= 0:
                    raise ValueError
            except ValueError:
                raise DSNError(f"bad DSN {_redact_raw(text)!r}: {key} must be a positive number") from None
    database = unquote(parts.path.lstrip("/"))
    if "/" in database:
        raise DSNError(f"bad DSN {_redact_raw(text)!r}: the path must be a single database name")
    has_socket = any(k == "unix_socket" for k, _ in params)
    if not parts.hostname and not has_socket:
        raise DSNError(f"bad DSN {_redact_raw(text)!r}: no host")
    return DSN(
        host=parts.hostname or "localhost",
        port=port or DEFAULT_PORT,
        user=unquote(parts.username) if parts.username else "root",
        password=unquote(parts.password) if parts.password else "",
        database=database,
        params=params,
        failover=failover,
    )


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/+")


def hide_password(message: str, raw: str) -> str:
    """``message`` with whatever could be the password of the DSN text ``raw`` masked as ``***``, even when
    ``raw`` is too broken to parse or not a DSN at all (a mistyped ``-s pool.dsn:mysql://u:pw@h``)."""
    userinfo = raw.strip().rpartition("@")[0]
    match = _SCHEME.match(userinfo)
    password = userinfo[match.end() if match else 0 :].partition(":")[2]
    for form in {password, unquote(password), repr(password)[1:-1]} - {""}:
        message = message.replace(form, "***")
    return message


def _redact_raw(text: str) -> str:
    """The DSN text with its password (if it has one) as ``***``, even when it does not parse."""
    scheme, sep, rest = text.partition("://")
    if not sep or "@" not in rest:
        return text
    auth, at, host = rest.rpartition("@")
    if ":" in auth:
        auth = auth.split(":", 1)[0] + ":***"
    return f"{scheme}://{auth}@{host}"
