"""Listening sockets: bound by the master before any fork, inherited by every worker."""

from __future__ import annotations

import errno
import os
import socket
import stat

BACKLOG = 2048


class BindError(Exception):
    """A listener could not be bound; the message names the address."""


def bind(address) -> socket.socket:
    """Bind and listen on a prefork.config.Address; raise BindError naming it."""
    try:
        if address.kind == "unix":
            return _bind_unix(address.path)
        return _bind_tcp(address.host, address.port)
    except OSError as exc:
        raise BindError(f"cannot bind server.bind={address}: {exc.strerror or exc}") from None


def _bind_tcp(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_unix(path: str) -> socket.socket:
    _remove_stale_unix_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _remove_stale_unix_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse to steal one that a live server answers on."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return  # not a socket: let bind fail with "Address already in use"
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)
    finally:
        probe.close()


def address_of(sock: socket.socket) -> str:
    """The address a listener really listens on (the real port when port 0 was asked for)."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def close(sock: socket.socket) -> None:
    """Close a listener in this process, removing its socket file if it is a unix socket."""
    path = sock.getsockname() if sock.family == socket.AF_UNIX else None
    sock.close()
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass
