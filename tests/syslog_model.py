"""A reference model of the syslog framers (prefork.protocol.syslog) and the streams that exercise them,
shared by tests/test_framer_octet_count.py and tests/test_framer_syslog.py.

A stream is a list of items, each encoded on its own and given its expected outcome on its own: what the
framer gives must be the concatenation of those outcomes, whatever the chunking of the bytes.
"""

from __future__ import annotations

import re

from hypothesis import strategies as st

from prefork.protocol.framing import ERR_BAD_UTF8, ERR_TOO_LONG, Batch
from prefork.protocol.syslog import SyslogFramer

_HEADER = re.compile(rb"[1-9][0-9]{0,8} ")

# Bytes that make the interesting cases likely: separators, CR, digits, space, non-UTF-8, multi-byte UTF-8.
_BODY_BYTES = st.sampled_from([b"a", b"<", b"1", b"0", b" ", b"\r", b"\n", b"\0", b"\xff", "é".encode()])
bodies = st.lists(_BODY_BYTES, max_size=12).map(b"".join)
max_lines = st.integers(min_value=1, max_value=10)


def outcome(message: bytes, max_line: int) -> list[str]:
    """What one message becomes: ``OK:payload`` (given to the app), an early reply, or nothing (empty)."""
    if len(message) > max_line:
        return [ERR_TOO_LONG]
    if not message:
        return []
    try:
        return ["OK:" + message.decode("utf-8")]
    except UnicodeDecodeError:
        return [ERR_BAD_UTF8]


def counted(frame: bytes, max_line: int) -> tuple[bytes, list[str]]:
    """An octet-counted frame (non-empty) and its outcome: one LF, with a CR before it, is not the message."""
    message = frame
    if message.endswith(b"\r\n"):
        message = message[:-2]
    elif message.endswith(b"\n"):
        message = message[:-1]
    return b"%d %s" % (len(frame), frame), outcome(message, max_line)


def terminated(body: bytes, terminator: bytes, max_line: int) -> tuple[bytes, list[str]]:
    """A LF/NUL-terminated frame of the syslog framing and its outcome (one CR before a LF dropped)."""
    message = body[:-1] if terminator == b"\n" and body.endswith(b"\r") else body
    return body + terminator, outcome(message, max_line)


def line_bodies() -> st.SearchStrategy[bytes]:
    """Bodies of LF/NUL-terminated frames: no delimiter inside, no separator first, no valid octet count
    first (digits that are not a length are fine: ``0 x``, ``12x``, ten digits)."""
    extra = st.sampled_from([b"", b"0 x", b"12x", b"1234567890 x", b"<13>"])
    return (
        st.tuples(extra, bodies)
        .map(b"".join)
        .map(lambda b: b.replace(b"\n", b"").replace(b"\0", b""))
        .filter(lambda b: b[:1] not in (b"\r",) and not _HEADER.match(b))
    )


SEPARATORS = st.sampled_from([b"\n", b"\r", b"\0", b"\r\n"])
BAD_HEADERS = st.sampled_from([b"x", b"<13>msg\n", b"0 x", b"01 ab", b"12x", b"1234567890 x", b" 1 a"])


def run(framer: SyslogFramer, chunks: list[bytes]) -> tuple[list[str], str | None]:
    """Feed the chunks then EOF; every frame's outcome in order (``OK:payload`` or the early reply), and
    whether the framer broke."""
    out: list[str] = []
    for chunk in chunks:
        _collect(framer.feed(chunk), out)
    _collect(framer.feed_eof(), out)
    return out, framer.broken


def _collect(batch: Batch | None, out: list[str]) -> None:
    if batch is None:
        return
    assert batch.ids is None
    if batch.replies is None:
        assert batch.payloads, "an empty batch is None"
        out.extend("OK:" + p for p in batch.payloads)
        return
    assert batch.slots is not None and len(batch.slots) == len(batch.payloads)
    payloads = iter(batch.payloads)
    for i, reply in enumerate(batch.replies):
        if reply is None:
            assert i in batch.slots
            out.append("OK:" + next(payloads))
        else:
            assert i not in batch.slots
            out.append(reply)


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    """``stream`` cut at the given positions (in any order, repeats allowed)."""
    edges = sorted({0, len(stream), *(p % (len(stream) + 1) for p in points)})
    return [stream[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def splits(stream: bytes) -> list[list[bytes]]:
    """The stream whole, cut in two at every position, and one byte at a time."""
    return [[stream], *([stream[:i], stream[i:]] for i in range(1, len(stream))), [bytes([b]) for b in stream]]
