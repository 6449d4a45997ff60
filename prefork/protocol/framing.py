"""What a framer is: bytes in, batches of complete frames out, and nothing else (sans-IO).

A framer turns what a client sends into frames for the app. It holds its own buffer and limits and knows
nothing of sockets, greenlets or clocks: the connection feeds it the bytes of each read (``feed``) and, at
EOF, asks for what is left (``feed_eof``); each call gives at most one ``Batch``, the frames completed by
those bytes. LF-terminated lines (``prefork.protocol.lines.LineFramer``) are the first framer; octet counting and
syslog's mixed framing (``prefork.protocol.syslog.SyslogFramer``) are siblings of the same shape, and
``prefork.protocol.framers`` picks one per listener (``server.framing``).

A batch is the hot path's unit: the frames of a whole read go to the app in one call (``handle_lines``) and
their replies are queued together, so a framer gives lists, never one object per frame. Frames a framer
refuses (too long, not UTF-8, empty, a bad id) get an early reply from the framer itself, in their place
among the app's replies; the connection only fills the places left for the app.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

# The early replies a framer owes for a frame it refuses (the client sees exactly these).
ERR_TOO_LONG = "ERR too-long"
ERR_BAD_UTF8 = "ERR bad-utf8"
ERR_EMPTY = "ERR empty"
ERR_BAD_ID = "ERR bad-id"
ERR_BAD_LENGTH = "ERR bad-length"  # an octet count that is not one (the connection is then closed)
ERR_TRUNCATED = "ERR truncated"  # an octet-counted frame cut short by the client's EOF


class Batch(NamedTuple):
    """The frames completed by one ``feed``, in the order they came.

    - ``payloads``: the valid frames, for the app, in order.
    - ``ids``: their line ids (None where a frame has none), or None when ids are off.
    - ``replies``: None when every frame is valid (the app's replies to ``payloads`` are the whole answer:
      the hot path). Otherwise one entry per frame: the framer's early reply to it, or None where the app's
      reply goes; ``slots`` then gives those places, one per payload, in order.
    """

    payloads: list[str]
    ids: list[str | None] | None
    replies: list[str | None] | None = None
    slots: list[int] | None = None

    @property
    def frame_count(self) -> int:
        """How many frames the batch holds (each gets exactly one reply)."""
        return len(self.payloads) if self.replies is None else len(self.replies)


class Framer(Protocol):
    """The shape every framer has (see the module docstring).

    ``broken``: None, or why the stream cannot be framed any further (a framing with no delimiter to find
    the next frame by, after a bad octet count): the batch that set it ends with that frame's early reply,
    and the connection then reads no more.
    """

    broken: str | None

    def feed(self, data: bytes) -> Batch | None:
        """Take the bytes of one read; the frames they complete, or None if they complete none."""

    def feed_eof(self) -> Batch | None:
        """The client sent its last byte: the frames left (an unterminated last one), or None."""
