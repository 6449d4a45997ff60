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
- Graceful stop (``stop()``): the reader stops at its next read (data already on its way is still read
  for up to STOP_GRACE_S), not in the middle of a buffer or of a backpressure wait, so every complete line
  already read still gets its reply. The server then half-closes and drains what the client still sends
  (closing a socket with unread input sends RST, and an RST can destroy replies still on their way).
- Fairness: recv never blocks while a socket has data, so after FAIR_READS full reads in a row a reader
  lets the event loop serve the worker's other clients.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.event import Event

from prefork.app import Client

READ_SIZE = 65536
MAX_IN_FLIGHT = 4096  # lines of one connection read but not yet answered
MAX_IN_FLIGHT_BYTES = 1 << 20  # bytes of replies of one connection waiting to be written
LINGER_S = 2.0  # after the last reply, how long a client that keeps sending is drained before the close
FAIR_READS = 8  # after this many full reads in a row, a reader lets the event loop poll the other clients
FAIR_PAUSE_S = 0.0005  # a timer, not sleep(0): sleep(0) may resume the reader before the loop polls sockets
STOP_GRACE_S = 0.5  # at a graceful stop, how long a reader waiting in recv may still get the data in transit

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

    __slots__ = ("clients", "lines_in", "ok", "err", "err_by_reason", "next_client_id")

    def __init__(self) -> None:
        self.clients = 0
        self.lines_in = 0
        self.ok = 0
        self.err = 0
        self.err_by_reason: dict[str, int] = {}  # "too-long", "unavailable", ...
        self.next_client_id = 0


class StopReading(BaseException):
    """Thrown into a reader to end it: at a graceful stop (only while it waits in recv), or when its writer
    died (anywhere: the client is gone). A BaseException, so that no ``except Exception`` around an
    application's ``handle`` can swallow it and leave the reader waiting for room that never comes."""


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
        self._futures = 0  # replies in _pending that are still futures
        self._has_items = Event()
        self._has_room = Event()
        self._has_room.set()
        self._reading_done = False
        self._saw_eof = False  # the client half-closed: nothing is left to drain at close
        self._writer_failed = False
        self._stopping = False
        self._in_recv = False  # the reader waits in recv: the only place a graceful stop interrupts it
        self._wake: Any = None  # a timer that throws StopReading into the reader, cancelled if recv returns first
        self._reader: gevent.Greenlet | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    def serve(self) -> None:
        """Run the reader in this greenlet and the writer beside it; close the socket at the end."""
        self._reader = gevent.getcurrent()
        self.counters.clients += 1
        writer = gevent.spawn(self._write_loop)
        try:
            try:
                self._read_loop()
            except (StopReading, OSError):
                pass
            finally:
                self._reading_done = True
                self._has_items.set()
            # A StopReading thrown by a dying writer may still be on its way: it must not cut the join
            # short (replies pending) or escape this greenlet.
            while not writer.dead:
                try:
                    writer.join()
                except StopReading:
                    pass
        finally:
            self.counters.clients -= 1
            self._close()

    def stop(self) -> None:
        """Stop reading (graceful stop): lines already read are still answered, then the socket closes."""
        self._stopping = True
        if self._in_recv and self._wake is None and self._reader is not None:
            # Lines already on their way (a client that connected just before the stop and is sending) are
            # still read if they come within STOP_GRACE_S; an idle client is interrupted after it. Not
            # Greenlet.kill: a kill cannot be taken back, and if data woke the reader first it would land
            # wherever the reader blocks next (the app, a backpressure wait) and lose lines already read.
            self._wake = gevent.get_hub().loop.timer(STOP_GRACE_S)
            self._wake.start(self._interrupt_recv)

    def _interrupt_recv(self) -> None:
        if self._in_recv and self._reader is not None:
            self._reader.throw(StopReading)

    # -- reading ------------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        sock = self.sock
        max_line = self.settings.max_line
        timeout = self.settings.client_timeout
        buf = bytearray()
        skipping = False  # inside a too-long line: discard up to the next LF
        clock = gevent.get_hub().loop
        deadline = clock.now() + timeout  # moved on by each complete line, whatever else the client sends
        full_reads = 0
        while not self._stopping:
            remaining = deadline - clock.now()
            if remaining <= 0:
                return  # no complete line for client_timeout: any partial line is dropped
            sock.settimeout(remaining)
            self._in_recv = True
            try:
                data = sock.recv(READ_SIZE)
            except TimeoutError:
                return
            finally:
                self._in_recv = False
                if self._wake is not None:
                    self._wake.close()  # recv returned first: the stop takes effect at the loop test
                    self._wake = None
            if len(data) < READ_SIZE:
                full_reads = 0
            else:
                full_reads += 1
                if full_reads == FAIR_READS:
                    # Without this, a client sending faster than the worker reads would keep the other
                    # clients of this worker waiting.
                    full_reads = 0
                    gevent.sleep(FAIR_PAUSE_S)
            if not data:
                self._saw_eof = True
                if buf and not skipping:
                    self._dispatch(bytes(buf))  # the final unterminated line
                elif skipping:
                    self.counters.lines_in += 1
                    self._push(ERR_TOO_LONG)
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
            last = buf.rfind(b"\n")
            if last >= 0:
                # Every complete line of the buffer at once: one copy and one split in C, not one per line.
                lines = bytes(buf[:last]).split(b"\n")
                del buf[: last + 1]
                deadline = clock.now() + timeout
                self._dispatch_lines(lines)
            # The line being read is already too long (one more byte allowed for a CR before the LF).
            if len(buf) > max_line + 1:
                buf.clear()
                skipping = True

    def _dispatch(self, line: bytes) -> None:
        self._dispatch_lines([line])

    def _dispatch_lines(self, lines: list[bytes]) -> None:
        """Validate each line, hand the valid ones to the app, queue every reply in order.

        The hot path of the server: locals instead of attribute lookups, no call per line but the app's.
        """
        counters = self.counters
        max_line = self.settings.max_line
        handle = self.app.handle
        client = self.client
        pending = self._pending
        sizes = self._sizes
        for line in lines:
            counters.lines_in += 1
            if line[-1:] == b"\r":
                line = line[:-1]
            if len(line) > max_line:
                reply = ERR_TOO_LONG
            elif not line:
                reply = ERR_EMPTY
            else:
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError:
                    reply = ERR_BAD_UTF8
                else:
                    try:
                        reply = handle(text, client)
                    except Exception:
                        log.exception("application failed on a line from %s", client.addr)
                        reply = ERR_UNAVAILABLE
            pending.append(reply)
            if isinstance(reply, str):
                size = len(reply) + 1
            else:
                size = 0
                self._futures += 1
            sizes.append(size)
            self._pending_bytes += size
            if len(pending) >= MAX_IN_FLIGHT or self._pending_bytes >= MAX_IN_FLIGHT_BYTES:
                self._wait_for_room()
        if not self._has_items.is_set():
            self._has_items.set()

    def _push(self, reply: Any) -> None:
        """Queue one reply that needs no app (ERR too-long at EOF)."""
        self._pending.append(reply)
        self._sizes.append(len(reply) + 1)
        self._pending_bytes += len(reply) + 1
        if not self._has_items.is_set():
            self._has_items.set()
        if len(self._pending) >= MAX_IN_FLIGHT or self._pending_bytes >= MAX_IN_FLIGHT_BYTES:
            self._wait_for_room()

    def _wait_for_room(self) -> None:
        # Backpressure: stop reading until the writer catches up. A graceful stop does not interrupt this
        # wait (the rest of the buffer still gets its replies); a writer that dies does.
        if not self._has_items.is_set():
            self._has_items.set()
        self._has_room.clear()
        self._has_room.wait()

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
                sizes = self._sizes
                head = pending[0]
                if not isinstance(head, str):
                    pending[0] = _resolve(head)  # the oldest line decides when anything can be sent
                    self._futures -= 1
                if not self._futures:
                    # Only replies already known (an app that answers at once): take them all in C.
                    out = list(pending)
                    pending.clear()
                    sizes.clear()
                    self._pending_bytes = 0
                else:
                    out = self._take_ready(pending, sizes)
                if (
                    len(pending) < MAX_IN_FLIGHT
                    and self._pending_bytes < MAX_IN_FLIGHT_BYTES
                    and not self._has_room.is_set()
                ):
                    self._has_room.set()
                if ack:
                    out.append("")
                    text = "\n".join(out)
                    # Replies never hold a LF: the ERR ones are those at the start or after one (C speed).
                    errors = text.count("\nERR") + (text[:3] == "ERR")
                    if errors:
                        _count_errors(out, counters.err_by_reason)
                    counters.err += errors
                    counters.ok += len(out) - 1 - errors
                    sock.settimeout(self.settings.client_timeout)
                    sock.sendall(text.encode("utf-8"))
                else:
                    errors = _count_errors(out, counters.err_by_reason)
                    counters.err += errors
                    counters.ok += len(out) - errors
        except OSError:
            pass  # the client is gone (or never read for client_timeout)
        finally:
            if pending or not self._reading_done:
                # The writer died: no reply can be sent any more, so the reader must end too, wherever it
                # waits (in recv, for room, inside the app).
                self._writer_failed = True
                self._stopping = True
                if self._reader is not None and not self._reading_done:
                    self._reader.kill(StopReading, block=False)

    def _take_ready(self, pending: deque[Any], sizes: deque[int]) -> list[str]:
        """The replies at the head of the queue that are known, resolving the futures that are ready."""
        out = []
        last_future: Any = None
        last_text = ""
        while pending:
            item = pending[0]
            if not isinstance(item, str):
                # Lines of one batch may share its future: resolve it once, not once per line.
                if item is not last_future:
                    if not item.ready():
                        break
                    last_future, last_text = item, _resolve(item)
                item = last_text
                self._futures -= 1
            pending.popleft()
            self._pending_bytes -= sizes.popleft()
            out.append(item)
        return out

    # -- closing ------------------------------------------------------------------------------------

    def _close(self) -> None:
        """Half-close, drain what the client still sends (bounded), then close.

        Closing a socket whose input was not all read sends RST instead of FIN, and an RST can make the
        client's kernel throw away replies it has not delivered yet. So unless the client already
        half-closed (nothing left to read) or is gone, the server sends FIN after the last reply and
        reads until the client closes too, for at most LINGER_S.
        """
        sock = self.sock
        try:
            if not self._saw_eof and not self._writer_failed:
                sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + LINGER_S
                while (remaining := deadline - time.monotonic()) > 0:
                    sock.settimeout(remaining)
                    if not sock.recv(READ_SIZE):
                        break
        except (OSError, StopReading):
            pass
        finally:
            sock.close()


def _count_errors(replies: list[str], by_reason: dict[str, int]) -> int:
    """Count the ERR replies, by reason (only called when some reply is not OK)."""
    errors = 0
    for reply in replies:
        if reply.startswith("ERR"):
            errors += 1
            reason = reply[4:] or "unknown"
            by_reason[reason] = by_reason.get(reason, 0) + 1
    return errors


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
