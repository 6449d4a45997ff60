"""Addresses: ``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:PATH``, parsed and written in one way.

``server.bind`` and ``server.metrics_bind`` are parsed here (``parse_address``), and so is the server a
client connects to (``parse_peer``: the same grammar, with a default port); listeners, the metrics
endpoint and the DSN's hosts are written with ``format_host_port``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass


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


_PORT = re.compile(r"[0-9]{1,5}")
MAX_PORT = 65535
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_ADDRESS = "expected HOST:PORT, [IPv6]:PORT or unix:PATH with a port 0-65535"
_PEER = "expected HOST:PORT, [IPv6]:PORT, or HOST alone for port {default}, with a port 1-65535"


def parse_address(text: str) -> Address:
    """Parse one ``HOST:PORT``, ``[v6]:PORT`` or ``unix:PATH``; raise ValueError saying what was expected."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path or "\0" in path:
            raise ValueError("expected unix:PATH with a non-empty path")
        return Address("unix", path=path)
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(_ADDRESS)
    host, number = _host_and_port(host, port, _ADDRESS)
    return Address("tcp", host=host, port=number)


def parse_peer(text: str, default_port: int) -> tuple[str, int]:
    """The (host, port) of a server to connect to: ``HOST:PORT`` or ``[v6]:PORT`` as in server.bind, or a
    ``HOST`` or ``[v6]`` alone for ``default_port``; ValueError naming the text and what was expected."""
    given = text.strip()
    host, sep, port = given.rpartition(":")
    if not sep or "]" in port:  # no port: HOST or [v6] alone
        host, port = given, str(default_port)
    expected = _PEER.format(default=default_port)
    try:
        host, number = _host_and_port(host, port, expected)
        if not number:
            raise ValueError(expected)
    except ValueError as exc:
        raise ValueError(f"bad address {text!r}: {exc}") from None
    return host, number


def _host_and_port(host: str, port: str, expected: str) -> tuple[str, int]:
    """A host (a name, IPv4, or IPv6 in brackets, returned without them) and a port 0-65535."""
    if not host or not _PORT.fullmatch(port) or int(port) > MAX_PORT:
        raise ValueError(expected)
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
    return host, int(port)
