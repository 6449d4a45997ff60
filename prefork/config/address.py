"""Addresses: ``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:PATH``, parsed and written in one way.

The listeners (``server.bind``), the metrics endpoint, the log's syslog target, the sending client and the
DSN's hosts all read or write addresses with these functions.
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
