"""RELP, the Reliable Event Logging Protocol of rsyslog's ``omrelp``, server side (sans-IO).

A ``RelpSession`` is a framer (``prefork.protocol.framing.Framer``: bytes in, batches of syslog messages out
to the app as lines) and the encoder of the session's replies (``encode``: the app's ``OK``/``ERR`` become
``rsp`` frames). It knows nothing of sockets: the connection feeds it reads, asks it after each whether the
session is over (``closing``) and gives it the reply text the ``ReplyQueue`` sends.

The wire (librelp's): every frame is ``TXNR SP COMMAND SP DATALEN [SP DATA] LF``, TXNR and DATALEN of 1-9
digits, COMMAND of 1-32 letters, DATA of exactly DATALEN octets (absent, with its SP, when DATALEN is 0).
Rules:

- ``open`` comes first; its data is the client's offers, one ``name=value[,value...]`` a line. It needs a
  ``relp_version`` offer and gets ``rsp 200 OK`` followed by the offers accepted: ``relp_version`` (the
  client's, at most ``RELP_VERSION``), ``relp_software`` (prefork's) and ``commands=syslog`` when the client
  offered it. A second ``open`` is answered ``200 OK`` and changes nothing.
- ``syslog``: its data (one trailing LF dropped) is a line for the app. Its ``rsp`` is ``200 OK`` once the
  app's reply is not an ``ERR`` (for the ingest app: committed), ``500 REASON`` for an ``ERR REASON``
  (``too-long`` past ``max_line``, its data skipped unbuffered; ``empty``; ``bad-utf8``; the app's own),
  except ``ERR unavailable``: a reply that says "not now" would make librelp drop the message (it forgets a
  frame answered 500), so the session is closed instead, after the replies before it, and the client
  resends every frame not acked on its next connection.
- ``close`` is answered ``200 OK`` and ends the session; the connection then says ``serverclose`` (the hint
  frame, ``0 serverclose 0``, ``SERVERCLOSE``) and closes, as it does at a graceful stop.
- Transaction numbers: each command's TXNR is the one before plus 1, starting at 1 and wrapping from
  999999999 to 1; TXNR 0 is a hint, answered with nothing. Each reply carries its command's TXNR; replies
  go in command order (the ``ReplyQueue``), so the encoder numbers them by counting.
- Anything else (a malformed header, a missing trailer, a wrong TXNR, a command before ``open``, data over
  the limit for a command other than ``syslog``) ends the session: no more frames are read, the replies
  owed are sent, then ``serverclose`` and the close; ``close_reason`` says why, for one log line.

At a reload the session moves to the new generation with its socket (``prefork.handoff``): once every
reply owed is sent, ``unframed`` gives the bytes of a frame not complete yet and ``state`` the session's
(the next TXNR, whether ``open`` came and accepted ``syslog``); the new worker's session ``resume``s it.

Line ids (``server.line_ids = on``): each message gets an id derived from its content (``message_id``, a hash
of its bytes), so a message resent after a lost ack (librelp resends every frame not acked, with new
transaction numbers) is stored once by an app that stores each id once (the ingest app). Two messages with
the same bytes are then one message: with timestamps and hostnames in them, syslog messages rarely are.

Memory is bounded: the buffer holds at most one frame's header and ``max_line`` (plus ``OFFERS_MAX`` for
``open``) of data, plus one read.
"""

from __future__ import annotations

import re
from hashlib import blake2b
from typing import Any

from prefork.protocol.framing import ERR_BAD_UTF8, ERR_EMPTY, ERR_TOO_LONG, Batch

RELP_VERSION = 1  # the highest protocol version offered back (librelp speaks 0 and 1 alike)
SOFTWARE = "prefork"
MAX_TXNR = 999_999_999  # after it comes 1 again
HINT_TXNR = 0  # frames that get no reply (the server's serverclose, any hint of a client)
SERVERCLOSE = b"0 serverclose 0\n"
OFFERS_MAX = 4096  # the data of a command other than syslog (open's offers): more is a malformed frame
# The header: TXNR, COMMAND, DATALEN and what follows DATALEN (SP before data, or the LF of a frame without).
_HEADER = re.compile(rb"([0-9]{1,9}) ([A-Za-z]{1,32}) ([0-9]{1,9})([ \n])")
HEADER_MAX = 9 + 1 + 32 + 1 + 9 + 1
# What the start of a header may look like while its end has not arrived (anything else is malformed).
_PARTIAL_HEADER = re.compile(rb"[0-9]{0,9}(?: [A-Za-z]{0,32}(?: [0-9]{0,9})?)?")
LF = 0x0A
ID_BYTES = 16  # a message id is this many bytes of hash, in hex (32 of the 64 characters an id may have)

OK = "OK"
ERR_UNAVAILABLE_REASON = "unavailable"
ERR_UNKNOWN_COMMAND = "ERR unknown-command"
ERR_BAD_OFFERS = "ERR bad-offers"


def next_txnr(txnr: int) -> int:
    """The transaction number after ``txnr`` (they wrap from 999999999 to 1)."""
    return 1 if txnr >= MAX_TXNR else txnr + 1


def message_id(data: bytes) -> str:
    """The line id of a message with line ids on: a hash of its bytes (a resend has the same one)."""
    return blake2b(data, digest_size=ID_BYTES).hexdigest()


def rsp_frame(txnr: int, data: str) -> bytes:
    """One ``rsp`` frame: ``TXNR rsp DATALEN DATA LF``."""
    raw = data.encode("utf-8")
    return b"%d rsp %d %s\n" % (txnr, len(raw), raw)


class RelpSession:
    """One client's RELP session: a framer for the connection and the encoder of its replies."""

    __slots__ = (
        "max_line", "line_ids", "closing", "close_reason", "broken", "_ids", "_buf", "_expected", "_opened",
        "_syslog", "_skip", "_reply_txnr", "_open_rsp",
    )  # fmt: skip

    def __init__(self, max_line: int, line_ids: bool = False) -> None:
        self.max_line = max_line
        self.line_ids = line_ids
        self._ids: list[str | None] | None = None  # with line ids: those of the payloads being framed
        self.closing = False  # the session is over: read nothing more, send the replies owed, then close
        self.close_reason: str | None = None  # why it ended, when not by the client's close
        self.broken: str | None = None  # the Framer's: always None (``closing`` says more, and is logged)
        self._buf = bytearray()
        self._expected = 1  # the TXNR the next command must carry
        self._opened = False
        self._syslog = False  # the client offered the syslog command and it was accepted
        self._skip = 0  # bytes left of a too-long syslog frame's data (and its trailer) being skipped
        self._reply_txnr = 1  # the TXNR of the next reply to encode
        self._open_rsp: dict[int, str] = {}  # TXNR of an open -> its rsp data (offers); its reply is OK

    @property
    def buffered(self) -> int:
        """Bytes held of a frame not complete yet (bounded: see the module docstring)."""
        return len(self._buf)

    # -- moving to another worker (a reload: prefork.handoff) --------------------------------------------

    def unframed(self) -> bytes | None:
        """The bytes held of a frame not complete yet, for a session moving to another worker; None when the
        session cannot move: it is ending, a too-long frame is being skipped, or a reply is still owed (a
        handoff comes after every reply went out, so that cannot happen there)."""
        if self.closing or self._skip or self._reply_txnr != self._expected or self._open_rsp:
            return None
        return bytes(self._buf)

    def state(self) -> dict[str, Any]:
        """What the next worker needs to go on with the session (``resume``), as JSON-able values."""
        return {"relp": {"expected": self._expected, "opened": self._opened, "syslog": self._syslog}}

    def resume(self, state: dict[str, Any]) -> bool:
        """Go on with a session another worker began (its ``state()``); False if ``state`` is not one."""
        relp = state.get("relp")
        if not isinstance(relp, dict):
            return False
        expected, opened, syslog = relp.get("expected"), relp.get("opened"), relp.get("syslog")
        if type(expected) is not int or not 1 <= expected <= MAX_TXNR or type(opened) is not bool:
            return False
        if type(syslog) is not bool:
            return False
        self._expected = self._reply_txnr = expected
        self._opened, self._syslog = opened, syslog
        return True

    # -- framing ------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> Batch | None:
        """The syslog messages (and the session's own replies) of the frames ``data`` completes, or None."""
        if self.closing:
            return None
        replies: list[str | None] = []
        payloads: list[str] = []
        ids: list[str | None] | None = [] if self.line_ids else None
        self._ids = ids
        if self._skip:
            if len(data) < self._skip:
                self._skip -= len(data)
                return None
            trailer = data[self._skip - 1]
            data = data[self._skip :]
            self._skip = 0
            if trailer != LF:
                self._end("no LF after the data of a frame")
                return None
        buf = self._buf
        buf += data
        pos = self._parse(buf, replies, payloads)
        del buf[:pos]
        if not replies:
            return None
        if len(payloads) == len(replies):  # only syslog messages, all valid: the app answers them all
            return Batch(payloads, ids)
        slots = [i for i, reply in enumerate(replies) if reply is None]
        return Batch(payloads, ids, replies, slots)

    def feed_eof(self) -> Batch | None:
        """The client sent its last byte: a frame not complete is dropped (nobody is left to answer)."""
        self._buf.clear()
        return None

    def _parse(self, buf: bytearray, replies: list[str | None], payloads: list[str]) -> int:
        """Take the complete frames of ``buf`` into ``replies``/``payloads``; the offset where they end."""
        pos = 0
        end = len(buf)
        while pos < end and not self.closing:
            header = _HEADER.match(buf, pos)
            if header is None:
                rest = bytes(buf[pos : pos + HEADER_MAX])
                if len(rest) >= HEADER_MAX or _PARTIAL_HEADER.fullmatch(rest) is None:
                    self._end(f"malformed frame header {rest[:60]!r}")
                return pos
            txnr = int(header[1])
            command = header[2].decode("ascii")
            length = int(header[3])
            start = header.end()
            if header[4] == b"\n":
                if length:
                    self._end(f"no data after DATALEN {length}")
                    return pos
                data = b""
                after = start
            else:
                if not length:
                    self._end("a SP after DATALEN 0")
                    return pos
                limit = self.max_line if command == "syslog" else OFFERS_MAX
                if length > limit:
                    if command != "syslog":
                        self._end(f"{command} frame of {length} bytes")
                        return pos
                    if not self._check_txnr(txnr) or not self._check_syslog():
                        return pos
                    replies.append(ERR_TOO_LONG)  # skipped as it comes, never held
                    have = end - start
                    if have > length:
                        if buf[start + length] != LF:
                            self._end("no LF after the data of a frame")
                            return end
                        pos = start + length + 1
                        continue
                    self._skip = length + 1 - have
                    return end
                if end - start < length + 1:
                    return pos  # the data (and its trailer) is not all here yet
                if buf[start + length] != LF:
                    self._end("no LF after the data of a frame")
                    return pos
                data = bytes(buf[start : start + length])
                after = start + length + 1
            if txnr == HINT_TXNR:
                pos = after  # a client's hint: nothing to answer
                continue
            if not self._check_txnr(txnr):
                return pos
            if command == "syslog":
                if not self._check_syslog():
                    return pos
                self._message(data, replies, payloads)
            elif command == "open":
                replies.append(self._open(txnr, data))
            elif not self._opened:
                self._end(f"{command} before open")
                return pos
            elif command == "close":
                replies.append(OK)
                self.closing = True  # the client's own close: nothing to log
                return after
            else:
                replies.append(ERR_UNKNOWN_COMMAND)
            pos = after
        return pos

    def _check_txnr(self, txnr: int) -> bool:
        if txnr != self._expected:
            self._end(f"transaction number {txnr}, expected {self._expected}")
            return False
        self._expected = next_txnr(txnr)
        return True

    def _check_syslog(self) -> bool:
        if not self._opened:
            self._end("syslog before open")
        elif not self._syslog:
            self._end("syslog without the syslog command accepted at open")
        return self._opened and self._syslog

    def _message(self, data: bytes, replies: list[str | None], payloads: list[str]) -> None:
        if data[-1:] == b"\n":
            data = data[:-1]  # a trailing LF is the sender's terminator, not part of the message
        if not data:
            replies.append(ERR_EMPTY)
            return
        try:
            payloads.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            replies.append(ERR_BAD_UTF8)
            return
        if self._ids is not None:
            self._ids.append(message_id(data))
        replies.append(None)

    def _open(self, txnr: int, data: bytes) -> str:
        """The reply to ``open``: OK with the offers accepted (kept for ``encode``), or ERR bad-offers."""
        if self._opened:
            return OK  # librelp's own server tolerates a repeated open
        offers = parse_offers(data)
        version = offers.get("relp_version", [])
        if len(version) != 1 or not version[0].isdigit():
            self._end("open without a valid relp_version offer")
            return ERR_BAD_OFFERS
        self._opened = True
        self._syslog = "syslog" in offers.get("commands", [])
        accepted = [
            f"relp_version={min(int(version[0]), RELP_VERSION)}",
            f"relp_software={SOFTWARE}",
            "commands=syslog" if self._syslog else "commands=",
        ]
        self._open_rsp[txnr] = "200 OK\n" + "\n".join(accepted)
        return OK

    def _end(self, reason: str) -> None:
        self.closing = True
        if self.close_reason is None:
            self.close_reason = reason

    # -- replies ------------------------------------------------------------------------------------

    def encode(self, text: str) -> bytes:
        """The ``rsp`` frames of consecutive replies (``text``: each reply followed by LF), numbered in order.

        ``ERR unavailable`` ends the session there: it and every later reply are never sent (the client
        resends those frames on its next connection), and ``closing`` is set.
        """
        txnr = self._reply_txnr
        if txnr == HINT_TXNR:
            return b""  # the session ended at an ERR unavailable: nothing more is said
        out: list[bytes] = []
        special = self._open_rsp
        for reply in text[:-1].split("\n"):
            if reply.startswith("ERR"):
                reason = reply[4:] or "error"
                if reason == ERR_UNAVAILABLE_REASON:
                    self._end("a reply was ERR unavailable: the client resends what was not acked")
                    txnr = HINT_TXNR
                    break
                data = "500 " + reason
            elif special and txnr in special:
                data = special.pop(txnr)
            else:
                data = "200 OK"
            out.append(rsp_frame(txnr, data))
            txnr = next_txnr(txnr)
        self._reply_txnr = txnr
        return b"".join(out)


def parse_offers(data: bytes) -> dict[str, list[str]]:
    """The offers of an ``open``: one ``name[=value[,value...]]`` a line (values may be empty lists)."""
    offers: dict[str, list[str]] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        if not line:
            continue
        name, _, values = line.partition("=")
        offers[name] = [value for value in values.split(",") if value] if values else []
    return offers
