"""One client's connection: reading, the app, replies in order, graceful stop and linger.

Per connection, a reader greenlet feeds what it reads to a framer (``prefork.protocol.lines.LineFramer``:
framing, limits, validation and line ids are its job) and hands the lines of each batch to the application,
while a writer greenlet sends the replies in the order the lines came, as they resolve; the reader never
waits for a reply to be written (pipelining). Rules (README "Line protocol (v1)"):

- Exactly one reply per line, in order: the application's, or the framer's early reply (``ERR too-long``...).
- A half-closed client still gets every reply, then the server closes.
- ``client_timeout``: a client that sends no complete line for this long is closed; a partial line it
  had started is dropped without a reply (replies for its complete lines are still sent).
- Memory per connection is bounded: the framer's buffer never holds more than ``max_line`` (plus the id
  prefix) plus one read, and at most ``MAX_IN_FLIGHT`` lines plus those of one read (and about
  ``MAX_IN_FLIGHT_BYTES`` of reply text) await their reply; past that the reader stops reading, so a client
  that never reads its replies stalls only itself.
- ``ack = off``: nothing is sent, and a client that does not read can block nothing.
- Graceful stop (``stop()``): the reader stops at its next read (data already on its way is still read
  for up to STOP_GRACE_S), not in the middle of a buffer or of a backpressure wait, so every complete line
  already read still gets its reply. The server then half-closes and drains what the client still sends
  (closing a socket with unread input sends RST, and an RST can destroy replies still on their way).
- Fairness: recv never blocks while a socket has data, so after FAIR_READS full reads in a row a reader
  lets the event loop serve the worker's other clients.

The hot path works on whole reads, not lines: the framer gives the complete lines of a read as one batch,
handed to the app together (``handle_lines``, or ``handle`` per line), and their replies are joined in one
call. When they are all known and nothing is queued before them, the reader sends them itself with one
non-blocking send; otherwise (futures, or a client not reading fast enough) they wait in the queue of a
writer greenlet, started when a reply must wait and ended when the queue is empty: an idle connection, or
one whose app answers at once, costs one greenlet.
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

from prefork.app import ERR_UNAVAILABLE, Client
from prefork.protocol.framing import Batch
from prefork.protocol.lines import LineFramer

READ_SIZE = 65536
MAX_IN_FLIGHT = 4096  # lines of one connection read but not yet answered
MAX_IN_FLIGHT_BYTES = 1 << 20  # bytes of replies of one connection waiting to be written
LINGER_S = 2.0  # after the last reply, how long a client that keeps sending is drained before the close
FAIR_READS = 8  # after this many full reads in a row, a reader lets the event loop poll the other clients
FAIR_PAUSE_S = 0.0005  # a timer, not sleep(0): sleep(0) may resume the reader before the loop polls sockets
STOP_GRACE_S = 0.5  # at a graceful stop, how long a reader waiting in recv may still get the data in transit

log = logging.getLogger("prefork.protocol")


@dataclass
class ProtocolSettings:
    """The tunables of the protocol, taken from the ``server`` section of the config."""

    max_line: int = 65536
    client_timeout: float = 300.0
    ack: bool = True
    line_ids: bool = False


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

    # Thousands of mostly idle connections per worker: slots, and the queue and its event made only when a
    # reply has to wait, keep each one small.
    __slots__ = (
        "sock", "app", "settings", "counters", "client", "_handle_lines", "_raw", "_chunks", "_chunk_bytes",
        "_head", "_queued", "_queued_bytes", "_has_room", "_writer", "_unsent", "_linked", "_reading_done", "_saw_eof",
        "_writer_failed", "_stopping", "_in_recv", "_wake", "_reader",
    )  # fmt: skip

    def __init__(self, sock: socket.socket, addr: Any, app: Any, settings: ProtocolSettings, counters: Counters):
        self.sock = sock
        self.app = app
        self.settings = settings
        self.counters = counters
        counters.next_client_id += 1
        self.client = Client(addr=_peer_name(sock, addr), id=counters.next_client_id)
        self._handle_lines = getattr(app, "handle_lines", None)
        if sock.family != socket.AF_UNIX:
            # Replies are small and go out as soon as they are known: without this, Nagle's algorithm holds a
            # reply until the client ACKs the previous one, and a delayed ACK takes up to 40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The OS socket under gevent's, for sends that must not block (None: always use the writer).
        self._raw = getattr(sock, "_sock", None)
        # In line order: the replies (str or futures) of each dispatch, or bytes the reader could not send;
        # None while nothing waits.
        self._chunks: deque[Any] | None = None
        self._chunk_bytes: deque[int] | None = None  # what each chunk counts in _queued_bytes
        self._head = 0  # replies of _chunks[0] already sent
        self._queued = 0  # lines read and not answered yet
        self._queued_bytes = 0  # the size of their replies, as far as known when queued
        self._has_room: Event | None = None  # set by the writer when a reader waiting for room may go on
        self._writer: gevent.Greenlet | None = None
        self._unsent: bytes | None = None  # replies the socket did not take at once: the writer sends them first
        self._linked: Any = None  # the future at the head of the queue that calls _on_ready when resolved
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
        try:
            try:
                self._read_loop()
            except (StopReading, OSError):
                pass
            finally:
                self._reading_done = True
            if self._chunks or self._unsent is not None:
                self._start_writer()  # the rest is sent (or waited for) by a greenlet this one can join
            # A StopReading thrown by a dying writer may still be on its way: it must not cut the join
            # short (replies pending) or escape this greenlet.
            while self._writer is not None and not self._writer.dead:
                try:
                    self._writer.join()
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
        framer = LineFramer(self.settings.max_line, self.settings.line_ids)
        timeout = self.settings.client_timeout
        clock = gevent.get_hub().loop
        deadline = clock.now() + timeout  # moved on by each complete line, whatever else the client sends
        full_reads = 0
        # gevent's recv first tries the socket and waits only when it says EAGAIN: after a short read (the
        # socket was emptied) that try is a wasted system call and exception, so wait for data first.
        wait = getattr(sock, "_wait", None)
        drained = False
        while not self._stopping:
            remaining = deadline - clock.now()
            if remaining <= 0:
                log.debug("client %d (%s) closed: client_timeout", self.client.id, self.client.addr)
                return  # no complete line for client_timeout: any partial line is dropped
            sock.settimeout(remaining)
            self._in_recv = True
            try:
                read_event = sock._read_event if drained and wait is not None else None  # type: ignore[attr-defined]
                if read_event is not None:
                    wait(read_event)  # type: ignore[misc]  # raises socket.timeout (a TimeoutError) as recv would
                data = sock.recv(READ_SIZE)
            except TimeoutError:
                log.debug("client %d (%s) closed: client_timeout", self.client.id, self.client.addr)
                return
            finally:
                self._in_recv = False
                if self._wake is not None:
                    self._wake.close()  # recv returned first: the stop takes effect at the loop test
                    self._wake = None
            drained = len(data) < READ_SIZE
            if drained:
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
                batch = framer.feed_eof()  # the final unterminated line, if any
                if batch is not None:
                    self._dispatch(batch)
                return
            batch = framer.feed(data)
            if batch is not None:
                deadline = clock.now() + timeout
                self._dispatch(batch)

    def _dispatch(self, batch: Batch) -> None:
        """Answer the lines of a batch: hand the valid ones to the app, queue every reply in order."""
        replies = batch.replies
        if replies is None:  # every line valid: the app's replies are the whole answer
            self.counters.lines_in += len(batch.payloads)
            self._queue(self._answer(batch.payloads, batch.ids))
            return
        self.counters.lines_in += len(replies)
        if batch.payloads and batch.slots is not None:
            for i, reply in zip(batch.slots, self._answer(batch.payloads, batch.ids), strict=True):
                replies[i] = reply
        self._queue(replies)

    def _answer(self, lines: list[str], ids: list[str | None] | None = None) -> list[Any]:
        """The app's replies (text or futures) to valid lines, one per line; ``ids`` (line ids on) goes to
        the app's ``handle_lines`` beside them (the worker only boots an app that accepts them)."""
        client = self.client
        if self._handle_lines is not None:
            try:
                if ids is None:
                    replies = self._handle_lines(lines, client)
                else:
                    replies = self._handle_lines(lines, client, ids)
            except Exception:
                log.exception("application %s failed on %d lines from %s", _name(self.app), len(lines), client.addr)
                return [ERR_UNAVAILABLE] * len(lines)
            if type(replies) is not list or len(replies) != len(lines):
                log.error(
                    "application %s: handle_lines must return a list of one reply per line; got %s for %d lines",
                    _name(self.app),
                    type(replies).__name__,
                    len(lines),
                )
                return [ERR_UNAVAILABLE] * len(lines)
            return replies
        handle = self.app.handle
        replies = []
        append = replies.append
        for line in lines:
            try:
                append(handle(line, client))
            except Exception:
                log.exception("application %s failed on a line from %s", _name(self.app), client.addr)
                append(ERR_UNAVAILABLE)
        return replies

    def _queue(self, replies: list[Any]) -> None:
        """Send the replies of one dispatch, or queue them; wait for room if too much is queued."""
        count = len(replies)
        # Nothing queued and no writer (which may still be sending older replies): these may go out now.
        if not self._chunks and self._writer is None:
            text = _known_text(replies)
            if text is not None:
                _count_replies(text, count, self.counters)
                if self.settings.ack:
                    self._send((text + "\n").encode("utf-8"))
                return
        if type(replies[0]) is str:
            try:
                size = sum(map(len, replies)) + count  # all known: their text and the LFs
            except TypeError:
                size = count
        else:
            size = count  # futures count as one byte until they resolve
        chunks, chunk_bytes = self._chunks, self._chunk_bytes
        if chunks is None or chunk_bytes is None:
            chunks = self._chunks = deque()
            chunk_bytes = self._chunk_bytes = deque()
        chunks.append(replies)
        chunk_bytes.append(size)
        self._queued += count
        self._queued_bytes += size
        self._pump()
        if self._queued >= MAX_IN_FLIGHT or self._queued_bytes >= MAX_IN_FLIGHT_BYTES:
            self._wait_for_room()

    def _wait_for_room(self) -> None:
        # Backpressure: stop reading until the writer catches up. A graceful stop does not interrupt this
        # wait (the rest of the buffer still gets its replies); a writer that dies does.
        if self._has_room is None:
            self._has_room = Event()
        self._has_room.clear()
        self._has_room.wait()

    def _made_room(self) -> None:
        room = self._has_room
        if (
            room is not None
            and not room.is_set()
            and self._queued < MAX_IN_FLIGHT
            and self._queued_bytes < MAX_IN_FLIGHT_BYTES
        ):
            room.set()

    # -- writing ------------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        """Send without blocking; what the socket does not take at once is left to a writer greenlet."""
        sent = 0
        if self._raw is not None:
            try:
                sent = self._raw.send(data)
            except BlockingIOError:
                pass
            except OSError:
                self._client_gone()
                return
        if sent < len(data):
            self._unsent = data[sent:]
            self._queued_bytes += len(data) - sent
            self._start_writer()

    def _pump(self) -> None:
        """Send the replies known at the head of the queue without blocking, from whichever greenlet or
        callback made them known. When the head is a future that is not ready, it calls back when it is
        (``rawlink``), so no greenlet waits for it; a future without ``rawlink``, or a socket that is
        full, gets a writer greenlet, which may block (and then does the sending until the queue is empty).
        """
        while self._chunks and self._writer is None and not self._writer_failed:
            pieces, count = self._take_ready(wait=False)
            if count:
                pieces.append("")
                text = "\n".join(pieces)
                _count_replies(text, count, self.counters)
                if self.settings.ack:
                    self._send(text.encode("utf-8"))
                self._made_room()
                continue
            head = self._chunks[0][self._head]
            if head is self._linked:
                return
            rawlink = getattr(head, "rawlink", None)
            if rawlink is None:
                self._start_writer()
                return
            self._linked = head
            rawlink(self._on_ready)
            return
        if not self._chunks and self._writer is None:
            self._chunks = self._chunk_bytes = None  # nothing waits: free the queue

    def _on_ready(self, _source: Any) -> None:
        """The future at the head of the queue resolved (called by the event loop)."""
        self._linked = None
        try:
            self._pump()
        except Exception:
            log.exception("sending replies to %s failed", self.client.addr)
            self._client_gone()

    def _start_writer(self) -> None:
        if self._writer is None and not self._writer_failed:
            self._writer = gevent.spawn(self._write_loop)

    def _client_gone(self) -> None:
        """No reply can be sent any more, so the reader must end too, wherever it waits (in recv, for room,
        inside the app)."""
        self._writer_failed = True
        self._stopping = True
        reader = self._reader
        if reader is not None and not self._reading_done:
            if reader is gevent.getcurrent():
                raise StopReading
            reader.kill(StopReading, block=False)

    def _write_loop(self) -> None:
        """The blocking writer: sends what the socket did not take at once, and waits for futures that
        cannot call back; ends when the queue is empty."""
        sock = self.sock
        try:
            sock.settimeout(self.settings.client_timeout)
            while True:
                if self._unsent is not None:
                    data, self._unsent = self._unsent, None
                    sock.sendall(data)
                    self._queued_bytes -= len(data)
                    self._made_room()
                    continue
                if not self._chunks:
                    break
                pieces, count = self._take_ready(wait=True)
                pieces.append("")
                text = "\n".join(pieces)
                _count_replies(text, count, self.counters)
                self._made_room()
                if self.settings.ack:
                    sock.sendall(text.encode("utf-8"))
        except OSError:
            self._writer = None
            self._client_gone()  # the client is gone (or never read for client_timeout)
            return
        self._writer = None
        if not self._chunks:
            self._chunks = self._chunk_bytes = None

    def _take_ready(self, wait: bool) -> tuple[list[str], int]:
        """The replies at the head of the queue that are known, joined by chunk, and how many they are.

        With ``wait``, waits for the oldest reply if none is known: it decides when anything can be sent.
        """
        chunks = self._chunks
        pieces: list[str] = []
        count = 0
        while chunks:
            chunk = chunks[0]
            start = self._head
            if start == 0:
                piece = _known_text(chunk)
                if piece is not None:
                    pieces.append(piece)
                    count += len(chunk)
                    self._chunk_done()
                    continue
            stop = self._resolve(chunk, start, wait=wait and not pieces)
            if stop > start:
                pieces.append("\n".join(chunk[start:stop]))
                count += stop - start
            if stop < len(chunk):
                self._head = stop
                break
            self._chunk_done()
        self._queued -= count
        return pieces, count

    def _chunk_done(self) -> None:
        # Only ever called with a chunk queued: both deques exist.
        self._chunks.popleft()  # type: ignore[union-attr]
        self._queued_bytes -= self._chunk_bytes.popleft()  # type: ignore[union-attr]
        self._head = 0

    def _resolve(self, chunk: list[Any], start: int, wait: bool) -> int:
        """Replace the futures of ``chunk`` from ``start`` by their replies, up to the first one not ready
        (waiting for the one at ``start`` if ``wait``); return where it stopped. Checks every reply: one that
        is not one line of text becomes ERR unavailable, with a log line naming the app.

        A future may fill several consecutive places (lines committed together): it is resolved once, and
        its result is either one reply for all of them or a list of one reply per place.
        """
        i = start
        end = len(chunk)
        while i < end:
            item = chunk[i]
            if isinstance(item, str):
                if "\n" in item:
                    chunk[i] = self._bad_reply(item)
                i += 1
                continue
            ready = getattr(item, "ready", None)
            if ready is None:
                chunk[i] = self._bad_reply(item)
                i += 1
                continue
            if not (wait and i == start) and not ready():
                return i
            result = _result(item)
            places = i + 1  # the places this future fills
            while places < end and chunk[places] is item:
                places += 1
            if isinstance(result, list):
                if len(result) != places - i:
                    result = self._bad_reply(result)
            elif not isinstance(result, str) or "\n" in result:
                result = self._bad_reply(result)
            if isinstance(result, list):
                for j, reply in enumerate(result, i):
                    chunk[j] = reply if isinstance(reply, str) and "\n" not in reply else self._bad_reply(reply)
            else:
                chunk[i:places] = [result] * (places - i)
            i = places
        return end

    def _bad_reply(self, reply: Any) -> str:
        log.error("application %s gave a reply that is not one line of text: %.100r", _name(self.app), reply)
        return ERR_UNAVAILABLE

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


def _known_text(replies: list[Any]) -> str | None:
    """The replies joined with LFs, in a few C calls, if every one is known and one line of text; else None
    (a future, or a reply to check and resolve one by one)."""
    if type(replies[0]) is not str:
        return None
    try:
        text = "\n".join(replies)
    except TypeError:
        return None
    return text if text.count("\n") == len(replies) - 1 else None


def _count_replies(text: str, count: int, counters: Counters) -> None:
    """Count ``count`` replies, joined in ``text`` with LFs, as OK or ERR (by reason)."""
    # Replies never hold a LF: the ERR ones are those at the start or after one (C speed).
    errors = text.count("\nERR") + (text[:3] == "ERR")
    if errors:
        by_reason = counters.err_by_reason
        for reply in text.split("\n"):
            if reply.startswith("ERR"):
                reason = reply[4:] or "unknown"
                by_reason[reason] = by_reason.get(reason, 0) + 1
    counters.err += errors
    counters.ok += count - errors


def _result(future: Any) -> Any:
    try:
        return future.get()
    except Exception:
        log.exception("application reply failed")
        return ERR_UNAVAILABLE


def _name(app: Any) -> str:
    return f"{type(app).__module__}.{type(app).__qualname__}"


def _peer_name(sock: socket.socket, addr: Any) -> str:
    if sock.family == socket.AF_UNIX:
        return "unix"
    if isinstance(addr, tuple) and addr:
        return str(addr[0])
    return str(addr)
