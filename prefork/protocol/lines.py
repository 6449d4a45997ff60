"""The line framer: LF-terminated lines, with optional line ids (a ``prefork.protocol.framing.Framer``).

Rules (README "Line protocol (v1)"):

- A line ends with LF; one CR before the LF is dropped. At EOF, unterminated trailing bytes are a final
  line. Every line gets exactly one reply: the application's, or ``ERR too-long`` (the bytes are skipped up
  to the next LF and the connection stays open), ``ERR bad-utf8``, ``ERR empty``.
- The buffer never holds more than ``max_line`` (plus ``MAX_PREFIX`` with line ids) plus one read: a partial
  line past that is too long whatever follows, and is skipped.

Line ids (``server.line_ids = on``, off by default; with it off a line that begins with ``@`` is a payload like
any other and none of this applies). A line that begins with ``@`` has a prefix:

- ``@ID PAYLOAD``: a client-chosen id (1-64 characters of ``[A-Za-z0-9._:-]``), one space, and the payload,
  everything after that space as sent. The app gets the id beside the payload (``handle_lines(lines,
  client, ids)``) and stores it once whatever the resends.
- ``@ PAYLOAD``: ``@`` and one space, no id: the payload is everything after that space, as sent. This is
  how a payload that itself begins with ``@`` is sent without an id (``@ @alice`` stores ``@alice``).
- ``@ID `` and ``@ `` (an empty payload) get ``ERR empty``; any other line that begins with ``@`` gets ``ERR
  bad-id``. The line ``@\\xff`` (not UTF-8, so a server without ids answers it ``ERR bad-utf8``) is the
  capability probe: answered ``OK ids`` by the framer, never seen by the app.
- ``max_line`` limits the payload, not the prefix: a line is too long when the bytes after its prefix (the
  whole line when it has none) are more than ``max_line``. A partial line is kept up to ``max_line`` plus
  the longest prefix (``MAX_PREFIX``, 66 bytes) before it is skipped.

Checks in this order: the probe, too long, empty, bad UTF-8, bad id.

The hot path works on whole reads, not lines: the complete lines of a read are decoded, stripped of CRs
and checked in a few C calls and given as one batch; ids are split off with one search for a ``@`` at a
line start (with ids off nothing is looked at). A read with a bad line (bad UTF-8, empty, too long, a bad
id) takes the line-by-line path.
"""

from __future__ import annotations

import re

from prefork.protocol.framing import ERR_BAD_ID, ERR_BAD_UTF8, ERR_EMPTY, ERR_TOO_LONG, Batch

# The capability probe (invalid UTF-8, so a v1 server without ids answers ERR bad-utf8) and its answer.
ID_PROBE = b"@\xff"
OK_IDS = "OK ids"
MAX_ID = 64
MAX_PREFIX = MAX_ID + 2  # "@", the id, the space: the bytes of a line that max_line does not count
# The prefix of a line with ids on: "@ID " or, for a payload without an id, "@ " (group 1 empty).
_PREFIX = re.compile(r"@([A-Za-z0-9._:-]{0,64}) ")
_PREFIX_BYTES = re.compile(_PREFIX.pattern.encode())
# With server.max_line = 65536, lines of up to 16384 characters are surely short enough (4 bytes at most
# per character in UTF-8) without counting their bytes.
UTF8_MAX_BYTES = 4


class LineFramer:
    """LF-terminated lines (ids split off with ``line_ids``), at most ``max_line`` bytes of payload each."""

    __slots__ = ("max_line", "line_ids", "_longest", "_buf", "_skipping")
    broken: str | None = None  # never set: lines always resynchronise at the next LF

    def __init__(self, max_line: int, line_ids: bool = False) -> None:
        self.max_line = max_line
        self.line_ids = line_ids
        # A partial line longer than this is too long whatever follows (one more byte for a CR before the LF;
        # with ids, the limit is on the payload, so a prefix may come on top).
        self._longest = max_line + 1 + (MAX_PREFIX if line_ids else 0)
        self._buf = bytearray()
        self._skipping = False  # inside a too-long line: discard up to the next LF

    @property
    def buffered(self) -> int:
        """Bytes held of a line not complete yet (bounded: see the module docstring)."""
        return len(self._buf)

    def unframed(self) -> bytes | None:
        """The bytes held of a line not complete yet, for a connection moving to another worker (a reload,
        ``prefork.handoff``); None while a too-long line is being skipped (that state does not travel)."""
        return None if self._skipping else bytes(self._buf)

    def feed(self, data: bytes) -> Batch | None:
        """The lines that ``data`` (the bytes of one read) completes, or None."""
        skipped = False
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return None
            self._skipping = False
            skipped = True  # the too-long line ended: its ERR too-long comes first
            data = data[nl + 1 :]
        buf = self._buf
        buf += data
        batch = None
        last = buf.rfind(b"\n")
        if last >= 0:
            # Every complete line of the buffer at once.
            chunk = bytes(buf[: last + 1])
            del buf[: last + 1]
            batch = self._frame(chunk)
        if len(buf) > self._longest:  # the line being read is already too long
            buf.clear()
            self._skipping = True
        return self._after_too_long(batch) if skipped else batch

    def feed_eof(self) -> Batch | None:
        """The final unterminated line, if any (a line being skipped gets its ERR too-long now)."""
        if self._skipping:
            self._skipping = False
            return self._after_too_long(None)
        if not self._buf:
            return None
        chunk = bytes(self._buf) + b"\n"
        self._buf.clear()
        return self._frame(chunk)

    def _frame(self, chunk: bytes) -> Batch:
        """The batch of the complete lines of ``chunk`` (each ends with LF)."""
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if text:
            if "\r" in text:
                text = text.replace("\r\n", "\n")  # one pass: exactly one CR before each LF goes
            lines = text.split("\n")
            lines.pop()  # after the last LF
            if "" not in lines:
                if not self.line_ids:
                    if max(map(len, lines)) * UTF8_MAX_BYTES <= self.max_line:
                        return Batch(lines, None)
                else:
                    # Each line with a prefix is replaced by its payload, which max_line then limits; None: a
                    # bad prefix or an empty payload, answered on the slow path.
                    ids = _split_ids(text, lines)
                    if ids is not None and max(map(len, lines)) * UTF8_MAX_BYTES <= self.max_line:
                        return Batch(lines, ids)
        return self._frame_slowly(chunk[:-1].split(b"\n"))

    def _frame_slowly(self, lines: list[bytes]) -> Batch:
        """The line-by-line path, for a read with a line that is not valid (or may be too long)."""
        max_line = self.max_line
        line_ids = self.line_ids
        replies: list[str | None] = []
        valid: list[str] = []
        ids: list[str | None] | None = [] if line_ids else None
        where: list[int] = []
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            ident = None
            bad_id = False
            if line_ids and line[:1] == b"@":
                if line == ID_PROBE:
                    replies.append(OK_IDS)
                    continue
                prefix = _PREFIX_BYTES.match(line)
                if prefix is None:
                    bad_id = True  # measured and checked whole, and then ERR bad-id
                else:
                    ident = prefix[1].decode("ascii") or None
                    line = line[prefix.end() :]
            if len(line) > max_line:
                replies.append(ERR_TOO_LONG)
            elif not line:
                replies.append(ERR_EMPTY)
            else:
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError:
                    replies.append(ERR_BAD_UTF8)
                    continue
                if bad_id:
                    replies.append(ERR_BAD_ID)
                    continue
                valid.append(text)
                if ids is not None:
                    ids.append(ident)
                where.append(len(replies))
                replies.append(None)
        return Batch(valid, ids, replies, where)

    def _after_too_long(self, batch: Batch | None) -> Batch:
        """``batch`` after the ERR too-long of the line skipped before it (rare: no need to be fast)."""
        if batch is None:
            return Batch([], [] if self.line_ids else None, [ERR_TOO_LONG], [])
        if batch.replies is None or batch.slots is None:
            count = len(batch.payloads)
            return Batch(batch.payloads, batch.ids, [ERR_TOO_LONG, *[None] * count], list(range(1, count + 1)))
        return Batch(batch.payloads, batch.ids, [ERR_TOO_LONG, *batch.replies], [i + 1 for i in batch.slots])


def parse_id(line: str) -> tuple[str | None, str] | None:
    """``(id, payload)`` of a line that begins with ``@`` (line ids on): ``@ID PAYLOAD`` gives ``(ID, PAYLOAD)``,
    ``@ PAYLOAD`` gives ``(None, PAYLOAD)``; None if it has neither form (ERR bad-id). The payload is
    everything after the prefix's space, and may be empty (ERR empty)."""
    prefix = _PREFIX.match(line)
    if prefix is None:
        return None
    return prefix[1] or None, line[prefix.end() :]


def _split_ids(text: str, lines: list[str]) -> list[str | None] | None:
    """The ids of the lines of ``text`` (one per line, None where a line has none), each line with a prefix
    replaced in ``lines`` by its payload; None if a line that begins with ``@`` has no valid prefix or an
    empty payload (the slow path answers it)."""
    ids: list[str | None] = [None] * len(lines)
    if text[0] != "@" and "\n@" not in text:
        return ids  # one C search per read: no line starts with @
    for i, line in enumerate(lines):
        if line[0] == "@":
            prefix = _PREFIX.match(line)
            if prefix is None or prefix.end() == len(line):
                return None
            ids[i] = prefix[1] or None
            lines[i] = line[prefix.end() :]
    return ids
