"""The syslog framer (``SyslogFramer(mixed=True)``: octet-counted or LF/NUL-terminated, per frame, as
rsyslog's imtcp takes them) without sockets: examples, and a Hypothesis model (tests/syslog_model.py) fed
every stream whole, cut at every position, a byte at a time and at random points."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prefork.protocol.framing import ERR_BAD_UTF8, ERR_TOO_LONG, ERR_TRUNCATED, Batch
from prefork.protocol.syslog import SyslogFramer
from tests.syslog_model import (
    SEPARATORS,
    bodies,
    counted,
    cut,
    line_bodies,
    max_lines,
    outcome,
    run,
    splits,
    terminated,
)

TRAILERS = st.sampled_from([b"", b"\n", b"\r\n"])
TERMINATORS = st.sampled_from([b"\n", b"\r\n", b"\0"])


@st.composite
def streams(draw: st.DrawFn, max_line: int | None = None) -> tuple[int, bytes, list[str]]:
    """(max_line, stream, the outcome of every frame); max_line drawn unless given."""
    max_line = draw(max_lines) if max_line is None else max_line
    data = b""
    expected: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["separator", "counted", "terminated"]))
        if kind == "separator":
            data += draw(SEPARATORS)
            continue
        if kind == "counted":
            frame = draw(bodies) + draw(TRAILERS)
            if not frame:
                continue
            encoded, result = counted(frame, max_line)
        else:
            encoded, result = terminated(draw(line_bodies()), draw(TERMINATORS), max_line)
        data += encoded
        expected += result
    tail = draw(st.sampled_from(["none", "line", "truncated"]))
    if tail == "line":  # unterminated at EOF: a final frame as it is (a CR at its end stays)
        body = draw(line_bodies())
        data += body
        expected += outcome(body, max_line)
    elif tail == "truncated":
        frame = draw(bodies.filter(bool)) + b"z"
        encoded, _ = counted(frame, max_line)
        data += encoded[: -draw(st.integers(1, len(frame)))]
        expected.append(ERR_TOO_LONG if len(frame) > max_line + 2 else ERR_TRUNCATED)
    return max_line, data, expected


@given(streams())
def test_every_split_gives_the_model(case):
    max_line, data, expected = case
    for chunks in splits(data):
        assert run(SyslogFramer(max_line, mixed=True), chunks) == (expected, None)


@given(streams(), st.lists(st.integers(0, 10_000), max_size=8))
def test_random_chunks_give_the_model(case, points):
    max_line, data, expected = case
    assert run(SyslogFramer(max_line, mixed=True), cut(data, points)) == (expected, None)


def test_examples():
    framer = SyslogFramer(32)
    # Python's SysLogHandler ends with NUL, logger --tcp with LF, rsyslog octet-counted: on one connection.
    data = b"<14>python says hi\x00<13>logger line\r\n16 <13>counted\nline\n<13>1 x"
    assert framer.feed(data) == Batch(["<14>python says hi", "<13>logger line", "<13>counted\nline"], None)
    assert framer.feed_eof() == Batch(["<13>1 x"], None)


def test_digits_without_a_length_are_a_line():
    framer = SyslogFramer(32)
    assert framer.feed(b"0 zero\n12x\n1234567890 ten digits\n12") == Batch(
        ["0 zero", "12x", "1234567890 ten digits"], None
    )
    assert framer.feed_eof() == Batch(["12"], None)


def test_rejected_frames_keep_their_place():
    framer = SyslogFramer(4)
    assert framer.feed(b"abcdefgh\0ok\n\xff\n3 \xfe\xfe\xfe") == Batch(
        ["ok"], None, [ERR_TOO_LONG, None, ERR_BAD_UTF8, ERR_BAD_UTF8], [1]
    )
    assert framer.feed(b"abcdefgh") is None and framer.buffered == 0  # too long already: not kept
    assert framer.feed(b"\nab") == Batch([], None, [ERR_TOO_LONG], [])
    assert framer.feed_eof() == Batch(["ab"], None)
