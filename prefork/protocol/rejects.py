"""Frames refused with no reply to say so (``server.ack = off``), streams that cannot be framed any further, and
sessions the server ends on an error (RELP): logged, at most one line per ``LOG_INTERVAL_S`` per worker; what
falls between is summed up in one line (how many, by reason) once the interval is over. Connections closed as
they are accepted (``server.allow_from``) have a log of their own, limited the same way (``DOOR``), so a flood
of them hides no refused frame; so have connections closed before they became clients on a TLS listener or for
the wrong protocol (``TLS``).

Every one is counted besides (``err_by_reason``: ``prefork status`` and ``prefork_replies_total`` in
/metrics, by reason, whether or not the reply was sent), so nothing is refused without a trace, and a
client sending a flood of bad frames cannot flood the log.
"""

from __future__ import annotations

import logging
import time

import gevent

LOG_INTERVAL_S = 1.0

log = logging.getLogger("prefork.protocol")


class RejectLog:
    """One per worker: the rate-limited log of refused frames (of refused connections: ``DOOR``); ``what`` is
    what the summary line says was left out."""

    __slots__ = ("_next", "_left_out", "_summary", "_what")

    def __init__(self, what: str = "frames refused, not stored, no reply sent") -> None:
        self._what = what
        self._next = 0.0  # monotonic time before which a new line is left out
        self._left_out: dict[str, int] = {}  # frames refused, by reason, since the last line, not named by one
        self._summary: gevent.Greenlet | None = None  # writes the line of those left out, once the interval ends

    def refused(self, client: str, framing: str, replies: list[str | None]) -> None:
        """The early replies of one batch, none of which the client will see (ack off)."""
        reasons: dict[str, int] = {}
        for reply in replies:
            if reply is not None and reply.startswith("ERR"):
                reason = reply[4:] or "unknown"
                reasons[reason] = reasons.get(reason, 0) + 1
        if not reasons:
            return
        if "bad-length" in reasons:  # the line of the broken stream, which comes next, says it
            reasons.pop("bad-length")
            if not reasons:
                return
        if self._quiet(reasons):
            return
        log.warning(
            "%s: frames refused, not stored, no reply sent (server.ack off, server.framing = %s): %s",
            client, framing, _named(reasons),
        )  # fmt: skip

    def broken(self, client: str, framing: str, why: str) -> None:
        """A connection closed because its stream cannot be framed any further (a bad octet count)."""
        if self._quiet({"bad-length": 1}):
            return
        log.warning(
            "%s closed: %s (server.framing = %s): the stream cannot be framed any further, the client has to "
            "reconnect", client, why, framing,
        )  # fmt: skip

    def session_closed(self, client: str, protocol: str, why: str) -> None:
        """A session the server ended on an error (RELP: a malformed frame, a wrong transaction number, an
        ERR unavailable that the client must resend): one line per session, within the same limit."""
        if self._quiet({f"{protocol.lower()}-session-closed": 1}):
            return
        log.warning("%s: %s session closed: %s", client, protocol, why)

    def connection_refused(self, peer: str, listener: str, setting: str) -> None:
        """A connection closed as it was accepted, its peer being outside ``setting`` (server.allow_from)."""
        if self._quiet({setting: 1}):
            return
        log.warning("closing a connection from %s at %s: outside %s", peer, listener, setting)

    def tls_refused(self, peer: str, why: str, reason: str) -> None:
        """A connection closed before it became a client (a failed TLS handshake, the wrong protocol on a
        listener): one line naming the peer and why, within the same limit; ``reason`` is its counter's."""
        if self._quiet({reason: 1}):
            return
        log.warning("closed a connection from %s: %s", peer, why)

    def _quiet(self, reasons: dict[str, int]) -> bool:
        """True if a line was written less than LOG_INTERVAL_S ago: ``reasons`` then wait for the summary."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + LOG_INTERVAL_S
            return False
        for reason, n in reasons.items():
            self._left_out[reason] = self._left_out.get(reason, 0) + n
        if self._summary is None:
            self._summary = gevent.spawn_later(self._next - now, self._sum_up)
        return True

    def _sum_up(self) -> None:
        self._summary = None
        left_out, self._left_out = self._left_out, {}
        if left_out:
            self._next = time.monotonic() + LOG_INTERVAL_S
            log.warning("%s, not logged one by one: %s", self._what, _named(left_out))


def _named(reasons: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))


REJECTS = RejectLog()  # this worker's (a process of its own: no sharing across workers)
DOOR = RejectLog("connections closed as they came")  # this worker's, of connections refused at accept
TLS = RejectLog("connections closed before a TLS session or for the wrong protocol")  # this worker's
