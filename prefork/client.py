"""Sending lines to a prefork server: pipelining, replies matched in order, reconnect and resend.

    from prefork.client import Client

    with Client("127.0.0.1:32777") as client:
        for line, reply in client.stream(open("events.log", encoding="utf-8")):
            if reply != "OK":
                print("not stored:", reply, line)

``stream`` keeps up to ``window`` lines in flight on one connection and yields each line with its reply,
in the order the lines were given. When the connection breaks (the server restarted, a worker died, a
balancer moved), it reconnects with capped exponential backoff and sends again every line that had no
reply yet: a line without a reply may or may not have been stored, so without line ids a resent line may
be stored twice (at-least-once); ``resent`` counts them. A reply of ``ERR ...`` is final and yielded as it
is (``ERR`` means not stored; sending it again is the caller's choice).

Line ids make it exactly-once. At each (re)connect the client asks the server whether it reads them (the
probe line ``@\xff``: ``OK ids`` from a server with ``server.line_ids`` on, ``ERR bad-utf8`` from one
without), whatever ``ids`` says: a server that reads ids reads a line that begins with ``@`` as carrying one,
so the client must know. With ``ids=None`` (the default) it uses ids when the server reads them;
``ids=True`` requires them (ClientError if the server does not offer them); ``ids=False`` never sends them.
With ids, each line goes as ``@ID LINE``: ``ID`` is ``id_prefix`` and a sequence number (the prefix is random
per client unless given), or the caller's own id when ``stream`` gets ``(id, line)`` pairs. A line resent
after a reconnect keeps its id, so the server stores it once (and answers ``OK`` if it already had). A
caller's ids are what makes a re-run of the same input after a crash idempotent; the server stores each id
once for as long as its row exists. Without ids, to a server that reads them, a line that begins with ``@``
goes as ``@ LINE`` (the protocol's escape: no id, the payload verbatim after the space).

Nothing is answered ``OK`` and stored other than as given: an item's terminator (one LF, or CR LF) is
dropped, and a line that still ends with a CR goes with one more (the server drops one CR before the LF).
A server with ``server.ack = off`` never answers, not even the probe: the connection attempt then times out
after ``connect_timeout`` and, after ``give_up_after``, ClientError says so; nothing is sent before the
probe's reply.

TLS (``tls=True``, implied by any of ``tls_ca``, ``tls_cert``, ``tls_key``, ``server_name``; see
``prefork.client_tls``) changes nothing of the above: each (re)connect is a new TCP connection and a new TLS
session, the probe and the lines go inside it, and the resend is the same. A certificate that does not
verify, or a server that refuses the client's certificate, is a ClientError at once, naming the server and
the reason: trying again cannot mend it.

Plain blocking sockets and ``selectors``: under gevent's monkey-patching the same code cooperates with
other greenlets. One ``Client`` is not meant to be shared by threads or greenlets at once.
"""

from __future__ import annotations

import re
import secrets
import selectors
import socket
import ssl
import string
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import cast

from prefork.client_tls import client_context, fatal_tls_error
from prefork.config.address import format_host_port, parse_peer

DEFAULT_PORT = 32777
READ_SIZE = 65536
WRITE_SIZE = 65536  # most bytes handed to one TLS write (the plaintext socket takes all it can)
# The capability probe and the server's answer when it takes line ids (prefork.protocol.lines).
ID_PROBE = b"@\xff\n"
OK_IDS = "OK ids"
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# The prefix of ids made here and by `prefork send`: at most 40 characters, so that what follows it (a
# sequence number, or ":" and a line number, of up to 24 characters) still fits the 64 of an id.
MAX_ID_PREFIX = 40
_ID_PREFIX = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_ID_PREFIX}}}")

Item = str | bytes | tuple[str, str | bytes]  # a line, or (id, line)


class ClientError(Exception):
    """The server could not be reached within the client's ``give_up_after``, does not take line ids when
    they are required, or fails TLS in a way that trying again cannot mend (see ``prefork.client_tls``)."""


def random_id_prefix() -> str:
    """A prefix for a client's ids: 12 random characters (62**12 choices) and ``:``."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(12)) + ":"


def check_id(ident: str) -> str:
    """``ident`` if it is a valid line id (1-64 characters of ``[A-Za-z0-9._:-]``), else ValueError."""
    if not isinstance(ident, str) or not _ID.fullmatch(ident):
        raise ValueError(f"bad line id {ident!r}: expected 1-64 characters of A-Z a-z 0-9 . _ : -")
    return ident


def check_id_prefix(prefix: str) -> str:
    """``prefix`` if it can begin line ids (1-40 characters of ``[A-Za-z0-9._:-]``), else ValueError. Never
    empty: an empty prefix (an unset variable, say) would give every run and every client the same ids."""
    if not isinstance(prefix, str) or not _ID_PREFIX.fullmatch(prefix):
        raise ValueError(f"bad id prefix {prefix!r}: expected 1-{MAX_ID_PREFIX} characters of A-Z a-z 0-9 . _ : -")
    return prefix


class Client:
    """A pipelining line client with reconnect and resend (see the module)."""

    def __init__(
        self,
        address: str = f"127.0.0.1:{DEFAULT_PORT}",
        *,
        window: int = 1000,
        connect_timeout: float = 10.0,
        reply_timeout: float = 60.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        give_up_after: float = 300.0,
        ids: bool | None = None,
        id_prefix: str | None = None,
        tls: bool | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        server_name: str | None = None,
    ):
        """``window``: lines in flight at most; ``reply_timeout``: a connection on which nothing comes back
        for this long while replies are due is treated as broken; ``backoff``: first and longest wait
        between connection attempts; ``give_up_after``: ClientError after this long without a connection;
        ``ids``: line ids when the server offers them (None), always (True) or never (False);
        ``id_prefix``: what the ids of lines without an id of the caller's begin with (1-40 characters of
        ``[A-Za-z0-9._:-]``, see ``check_id_prefix``; default: random).

        TLS: ``tls`` turns it on (None: on when any of the other four is given); ``tls_ca``: the CA
        certificates (PEM) that verify the server (default: the system's trust store); ``tls_cert`` and
        ``tls_key``: a client certificate and its key (PEM; the key may be in the certificate's file);
        ``server_name``: the name sent (SNI) and verified (default: the host of ``address``). ValueError
        when a file will not load."""
        if window < 1:
            raise ValueError("window must be at least 1")
        if id_prefix is not None:
            check_id_prefix(id_prefix)
        self.host, self.port = parse_peer(address, DEFAULT_PORT)
        self.window = window
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self.backoff = backoff
        self.give_up_after = give_up_after
        self.sent = 0  # lines written (resends included)
        self.acked = 0  # replies received
        self.errors = 0  # replies other than OK... that start with ERR
        self.resent = 0  # lines sent again after a connection broke before their reply
        self.reconnects = 0
        self.ids = ids
        self.id_prefix = random_id_prefix() if id_prefix is None else id_prefix
        self.using_ids: bool | None = None  # whether the current (or last) connection sends ids; None: none yet
        self.server_ids: bool | None = None  # whether that connection's server reads ids (its probe said OK ids)
        self._sequence = 0  # the number of the last id made from id_prefix
        self._sock: socket.socket | None = None
        self._tls_retry = 0  # the size of a TLS write to retry (0: none)
        given = (tls_ca, tls_cert, tls_key, server_name)
        if tls is False and any(option is not None for option in given):
            raise ValueError("TLS options given with tls=False")
        self.tls = bool(tls) or any(option is not None for option in given)
        self.server_name = server_name or self.host
        self.tls_context = client_context(tls_ca, tls_cert, tls_key) if self.tls else None
        self.tls_version: str | None = None  # the protocol of the current (or last) connection: "TLSv1.3"

    # -- the connection -----------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        delay, longest = self.backoff
        deadline = time.monotonic() + self.give_up_after
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if self.tls_context is not None:
                        # A fresh session each time, the handshake under connect_timeout.
                        sock = self.tls_context.wrap_socket(sock, server_hostname=self.server_name)
                        self.tls_version = sock.version()
                    self.server_ids = self._probe(sock)
                    self.using_ids = self.server_ids and self.ids is not False
                    sock.setblocking(False)
                except BaseException:
                    sock.close()
                    raise
                return sock
            except OSError as exc:
                where = format_host_port(self.host, self.port)
                fatal = fatal_tls_error(exc, where, self.server_name) if self.tls else None
                if fatal is not None:
                    raise ClientError(fatal) from exc
                if time.monotonic() + delay > deadline:
                    raise ClientError(f"cannot connect to {where}: {exc}") from exc
                time.sleep(delay)
                delay = min(longest, delay * 2)

    def _probe(self, sock: socket.socket) -> bool:
        """Ask the server whether it reads line ids: True if it does; ClientError if it does not and
        ``ids`` requires them. The probe is the first line on the connection, so its reply is the first."""
        sock.sendall(ID_PROBE)
        reply = b""
        while not reply.endswith(b"\n"):
            try:
                data = sock.recv(256)
            except TimeoutError as exc:
                raise TimeoutError(
                    f"no reply to the line-ids probe within {self.connect_timeout:g} s "
                    "(a server with server.ack = off answers nothing, and this client needs replies)"
                ) from exc
            if not data:
                raise ConnectionResetError("the server closed the connection before answering the id probe")
            reply += data
        text = reply.decode("utf-8", "replace")
        if reply.count(b"\n") != 1:
            raise ConnectionError(f"more than one reply to the id probe: {text!r}")
        offered = text[:-1] == OK_IDS
        if self.ids and not offered:
            raise ClientError(
                f"{format_host_port(self.host, self.port)} does not take line ids "
                f"(the probe got {text[:-1]!r}; server.line_ids is off?)"
            )
        return offered

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
        self._tls_retry = 0

    def close(self) -> None:
        """Close the connection (lines still in flight get no reply)."""
        self._drop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ------------------------------------------------------------------------------------

    def send_all(self, lines: Iterable[Item]) -> list[str]:
        """Send every line (or ``(id, line)`` pair) and return their replies, in order."""
        return [reply for _, reply in self.stream(lines)]

    def stream(self, lines: Iterable[Item]) -> Iterator[tuple[bytes, str]]:
        """Send the lines, pipelined, and yield ``(line, reply)`` for each, in order (see the module).

        An item is a line (str or bytes, one trailing LF or CR LF dropped) or a pair ``(id, line)`` giving the
        line's own id (1-64 characters of ``[A-Za-z0-9._:-]``), used when the connection sends ids. The
        line yielded is the line's bytes, without an id."""
        source = iter(lines)
        exhausted = False
        # Lines written (or to be written) whose reply is due, in order, each with its id (None: without).
        in_flight: deque[tuple[bytes, str | None]] = deque()
        unwritten: list[tuple[bytes, str | None]] = []  # the newest of them, encoded once a connection says how
        out = bytearray()  # bytes still to write
        tail = b""  # an incomplete reply line
        last_progress = time.monotonic()
        selector: selectors.BaseSelector = selectors.DefaultSelector()
        if self._sock is not None:  # the connection of an earlier stream
            selector.register(self._sock, selectors.EVENT_READ)
        try:
            while True:
                while not exhausted and len(in_flight) < self.window:
                    try:
                        item = self._take(next(source))
                    except StopIteration:
                        exhausted = True
                        break
                    in_flight.append(item)
                    unwritten.append(item)
                    self.sent += 1
                if not in_flight:
                    return
                if self._sock is None:
                    self._sock = self._connect()
                    selector = _fresh(selector, self._sock)
                    last_progress = time.monotonic()
                if unwritten:
                    # Encoded for this connection: with or without ids (or the escape), as its probe said.
                    out += _wire(unwritten, bool(self.using_ids), bool(self.server_ids))
                    unwritten.clear()
                ready = self._ready(selector, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))
                try:
                    if ready & selectors.EVENT_WRITE and out:
                        self._send(out)
                    data = self._recv() if ready & selectors.EVENT_READ else None
                    if data == b"":
                        raise ConnectionResetError("the server closed the connection")
                    if data:
                        last_progress = time.monotonic()
                        data = tail + data
                        cut = data.rfind(b"\n") + 1
                        tail = data[cut:]
                        for reply in data[:cut].split(b"\n")[:-1]:
                            text = reply.decode("utf-8", "replace")
                            self.acked += 1
                            if text.startswith("ERR"):
                                self.errors += 1
                            yield in_flight.popleft()[0], text
                    elif time.monotonic() - last_progress > self.reply_timeout:
                        raise TimeoutError(f"no reply for {self.reply_timeout:g}s")
                except (OSError, IndexError):
                    # The connection broke (or answered more than it was sent): every line without a
                    # reply goes again on a new connection, in the same order and with the same id.
                    self._drop()
                    self.reconnects += 1
                    self.resent += len(in_flight)
                    self.sent += len(in_flight)
                    unwritten = list(in_flight)
                    out = bytearray()
                    tail = b""
        finally:
            selector.close()

    def _ready(self, selector: selectors.BaseSelector, events: int) -> int:
        """The events ready on the connection (waiting up to a second). Bytes TLS has already decrypted
        count as readable: select() sees only the socket, and they may be all there is."""
        assert self._sock is not None
        selector.modify(self._sock, events)
        pending = self.tls_context is not None and cast(ssl.SSLSocket, self._sock).pending() > 0
        ready = selector.select(timeout=0 if pending else 1.0)
        return (ready[0][1] if ready else 0) | (selectors.EVENT_READ if pending else 0)

    def _send(self, out: bytearray) -> None:
        """Write what the connection takes of ``out`` and take it off ``out``."""
        assert self._sock is not None
        if self.tls_context is None:
            del out[: self._sock.send(out)]
            return
        # OpenSSL wants a write it could not finish retried with the same bytes: ``out`` only grows at its
        # end, so its first ``_tls_retry`` bytes are those. (gevent's SSLSocket answers 0 where the
        # standard library raises.)
        size = self._tls_retry or min(len(out), WRITE_SIZE)
        try:
            written = self._sock.send(out[:size])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            written = 0
        self._tls_retry = 0 if written else size
        del out[:written]

    def _recv(self) -> bytes | None:
        """What the server sent (b"": it closed), or None when there is nothing to read yet: a TLS
        record not yet whole, or only TLS's own messages (a session ticket)."""
        assert self._sock is not None
        try:
            return self._sock.recv(READ_SIZE)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return None

    def _take(self, item: Item) -> tuple[bytes, str | None]:
        """A line as given: its bytes and its id (the caller's, else the next of id_prefix; None without ids)."""
        if isinstance(item, tuple):
            ident, line = item
            check_id(ident)
        else:
            ident, line = None, item
        data = _encode(line)
        if self.ids is False:
            return data, None
        if ident is None:
            self._sequence += 1
            ident = f"{self.id_prefix}{self._sequence}"
        return data, ident


def _encode(line: str | bytes) -> bytes:
    """The bytes of a line, without its terminator (one LF, or CR LF); ValueError if it holds another LF."""
    data = line.encode("utf-8") if isinstance(line, str) else bytes(line)
    if data[-1:] == b"\n":
        data = data[:-2] if data[-2:-1] == b"\r" else data[:-1]
    if b"\n" in data:
        raise ValueError(f"a line holds a LF: {data[:80]!r}")
    return data


def _wire(lines: list[tuple[bytes, str | None]], ids: bool, escape: bool) -> bytes:
    """Lines as they go on the wire, so that each is stored exactly as given: ``@ID LINE`` with ``ids``;
    without, ``@ LINE`` for a line that begins with ``@`` when the server reads ids (``escape``); and one more
    CR after a line that ends with one (the server drops one CR before the LF)."""
    wire = []
    for line, ident in lines:
        if ids:
            line = b"@%s %s" % (str(ident).encode(), line)
        elif escape and line[:1] == b"@":
            line = b"@ " + line
        wire.append(line + b"\r\n" if line[-1:] == b"\r" else line + b"\n")
    return b"".join(wire)


def _fresh(selector: selectors.BaseSelector, sock: socket.socket) -> selectors.BaseSelector:
    selector.close()
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    return selector
