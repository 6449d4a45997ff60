"""Property: ANY byte stream, cut into chunks at ANY points, gets exactly the replies of a reference model,
end to end through the real connection.

The framing rules and their model (`model_replies`) are tested without sockets in tests/test_framer.py,
whose strategies drive this test too. Here the server side is the real
`prefork.protocol.connection.LineConnection` in a greenlet of this process, serving
`ModelApp` (an echo that takes ids and whose replies are, line by line, known at once, futures of their own,
or one future shared by consecutive lines; futures are resolved later, a random subset at a time in random
order, whenever the reader has paused), on a real loopback TCP connection (gevent sockets on both ends; this
process is not monkey-patched). The client sends each chunk in its own segment and lets the server read it
before sending the next one, so lines, CR LF pairs, id prefixes and multi-byte UTF-8 characters straddle
the server's reads; then it half-closes and reads until EOF. Streams hold at times a run of thousands of
short lines (over 64 KiB): full reads, the fairness pause, and, with futures held back, the in-flight limit
(MAX_IN_FLIGHT lines) stopping the reader until replies go out. So the test shows the chunking, the fast
and slow paths, futures and backpressure never change the replies or their order, a half-closed client gets
every reply, and the server then closes the connection. A second property shows that with ``ack`` off the
server sends nothing at all and still closes after EOF; tests of the harness show that its examples reach
what they are meant to (separate reads, full reads, the line and byte limits in flight).
"""

from __future__ import annotations

import random
import socket
from typing import Any

import gevent
import gevent.socket
import pytest
from gevent.event import AsyncResult
from hypothesis import example, given, settings
from hypothesis import strategies as st

from prefork.protocol.connection import READ_SIZE, LineConnection, ProtocolSettings
from prefork.protocol.counters import Counters
from prefork.protocol.replies import MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES, ReplyQueue

# The model of the framing rules (one reply per line of the whole stream) and the streams that exercise them.
from tests.test_framer import chunked_streams, max_lines, model_replies

IO_TIMEOUT = 20.0  # every blocking step of one exchange: a stuck server fails the example instead of hanging
RESOLVE_TICK_S = 0.001  # how often held futures are looked at (resolved only once no new ones came meanwhile)

# -- the application --------------------------------------------------------------------------------------


class ModelApp:
    """Echo: a line (ids off), or ``<id or -> <payload>`` (ids on). With a ``seed``, each reply is at random
    known at once, a future of its own, or a share of the future of the line before it (one future for
    several lines: its result is the list of their replies). Futures are resolved by a greenlet of their
    own, a random subset at a time in random order, whenever no new future came for a tick (the reader
    paused: in recv, or stopped by the in-flight limit). ``hold_first``: the first line's reply is a future
    resolved only by ``release``, every other reply is known at once."""

    accepts_line_ids = True

    def __init__(self, seed: int | None = None, hold_first: bool = False) -> None:
        self.rng = random.Random(seed)
        self.futures = seed is not None
        self.hold_first = hold_first
        self.held: list[tuple[AsyncResult, list[str]]] = []
        self.made = 0  # futures made so far
        self.resolver: gevent.Greenlet | None = None

    def handle(self, line: str, client: Any) -> Any:
        return self.handle_lines([line], client)[0]

    def handle_lines(self, lines: list[str], client: Any, ids: list[str | None] | None = None) -> list[Any]:
        replies: list[Any] = []
        shared: list[str] | None = None  # the replies of the future the next line may share
        for i, line in enumerate(lines):
            text = line if ids is None else f"{'-' if ids[i] is None else ids[i]} {line}"  # "" is no id
            if self.hold_first and self.made == 0:
                mode = 1
            else:
                mode = self.rng.randrange(3) if self.futures else 0
            if mode == 0:
                replies.append(text)
                shared = None
            elif mode == 2 and shared is not None:
                shared.append(text)
                replies.append(replies[-1])
            else:
                future: AsyncResult = AsyncResult()
                shared = [text]
                self.held.append((future, shared))
                self.made += 1
                replies.append(future)
        if self.held and self.resolver is None and not self.hold_first:
            self.resolver = gevent.spawn(self._resolve)
        return replies

    def release(self) -> None:
        """Resolve every future held back."""
        for future, replies in self.held:
            future.set(replies if len(replies) > 1 else replies[0])
        self.held.clear()

    def _resolve(self) -> None:
        seen = -1
        while True:
            gevent.sleep(RESOLVE_TICK_S)
            if not self.held or self.made != seen:
                seen = self.made  # the reader is still making futures: let it run into its limits
                continue
            self.rng.shuffle(self.held)
            count = self.rng.randint(1, len(self.held))
            for future, replies in self.held[:count]:
                future.set(replies if len(replies) > 1 else replies[0])
            del self.held[:count]

    def stop(self) -> None:
        if self.resolver is not None:
            self.resolver.kill()


# -- the real server on a real connection -----------------------------------------------------------------


class _RecordingSocket:
    """Pass-through to a real socket that records what each recv returned (to check the harness itself)."""

    def __init__(self, sock: gevent.socket.socket, reads: list[bytes]) -> None:
        self._sock = sock
        self._reads = reads

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        self._reads.append(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _WaitCountingReplies(ReplyQueue):
    """A ReplyQueue that records, each time its reader stops for room, the lines and reply bytes in flight
    (to check that the harness reaches the in-flight limits), and then calls ``on_wait``."""

    waits: list[tuple[int, int]]
    on_wait: Any = None

    def _wait_for_room(self) -> None:
        self.waits.append((self._queued, self._queued_bytes))
        if self.on_wait is not None:
            self.on_wait()
        super()._wait_for_room()


class _WaitCountingConnection(LineConnection):
    reply_queue = _WaitCountingReplies


def _read_until_eof(sock: gevent.socket.socket) -> bytes:
    received = bytearray()
    while data := sock.recv(65536):
        received += data
    return bytes(received)


def exchange(
    chunks: list[bytes],
    proto: ProtocolSettings,
    app: ModelApp | None = None,
    reads: list[bytes] | None = None,
    waits: list[tuple[int, int]] | None = None,
    on_wait: Any = None,
) -> bytes:
    """Serve one connection with LineConnection + ModelApp; send the chunks, half-close, return all received.

    If ``reads`` is given, what each of the server's recv calls returned is appended to it; if ``waits`` is
    given, the lines and reply bytes in flight each time the reader stopped for room.
    """
    app = app or ModelApp()
    listener = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    greenlets: list[gevent.Greenlet] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve() -> None:
            conn, addr = listener.accept()
            sock: Any = conn if reads is None else _RecordingSocket(conn, reads)
            if waits is None:
                LineConnection(sock, addr, app, proto, Counters()).serve()
            else:
                connection = _WaitCountingConnection(sock, addr, app, proto, Counters())
                replies = connection.replies
                assert isinstance(replies, _WaitCountingReplies)
                replies.waits = waits
                replies.on_wait = on_wait
                connection.serve()

        server = gevent.spawn(serve)
        greenlets.append(server)
        client = gevent.socket.create_connection(listener.getsockname(), timeout=IO_TIMEOUT)
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one segment per chunk
            # Read while sending, so replies can never back up behind our sends (pipelining, as a client may).
            reader = gevent.spawn(_read_until_eof, client)
            greenlets.append(reader)
            for chunk in chunks:
                client.sendall(chunk)
                # Let the server read this chunk before the next one is sent. gevent.sleep(0) is not enough:
                # it runs ready greenlets without polling for I/O, so the chunks would merge into one read.
                gevent.idle()
            client.shutdown(socket.SHUT_WR)
            received = reader.get(timeout=IO_TIMEOUT)  # returns at EOF only: the server closed the connection
        finally:
            client.close()
        server.get(timeout=IO_TIMEOUT)  # serve() returned, without raising
        return received
    finally:
        app.stop()
        gevent.killall(greenlets, timeout=IO_TIMEOUT)
        listener.close()


# -- strategies -------------------------------------------------------------------------------------------

seeds = st.none() | st.integers(0, 2**32 - 1)  # None: every reply known at once; else the futures' dice


# -- properties -------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None)
@given(line_ids=st.booleans(), seed=seeds, max_line=max_lines, chunks=chunked_streams())
# The framing cases (CR LF cut, characters cut, limits, prefixes) are examples of tests/test_framer.py; here,
# what the connection adds: EOF, skipping, early replies placed among the app's, futures.
@example(line_ids=False, seed=None, max_line=4, chunks=[b"ok\nab\r"])  # lone CR before EOF: dropped too
@example(line_ids=False, seed=None, max_line=3, chunks=[b"abcdefgh"])  # over-long line ending at EOF
@example(line_ids=False, seed=None, max_line=3, chunks=[b"ok\nabcde", b"fgh"])  # already skipping at EOF
@example(line_ids=False, seed=None, max_line=1, chunks=[b"abc", b"de\nf\n"])  # skipped up to the LF
@example(line_ids=False, seed=None, max_line=4, chunks=[])  # empty stream: no reply, the server just closes
@example(line_ids=True, seed=None, max_line=4, chunks=[b"@ \n@id \n@ \r\n@\xff\n@@\n"])  # empty, probe, bad
@example(line_ids=True, seed=7, max_line=16, chunks=[b"@id p\n" * 6000])  # futures held: the line limit
# One future shared by the app's last two lines, which an early reply (ERR empty) separates here: each of its
# places gets its own reply (before: both ERR unavailable, "not one line of text").
@example(line_ids=False, seed=0, max_line=1, chunks=[b"x\n" * 1000 + b"\n@\n"])
def test_any_chunked_stream_gets_exactly_the_model_replies(
    line_ids: bool, seed: int | None, max_line: int, chunks: list[bytes]
) -> None:
    proto = ProtocolSettings(max_line=max_line, client_timeout=IO_TIMEOUT, ack=True, line_ids=line_ids)
    expected = model_replies(b"".join(chunks), max_line, line_ids)
    assert exchange(chunks, proto, ModelApp(seed)) == expected


@pytest.mark.timeout(90)
@settings(max_examples=80, deadline=None)
@given(line_ids=st.booleans(), seed=seeds, max_line=max_lines, chunks=chunked_streams())
@example(line_ids=False, seed=None, max_line=3, chunks=[b"a\n\n\xff\nabcdef", b"gh\r\nlast"])  # every reply kind
@example(line_ids=True, seed=1, max_line=3, chunks=[b"@ a\n@id \n@\xff\n@@\nabcdef", b"gh\r\nlast"])
@example(line_ids=False, seed=None, max_line=4, chunks=[])
def test_ack_off_sends_nothing_and_closes_after_eof(
    line_ids: bool, seed: int | None, max_line: int, chunks: list[bytes]
) -> None:
    proto = ProtocolSettings(max_line=max_line, client_timeout=IO_TIMEOUT, ack=False, line_ids=line_ids)
    assert exchange(chunks, proto, ModelApp(seed)) == b""  # the read ended at EOF: the server closed


# -- the harness itself -----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_harness_delivers_each_chunk_in_its_own_server_read() -> None:
    # Without this the property above could pass while the server only ever saw the whole stream at once.
    chunks = [b"ab", b"\r", b"\n", b"\xc3", b"\xa9\n", b"abcdefgh", b"ij", b"\nlast"]
    reads: list[bytes] = []
    replies = exchange(chunks, ProtocolSettings(max_line=4, client_timeout=IO_TIMEOUT), reads=reads)
    assert reads == [*chunks, b""]  # then b"": EOF
    assert replies == b"ab\n\xc3\xa9\nERR too-long\nlast\n"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("line_ids", [False, True])
def test_harness_bulk_runs_reach_full_reads_and_the_in_flight_line_limit(line_ids: bool) -> None:
    """A bulk run of the strategy with futures held: full reads, and the reader stopped at MAX_IN_FLIGHT
    lines; the replies are still the model's, in order."""
    chunks = [(b"@id " + b"p" * 30 + b"\n") * 8000]
    proto = ProtocolSettings(max_line=64, client_timeout=IO_TIMEOUT, line_ids=line_ids)
    reads: list[bytes] = []
    waits: list[tuple[int, int]] = []
    replies = exchange(chunks, proto, ModelApp(seed=7), reads=reads, waits=waits)
    assert replies == model_replies(chunks[0], 64, line_ids)
    assert any(len(read) == READ_SIZE for read in reads)
    assert waits and all(lines >= MAX_IN_FLIGHT for lines, _ in waits), waits


@pytest.mark.timeout(30)
def test_harness_reaches_the_in_flight_byte_limit() -> None:
    """The first reply held back as a future while the next ones are long and known: the reader stops at
    MAX_IN_FLIGHT_BYTES of replies, then every reply comes, in order."""
    line = b"@ " + b"b" * 1000 + b"\n"
    chunks = [line * (MAX_IN_FLIGHT_BYTES // 1000 + 100)]
    proto = ProtocolSettings(max_line=65536, client_timeout=IO_TIMEOUT, line_ids=True)
    waits: list[tuple[int, int]] = []
    app = ModelApp(hold_first=True)
    replies = exchange(chunks, proto, app, waits=waits, on_wait=lambda: gevent.spawn(app.release))
    assert replies == model_replies(chunks[0], 65536, line_ids=True)
    assert waits and all(size >= MAX_IN_FLIGHT_BYTES for _, size in waits), waits
