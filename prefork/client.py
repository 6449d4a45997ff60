"""Sending lines to a prefork server: pipelining, replies matched in order, reconnect and resend.

    from prefork.client import Client

    with Client("127.0.0.1:32777") as client:
        for line, reply in client.stream(open("events.log", encoding="utf-8")):
            if reply != "OK":
                print("not stored:", reply, line)

``stream`` keeps up to ``window`` lines in flight on one connection and yields each line with its reply,
in the order the lines were given. When the connection breaks (the server restarted, a worker died, a
balancer moved), it reconnects with capped exponential backoff and sends again every line that had no
reply yet: a line without a reply may or may not have been stored (SPEC: at-least-once), so a resent line
may be stored twice; ``resent`` counts them. A reply of ``ERR ...`` is final and yielded as it is (``ERR``
means not stored; sending it again is the caller's choice).

Plain blocking sockets and ``selectors``: under gevent's monkey-patching the same code cooperates with
other greenlets. One ``Client`` is not meant to be shared by threads or greenlets at once.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections import deque
from collections.abc import Iterable, Iterator

DEFAULT_PORT = 32777
READ_SIZE = 65536


class ClientError(Exception):
    """The server could not be reached within the client's ``give_up_after``."""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST`` (port 32777) or ``[IPv6]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, str(DEFAULT_PORT)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {text!r}: expected HOST:PORT")
    return host, int(port)


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
    ):
        """``window``: lines in flight at most; ``reply_timeout``: a connection on which nothing comes back
        for this long while replies are due is treated as broken; ``backoff``: first and longest wait
        between connection attempts; ``give_up_after``: ClientError after this long without a connection."""
        if window < 1:
            raise ValueError("window must be at least 1")
        self.host, self.port = parse_address(address)
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
        self._sock: socket.socket | None = None

    # -- the connection -----------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        delay, longest = self.backoff
        deadline = time.monotonic() + self.give_up_after
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                return sock
            except OSError as exc:
                if time.monotonic() + delay > deadline:
                    raise ClientError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
                time.sleep(delay)
                delay = min(longest, delay * 2)

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def close(self) -> None:
        """Close the connection (lines still in flight get no reply)."""
        self._drop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ------------------------------------------------------------------------------------

    def send_all(self, lines: Iterable[str | bytes]) -> list[str]:
        """Send every line and return their replies, in order."""
        return [reply for _, reply in self.stream(lines)]

    def stream(self, lines: Iterable[str | bytes]) -> Iterator[tuple[bytes, str]]:
        """Send the lines, pipelined, and yield ``(line, reply)`` for each, in order (see the module)."""
        source = iter(lines)
        exhausted = False
        in_flight: deque[bytes] = deque()  # lines written (or to be written) whose reply is due, in order
        out = bytearray()  # bytes still to write
        tail = b""  # an incomplete reply line
        last_progress = time.monotonic()
        selector = selectors.DefaultSelector()
        if self._sock is not None:  # the connection of an earlier stream
            selector.register(self._sock, selectors.EVENT_READ)
        try:
            while True:
                while not exhausted and len(in_flight) < self.window:
                    try:
                        line = _encode(next(source))
                    except StopIteration:
                        exhausted = True
                        break
                    in_flight.append(line)
                    out += line + b"\n"
                    self.sent += 1
                if not in_flight:
                    return
                if self._sock is None:
                    self._sock = self._connect()
                    selector = _fresh(selector, self._sock)
                    last_progress = time.monotonic()
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0)
                selector.modify(self._sock, events)
                ready = selector.select(timeout=1.0)
                try:
                    if ready and ready[0][1] & selectors.EVENT_WRITE and out:
                        written = self._sock.send(out)
                        del out[:written]
                    if ready and ready[0][1] & selectors.EVENT_READ:
                        data = self._sock.recv(READ_SIZE)
                        if not data:
                            raise ConnectionResetError("the server closed the connection")
                        last_progress = time.monotonic()
                        data = tail + data
                        cut = data.rfind(b"\n") + 1
                        tail = data[cut:]
                        for reply in data[:cut].split(b"\n")[:-1]:
                            text = reply.decode("utf-8", "replace")
                            self.acked += 1
                            if text.startswith("ERR"):
                                self.errors += 1
                            yield in_flight.popleft(), text
                    elif time.monotonic() - last_progress > self.reply_timeout:
                        raise TimeoutError(f"no reply for {self.reply_timeout:g}s")
                except (OSError, IndexError):
                    # The connection broke (or answered more than it was sent): every line without a
                    # reply goes again on a new connection, in the same order.
                    self._drop()
                    self.reconnects += 1
                    self.resent += len(in_flight)
                    self.sent += len(in_flight)
                    out = bytearray(b"".join(line + b"\n" for line in in_flight))
                    tail = b""
        finally:
            selector.close()


def _encode(line: str | bytes) -> bytes:
    data = line.encode("utf-8") if isinstance(line, str) else bytes(line)
    data = data.rstrip(b"\n")
    if b"\n" in data:
        raise ValueError(f"a line holds a LF: {data[:80]!r}")
    return data


def _fresh(selector: selectors.BaseSelector, sock: socket.socket) -> selectors.BaseSelector:
    selector.close()
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    return selector
