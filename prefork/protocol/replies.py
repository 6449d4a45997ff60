"""Replies in line order: the queue, futures, backpressure and the writer greenlet of one connection.

The reader puts the replies of each batch of lines (``put``): text, or futures for replies not known yet
(one future may fill several consecutive places: lines committed together). When they are all known and
nothing is queued before them, they go out at once with one non-blocking send; otherwise they wait in the
queue, in line order, and go out as the replies at its head become known: a future that is not ready calls
back when it is (``rawlink``), so no greenlet waits for it; a future without ``rawlink``, or a socket that
is full, gets a writer greenlet, which may block (and then does the sending until the queue is empty). An
idle connection, or one whose app answers at once, costs no greenlet here.

Backpressure: at most ``MAX_IN_FLIGHT`` lines plus those of one batch (and about ``MAX_IN_FLIGHT_BYTES`` of
reply text) wait for their reply; past that ``put`` waits until the writer catches up, so a client that
never reads its replies stalls only itself. With ``ack = off`` nothing is sent, and nothing can block.

Every reply is checked: one that is not one line of text becomes ``ERR unavailable`` for its line only,
with a log line naming the app. Each reply is counted as OK or ERR (by reason) when it is sent.

Replies go out as lines (each reply and a LF), unless the connection speaks a protocol with frames of its
own (RELP): then its ``session`` encodes them (``encode``), and when that ends the session (``closing``)
the reader is stopped; what is queued still goes out as the session encodes it.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from typing import Any

import gevent
from gevent.event import Event

from prefork.interface import ERR_UNAVAILABLE, Peer
from prefork.protocol.counters import Counters
from prefork.protocol.greensock import raw_socket

MAX_IN_FLIGHT = 4096  # lines of one connection read but not yet answered
MAX_IN_FLIGHT_BYTES = 1 << 20  # bytes of replies of one connection waiting to be written

log = logging.getLogger("prefork.protocol")


class StopReading(BaseException):
    """Thrown into a reader to end it: at a graceful stop (only while it waits in recv), or when its writer
    died (anywhere: the client is gone). A BaseException, so that no ``except Exception`` around an
    application's ``handle`` can swallow it and leave the reader waiting for room that never comes."""


class ReplyQueue:
    """The replies of one connection, sent in line order as they become known."""

    # One per connection, thousands per worker: slots, and the queue and its event made only when a reply
    # has to wait, keep it small.
    __slots__ = (
        "sock", "app", "client", "counters", "ack", "timeout", "reader", "failed", "_raw", "_chunks",
        "_chunk_bytes", "_head", "_queued", "_queued_bytes", "_has_room", "_writer", "_unsent", "_linked",
        "_socket_full", "_told_unread", "session",
    )  # fmt: skip

    def __init__(
        self, sock: socket.socket, app: Any, client: Peer, counters: Counters, ack: bool, timeout: float
    ) -> None:
        self.sock = sock
        self.app = app  # named in the log line of a reply that breaks the contract
        self.client = client
        self.counters = counters
        self.ack = ack  # False: replies are counted, never sent
        self.timeout = timeout  # how long the writer may wait for the client to take replies (client_timeout)
        # The greenlet that reads and puts replies, while it does: stopped (StopReading) when the client is
        # gone; None once reading is over.
        self.reader: gevent.Greenlet | None = None
        self.failed = False  # the client is gone: nothing more can be sent
        # The OS socket under gevent's, for sends that must not block (None: always use the writer).
        self._raw = raw_socket(sock)
        # In line order: the replies (str or futures) of each batch; None while nothing waits.
        self._chunks: deque[Any] | None = None
        self._chunk_bytes: deque[int] | None = None  # what each chunk counts in _queued_bytes
        self._head = 0  # replies of _chunks[0] already sent
        self._queued = 0  # lines read and not answered yet
        self._queued_bytes = 0  # the size of their replies, as far as known when queued
        self._has_room: Event | None = None  # set by the writer when a reader waiting for room may go on
        self._writer: gevent.Greenlet | None = None
        self._unsent: bytes | None = None  # replies the socket did not take at once: the writer sends them first
        self._linked: Any = None  # the future at the head of the queue that calls _on_ready when resolved
        self._socket_full = False  # the socket took not all replies at once: the writer waits for the client
        self._told_unread = False  # the log line of a client that does not read its replies was written
        # The encoder of a protocol with frames of its own (``encode(text) -> bytes``, ``closing``), or None.
        self.session: Any = None

    def finish(self) -> None:
        """After the last ``put``: send (or wait for) the rest, in a writer greenlet that this one joins."""
        self.reader = None
        if self._chunks or self._unsent is not None:
            self._start_writer()
        # A StopReading thrown by a dying writer may still be on its way: it must not cut the join short
        # (replies pending) or escape this greenlet.
        while self._writer is not None and not self._writer.dead:
            try:
                self._writer.join()
            except StopReading:
                pass

    def idle(self) -> bool:
        """Whether every reply put so far is sent (with ack off: counted): nothing is owed to the client."""
        return not self._chunks and self._writer is None and self._unsent is None

    def put(self, replies: list[Any]) -> None:
        """Send the replies (text or futures) of one batch, in line order, or queue them; wait for room if
        too much is queued. Raises StopReading if the client is gone."""
        count = len(replies)
        # Nothing queued and no writer (which may still be sending older replies): these may go out now.
        if not self._chunks and self._writer is None:
            text = _known_text(replies)
            if text is not None:
                _count_replies(text, count, self.counters)
                if self.ack:
                    if self.session is None:
                        self._send((text + "\n").encode("utf-8"))
                    else:
                        self._send(self._encode(text + "\n"))
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
        if self._socket_full and not self._told_unread:
            self._unread()
        if self._has_room is None:
            self._has_room = Event()
        self._has_room.clear()
        self._has_room.wait()

    def _unread(self) -> None:
        """The reader stops because the client does not take its replies (the socket is full, not the app
        slow): said once per connection, and counted, for a shipper that reads nothing would otherwise
        stall here until client_timeout cuts it, with no sign on either side."""
        self._told_unread = True
        self.counters.unread_clients += 1
        log.warning(
            "client %d (%s) does not read its replies: its lines wait; with a shipper that reads nothing set "
            "server.ack = off for this listener",
            self.client.id, self.client.addr,
        )  # fmt: skip

    def _made_room(self) -> None:
        room = self._has_room
        if (
            room is not None
            and not room.is_set()
            and self._queued < MAX_IN_FLIGHT
            and self._queued_bytes < MAX_IN_FLIGHT_BYTES
        ):
            room.set()

    # -- sending ------------------------------------------------------------------------------------

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
            self._socket_full = True
            self._unsent = data[sent:]
            self._queued_bytes += len(data) - sent
            self._start_writer()

    def _pump(self) -> None:
        """Send the replies known at the head of the queue without blocking, from whichever greenlet or
        callback made them known. When the head is a future that is not ready, it calls back when it is
        (``rawlink``), so no greenlet waits for it; a future without ``rawlink``, or a socket that is
        full, gets a writer greenlet, which may block (and then does the sending until the queue is empty).
        """
        while self._chunks and self._writer is None and not self.failed:
            pieces, count = self._take_ready(wait=False)
            if count:
                pieces.append("")
                text = "\n".join(pieces)
                _count_replies(text, count, self.counters)
                if self.ack:
                    self._send(text.encode("utf-8") if self.session is None else self._encode(text))
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
        if self._writer is None and not self.failed:
            self._writer = gevent.spawn(self._write_loop)

    def _encode(self, text: str) -> bytes:
        """The session's frames for replies (each followed by LF); a session that this ends stops the reader."""
        data: bytes = self.session.encode(text)
        reader = self.reader
        if self.session.closing and reader is not None and reader is not gevent.getcurrent():
            # Asynchronously (the reader itself sees ``closing`` after its batch): ``data`` must still go out.
            # Once: the reader is done with this queue.
            self.reader = None
            reader.kill(StopReading, block=False)
        return data

    def _client_gone(self) -> None:
        """No reply can be sent any more, so the reader must end too, wherever it waits (in recv, for room,
        inside the app)."""
        self.failed = True
        reader = self.reader
        if reader is not None:
            if reader is gevent.getcurrent():
                raise StopReading
            reader.kill(StopReading, block=False)

    def _write_loop(self) -> None:
        """The blocking writer: sends what the socket did not take at once, and waits for futures that
        cannot call back; ends when the queue is empty."""
        sock = self.sock
        try:
            sock.settimeout(self.timeout)
            while True:
                if self._unsent is not None:
                    data, self._unsent = self._unsent, None
                    sock.sendall(data)
                    self._socket_full = False
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
                if self.ack:
                    data = text.encode("utf-8") if self.session is None else self._encode(text)
                    self._socket_full = True  # until sendall returns: it waits only while the socket is full
                    sock.sendall(data)
                    self._socket_full = False
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                log.warning(
                    "client %d (%s) closed: it took no reply for client_timeout (%d lines unanswered)",
                    self.client.id, self.client.addr, self._queued,
                )  # fmt: skip
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
            stop = _resolve(chunk, start, wait and not pieces, self.app)
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


def _resolve(chunk: list[Any], start: int, wait: bool, app: Any) -> int:
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
                chunk[i] = _bad_reply(app, item)
            i += 1
            continue
        ready = getattr(item, "ready", None)
        if ready is None:
            chunk[i] = _bad_reply(app, item)
            i += 1
            continue
        if not (wait and i == start) and not ready():
            return i
        result = _result(item)
        places = i + 1  # the places this future fills
        while places < end and chunk[places] is item:
            places += 1
        if isinstance(result, list):
            spots = list(range(i, places))
            if len(result) > len(spots):
                # Consecutive for the app, but not here: the framer's early replies (ERR empty, ...) of the
                # same read sit between its lines. Its other places are further on in the chunk.
                spots += [j for j in range(places, end) if chunk[j] is item]
            if len(result) != len(spots):
                bad = _bad_reply(app, result)
                for j in spots:
                    chunk[j] = bad
            else:
                for j, reply in zip(spots, result, strict=True):
                    chunk[j] = reply if isinstance(reply, str) and "\n" not in reply else _bad_reply(app, reply)
        else:
            if not isinstance(result, str) or "\n" in result:
                result = _bad_reply(app, result)
            chunk[i:places] = [result] * (places - i)
        i = places
    return end


def _bad_reply(app: Any, reply: Any) -> str:
    log.error("application %s gave a reply that is not one line of text: %.100r", app_name(app), reply)
    return ERR_UNAVAILABLE


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


def app_name(app: Any) -> str:
    """The app as log lines name it: module and class."""
    return f"{type(app).__module__}.{type(app).__qualname__}"
