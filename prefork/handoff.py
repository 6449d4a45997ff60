"""Handing a client's connection to the next generation at a reload, so that a reload closes no connection.

At a reload (HUP) the old workers stop, and each of their connections moves, open, to a worker of the new
generation: the old worker stops reading it (its unread bytes stay in the kernel's socket buffer), waits
until every line it read is answered, then passes the socket (``SCM_RIGHTS`` over a unix socket) with
what its framer holds of a frame not complete yet, the framer's state when it has one (a RELP session's
next transaction number and what its open accepted), and the client's address (the one a PROXY header
gave, if any). The new worker adopts it as if it had accepted it, its framer fed those bytes first. The client
sees nothing: no EOF, no reset, not even a pause longer than the replies' wait.

The channel: for each generation the master opens a unix listener in the abstract namespace (no file,
nothing to clean up), ``prefork-<master pid>-handoff-<generation>``, before forking that generation's
workers, which inherit it and accept on it; the master never accepts on it nor touches a connection. A
shared board (``HandoffBoard``, one integer in memory shared with every worker) says which generation
serves now: the master writes it before it stops the old generation, and a stopping worker reads it to
know where to hand off (0: a final stop, nowhere). A worker accepts only from a peer of its own user.

One handoff, over one unix connection: the old worker sends the message with the socket attached, the new
worker answers ``ACCEPTED``, the old worker answers ``COMMIT`` and closes its copy, and the new worker
serves the connection only once it read ``COMMIT``. So exactly one of them serves it whatever dies or
times out (an old worker that got no ``ACCEPTED`` within HANDOFF_TIMEOUT_S sends nothing more, and serves
and closes the connection itself as at any graceful stop: a fallback, counted). This module imports no
gevent: the master uses its board and its channel; the worker's sockets are gevent's (monkey-patched).
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import struct
from typing import Any

HANDOFF_TIMEOUT_S = 5.0  # an old worker waits this long for the new one's ACCEPTED before it falls back
CHANNEL_BACKLOG = 1024
ACCEPTED = b"A"
COMMIT = b"C"
_HEAD = struct.Struct("!II")  # the length of the JSON header, then of the carried bytes
MAX_HEADER = 4096
MAX_CARRIED = 1 << 20  # what a framer may carry: a frame's limit and one read, far below this
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def channel_name(master_pid: int, generation: int) -> str:
    """The abstract unix address of a generation's handoff listener."""
    return f"\0prefork-{master_pid}-handoff-{generation}"


def open_channel(master_pid: int, generation: int) -> socket.socket:
    """The master's side: the listener a generation's workers adopt connections on (inherited at fork)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(channel_name(master_pid, generation))
        sock.listen(CHANNEL_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class HandoffBoard:
    """Which generation serves now, in memory shared by the master and every worker forked after it: a
    stopping worker hands its connections off to that generation's workers, or to none when it is 0 (a
    final stop) or its own (a worker stopping alone: max_requests, TTOU). One aligned 64-bit integer: a
    reader never sees half of a write."""

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, mmap.PAGESIZE)
        self._q = memoryview(self._mem).cast("q")

    def set(self, generation: int) -> None:
        """The master's side: connections of stopping workers go to ``generation`` from now on (0: none)."""
        self._q[0] = generation

    def get(self) -> int:
        """The generation serving now (0: a final stop)."""
        return int(self._q[0])


def encode(addr: str, carried: bytes, state: dict[str, Any] | None = None) -> bytes:
    """The message that goes with a handed-off socket: the client's address, the framer's state (a RELP
    session's transaction number, for one) and the bytes carried over."""
    fields: dict[str, Any] = {"addr": addr}
    if state is not None:
        fields["state"] = state
    header = json.dumps(fields).encode()
    return _HEAD.pack(len(header), len(carried)) + header + carried


def hand_off(name: str, conn: socket.socket, addr: str, carried: bytes, state: dict[str, Any] | None = None) -> bool:
    """The old worker's side: pass ``conn`` to the generation listening at ``name``; True once the new
    worker took it (this one must then close its copy and never touch it again), False if it did not (this
    one still serves it)."""
    message = encode(addr, carried, state)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
        channel.settimeout(HANDOFF_TIMEOUT_S)
        try:
            channel.connect(name)
            sent = socket.send_fds(channel, [message], [conn.fileno()])
            channel.sendall(message[sent:])
            if _recv_exactly(channel, 1) != ACCEPTED:
                return False
            channel.sendall(COMMIT)  # from here on the connection is the new worker's
        except OSError:  # refused, timed out (a TimeoutError), the new worker gone
            return False
    return True


def adopt(channel: socket.socket) -> tuple[int, str, bytes, dict[str, Any] | None] | None:
    """The new worker's side, on a connection accepted from its channel: ``(fd, addr, carried, state)`` of
    the connection handed off, to serve (``state``: the framer's, or None); None when there is none to serve
    (a peer of another user, a message cut short, an old worker that gave up before its COMMIT): any
    descriptor received is then closed."""
    fds: list[int] = []
    try:
        creds = channel.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
        if _CREDS.unpack(creds)[1] != os.getuid():
            return None
        data, fds, _flags, _addr = socket.recv_fds(channel, _HEAD.size + MAX_HEADER, 1)
        if len(fds) != 1:
            return None
        if len(data) < _HEAD.size:
            data += _recv_exactly(channel, _HEAD.size - len(data))
        header_len, carried_len = _HEAD.unpack_from(data)
        if header_len > MAX_HEADER or carried_len > MAX_CARRIED:
            return None
        need = _HEAD.size + header_len + carried_len - len(data)
        if need > 0:
            data += _recv_exactly(channel, need)
        header: dict[str, Any] = json.loads(data[_HEAD.size : _HEAD.size + header_len])
        carried = data[_HEAD.size + header_len :]
        channel.sendall(ACCEPTED)
        if _recv_exactly(channel, 1) != COMMIT:
            return None
        fd = fds.pop()
        state = header.get("state")
        return fd, str(header.get("addr", "")), carried, state if isinstance(state, dict) else None
    except (OSError, ValueError):
        return None
    finally:
        for fd in fds:
            os.close(fd)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes, or fewer if the peer closed first."""
    chunks = []
    while size > 0:
        data = sock.recv(size)
        if not data:
            break
        chunks.append(data)
        size -= len(data)
    return b"".join(chunks)
