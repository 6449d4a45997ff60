"""The PROXY protocol (versions 1 and 2), as HAProxy's ``send-proxy`` / ``send-proxy-v2`` speak it.

A balancer that forwards TCP connections opens each one to the backend with a header naming the original
client's address, then relays the client's bytes. Version 1 is one text line::

    PROXY TCP4 203.0.113.7 192.0.2.1 56324 32777\\r\\n      (TCP6 alike; "PROXY UNKNOWN ...\\r\\n" carries none)

at most 107 bytes. Version 2 is binary: a 12-byte signature, a version/command byte (0x20 LOCAL: the
balancer's own connection, a health check; 0x21 PROXY: relayed), a family/transport byte (0x11 TCP over
IPv4, 0x21 TCP over IPv6, 0x00 unspecified, ...), a 2-byte length of what follows, the addresses (IPv4:
4+4+2+2 bytes, IPv6: 16+16+2+2), then optional TLVs, which are skipped.

``header_length()`` says how long the header at the start of some bytes is (or that more are needed);
``parse()`` reads it. Nothing here touches a socket: ``read_header()`` peeks at one with a deadline, so
the header is consumed exactly and the client's first line stays in the socket for the line reader.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("prefork.proxy")

HEADER_TIMEOUT = 5.0  # seconds a balancer gets to send the header of a connection it opened
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 header, CR LF included (the figure of HAProxy's PROXY protocol spec)
V2_MAX = 16 + 4096  # the fixed part and a generous bound of addresses and TLVs
MODES = ("off", "v1", "v2", "auto")


class ProxyHeaderError(Exception):
    """The bytes are not a valid PROXY header (the message says why, without quoting much of them)."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a header says: the original client's address, or none (LOCAL, UNKNOWN, unspecified)."""

    version: int  # 1 or 2
    source: tuple[str, int] | None  # (ip, port) of the original client; None: use the connection's peer
    destination: tuple[str, int] | None = None
    local: bool = False  # v2 LOCAL: the balancer speaking for itself (a health check)
    length: int = 0  # bytes the header took


def looks_like_header(data: bytes) -> bool:
    """Whether ``data`` is (the start of) a PROXY header of either version."""
    n = min(len(data), len(V2_SIGNATURE))
    return bool(data) and (V2_SIGNATURE[:n] == data[:n] or V1_PREFIX[: min(len(data), 6)] == data[:6])


def header_length(data: bytes, mode: str = "auto") -> int | None:
    """The length of the header that ``data`` begins with; None if more bytes are needed to tell.
    ProxyHeaderError if ``data`` cannot begin a header allowed by ``mode`` (v1, v2 or auto)."""
    if mode in ("v2", "auto") and V2_SIGNATURE.startswith(data[:12]):
        if len(data) < 16:
            return None
        length = 16 + struct.unpack("!H", data[14:16])[0]
        if length > V2_MAX:
            raise ProxyHeaderError(f"a v2 header of {length} bytes is too long")
        return length
    if mode in ("v1", "auto") and V1_PREFIX.startswith(data[:6]):
        end = data.find(b"\r\n", 0, V1_MAX)
        if end >= 0:
            return end + 2
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"no CR LF in the first {V1_MAX} bytes of a v1 header")
        return None
    expected = {"v1": "a PROXY v1 header", "v2": "a PROXY v2 header"}.get(mode, "a PROXY header")
    raise ProxyHeaderError(f"expected {expected}, got {data[:8]!r}")


def parse(header: bytes) -> ProxyHeader:
    """Read one complete header (exactly the bytes header_length() gave); ProxyHeaderError if invalid."""
    if header.startswith(V2_SIGNATURE):
        return _parse_v2(header)
    if header.startswith(V1_PREFIX) and header.endswith(b"\r\n"):
        return _parse_v1(header)
    raise ProxyHeaderError("not a PROXY header")


def _parse_v1(header: bytes) -> ProxyHeader:
    try:
        words = header[:-2].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("a v1 header that is not ASCII") from None
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return ProxyHeader(1, None, length=len(header))  # the rest of the line is to be ignored
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("a v1 header is PROXY TCP4|TCP6 SRC DST SPORT DPORT, or PROXY UNKNOWN")
    kind = ipaddress.IPv4Address if words[1] == "TCP4" else ipaddress.IPv6Address
    try:
        src, dst = str(kind(words[2])), str(kind(words[3]))
    except ValueError:
        raise ProxyHeaderError(f"a v1 header with an address that is not {words[1]}") from None
    ports = []
    for word in words[4:]:
        # Decimal, no sign, no leading zero (the PROXY protocol spec's rule): a header is either exact or refused.
        if not word.isdigit() or not word.isascii() or (len(word) > 1 and word[0] == "0") or int(word) > 65535:
            raise ProxyHeaderError("a v1 header with a bad port")
        ports.append(int(word))
    return ProxyHeader(1, (src, ports[0]), (dst, ports[1]), length=len(header))


_FAMILIES = {0x11: (socket.AF_INET, 4), 0x21: (socket.AF_INET6, 16)}


def _parse_v2(header: bytes) -> ProxyHeader:
    if len(header) < 16:
        raise ProxyHeaderError("a v2 header shorter than 16 bytes")
    version_command, family = header[12], header[13]
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"a v2 header with version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError(f"a v2 header with an unknown command {command}")
    body = header[16:]
    if len(body) != struct.unpack("!H", header[14:16])[0]:
        raise ProxyHeaderError("a v2 header whose length does not match")
    if command == 0:  # LOCAL: no client behind it, whatever the address block says
        return ProxyHeader(2, None, local=True, length=len(header))
    if family not in _FAMILIES:  # unspecified, UDP, unix: nothing we can name as a client address
        return ProxyHeader(2, None, length=len(header))
    af, size = _FAMILIES[family]
    if len(body) < 2 * size + 4:
        raise ProxyHeaderError("a v2 header too short for its addresses")
    src = socket.inet_ntop(af, body[:size])
    dst = socket.inet_ntop(af, body[size : 2 * size])
    sport, dport = struct.unpack("!HH", body[2 * size : 2 * size + 4])
    return ProxyHeader(2, (src, sport), (dst, dport), length=len(header))


def read_header(sock: socket.socket, mode: str, timeout: float) -> ProxyHeader:
    """Read the header a connection begins with, within ``timeout`` seconds, consuming exactly its bytes
    (the client's first line stays in the socket). ProxyHeaderError for a bad, missing or late header;
    EOFError when the peer closed first (a bare TCP health check)."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    length: int | None = None
    while length is None or len(buf) < length:
        _wait_readable(sock, deadline - time.monotonic(), timeout)
        if length is not None:  # every byte up to `length` is the header's
            chunk = sock.recv(length - len(buf))
        else:
            peeked = sock.recv(V1_MAX, socket.MSG_PEEK)
            if not peeked:
                raise EOFError("closed before a PROXY header")
            length = header_length(bytes(buf + peeked), mode)
            # Without a known end yet, all that came is still header (no CR LF, fewer than 16 bytes).
            chunk = sock.recv(len(peeked) if length is None else min(len(peeked), length - len(buf)))
        if not chunk:
            raise EOFError("closed inside a PROXY header")
        buf += chunk
    return parse(bytes(buf))


def _wait_readable(sock: socket.socket, left: float, timeout: float) -> None:
    if left <= 0 or not _readable_within(sock, left):
        raise ProxyHeaderError(f"no complete PROXY header within {timeout:g}s")


def _readable_within(sock: socket.socket, left: float) -> bool:
    """Whether ``sock`` has data (or EOF) within ``left`` seconds. poll, not select: select refuses a descriptor
    past 1023, which a worker with a thousand clients has (the greenlet died with a ValueError and its slot
    leaked). Under gevent's monkey-patching poll blocks only this greenlet."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(left * 1000))


def parse_networks(text: str, separator: str | None = ",") -> Networks:
    """Networks separated by ``separator`` (None: by spaces), an address alone being a /32 or /128:
    ``server.proxy_allow_from`` (commas), one listener's ``server.allow_from`` (spaces)."""
    networks = []
    for item in (part.strip() for part in text.split(separator)):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network such as 10.0.0.0/8 or ::1/128") from None
    return tuple(networks)


def allowed(peer: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """Whether a peer's IP address is inside one of ``networks`` (an IPv4-mapped IPv6 address counts as IPv4)."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def client_address(sock: socket.socket, addr: Any, mode: str, trusted: Networks) -> Any | None:
    """The address to serve a new connection as, on a listener whose ``server.proxy_protocol`` is
    ``mode``; None when the connection is to be closed (each reason logged once, a bare health check
    quietly).

    A peer in ``trusted`` (``server.proxy_allow_from``; a unix socket peer always) must begin with a valid
    header: the client it names is the address (a LOCAL or UNKNOWN header: the peer itself). Any other peer
    is a direct client, served as itself, unless it begins with a header: a client must not choose the
    address it is stored under.
    """
    if mode == "off":
        return addr
    unix = sock.family == socket.AF_UNIX
    peer = "unix" if unix else str(addr[0])
    if unix or allowed(peer, trusted):
        try:
            header = read_header(sock, mode, HEADER_TIMEOUT)
        except EOFError:
            log.debug("connection from %s closed before its PROXY header (a health check?)", peer)
            return None
        except (ProxyHeaderError, OSError) as exc:
            log.warning("closing a connection from %s: %s", peer, exc)
            return None
        return header.source or addr
    if _begins_with_header(sock):
        log.warning("closing a connection from %s: a PROXY header from outside server.proxy_allow_from", peer)
        return None
    return addr


def _begins_with_header(sock: socket.socket) -> bool:
    """Whether an untrusted peer's first bytes are a PROXY header; a peer that sends nothing for
    HEADER_TIMEOUT, or bytes that cannot begin one, is a client (its bytes stay unread)."""
    deadline = time.monotonic() + HEADER_TIMEOUT
    seen = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not _readable_within(sock, left):
            return False
        try:
            data = sock.recv(len(V2_SIGNATURE), socket.MSG_PEEK)
        except OSError:
            return False
        if not data or not looks_like_header(data):
            return False
        if len(data) >= len(V1_PREFIX) and data.startswith(V1_PREFIX) or len(data) == len(V2_SIGNATURE):
            return True
        if len(data) == seen:  # a prefix such as "PRO", and nothing more yet: look again shortly
            time.sleep(0.01)
        seen = len(data)
