"""The syslog framers: octet counting (RFC 6587 3.4.1), and syslog's mixed framing (a ``Framer``, sans-IO).

``octet-count`` (``SyslogFramer(max_line, mixed=False)``): each frame is ``MSG-LEN SP MSG``, MSG-LEN a
decimal without leading zeros (``NONZERO-DIGIT *DIGIT``) counting the bytes of MSG.

- One LF at the end of MSG (with a CR before it, if any) is not part of the message: syslog-ng counts the
  LF it sends after each message. LFs, CRs and NULs between frames are separators, not messages.
- A frame whose MSG (without that LF) is longer than ``max_line`` gets ``ERR too-long``: its length is
  known, so its bytes are skipped by count and the next frame is found exactly where it begins.
- A bad length (a frame that does not begin with a digit, a leading zero, more than ``MAX_LENGTH_DIGITS``
  digits, no space after them) gets ``ERR bad-length`` and ends the connection (``broken``). An
  octet-counted stream has no delimiter: the message bodies may hold LFs (that is why they are counted), so
  skipping to the next LF could take the middle of a message for the start of a frame and store fragments
  of it, or everything after it framed wrong. Closing loses nothing already framed, and the shipper
  reconnects and resends from its own queue.
- A frame cut short by EOF gets ``ERR truncated`` (it is not the message that was sent).

``syslog`` (``mixed=True``), per frame as rsyslog's imtcp takes them: a frame that begins with a digit and
a valid length is octet-counted as above; any other frame (a ``<PRI>`` first, as every syslog message
sends, or digits without a valid length after them) ends at the first LF or NUL (Python's
``SysLogHandler`` ends its messages with NUL), one CR before that LF dropped; too long is skipped up to the
next LF or NUL (``ERR too-long``), and at EOF unterminated trailing bytes are a final frame.

In both, a message that is not UTF-8 gets ``ERR bad-utf8``, and an empty message (nothing but the LF of a
counted frame) is ignored like the separators.
"""

from __future__ import annotations

import re

from prefork.protocol.framing import ERR_BAD_LENGTH, ERR_BAD_UTF8, ERR_TOO_LONG, ERR_TRUNCATED, Batch

MAX_LENGTH_DIGITS = 9  # an octet count of more digits (a GB or more) is not a frame length: bad length
_SEPARATORS = b"\n\r\0"
_DELIMITER = re.compile(b"[\n\0]")
_LENGTH = re.compile(b"[1-9][0-9]{0,%d} " % (MAX_LENGTH_DIGITS - 1))
_DIGITS = b"0123456789"
_TRAILER = 2  # CR LF at the end of a counted frame: not part of the message, not counted by max_line


class SyslogFramer:
    """Octet-counted frames, or (``mixed``) octet-counted and LF/NUL-terminated frames as each comes."""

    __slots__ = ("max_line", "mixed", "broken", "_buf", "_skip_count", "_skip_line")

    def __init__(self, max_line: int, mixed: bool = True) -> None:
        self.max_line = max_line
        self.mixed = mixed
        self.broken: str | None = None
        self._buf = bytearray()
        self._skip_count = 0  # bytes of a too-long counted frame still to skip
        self._skip_line = False  # inside a too-long LF/NUL-terminated frame: skip up to the delimiter

    @property
    def buffered(self) -> int:
        """Bytes held of a frame not complete yet (at most max_line plus a header, a trailer and one read)."""
        return len(self._buf)

    def unframed(self) -> bytes | None:
        """The bytes held of a frame not complete yet, for a connection moving to another worker (a reload,
        ``prefork.handoff``); None while a too-long frame is being skipped or after a broken count (that
        state does not travel: the connection is then served through the stop and closed instead)."""
        if self.broken is not None or self._skip_count or self._skip_line:
            return None
        return bytes(self._buf)

    def feed(self, data: bytes) -> Batch | None:
        """The frames that ``data`` (the bytes of one read) completes, or None."""
        if self.broken is not None:
            return None
        buf = self._buf
        buf += data
        out = _Frames()
        pos = self._frames(buf, out)
        del buf[:pos]
        return out.batch()

    def feed_eof(self) -> Batch | None:
        """The client sent its last byte: a final LF/NUL-less frame (``syslog``), or ERR truncated."""
        if self.broken is not None:
            return None
        buf = self._buf
        out = _Frames()
        if self._skip_count or self._skip_line:
            out.reject(ERR_TOO_LONG)  # its end never came, but it was too long whatever followed
        elif buf.strip(_SEPARATORS):
            start = len(buf) - len(buf.lstrip(_SEPARATORS))
            length = _LENGTH.match(buf, start)
            if self.mixed and length is None:
                frame = bytes(buf[start:])
                if len(frame) > self.max_line:
                    out.reject(ERR_TOO_LONG)
                else:
                    self._message(frame, out)
            else:
                out.reject(ERR_TRUNCATED)  # a counted frame, or its header, cut short
        buf.clear()
        self._skip_count = 0
        self._skip_line = False
        return out.batch()

    def _frames(self, buf: bytearray, out: _Frames) -> int:
        """Take the complete frames of ``buf`` into ``out``; return how many bytes they used."""
        pos = 0
        end = len(buf)
        longest = self.max_line + _TRAILER
        while True:
            if self._skip_count:
                taken = min(self._skip_count, end - pos)
                pos += taken
                self._skip_count -= taken
                if self._skip_count:
                    return pos
                out.reject(ERR_TOO_LONG)
                continue
            if self._skip_line:
                found = _DELIMITER.search(buf, pos)
                if found is None:
                    return end
                pos = found.end()
                self._skip_line = False
                out.reject(ERR_TOO_LONG)
                continue
            while pos < end and buf[pos] in _SEPARATORS:
                pos += 1
            if pos == end:
                return pos
            if buf[pos] in _DIGITS:
                length = _LENGTH.match(buf, pos)
                if length is not None:
                    count = int(buf[pos : length.end() - 1])
                    start = length.end()
                    if count > longest:
                        self._skip_count = count
                        pos = start
                        continue
                    if end - start < count:
                        return pos  # the rest of the frame is still on its way
                    frame = bytes(buf[start : start + count])
                    if frame[-1:] == b"\n":
                        frame = frame[:-2] if frame[-2:] == b"\r\n" else frame[:-1]
                    pos = start + count
                    if len(frame) > self.max_line:
                        out.reject(ERR_TOO_LONG)
                    else:
                        self._message(frame, out)
                    continue
                digits = len(buf) - pos - len(buf[pos:].lstrip(_DIGITS))
                if pos + digits == end and digits <= MAX_LENGTH_DIGITS:
                    return pos  # digits so far: the length or the message is still on its way
            if not self.mixed:
                self.broken = "bad octet count"
                out.reject(ERR_BAD_LENGTH)
                return end
            found = _DELIMITER.search(buf, pos)
            if found is None:
                if end - pos > self.max_line + 1:  # a CR may come before the LF
                    self._skip_line = True
                    return end
                return pos
            frame = bytes(buf[pos : found.start()])
            if frame[-1:] == b"\r" and buf[found.start()] == 0x0A:
                frame = frame[:-1]
            pos = found.end()
            if len(frame) > self.max_line:
                out.reject(ERR_TOO_LONG)
            else:
                self._message(frame, out)

    @staticmethod
    def _message(frame: bytes, out: _Frames) -> None:
        if not frame:
            return  # nothing but a trailing LF: a separator, not a message
        try:
            out.accept(frame.decode("utf-8"))
        except UnicodeDecodeError:
            out.reject(ERR_BAD_UTF8)


class _Frames:
    """The frames of one feed, in order, as a ``Batch`` is made of them."""

    __slots__ = ("payloads", "replies", "slots")

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.replies: list[str | None] = []
        self.slots: list[int] | None = None  # made at the first refused frame

    def accept(self, payload: str) -> None:
        if self.slots is not None:
            self.slots.append(len(self.replies))
        self.payloads.append(payload)
        self.replies.append(None)

    def reject(self, reply: str) -> None:
        if self.slots is None:
            self.slots = list(range(len(self.payloads)))
        self.replies.append(reply)

    def batch(self) -> Batch | None:
        if not self.replies:
            return None
        if self.slots is None:
            return Batch(self.payloads, None)
        return Batch(self.payloads, None, self.replies, self.slots)
