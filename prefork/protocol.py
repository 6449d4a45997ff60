"""The line protocol (v1), in one place: framing, validation, replies in order, backpressure.

Per connection, a reader greenlet frames lines and hands each valid one to the application, while a writer
greenlet sends the replies in the order the lines came, as they resolve; the reader never waits for a
reply to be written (pipelining). Rules (SPEC section 5):

- A line ends with LF; one CR before the LF is dropped. At EOF, unterminated trailing bytes are a final
  line. Exactly one reply per line, in order: the application's reply, or ``ERR too-long`` (the bytes
  are skipped up to the next LF and the connection stays open), ``ERR bad-utf8``, ``ERR empty``.
- A half-closed client still gets every reply, then the server closes.
- ``client_timeout``: a client that sends no complete line for this long is closed; a partial line it
  had started is dropped without a reply (replies for its complete lines are still sent).
- Memory per connection is bounded: the read buffer never holds more than ``max_line`` plus one read,
  and at most ``MAX_IN_FLIGHT`` lines (and about ``MAX_IN_FLIGHT_BYTES`` of reply text) await their reply;
  past that the reader stops reading, so a client that never reads its replies stalls only itself.
- ``ack = off``: nothing is sent, and a client that does not read can block nothing.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.event import Event

from prefork.app import Client

READ_SIZE = 65536
MAX_IN_FLIGHT = 4096  # lines of one connection read but not yet answered
MAX_IN_FLIGHT_BYTES = 1 << 20  # bytes of replies of one connection waiting to be written

ERR_TOO_LONG = "ERR too-long"
ERR_BAD_UTF8 = "ERR bad-utf8"
ERR_EMPTY = "ERR empty"
ERR_UNAVAILABLE = "ERR unavailable"

log = logging.getLogger("prefork.protocol")


@dataclass
class ProtocolSettings:
    """The tunables of the protocol, taken from the ``server`` section of the config."""

    max_line: int = 65536
    client_timeout: float = 300.0
    ack: bool = True


class Counters:
    """Worker-wide figures shown by ``prefork status``."""

    __slots__ = ("clients", "lines_in", "ok", "err", "next_client_id")

    def __init__(self) -> None:
        self.clients = 0
        self.lines_in = 0
        self.ok = 0
        self.err = 0
        self.next_client_id = 0


class StopReading(Exception):
    """Raised into a reader blocked on its socket when the worker stops gracefully."""


class LineConnection:
    """Serve one client until EOF, timeout, error or graceful stop."""

    def __init__(self, sock: socket.socket, addr: Any, app: Any, settings: ProtocolSettings, counters: Counters):
        self.sock = sock
        self.app = app
        self.settings = settings
        self.counters = counters
        counters.next_client_id += 1
        self.client = Client(addr=_peer_name(sock, addr), id=counters.next_client_id)
        self._pending: deque[Any] = deque()  # replies (str) or futures, in line order
        self._sizes: deque[int] = deque()  # the size of each pending reply known when pushed (0 for a future)
        self._pending_bytes = 0
        self._has_items = Event()
        self._has_room = Event()
        self._has_room.set()
        self._reading_done = False
        self._stopping = False
        self._interruptible = False  # the reader is blocked in recv or waiting for room
        self._reader: gevent.Greenlet | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    def serve(self) -> None:
        """Run the reader in this greenlet and the writer beside it; close the socket at the end."""
        self._reader = gevent.getcurrent()
        self.counters.clients += 1
        writer = gevent.spawn(self._write_loop)
        try:
            self._read_loop()
        except (StopReading, OSError):
            pass
        finally:
            self._reading_done = True
            self._has_items.set()
            try:
                writer.join()
            finally:
                self.counters.clients -= 1
                _close(self.sock)

    def stop(self) -> None:
        """Stop reading (graceful stop): lines already read are still answered, then the socket closes."""
        self._stopping = True
        if self._interruptible and self._reader is not None:
            self._reader.kill(StopReading, block=False)

    # -- reading ------------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        sock = self.sock
        max_line = self.settings.max_line
        timeout = self.settings.client_timeout
        buf = bytearray()
        skipping = False  # inside a too-long line: discard up to the next LF
        remaining = timeout
        clock = gevent.get_hub().loop
        deadline = clock.now() + timeout
        while not self._stopping:
            sock.settimeout(remaining)
            self._interruptible = True
            try:
                data = sock.recv(READ_SIZE)
            except TimeoutError:
                return  # no complete line for client_timeout: any partial line is dropped
            finally:
                self._interruptible = False
            if not data:
                if buf and not skipping:
                    self._dispatch(bytes(buf))  # the final unterminated line
                elif skipping:
                    self.counters.lines_in += 1
                    self._push(ERR_TOO_LONG)
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
                return
            if skipping:
                nl = data.find(b"\n")
                if nl < 0:
                    continue
                self.counters.lines_in += 1
                self._push(ERR_TOO_LONG)
                skipping = False
                data = data[nl + 1 :]
                deadline = clock.now() + timeout
            buf += data
            start = 0
            while True:
                nl = buf.find(b"\n", start)
                if nl < 0:
                    break
                self._dispatch(bytes(buf[start:nl]))
                start = nl + 1
            if start:
                del buf[:start]
                deadline = clock.now() + timeout
            # The line being read is already too long (one more byte allowed for a CR before the LF).
            if len(buf) > max_line + 1:
                buf.clear()
                skipping = True
            remaining = deadline - clock.now()
            if remaining <= 0:
                return

    def _dispatch(self, line: bytes) -> None:
        if line[-1:] == b"\r":
            line = line[:-1]
        self.counters.lines_in += 1
        if len(line) > self.settings.max_line:
            self._push(ERR_TOO_LONG)
            return
        if not line:
            self._push(ERR_EMPTY)
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._push(ERR_BAD_UTF8)
            return
        try:
            reply = self.app.handle(text, self.client)
        except Exception:
            log.exception("application failed on a line from %s", self.client.addr)
            reply = ERR_UNAVAILABLE
        self._push(reply)

    def _push(self, reply: Any) -> None:
        pending = self._pending
        pending.append(reply)
        size = len(reply) + 1 if isinstance(reply, str) else 0
        self._sizes.append(size)
        self._pending_bytes += size
        if not self._has_items.is_set():
            self._has_items.set()
        if len(pending) >= MAX_IN_FLIGHT or self._pending_bytes >= MAX_IN_FLIGHT_BYTES:
            # Backpressure: stop reading until the writer catches up.
            self._has_room.clear()
            self._interruptible = True
            try:
                self._has_room.wait()
            finally:
                self._interruptible = False

    # -- writing ------------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        pending = self._pending
        counters = self.counters
        ack = self.settings.ack
        sock = self.sock
        try:
            while True:
                if not pending:
                    if self._reading_done:
                        return
                    self._has_items.clear()
                    self._has_items.wait()
                    continue
                head = pending[0]
                if not isinstance(head, str):
                    pending[0] = _resolve(head)  # the oldest line decides when anything can be sent
                out = []
                sizes = self._sizes
                last_future: Any = None
                last_text = ""
                while pending:
                    item = pending[0]
                    if not isinstance(item, str):
                        # Lines of one batch share its future: resolve it once, not once per line.
                        if item is not last_future:
                            if not item.ready():
                                break
                            last_future, last_text = item, _resolve(item)
                        item = last_text
                    pending.popleft()
                    self._pending_bytes -= sizes.popleft()
                    out.append(item)
                if (
                    len(pending) < MAX_IN_FLIGHT
                    and self._pending_bytes < MAX_IN_FLIGHT_BYTES
                    and not self._has_room.is_set()
                ):
                    self._has_room.set()
                oks = out.count("OK")  # the common reply, counted at C speed
                errors = 0 if oks == len(out) else sum(1 for r in out if r.startswith("ERR"))
                counters.err += errors
                counters.ok += len(out) - errors
                if ack:
                    out.append("")
                    sock.settimeout(self.settings.client_timeout)
                    sock.sendall("\n".join(out).encode("utf-8"))
        except OSError:
            # The client is gone (or never read for client_timeout): stop reading too.
            self._stopping = True
            if self._reader is not None and not self._reading_done:
                self._reader.kill(StopReading, block=False)


def _resolve(future: Any) -> str:
    try:
        return future.get()
    except Exception:
        log.exception("application reply failed")
        return ERR_UNAVAILABLE


def _peer_name(sock: socket.socket, addr: Any) -> str:
    if sock.family == socket.AF_UNIX:
        return "unix"
    if isinstance(addr, tuple) and addr:
        return str(addr[0])
    return str(addr)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
