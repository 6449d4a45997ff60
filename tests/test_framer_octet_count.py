"""The octet-count framer (RFC 6587 3.4.1, ``SyslogFramer(mixed=False)``) without sockets: examples, and a
Hypothesis model (tests/syslog_model.py) fed every stream whole, cut at every position, a byte at a time
and at random points."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prefork.protocol.framing import ERR_BAD_LENGTH, ERR_TOO_LONG, ERR_TRUNCATED, Batch
from prefork.protocol.syslog import SyslogFramer
from tests.syslog_model import BAD_HEADERS, SEPARATORS, bodies, counted, cut, max_lines, run, splits

TRAILERS = st.sampled_from([b"", b"\n", b"\r\n"])


@st.composite
def streams(draw: st.DrawFn, max_line: int | None = None) -> tuple[int, bytes, list[str], bool]:
    """(max_line, stream, the outcome of every frame, whether the framer must break); max_line drawn unless given."""
    max_line = draw(max_lines) if max_line is None else max_line
    data = b""
    expected: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            data += draw(SEPARATORS)
            continue
        frame = draw(bodies) + draw(TRAILERS)
        if not frame:
            continue
        encoded, result = counted(frame, max_line)
        data += encoded
        expected += result
    tail = draw(st.sampled_from(["none", "bad", "truncated", "digits"]))
    broken = False
    if tail == "bad":
        data += draw(BAD_HEADERS) + draw(bodies)
        expected.append(ERR_BAD_LENGTH)
        broken = True
    elif tail == "truncated":
        frame = draw(bodies.filter(bool)) + b"z"
        encoded, _ = counted(frame, max_line)
        data += encoded[: -draw(st.integers(1, len(frame)))]
        expected.append(ERR_TOO_LONG if len(frame) > max_line + 2 else ERR_TRUNCATED)
    elif tail == "digits":
        data += draw(st.sampled_from([b"1", b"12", b"123456789"]))
        expected.append(ERR_TRUNCATED)
    return max_line, data, expected, broken


@given(streams())
def test_every_split_gives_the_model(case):
    max_line, data, expected, broken = case
    for chunks in splits(data):
        assert run(SyslogFramer(max_line, mixed=False), chunks) == (expected, "bad octet count" if broken else None)


@given(streams(), st.lists(st.integers(0, 10_000), max_size=8))
def test_random_chunks_give_the_model(case, points):
    max_line, data, expected, broken = case
    assert run(SyslogFramer(max_line, mixed=False), cut(data, points))[0] == expected


def test_examples():
    framer = SyslogFramer(16, mixed=False)
    # syslog-ng counts the LF it sends; rsyslog sends none; a LF inside a message is the message's.
    assert framer.feed(b"6 <13>a\n5 <13>b7 <13>c\nd") == Batch(["<13>a", "<13>b", "<13>c\nd"], None)
    assert framer.feed(b"3 ab") is None and framer.buffered == 4
    assert framer.feed(b"c") == Batch(["abc"], None)
    assert framer.feed_eof() is None


def test_too_long_is_skipped_by_its_count_and_the_stream_stays_framed():
    framer = SyslogFramer(4, mixed=False)
    assert framer.feed(b"10 0123456") is None and framer.buffered == 0  # the buffer holds none of it
    assert framer.feed(b"89\n3 abc") == Batch(["abc"], None, [ERR_TOO_LONG, None], [1])


def test_a_bad_length_breaks_the_stream():
    framer = SyslogFramer(64, mixed=False)
    batch = framer.feed(b"3 abc<13>no count\n3 def")
    assert batch == Batch(["abc"], None, [None, ERR_BAD_LENGTH], [0])
    assert framer.broken == "bad octet count"
    assert framer.feed(b"3 ghi") is None and framer.feed_eof() is None
    for bad in (b"0 x", b"007 abcdefg", b"1234567890 x", b"12x"):
        framer = SyslogFramer(64, mixed=False)
        assert framer.feed(bad) == Batch([], None, [ERR_BAD_LENGTH], [])


def test_a_frame_cut_by_eof_is_truncated():
    framer = SyslogFramer(64, mixed=False)
    assert framer.feed(b"5 ab") is None
    assert framer.feed_eof() == Batch([], None, [ERR_TRUNCATED], [])
