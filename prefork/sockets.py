"""Listening sockets: bound by the master before any fork, inherited by every worker."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import time
import weakref
from collections.abc import Callable
from typing import TypeVar

from prefork.config.address import format_host_port

log = logging.getLogger("prefork.master")
T = TypeVar("T")

# A port still held at start is tried again this far apart (server.bind_attempts times in all; gunicorn
# tries 5 times, 1 s apart): a restart racing the old process's exit must not become a failure that
# RestartPreventExitStatus=2 keeps.
BIND_RETRY_DELAY = 1.0

# Listeners systemd passed (prefork.activation): systemd made them and keeps them, so closing one here
# never removes its socket file, and the logs say where each listener came from.
_from_systemd: weakref.WeakSet[socket.socket] = weakref.WeakSet()
_from_old_master: weakref.WeakSet[socket.socket] = weakref.WeakSet()  # inherited through an upgrade (USR2)


class BindError(Exception):
    """A listener could not be bound; the message names the address, ``errno`` says why."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


def bind(address, *, backlog: int, reuse_port: bool, unix_mode: int | None) -> socket.socket:
    """Bind and listen on a prefork.config.address.Address; raise BindError naming it.

    ``backlog``: connections the kernel queues; ``reuse_port``: SO_REUSEPORT on TCP listeners;
    ``unix_mode``: chmod of a unix socket's file (None = as the umask leaves it).
    """
    try:
        if address.kind == "unix":
            return _bind_unix(address.path, backlog, unix_mode)
        return _bind_tcp(address.host, address.port, backlog, reuse_port)
    except OSError as exc:
        raise BindError(f"cannot bind server.bind={address}: {exc.strerror or exc}", exc.errno) from None


def retry_in_use(attempt: Callable[[], T], what: str, attempts: int) -> T:
    """``attempt()`` (a bind), tried again while its address is in use, up to ``attempts`` times in all with
    one log line each retry, then a BindError saying so; other errors are raised as they are. ``what``
    names the address as the config does (``server.bind=HOST:PORT``)."""
    for tries in range(1, attempts + 1):
        try:
            return attempt()
        except (BindError, OSError) as exc:
            if exc.errno != errno.EADDRINUSE or attempts == 1:
                raise
        if tries < attempts:
            log.warning(
                "%s: address in use, trying again in %gs (%d of %d)", what, BIND_RETRY_DELAY, tries + 1, attempts
            )
            time.sleep(BIND_RETRY_DELAY)
    tried = f"tried {attempts} times, {BIND_RETRY_DELAY:g}s apart"
    raise BindError(f"cannot bind {what}: {os.strerror(errno.EADDRINUSE)} ({tried})", errno.EADDRINUSE)


def bind_options(server_cfg) -> dict:
    """The keyword arguments of `bind` from the ``server`` config section."""
    return {"backlog": server_cfg.backlog, "reuse_port": server_cfg.reuse_port, "unix_mode": server_cfg.unix_mode}


def _bind_tcp(host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_unix(path: str, backlog: int, mode: int | None) -> socket.socket:
    _remove_stale_unix_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if mode is not None:
            os.chmod(path, mode)
        sock.listen(backlog)
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
    return format_host_port(host, port)


def adopt(sock: socket.socket, upgrade: bool = False) -> socket.socket:
    """Mark a listener as systemd's (socket activation), or as passed on by an upgrade (the old master's,
    or the new one's in the old master): see `described` and `close`."""
    (_from_old_master if upgrade else _from_systemd).add(sock)
    return sock


def described(sock: socket.socket) -> str:
    """A listener's address for the `Listening at:` log line, saying when systemd passed it."""
    if sock in _from_old_master:
        return address_of(sock) + " (from the old master)"
    return address_of(sock) + (" (from systemd)" if sock in _from_systemd else "")


def close(sock: socket.socket) -> None:
    """Close a listener in this process, removing its socket file if it is a unix socket prefork bound
    (one systemd passed is systemd's: it stays)."""
    ours = sock.family == socket.AF_UNIX and sock not in _from_systemd and sock not in _from_old_master
    path = sock.getsockname() if ours else None
    sock.close()
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass
