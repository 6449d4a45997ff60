"""Property: ANY byte stream, cut into chunks at ANY points, gets exactly the replies of a reference model.

The model (`model_replies`) restates the framing and validation rules of SPEC section 5 for the echo app in
a few lines, without any streaming state: split the whole stream on LF, take unterminated trailing bytes as
a final line, drop one CR at the end of each line (the implementation also does this for the final line at
EOF), then check too-long (over ``max_line`` bytes), empty, bad UTF-8, in that order, and otherwise echo
the line. Each reply is followed by LF, and nothing else is sent.

The server side is the real `prefork.protocol.LineConnection` serving `workers.echo.EchoApp` in a greenlet of
this process, on a real loopback TCP connection (gevent sockets on both ends; this process is not
monkey-patched). The client sends each chunk in its own segment and lets the server read it before sending
the next one, so lines, CR LF pairs and multi-byte UTF-8 characters straddle the server's reads; then it
half-closes and reads until EOF. So the test shows the chunking never changes the replies, a half-closed
client gets every reply, and the server then closes the connection. A second property shows that with
``ack`` off the server sends nothing at all and still closes after EOF.
"""

from __future__ import annotations

import socket
from itertools import pairwise
from typing import Any

import gevent
import gevent.socket
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from prefork.protocol import Counters, LineConnection, ProtocolSettings
from tests.test_protocol import expected_reply  # the reply to one line, per the rules of SPEC section 5
from workers.echo import EchoApp

IO_TIMEOUT = 10.0  # every blocking step of one exchange: a stuck server fails the example instead of hanging

# -- the reference model ----------------------------------------------------------------------------------


def model_replies(stream: bytes, max_line: int) -> bytes:
    """Everything the server must send for a whole stream: one reply per line, in order, each ended by LF."""
    *lines, tail = stream.split(b"\n")
    if tail:
        lines.append(tail)  # unterminated trailing bytes are a final line; a trailing LF adds no empty line
    return b"".join(expected_reply(line, max_line) + b"\n" for line in lines)


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


def _read_until_eof(sock: gevent.socket.socket) -> bytes:
    received = bytearray()
    while data := sock.recv(65536):
        received += data
    return bytes(received)


def exchange(chunks: list[bytes], proto: ProtocolSettings, reads: list[bytes] | None = None) -> bytes:
    """Serve one connection with LineConnection + EchoApp; send the chunks, half-close, return all received.

    If ``reads`` is given, what each of the server's recv calls returned is appended to it.
    """
    listener = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    greenlets: list[gevent.Greenlet] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve() -> None:
            conn, addr = listener.accept()
            sock: Any = conn if reads is None else _RecordingSocket(conn, reads)
            LineConnection(sock, addr, EchoApp(), proto, Counters()).serve()

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
        gevent.killall(greenlets, timeout=IO_TIMEOUT)
        listener.close()


# -- strategies -------------------------------------------------------------------------------------------

# Bytes that matter to the rules: terminators, ASCII, NUL, invalid UTF-8 (\xff), the two bytes of "é"
# (\xc3 \xa9, valid together, invalid alone or swapped), whole 2-, 3- and 4-byte characters; plus any byte.
_TOKENS = [b"\n", b"\r", b"\r\n", b"a", b"\xff", b"\xc3", b"\xa9", b"\x00", "é".encode(), "€".encode(), "🎉".encode()]
_token = st.one_of(
    st.sampled_from(_TOKENS),
    st.binary(min_size=1, max_size=1),
    st.integers(1, 24).map(lambda n: b"a" * n),  # runs that make lines near and past max_line
)
streams = st.lists(_token, max_size=40).map(b"".join)
max_lines = st.integers(1, 16)  # small, so that too-long lines (and the skipping path) are common


@st.composite
def chunked_streams(draw: st.DrawFn) -> list[bytes]:
    """A stream cut into non-empty chunks at arbitrary points."""
    stream = draw(streams)
    # One flag per gap between two bytes: cut there or not (shrinks toward a single chunk).
    cut_after = draw(st.lists(st.booleans(), min_size=max(len(stream) - 1, 0), max_size=max(len(stream) - 1, 0)))
    points = [0, *(i + 1 for i, cut in enumerate(cut_after) if cut), len(stream)]
    return [stream[start:end] for start, end in pairwise(points) if end > start]


# -- properties -------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
@settings(max_examples=200, deadline=None)
@given(max_line=max_lines, chunks=chunked_streams())
@example(max_line=4, chunks=[b"ab\r\n"])  # CR LF: the CR is dropped
@example(max_line=4, chunks=[b"ab\r", b"\n"])  # CR LF split across two reads is still one terminator
@example(max_line=4, chunks=[b"ok\nab\r"])  # lone CR before EOF: dropped from the final line too
@example(max_line=4, chunks=[b"\r"])  # a lone CR then EOF: an empty final line
@example(max_line=3, chunks=[b"abcdefgh"])  # over-long line ending exactly at EOF, in one read
@example(max_line=3, chunks=[b"ok\nabcde", b"fgh"])  # the same, the server already skipping at EOF
@example(max_line=4, chunks=[b"abcd\r\n"])  # exactly max_line bytes plus CR LF: accepted
@example(max_line=4, chunks=[b"abcd\r", b"\n"])  # the same, the buffer at max_line + 1 between reads
@example(max_line=4, chunks=[b"abcd\r\r\n"])  # a second CR counts toward the limit
@example(max_line=1, chunks=[b"abc", b"de\nf\n"])  # skipped up to the LF, then the next line is served
@example(max_line=4, chunks=[b"\xc3", b"\xa9\n"])  # a 2-byte UTF-8 character cut across two chunks
@example(max_line=4, chunks=[b"\xf0\x9f", b"\x8e\x89"])  # a 4-byte one, cut, unterminated at EOF
@example(max_line=4, chunks=[])  # empty stream: no reply, the server just closes
def test_any_chunked_stream_gets_exactly_the_model_replies(max_line: int, chunks: list[bytes]) -> None:
    proto = ProtocolSettings(max_line=max_line, client_timeout=IO_TIMEOUT, ack=True)
    assert exchange(chunks, proto) == model_replies(b"".join(chunks), max_line)


@pytest.mark.timeout(90)
@settings(max_examples=100, deadline=None)
@given(max_line=max_lines, chunks=chunked_streams())
@example(max_line=3, chunks=[b"a\n\n\xff\nabcdef", b"gh\r\nlast"])  # every kind of reply would be due
@example(max_line=4, chunks=[])
def test_ack_off_sends_nothing_and_closes_after_eof(max_line: int, chunks: list[bytes]) -> None:
    proto = ProtocolSettings(max_line=max_line, client_timeout=IO_TIMEOUT, ack=False)
    assert exchange(chunks, proto) == b""  # the read ended at EOF: the server closed


# -- the harness itself -----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_harness_delivers_each_chunk_in_its_own_server_read() -> None:
    # Without this the property above could pass while the server only ever saw the whole stream at once.
    chunks = [b"ab", b"\r", b"\n", b"\xc3", b"\xa9\n", b"abcdefgh", b"ij", b"\nlast"]
    reads: list[bytes] = []
    replies = exchange(chunks, ProtocolSettings(max_line=4, client_timeout=IO_TIMEOUT), reads=reads)
    assert reads == [*chunks, b""]  # then b"": EOF
    assert replies == b"ab\n\xc3\xa9\nERR too-long\nlast\n"
