"""One client's connection: reading, the app, graceful stop and linger.

Per connection, a reader greenlet feeds what it reads to the framer of its listener's ``server.framing``
(``prefork.protocol.framers``: ``LineFramer`` for lines, ``SyslogFramer`` for octet-count and syslog;
framing, limits, validation and line ids are its job), hands the lines of each batch to the application and
puts their replies in the connection's ``ReplyQueue`` (``prefork.protocol.replies``), which sends them in the
order the lines came, as they resolve; the reader never waits for a reply to be written (pipelining).
Rules (README "Line protocol (v1)"):

- Exactly one reply per line, in order: the application's, or the framer's early reply (``ERR too-long``...).
- A half-closed client still gets every reply, then the server closes.
- ``client_timeout``: a client that sends no complete line for this long is closed; a partial line it
  had started is dropped without a reply (replies for its complete lines are still sent). The event
  loop's sweeper (``prefork.protocol.sweeper``) enforces it: a read waits with no timer of its own.
- Memory per connection is bounded: the framer holds at most a line's limit plus one read, and the reply
  queue stops the reader past its in-flight limits, so a client that never reads its replies stalls only
  itself.
- Graceful stop (``stop(until)``): nothing a client sends is thrown away. The reader goes on reading,
  and what comes is handled like any other line (stored, answered), until the client closes, or has sent
  nothing for STOP_IDLE_S with every reply sent (the moment a close is least likely to meet a line on its
  way), or ``until`` (the worker's share of ``graceful_timeout``) has come. Then every line read gets its
  reply, and the server half-closes and goes on reading for up to LINGER_S: what comes then is still
  handled (stored) though no reply can follow its FIN, and closing only after the client's own FIN (or
  with nothing unread) sends no RST, which could destroy replies still on their way.
- Reload (``stop(until, handoff)``): the reader stops at once (what the client sends meanwhile waits in
  the socket), every line read is answered, then the socket moves, open, to the new generation with the
  framer's unframed bytes (``prefork.handoff``); a connection the new generation does not take is served
  through the stop and closed as above. A connection handed over is ``serve(carried)`` there.
- Fairness: recv never blocks while a socket has data, so after FAIR_READS full reads in a row a reader
  lets the event loop serve the worker's other clients.

The framer is the listener's (``server.framing``): LF-terminated lines, or RELP (``prefork.protocol.relp``),
whose session also encodes the replies (``rsp`` frames) and may end the connection itself (a ``close``, a
malformed frame): then nothing more is read, the replies owed go out, the client is told ``serverclose``,
and the connection closes, with one log line when the session ended on an error.

The hot path works on whole reads, not lines: the framer gives the complete lines of a read as one batch,
the app gets them together (``handle_lines``, or ``handle`` per line), and their replies are put together.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import gevent

from prefork.handoff import hand_off
from prefork.interface import ERR_UNAVAILABLE, Peer, handle_lines_of
from prefork.protocol.counters import Counters
from prefork.protocol.framers import make_framer
from prefork.protocol.framing import Batch, Framer
from prefork.protocol.greensock import (
    can_wait_readable,
    is_tls,
    send_close_notify,
    wait_readable,
    wait_readable_untimed,
)
from prefork.protocol.rejects import REJECTS
from prefork.protocol.relp import SERVERCLOSE, RelpSession
from prefork.protocol.replies import ReplyQueue, StopReading, app_name
from prefork.protocol.sweeper import sweeper as sweeper_of_loop
from prefork.protocol.tlsaccept import identity_of, looks_like_tls, tls_on_plaintext

READ_SIZE = 65536
LINGER_S = 2.0  # after the server's FIN, how long what a client still sends is read (and handled) before the close
FAIR_READS = 8  # after this many full reads in a row, a reader lets the event loop poll the other clients
FAIR_PAUSE_S = 0.0005  # a timer, not sleep(0): sleep(0) may resume the reader before the loop polls sockets
STOP_IDLE_S = 0.5  # at a graceful stop, a client silent this long with nothing owed to it is closed

log = logging.getLogger("prefork.protocol")


@dataclass
class ProtocolSettings:
    """The tunables of the protocol, taken from the ``server`` section of the config."""

    max_line: int = 65536
    client_timeout: float = 300.0
    ack: bool = True  # server.ack of the listener, resolved (auto: by the framing)
    line_ids: bool = False
    framing: str = "lines"  # server.framing of the listener (prefork.protocol.framers)


class LineConnection:
    """Serve one client until EOF, timeout, error or graceful stop."""

    # Thousands of mostly idle connections per worker: slots keep each one small.
    __slots__ = (
        "sock", "app", "settings", "counters", "client", "replies", "_handle_lines", "_saw_eof", "_stopping",
        "_in_recv", "_wake", "_reader", "framer", "_session", "_read_until", "_lingering", "_handoff", "_expired",
        "_fresh", "_deadline",
    )  # fmt: skip

    reply_queue = ReplyQueue  # the class of ``replies`` (a test counts its waits for room)

    def __init__(self, sock: socket.socket, addr: Any, app: Any, settings: ProtocolSettings, counters: Counters):
        self.sock = sock
        self.app = app
        self.settings = settings
        self.counters = counters
        counters.next_client_id += 1
        tls = is_tls(sock)
        identity = identity_of(sock) if tls else None  # the client certificate a TLS listener verified
        self.client = Peer(addr=_peer_name(sock, addr), id=counters.next_client_id, tls=identity)
        self.framer = make_framer(settings.framing, settings.max_line, settings.line_ids)
        # A RELP session answers with frames of its own, always (its acks are the protocol's, not server.ack).
        self._session = self.framer if isinstance(self.framer, RelpSession) else None
        ack = settings.ack or self._session is not None
        self.replies = self.reply_queue(sock, app, self.client, counters, ack, settings.client_timeout)
        self.replies.session = self._session
        self._handle_lines = handle_lines_of(app)
        if sock.family != socket.AF_UNIX:
            # Replies are small and go out as soon as they are known: without this, Nagle's algorithm holds a
            # reply until the client ACKs the previous one, and a delayed ACK takes up to 40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._saw_eof = False  # the client half-closed: nothing is left to drain at close
        self._stopping = False
        self._read_until = 0.0  # once stopping: the event loop's time at which reading ends whatever comes
        self._lingering = False  # half-closed by the server: what comes is handled, never answered
        self._handoff: str | None = None  # a reload's stop: where to hand the connection (prefork.handoff)
        self._expired = False  # closed for client_timeout: never handed off (the new worker would revive it)
        self._in_recv = False  # the reader waits in recv: the only place a graceful stop interrupts it
        self._wake: Any = None  # a timer that throws StopReading into the reader, cancelled if recv returns first
        self._reader: gevent.Greenlet | None = None
        self._fresh = not tls  # nothing read yet on a plaintext listener: a TLS ClientHello would be told apart
        self._deadline = 0.0  # while reading: the event loop's time at which client_timeout ends the connection

    # -- lifecycle ----------------------------------------------------------------------------------

    def serve(self, carried: bytes = b"", state: dict[str, Any] | None = None) -> None:
        """Run the reader in this greenlet and the writer beside it; close the socket at the end (or hand it
        to the next generation). ``carried``: bytes read before, of a frame not complete yet (a connection
        handed off at a reload), fed to the framer first; ``state``: the framer's state there (a RELP
        session's), which this framer takes up."""
        self._reader = gevent.getcurrent()
        self.counters.clients += 1
        moved = False
        try:
            if state is not None and not self._resume(state):
                return  # closed with nothing read: a RELP client reconnects and resends what was not acked
            if self._read_and_answer(carried) and self._handoff is not None:
                moved = self._hand_off()
                if not moved:
                    self._handoff = None  # fell back: served through the stop and closed here, as at any stop
                    self._read_and_answer()
        finally:
            self.counters.clients -= 1
            session = self._session
            if session is not None and session.close_reason is not None:
                REJECTS.session_closed(self._name(), "RELP", session.close_reason)
            if not moved:
                self._close()

    def _read_and_answer(self, carried: bytes = b"") -> bool:
        """Read until the end (EOF, timeout, the stop), then send every reply; whether the client is still
        there with nothing read left unanswered (so that the connection can be handed off)."""
        self.replies.reader = self._reader
        try:
            if carried:
                self._read(carried)
            self._read_loop()
        except ssl.SSLError as exc:
            # A TLS client's fatal alert, a renegotiation refused, a record that does not decrypt: the session
            # is over (a plain EOF or close_notify is no error: recv gives b"").
            REJECTS.session_closed(self._name(), "TLS", str(exc.reason or exc))
        except (StopReading, OSError):
            pass
        finally:
            self.replies.reader = None  # reading is over: a client gone has no reader left to stop
        self.replies.finish()
        return not self._saw_eof and not self.replies.failed and not self._expired

    def _resume(self, state: dict[str, Any]) -> bool:
        """Take up the framer state of a connection handed off; False (logged) when this listener's framer
        cannot (the reload changed its server.framing)."""
        resume = getattr(self.framer, "resume", None)
        if resume is not None and resume(state):
            return True
        log.warning(
            "%s: closed: its session cannot go on with server.framing = %s after the reload",
            self._name(),
            self.settings.framing,
        )
        self._saw_eof = True  # nothing to drain: nothing was read
        return False

    def _read(self, data: bytes) -> None:
        batch = self.framer.feed(data)
        if batch is not None:
            self._dispatch(batch)

    def _hand_off(self) -> bool:
        """Pass the socket, what the framer holds and the client's address to the new generation (see
        ``prefork.handoff``); True once it took them, and then this process's copy is closed."""
        unframed = getattr(self.framer, "unframed", None)  # a framer that cannot say has state to keep
        carried = unframed() if unframed is not None else None
        state_of = getattr(self.framer, "state", None)  # a session's own state (RELP), besides its bytes
        state = state_of() if state_of is not None else None
        if is_tls(self.sock):
            carried = None  # its TLS state is in this process's OpenSSL: no other process can take it over
        if (
            carried is None
            or self._handoff is None
            or not hand_off(self._handoff, self.sock, self.client.addr, carried, state)
        ):
            self.counters.handoffs["fallback"] += 1
            return False
        self.counters.handoffs["out"] += 1
        self.sock.close()  # the new worker's copy keeps the connection open: no FIN, no reset
        return True

    def stop(self, until: float, handoff: str | None = None) -> None:
        """Graceful stop: serve on until the client closes, goes quiet (STOP_IDLE_S, nothing owed) or the
        event loop's time ``until``; every line read is answered, then the socket closes (``_close``).
        With ``handoff`` (a reload: the new generation's channel) the reader stops at once instead, and once
        every line read is answered the connection moves there open (a fallback to the above if it cannot)."""
        if self._stopping:
            return
        self._stopping = True
        self._read_until = until
        self._handoff = handoff
        if self._in_recv and self._wake is None and self._reader is not None:
            if handoff is not None:
                # The unread bytes stay in the socket and go with it: the reader stops now, in the hub's
                # turn (a throw from this greenlet would never come back to it).
                self._wake = gevent.get_hub().loop.timer(0)
                self._wake.start(self._interrupt_recv)
                return
            # The reader may wait in recv for up to client_timeout: it looks again after STOP_IDLE_S. A
            # timeout thrown into the wait, as recv's own would be: no data is taken from the socket. Not
            # Greenlet.kill: a kill cannot be taken back, and if data woke the reader first it would land
            # wherever the reader blocks next (the app, a backpressure wait) and lose lines already read.
            self._wake = gevent.get_hub().loop.timer(STOP_IDLE_S)
            self._wake.start(self._interrupt_recv)

    def _interrupt_recv(self) -> None:
        if self._in_recv and self._reader is not None:
            self._reader.throw(StopReading if self._handoff is not None else TimeoutError)

    # -- reading ------------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        """Read and dispatch until EOF, client_timeout, an error, or the stop's end (see ``stop``)."""
        sweeper = sweeper_of_loop()
        sweeper.watch(self, self.settings.client_timeout)
        try:
            self._read_until_end()
        finally:
            sweeper.unwatch(self)

    def expire_if_due(self, now: float) -> None:
        """The sweeper's look (``prefork.protocol.sweeper``): a reader that waits for data past its client's
        deadline gets the TimeoutError its recv's own timeout would have raised."""
        # A stopping reader has timed waits of its own (and maybe the stop's wake-up timer).
        if self._in_recv and not self._stopping and now >= self._deadline and self._reader is not None:
            self._reader.throw(TimeoutError)

    def _read_until_end(self) -> None:
        sock = self.sock
        # Only the Framer shape is used below (and a RELP session's ``closing``): each framing is another framer.
        framer: Framer = self.framer
        session = self._session
        timeout = self.settings.client_timeout
        clock = gevent.get_hub().loop
        self._deadline = clock.now() + timeout  # moved on by each complete line, whatever else the client sends
        full_reads = 0
        # After a short read (the socket was emptied), wait for data before recv, which would try first.
        can_wait = can_wait_readable(sock)
        drained = False
        replies = self.replies
        sock.settimeout(timeout)  # a bound for the waits the sweeper does not watch (a TLS record, a send)
        while not replies.failed:
            now = clock.now()
            remaining = self._deadline - now
            if remaining <= 0:
                log.debug("client %d (%s) closed: client_timeout", self.client.id, self.client.addr)
                self._expired = True
                return  # no complete line for client_timeout: any partial line is dropped
            timed = self._stopping or not can_wait  # the hot path waits with no timer: the sweeper watches it
            if self._stopping:
                if self._handoff is not None:
                    return  # a reload: the rest goes to the new generation with the socket
                left = self._read_until - now
                if left <= 0:
                    return  # the stop's time is up: what was read is answered, then the close
                remaining = min(remaining, left) if self._lingering else min(remaining, left, STOP_IDLE_S)
            if timed:
                sock.settimeout(remaining)
            self._in_recv = True
            try:
                if drained and can_wait:
                    if timed:
                        wait_readable(sock)  # raises socket.timeout (a TimeoutError) as recv would
                    else:
                        wait_readable_untimed(sock)
                data = sock.recv(READ_SIZE)
            except TimeoutError:
                if self._stopping and clock.now() < self._deadline:
                    if self._lingering or replies.idle():
                        return  # quiet with nothing owed (or the linger is over): the stop closes it now
                    continue  # replies still owed: a client reading them may answer with more lines
                log.debug("client %d (%s) closed: client_timeout", self.client.id, self.client.addr)
                self._expired = True
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
            if self._fresh:
                self._fresh = False
                if looks_like_tls(data):
                    tls_on_plaintext(self.counters, self.client.addr)
                    self._saw_eof = True  # closed at once: nothing of it is a line, a reset is fine
                    return
            if not data:
                self._saw_eof = True
                batch = framer.feed_eof()  # the final unterminated line, if any
                if batch is not None:
                    self._dispatch(batch)
                return
            batch = framer.feed(data)
            if batch is not None:
                self._deadline = clock.now() + timeout
                self._dispatch(batch)
                if framer.broken is not None:
                    REJECTS.broken(self._name(), self.settings.framing, framer.broken)
                    return
            if session is not None and session.closing:
                return  # the session ended (close, a malformed frame, ERR unavailable): read nothing more

    def _dispatch(self, batch: Batch) -> None:
        """Answer the lines of a batch: hand the valid ones to the app, queue every reply in order."""
        replies = batch.replies
        if replies is None:  # every line valid: the app's replies are the whole answer
            self.counters.lines_in += len(batch.payloads)
            self.replies.put(self._answer(batch.payloads, batch.ids))
            return
        self.counters.lines_in += len(replies)
        if not self.settings.ack:
            REJECTS.refused(self._name(), self.settings.framing, replies)  # counted, and no reply will say it
        if batch.payloads and batch.slots is not None:
            for i, reply in zip(batch.slots, self._answer(batch.payloads, batch.ids), strict=True):
                replies[i] = reply
        self.replies.put(replies)

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
                log.exception("application %s failed on %d lines from %s", app_name(self.app), len(lines), client.addr)
                return [ERR_UNAVAILABLE] * len(lines)
            if type(replies) is not list or len(replies) != len(lines):
                log.error(
                    "application %s: handle_lines must return a list of one reply per line; got %s for %d lines",
                    app_name(self.app),
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
                log.exception("application %s failed on a line from %s", app_name(self.app), client.addr)
                append(ERR_UNAVAILABLE)
        return replies

    def _name(self) -> str:
        return f"client {self.client.id} ({self.client.addr})"

    # -- closing ------------------------------------------------------------------------------------

    def _close(self) -> None:
        """Half-close, read on (bounded, what comes is handled), then close.

        Closing a socket whose input was not all read sends RST instead of FIN, and an RST can make the
        client's kernel throw away replies it has not delivered yet. So unless the client already
        half-closed (nothing left to read) or is gone, the server sends FIN after the last reply and
        reads until the client closes too, for at most LINGER_S. What it reads then is handled as any line
        (a shipper that reads no replies sees no FIN and may still send): stored, never thrown away, but
        unanswered, since nothing can follow the FIN.
        """
        sock = self.sock
        tls = is_tls(sock)
        try:
            if not self._saw_eof and not self.replies.failed:
                if self._session is not None:
                    sock.settimeout(LINGER_S)
                    sock.sendall(SERVERCLOSE)  # the RELP hint: the client need not wait for the FIN to know
                if tls:
                    # The TLS end of the stream; a shutdown would drop the TLS layer and the linger below
                    # would read records as lines.
                    send_close_notify(sock)
                else:
                    sock.shutdown(socket.SHUT_WR)
                self._stopping = self._lingering = True
                self._read_until = gevent.get_hub().loop.now() + LINGER_S
                self.replies.ack = False  # counted, never sent
                self.replies.reader = self._reader
                try:
                    self._read_loop()
                finally:
                    self.replies.reader = None
                self.replies.finish()
            elif tls and not self.replies.failed:
                send_close_notify(sock)  # the client ended first (its close_notify or FIN): answered in kind
        except (OSError, StopReading):
            pass
        finally:
            sock.close()


def _peer_name(sock: socket.socket, addr: Any) -> str:
    if sock.family == socket.AF_UNIX:
        return "unix"
    if isinstance(addr, tuple) and addr:
        return str(addr[0])
    return str(addr)
