"""The RELP session (`prefork.protocol.relp.RelpSession`) without sockets: bytes in, rsp frames out.

A client's session is drawn as a list of frames (opens, syslog messages of every kind, closes, hints, wrong
transaction numbers, malformed bytes), written out as the bytes librelp would send and fed to a session cut
at arbitrary points (at every byte for short sessions). What a server with a model app would send back (the
session's replies, and the app's in their slots, through ``encode``) must equal what a reference model says
from the list of frames alone, without any streaming state: one ``rsp`` per command in order, numbered by the
commands' own transaction numbers, nothing after the end of the session. The model app answers ``OK``, or
``ERR REASON`` for a message ``!REASON`` (so ``!unavailable`` is ``ERR unavailable``, which ends the session).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from prefork.protocol.framing import Batch
from prefork.protocol.relp import (
    HEADER_MAX,
    MAX_TXNR,
    OFFERS_MAX,
    RelpSession,
    message_id,
    next_txnr,
    parse_offers,
)

OPEN_OFFERS = b"relp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog"
READ = 65536

# -- frames and the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One frame a client sends: ``txnr`` None means "the right one" (the model fills it in)."""

    command: str
    data: bytes = b""
    txnr: int | None = None
    raw: bytes | None = None  # malformed bytes sent instead of a frame


def wire(command: str, txnr: int, data: bytes = b"") -> bytes:
    """A frame as librelp writes it."""
    if data:
        return b"%d %s %d %s\n" % (txnr, command.encode(), len(data), data)
    return b"%d %s 0\n" % (txnr, command.encode())


def rsp(txnr: int, data: str) -> bytes:
    raw = data.encode()
    return b"%d rsp %d %s\n" % (txnr, len(raw), raw)


def app_reply(message: str) -> str:
    return "ERR " + message[1:] if message.startswith("!") and len(message) > 1 else "OK"


def model(frames: list[Frame], max_line: int) -> tuple[bytes, bytes, bool, bool]:
    """(the stream the client sends, what the server answers, whether the session ended, whether with an error
    to log). The stream stops after the frame that ends the session (nothing later would be read)."""
    stream = bytearray()
    out = bytearray()
    expected = 1
    opened = syslog = False
    for frame in frames:
        if frame.raw is not None:
            stream += frame.raw
            return bytes(stream), bytes(out), True, True
        txnr = expected if frame.txnr is None else frame.txnr
        stream += wire(frame.command, txnr, frame.data)
        if txnr == 0:
            continue  # a hint: no reply
        if txnr != expected:
            return bytes(stream), bytes(out), True, True
        expected = next_txnr(expected)
        if frame.command == "open":
            if opened:
                out += rsp(txnr, "200 OK")
                continue
            offers = parse_offers(frame.data)
            if offers.get("relp_version") != ["0"]:
                out += rsp(txnr, "500 bad-offers")  # said, and then the session ends
                return bytes(stream), bytes(out), True, True
            opened, syslog = True, "syslog" in offers.get("commands", [])
            commands = "syslog" if syslog else ""
            out += rsp(txnr, f"200 OK\nrelp_version=0\nrelp_software=prefork\ncommands={commands}")
        elif not opened or (frame.command == "syslog" and not syslog):
            return bytes(stream), bytes(out), True, True
        elif frame.command == "syslog":
            message = frame.data[:-1] if frame.data.endswith(b"\n") else frame.data
            if len(frame.data) > max_line:
                reply = "500 too-long"
            elif not message:
                reply = "500 empty"
            else:
                try:
                    text = message.decode("utf-8")
                except UnicodeDecodeError:
                    reply = "500 bad-utf8"
                else:
                    answer = app_reply(text)
                    if answer == "ERR unavailable":
                        return bytes(stream), bytes(out), True, True
                    reply = "200 OK" if answer == "OK" else "500 " + answer[4:]
            out += rsp(txnr, reply)
        elif frame.command == "close":
            out += rsp(txnr, "200 OK")
            return bytes(stream), bytes(out), True, False
        else:
            out += rsp(txnr, "500 unknown-command")
    return bytes(stream), bytes(out), False, False


def render(session: RelpSession, batch: Batch) -> bytes:
    """What the connection sends for a batch: the app's replies in their slots, encoded by the session."""
    answers = [app_reply(message) for message in batch.payloads]
    if session.line_ids:  # each message's id is the hash of its bytes (a resend has the same)
        assert batch.ids == [message_id(message.encode()) for message in batch.payloads]
    else:
        assert batch.ids is None
    replies: list[str | None]
    if batch.replies is None:
        replies = list(answers)
    else:
        assert batch.slots is not None and len(batch.slots) == len(answers)
        replies = list(batch.replies)
        for slot, answer in zip(batch.slots, answers, strict=True):
            assert replies[slot] is None
            replies[slot] = answer
    assert None not in replies and len(replies) == batch.frame_count
    return session.encode("".join(f"{reply}\n" for reply in replies))


def served(chunks: list[bytes], max_line: int, line_ids: bool = False) -> tuple[bytes, RelpSession]:
    """Feed the chunks (one read each, none after the session ends: the connection stops reading), then EOF."""
    session = RelpSession(max_line, line_ids)
    out = bytearray()
    for chunk in chunks:
        if session.closing:
            break
        batch = session.feed(chunk)
        if batch is not None:
            out += render(session, batch)
        assert session.buffered <= HEADER_MAX + max(max_line, OFFERS_MAX) + 1 + len(chunk)
    if not session.closing:
        assert session.feed_eof() is None
    return bytes(out), session


# -- strategies -------------------------------------------------------------------------------------------

_messages = st.one_of(
    st.sampled_from([b"hello", b"<13>1 2026-12-06T14:00:00Z host app - - - hi", "é€🎉".encode(), b"x\n", b"\n"]),
    st.sampled_from([b"\xff", b"\xc3", b"!rejected", b"!unavailable", b"a\nb", b"1 syslog 3 abc\n", b" "]),
    st.binary(min_size=1, max_size=12),
    st.integers(1, 24).map(lambda n: b"m" * n),  # near and past max_line
)
_offers = st.one_of(
    st.just(OPEN_OFFERS),
    st.just(b"relp_version=0\ncommands="),  # syslog not offered: a syslog frame then ends the session
    st.just(b"relp_software=x\ncommands=syslog"),  # no relp_version: ends the session
)
_frame = st.one_of(
    _messages.map(lambda data: Frame("syslog", data)),
    _offers.map(lambda data: Frame("open", data)),
    st.just(Frame("close")),
    st.just(Frame("abort")),  # not a command prefork knows: 500, the session goes on
    st.just(Frame("serverclose", txnr=0)),  # a client's hint: nothing to answer
    st.sampled_from([Frame("syslog", b"x", txnr=t) for t in (0, 5, 999999999)]),  # a hint, or a wrong number
    st.sampled_from([Frame("", raw=r) for r in (b"x", b"1 syslog 1 ab\n", b"1 syslog 1\n", b"1 syslog 0 \n")]),
    st.just(Frame("", raw=b"1234567890 syslog 1 a\n")),  # a TXNR of 10 digits
)


@st.composite
def sessions(draw: st.DrawFn) -> list[Frame]:
    """Mostly an open first, then any frames (bulk runs of messages at times)."""
    frames: list[Frame] = []
    if draw(st.integers(0, 9)):
        frames.append(Frame("open", OPEN_OFFERS))
    frames += draw(st.lists(_frame | st.just(Frame("syslog", b"bulk")), max_size=30))
    if draw(st.booleans()):
        frames.append(Frame("close"))
    return frames


def cut(stream: bytes, data: st.DataObject) -> list[bytes]:
    draw = data.draw
    gaps = max(len(stream) - 1, 0)
    if len(stream) <= 256:
        cut_after = draw(st.lists(st.booleans(), min_size=gaps, max_size=gaps))
        cuts = [i + 1 for i, flag in enumerate(cut_after) if flag]
    else:
        cuts = sorted(draw(st.lists(st.integers(1, gaps), max_size=40, unique=True)))
    points = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in pairwise(points) if b > a]


# -- properties -------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@settings(max_examples=1000, deadline=None)
@given(max_line=st.integers(1, 16), line_ids=st.booleans(), frames=sessions(), data=st.data())
@example(
    max_line=8,
    line_ids=False,
    frames=[Frame("open", OPEN_OFFERS), Frame("syslog", b"m" * 20), Frame("syslog", b"ok")],
    data=None,
)
def test_any_session_cut_anywhere_gets_the_models_replies(
    max_line: int, line_ids: bool, frames: list[Frame], data: st.DataObject | None
) -> None:
    stream, expected, ended, error = model(frames, max_line)
    chunks = [stream] if data is None else cut(stream, data)
    out, session = served(chunks, max_line, line_ids)
    assert out == expected
    assert session.closing == ended
    assert (session.close_reason is not None) == error


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_the_same_session_fed_whole_byte_by_byte_and_in_reads(size: int) -> None:
    frames = [Frame("open", OPEN_OFFERS)] + [Frame("syslog", b"message %d" % i) for i in range(500)]
    frames.append(Frame("close"))
    stream, expected, _, _ = model(frames, 64)
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    assert served(chunks, 64)[0] == expected == served([stream], 64)[0]


def test_transaction_numbers_wrap_from_the_last_to_1() -> None:
    session = RelpSession(64)
    session._expected = session._reply_txnr = MAX_TXNR - 1  # as after a long session
    stream = wire("open", MAX_TXNR - 1, OPEN_OFFERS) + wire("syslog", MAX_TXNR, b"a") + wire("syslog", 1, b"b")
    batch = session.feed(stream)
    assert batch is not None and batch.payloads == ["a", "b"]
    assert render(session, batch).endswith(rsp(MAX_TXNR, "200 OK") + rsp(1, "200 OK"))
    assert not session.closing
    session.feed(wire("syslog", 3, b"c"))  # 2 expected
    assert session.closing and session.close_reason == "transaction number 3, expected 2"


def test_a_too_long_message_is_skipped_without_being_held() -> None:
    session = RelpSession(16)
    session.feed(wire("open", 1, OPEN_OFFERS))
    batch = session.feed(b"2 syslog 1000000 " + b"x" * 1000)
    assert batch is not None and batch.replies == ["ERR too-long"]  # answered as soon as its header is read
    assert session.buffered == 0
    for _ in range(999):
        assert session.feed(b"x" * 1000) is None and session.buffered == 0
    batch = session.feed(b"\n3 syslog 2 ok\n")
    assert batch is not None and batch.replies is None and batch.payloads == ["ok"]


def test_the_open_rsp_carries_the_accepted_offers() -> None:
    session = RelpSession(64)
    batch = session.feed(wire("open", 1, OPEN_OFFERS))
    assert batch is not None and batch.replies == ["OK"] and batch.payloads == []
    data = b"200 OK\nrelp_version=0\nrelp_software=prefork\ncommands=syslog"
    assert session.encode("OK\n") == b"1 rsp %d %s\n" % (len(data), data)


def test_err_unavailable_ends_the_session_before_its_reply() -> None:
    session = RelpSession(64)
    session.feed(wire("open", 1, OPEN_OFFERS) + wire("syslog", 2, b"a") + wire("syslog", 3, b"b"))
    assert session.encode("OK\nOK\nERR unavailable\n").endswith(rsp(2, "200 OK"))
    assert session.closing and session.encode("OK\n") == b""


def test_data_over_the_limit_for_another_command_than_syslog_ends_the_session() -> None:
    session = RelpSession(16)
    assert session.feed(b"1 open %d " % (OFFERS_MAX + 1)) is None
    assert session.closing and session.close_reason == f"open frame of {OFFERS_MAX + 1} bytes"
    assert session.feed(b"x" * 100) is None  # nothing more is read


def test_a_header_that_cannot_become_one_ends_the_session_at_once() -> None:
    session = RelpSession(16)
    assert session.feed(b"1 " + b"a" * 33) is None  # a command is at most 32 letters
    assert session.closing and session.close_reason is not None


@pytest.mark.timeout(120)
@settings(max_examples=500, deadline=None)
@given(max_line=st.integers(1, 16), frames=sessions(), data=st.data())
def test_replies_encoded_in_any_grouping_are_the_same(max_line: int, frames: list[Frame], data: st.DataObject) -> None:
    """A window of commands answered later: the reply queue hands the session replies in whatever groups they
    resolve in (parts of a batch, several batches), never out of order. The frames are the same whatever the
    grouping: the session numbers replies by counting, and stops at an ERR unavailable wherever it falls."""
    stream, expected, ended, error = model(frames, max_line)
    session = RelpSession(max_line)
    texts: list[str] = []
    for chunk in cut(stream, data):
        if session.closing:
            break
        batch = session.feed(chunk)
        if batch is None:
            continue
        answers = iter(app_reply(message) for message in batch.payloads)
        if batch.replies is None:
            texts += list(answers)
        else:
            texts += [next(answers) if reply is None else reply for reply in batch.replies]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(texts)), max_size=10)))
    out = b"".join(
        session.encode("".join(f"{text}\n" for text in texts[a:b]))
        for a, b in pairwise([0, *cuts, len(texts)])
        if b > a
    )
    assert out == expected
    assert session.closing == ended
    assert (session.close_reason is not None) == error


def test_a_session_moved_to_another_worker_goes_on_with_its_numbering() -> None:
    """``unframed`` and ``state`` (the old worker's), ``resume`` (the new one's): the frames after the move are
    numbered on, and a frame cut by the move is completed by the bytes carried."""
    old = RelpSession(1000)
    batch = old.feed(wire("open", 1, OPEN_OFFERS) + wire("syslog", 2, b"before") + wire("syslog", 3, b"cut")[:5])
    assert batch is not None and batch.payloads == ["before"]
    assert old.unframed() is None  # two replies still owed: the session cannot move yet
    old.encode("OK\nOK\n")
    carried = old.unframed()
    assert carried == wire("syslog", 3, b"cut")[:5]
    new = RelpSession(1000)
    assert new.resume(json.loads(json.dumps(old.state())))  # as it travels: JSON
    batch = new.feed(carried + wire("syslog", 3, b"cut")[5:] + wire("syslog", 4, b"after"))
    assert batch is not None and batch.payloads == ["cut", "after"]
    assert new.encode("OK\nOK\n") == rsp(3, "200 OK") + rsp(4, "200 OK")


@pytest.mark.parametrize(
    "state",
    [{}, {"relp": None}, {"relp": {"expected": 0, "opened": True, "syslog": True}},
     {"relp": {"expected": "2", "opened": True, "syslog": True}},
     {"relp": {"expected": 2, "opened": 1, "syslog": True}}, {"relp": {"expected": 2, "opened": True}}],
)  # fmt: skip
def test_resume_refuses_what_is_not_a_session_state(state: dict) -> None:
    assert RelpSession(1000).resume(state) is False


def test_an_ending_session_does_not_move() -> None:
    session = RelpSession(1000)
    session.feed(wire("syslog", 1, b"before open"))
    assert session.closing and session.unframed() is None
