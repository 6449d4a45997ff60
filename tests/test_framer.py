"""The line framer (`prefork.protocol.lines.LineFramer`) without sockets: bytes in, batches out.

Framing is sans-IO, so it is tested as h11 tests its readers: the same stream fed whole, byte by byte, and
cut at every position (at every pair of positions for short streams) must give the same replies, those of a
reference model. The model (`model_replies`) restates the framing and validation rules in a few lines,
without any streaming state: split the whole stream on LF, take unterminated trailing bytes as a final line,
drop one CR at the end of each line, then, with line ids off, check too-long (over ``max_line`` bytes),
empty, bad UTF-8, in that order, and otherwise echo the line. With line ids on (`expected_reply_with_ids`):
the probe ``@\\xff`` is answered ``OK ids``; a line that begins with ``@`` is split at its first space into
``@ID`` (1-64 characters of the id set, or none: the escape ``@ PAYLOAD``) and the payload, and then the same
checks apply to the payload (so max_line does not count the prefix); a line that begins with ``@`` without
that form is checked whole and, if it is otherwise valid, gets ``ERR bad-id``. A valid line is echoed as
``<id or -> <payload>``. Each reply is followed by LF.

A framer's answer is rendered as a server with an echo app would send it: each batch's early replies in
place, every payload echoed in its slot. The strategies here (`chunked_streams`, `max_lines`) also drive the
end-to-end property of tests/test_framing_property.py, where the real connection serves the same streams.
"""

from __future__ import annotations

from itertools import combinations, pairwise

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from prefork.protocol.framing import Batch
from prefork.protocol.lines import MAX_PREFIX, LineFramer

# The reply to one line as sent, per the protocol's rules, with ids off and on (the model of one line).
from tests.test_protocol import expected_reply, expected_reply_with_ids

READ = 65536  # the size of one of the connection's reads: the framer holds at most a line's limit plus this

# -- the reference model and the framer's answer ----------------------------------------------------------


def model_replies(stream: bytes, max_line: int, line_ids: bool = False) -> bytes:
    """Everything the server must send for a whole stream: one reply per line, in order, each ended by LF."""
    *lines, tail = stream.split(b"\n")
    if tail:
        lines.append(tail)  # unterminated trailing bytes are a final line; a trailing LF adds no empty line
    reply = expected_reply_with_ids if line_ids else expected_reply
    return b"".join(reply(line, max_line) + b"\n" for line in lines)


def render(batch: Batch) -> bytes:
    """The replies to a batch from an echo app (``<id or -> <payload>`` with ids), each ended by LF."""
    if batch.ids is None:
        echoes = list(batch.payloads)
    else:
        pairs = zip(batch.ids, batch.payloads, strict=True)
        echoes = [f"{'-' if ident is None else ident} {payload}" for ident, payload in pairs]
    if batch.replies is None:
        replies = echoes
    else:
        assert batch.slots is not None and len(batch.slots) == len(echoes)
        replies = list(batch.replies)
        for slot, echo in zip(batch.slots, echoes, strict=True):
            assert replies[slot] is None, "a slot for the app holds an early reply"
            replies[slot] = echo
        assert None not in replies, "a place without a reply"
    assert len(replies) == batch.frame_count
    return "".join(f"{reply}\n" for reply in replies).encode()


def framed(chunks: list[bytes], max_line: int, line_ids: bool = False) -> bytes:
    """Feed the chunks (one read each), then EOF; what a server with an echo app would send."""
    framer = LineFramer(max_line, line_ids)
    longest = max_line + 1 + (MAX_PREFIX if line_ids else 0)
    out = bytearray()
    for chunk in chunks:
        batch = framer.feed(chunk)
        if batch is not None:
            out += render(batch)
        assert framer.buffered <= longest, "a partial line past the limit is kept"
    batch = framer.feed_eof()
    if batch is not None:
        out += render(batch)
    assert framer.buffered == 0 and framer.feed_eof() is None  # EOF leaves nothing behind
    return bytes(out)


# -- strategies -------------------------------------------------------------------------------------------

# Bytes that matter to the rules: terminators, ASCII, NUL, invalid UTF-8 (\xff), the two bytes of "é"
# (\xc3 \xa9, valid together, invalid alone or swapped), whole 2-, 3- and 4-byte characters; the pieces of id
# prefixes (@, a space, id characters and others, the probe, ids of 64 and 65 characters); plus any byte.
_TOKENS = [b"\n", b"\r", b"\r\n", b"a", b"\xff", b"\xc3", b"\xa9", b"\x00", "é".encode(), "€".encode(), "🎉".encode()]
_ID_TOKENS = [b"@", b" ", b"@ ", b"@id ", b"@\xff", b"\n@", b"\n@ ", b"-", b":", b"/", b"@" + b"i" * 64 + b" "]
_token = st.one_of(
    st.sampled_from(_TOKENS),
    st.sampled_from(_ID_TOKENS),
    st.binary(min_size=1, max_size=1),
    st.integers(1, 24).map(lambda n: b"a" * n),  # runs that make lines near and past max_line
    st.integers(60, 70).map(lambda n: b"@" + b"i" * n),  # ids near and past the longest
)
# Thousands of short lines in a row: over one read (full reads) and, end to end, over MAX_IN_FLIGHT lines
# (backpressure while futures are held).
_BULK_LINES = [b"x\n", b"@id p\n", b"@ @q\r\n", b"@" + b"i" * 64 + b" " + b"r" * 20 + b"\n", b"s" * 30 + b"\n"]
_bulk = st.tuples(st.sampled_from(_BULK_LINES), st.integers(1000, 8000)).map(lambda t: t[0] * t[1])
max_lines = st.integers(1, 16)  # small, so that too-long lines (and the skipping path) are common
SMALL_STREAM = 256  # up to this many bytes, a cut may fall between any two bytes


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Tokens, and at times one bulk run of lines among them."""
    tokens = draw(st.lists(_token, max_size=40))
    bulk = draw(st.none() | _bulk)
    if bulk is not None:
        tokens.insert(draw(st.integers(0, len(tokens))), bulk)
    return b"".join(tokens)


@st.composite
def chunked_streams(draw: st.DrawFn) -> list[bytes]:
    """A stream cut into non-empty chunks at arbitrary points."""
    stream = draw(streams())
    gaps = max(len(stream) - 1, 0)
    if len(stream) <= SMALL_STREAM:
        # One flag per gap between two bytes: cut there or not (shrinks toward a single chunk).
        cut_after = draw(st.lists(st.booleans(), min_size=gaps, max_size=gaps))
        cuts = [i + 1 for i, cut in enumerate(cut_after) if cut]
    else:
        cuts = sorted(draw(st.lists(st.integers(1, gaps), max_size=40, unique=True)))
    points = [0, *cuts, len(stream)]
    return [stream[start:end] for start, end in pairwise(points) if end > start]


# -- properties -------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@settings(max_examples=1000, deadline=None)
@given(line_ids=st.booleans(), max_line=max_lines, chunks=chunked_streams())
@example(line_ids=False, max_line=4, chunks=[b"ab\r\n"])  # CR LF: the CR is dropped
@example(line_ids=False, max_line=4, chunks=[b"ab\r", b"\n"])  # CR LF split across two reads
@example(line_ids=False, max_line=4, chunks=[b"ok\nab\r"])  # lone CR before EOF: dropped too
@example(line_ids=False, max_line=4, chunks=[b"\r"])  # a lone CR then EOF: an empty final line
@example(line_ids=False, max_line=3, chunks=[b"abcdefgh"])  # over-long line ending at EOF
@example(line_ids=False, max_line=3, chunks=[b"ok\nabcde", b"fgh"])  # already skipping at EOF
@example(line_ids=False, max_line=4, chunks=[b"abcd\r\n"])  # max_line bytes plus CR LF: accepted
@example(line_ids=False, max_line=4, chunks=[b"abcd\r", b"\n"])  # the buffer at max_line + 1
@example(line_ids=False, max_line=4, chunks=[b"abcd\r\r\n"])  # a second CR counts toward the limit
@example(line_ids=False, max_line=1, chunks=[b"abc", b"de\nf\n"])  # skipped up to the LF
@example(line_ids=False, max_line=1, chunks=[b"abc", b"de\nf\n\xff\n"])  # skipped, then the slow path
@example(line_ids=False, max_line=4, chunks=[b"\xc3", b"\xa9\n"])  # a 2-byte character, cut
@example(line_ids=False, max_line=4, chunks=[b"\xf0\x9f", b"\x8e\x89"])  # a 4-byte one, at EOF
@example(line_ids=False, max_line=4, chunks=[])  # empty stream: no reply
@example(line_ids=False, max_line=4, chunks=[b"@x y\n@\xff\n@\n"])  # ids off: @ is a payload
@example(line_ids=True, max_line=4, chunks=[b"@ @a\n@ x\n@id y\n"])  # the escape, fast path
@example(line_ids=True, max_line=4, chunks=[b"@ \n@id \n@ \r\n@\xff\n@@\n"])  # empty, probe, bad
@example(line_ids=True, max_line=2, chunks=[b"@" + b"i" * 64 + b" ab\r\n"])  # prefix over max_line
@example(line_ids=True, max_line=2, chunks=[b"@" + b"i" * 64, b" ab", b"c\n@ ab\n"])  # cut prefix
@example(line_ids=True, max_line=2, chunks=[b"@" + b"i" * 65 + b" ab\n"])  # id too long: whole
@example(line_ids=True, max_line=1, chunks=[b"@" + b"i" * 70, b"x\n@ a\n"])  # skipped, then the fast path
def test_any_chunked_stream_gets_exactly_the_model_replies(line_ids: bool, max_line: int, chunks: list[bytes]) -> None:
    assert framed(chunks, max_line, line_ids) == model_replies(b"".join(chunks), max_line, line_ids)


# Streams that hold every case of the rules (each is also cut at every position below).
CASES = [
    b"ab\r\ncd\n",
    b"ok\nab\r",
    b"abcdefgh\nok\n",
    b"x\n\n\xff\n\xc3\xa9\nabcdefgh\r\nlast",
    b"a\r\r\nb\n\r\n",
    b"\xf0\x9f\x8e\x89\n\xf0\x9f\x8e",
    b"@ @a\n@id y\n@ \n@id \n@\xff\n@@\n@\xff\r\n",
    b"@" + b"i" * 64 + b" ab\n@" + b"i" * 65 + b" ab\n@ abcdef\nq",
]


@pytest.mark.parametrize("line_ids", [False, True])
@pytest.mark.parametrize("stream", CASES)
def test_split_at_every_position_gives_the_same_replies(stream: bytes, line_ids: bool) -> None:
    for max_line in (1, 4, 8):
        expected = model_replies(stream, max_line, line_ids)
        assert framed([stream], max_line, line_ids) == expected
        assert framed([stream[i : i + 1] for i in range(len(stream))], max_line, line_ids) == expected
        for cut in range(1, len(stream)):
            assert framed([stream[:cut], stream[cut:]], max_line, line_ids) == expected, cut
        if len(stream) <= 32:
            for a, b in combinations(range(1, len(stream)), 2):
                assert framed([stream[:a], stream[a:b], stream[b:]], max_line, line_ids) == expected, (a, b)


# -- the batch shape ----------------------------------------------------------------------------------------


def test_a_read_of_valid_lines_is_one_batch_on_the_hot_path() -> None:
    """The complete lines of a read come as one batch of payloads with no early replies to place: what the
    app gets in one ``handle_lines`` call, and its replies are the whole answer."""
    framer = LineFramer(65536)
    assert framer.feed(b"one\r\ntwo\nthr") == Batch(["one", "two"], None)
    assert framer.buffered == 3
    assert framer.feed(b"ee\n") == Batch(["three"], None)
    ids_framer = LineFramer(65536, line_ids=True)
    assert ids_framer.feed(b"@a1 one\n@ @two\nthree\n") == Batch(["one", "@two", "three"], ["a1", None, None])


def test_early_replies_keep_their_place_among_the_apps() -> None:
    framer = LineFramer(4, line_ids=True)
    batch = framer.feed(b"@\xff\nok\n\n@x \xff\n@!a\nabcdef\n@k v\n")  # @!a: checked whole
    assert batch == Batch(
        ["ok", "v"],
        [None, "k"],
        ["OK ids", None, "ERR empty", "ERR bad-utf8", "ERR bad-id", "ERR too-long", None],
        [1, 6],
    )
    assert batch.frame_count == 7


def test_a_too_long_line_is_skipped_up_to_its_lf_and_answered_there() -> None:
    framer = LineFramer(4)
    assert framer.feed(b"abcdef") is None  # past the limit: skipping, nothing kept
    assert framer.buffered == 0
    assert framer.feed(b"ghij" * 1000) is None
    assert framer.buffered == 0
    assert framer.feed(b"k\nok\n") == Batch(["ok"], None, ["ERR too-long", None], [1])
    assert framer.feed(b"abcdefgh") is None
    assert framer.feed_eof() == Batch([], None, ["ERR too-long"], [])


def test_the_buffer_is_bounded_by_the_limit_plus_one_read() -> None:
    for line_ids in (False, True):
        framer = LineFramer(1000, line_ids)
        longest = 1000 + 1 + (MAX_PREFIX if line_ids else 0)
        for _ in range(100):
            framer.feed(b"y" * 700)
            assert framer.buffered <= longest
        assert framer.feed(b"\n" + b"z" * READ) is not None  # the skipped line ends: ERR too-long
        assert framer.buffered == 0  # the read's tail was already past the limit
