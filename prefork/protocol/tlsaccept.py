"""A new connection on a TLS listener, in the worker: told apart from plaintext, then its handshake, with a
deadline, in the connection's own greenlet (so a client that never finishes blocks no other client).

- The first byte is peeked (never taken): a TLS record begins with 0x16 (a handshake record). Anything else
  is a plaintext client on a TLS port: closed at once, with one line and a count. A client that sends
  nothing within the deadline is a failed handshake ("timeout"); one that closes first, a health check
  (closed quietly).
- The handshake (``server.tls_handshake_timeout`` in all, however slowly the bytes come) and, with
  ``server.tls_client_names``, the client certificate's CN or DNS names checked against the list.
- Each failure is counted by reason (``Counters.tls``: ``prefork_tls_handshake_failures_total`` in /metrics)
  and logged through the worker's rate-limited log of them (``prefork.protocol.rejects.TLS``).

The opposite mistake, a ClientHello on a plaintext listener, is seen by the connection's first read
(``looks_like_tls``): the plaintext path waits for no byte before serving.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import gevent

from prefork.interface import TlsIdentity
from prefork.protocol.counters import Counters
from prefork.protocol.rejects import TLS as TLS_LOG
from prefork.tls import TlsSettings, common_name, server_context, subject_text

TLS_HANDSHAKE = 0x16  # the content type of a TLS handshake record, the first byte a TLS client sends
CLIENT_HELLO = 0x01  # the handshake type of the first message of a TLS client
MAX_RECORD = 16384 + 2048  # the longest record TLS allows (2^14 plus expansion)

# OpenSSL's reasons, as the counters' labels (a small, fixed set: anything else is "error").
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no-certificate",
    "CERTIFICATE_VERIFY_FAILED": "bad-certificate",
    "UNSUPPORTED_PROTOCOL": "protocol-version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol-version",
    "NO_SHARED_CIPHER": "no-shared-cipher",
    "NO_CIPHERS_PASSED": "no-shared-cipher",
    "WRONG_VERSION_NUMBER": "bad-handshake",
    "HTTP_REQUEST": "bad-handshake",
    "PACKET_LENGTH_TOO_LONG": "bad-handshake",
    "RECORD_LENGTH_MISMATCH": "bad-handshake",
    "EXCESSIVE_MESSAGE_SIZE": "bad-handshake",
    "UNEXPECTED_EOF_WHILE_READING": "eof",
}
X509_V_ERR_CERT_HAS_EXPIRED = 10


class HandshakeFailed(Exception):
    """A handshake that did not complete: ``reason`` is the counter's label."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(why)
        self.reason = reason


class TlsListener:
    """What a worker keeps of one TLS listener: its context (loaded before privileges are dropped) and rules."""

    __slots__ = ("context", "timeout", "names")

    def __init__(self, settings: TlsSettings, handshake_timeout: float) -> None:
        self.context = server_context(settings)
        self.timeout = handshake_timeout
        self.names = frozenset(settings.client_names)

    def accept(self, sock: Any, peer: str, counters: Counters) -> Any | None:
        """The TLS socket of a new connection once its handshake is done, or None: it was closed (and, but
        for a bare health check, counted and logged). A kill thrown in (a graceful stop) closes it too."""
        deadline = time.monotonic() + self.timeout
        try:
            first = _peek_first(sock, deadline)
        except HandshakeFailed as exc:
            _refused(counters, peer, exc)
            return None
        if first is None:
            return None  # closed before a byte: a TCP health check
        if first != TLS_HANDSHAKE:
            counters.tls["wrong:plaintext"] = counters.tls.get("wrong:plaintext", 0) + 1
            TLS_LOG.tls_refused(peer, "plaintext on a TLS listener (server.tls_cert)", "plaintext-on-tls")
            return None
        tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        done = False
        try:
            self._handshake(tls, deadline)
            done = True
        except HandshakeFailed as exc:
            _refused(counters, peer, exc)
            return None
        finally:
            if not done:
                tls.close()
        counters.tls["handshakes"] = counters.tls.get("handshakes", 0) + 1
        tls.settimeout(None)
        return tls

    def _handshake(self, tls: Any, deadline: float) -> None:
        left = deadline - time.monotonic()
        # One deadline for the whole handshake: a socket timeout alone restarts with each byte that comes.
        timer = gevent.Timeout(max(left, 0.001))
        tls.settimeout(max(left, 0.001))
        timer.start()
        try:
            tls.do_handshake()
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise HandshakeFailed("timeout", f"no TLS handshake within {self.timeout:g}s") from None
        except TimeoutError:
            raise HandshakeFailed("timeout", f"no TLS handshake within {self.timeout:g}s") from None
        except ssl.SSLError as exc:
            raise HandshakeFailed(_reason(exc), f"TLS handshake failed: {_said(exc)}") from None
        except OSError as exc:  # a reset, a close half way
            raise HandshakeFailed("eof", f"TLS handshake failed: {exc.strerror or exc}") from None
        finally:
            timer.close()
        if self.names:
            identity = identity_of(tls)
            allowed = identity is not None and (
                identity.common_name in self.names or any(n in self.names for n in identity.dns_names())
            )
            if not allowed:
                who = identity.subject if identity is not None else "no certificate"
                raise HandshakeFailed("name-not-allowed", f"client certificate {who} not in server.tls_client_names")


def _peek_first(sock: Any, deadline: float) -> int | None:
    """The first byte the client sent, left in the socket; None if it closed first."""
    # gevent's recv waits for the socket in this greenlet alone. Not select(): it refuses descriptors past
    # 1023, which a worker with thousands of connections has.
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except TimeoutError:
        raise HandshakeFailed("timeout", "no TLS handshake within the deadline (nothing sent)") from None
    except OSError:
        return None
    return data[0] if data else None


def looks_like_tls(data: bytes) -> bool:
    """Whether a plaintext connection's first bytes are a TLS ClientHello: a handshake record of version 3.x
    whose length TLS allows, holding a ClientHello. Six bytes in that shape, not two: a line may begin with
    any valid UTF-8, 0x16 0x03 included, and a client's first line is served unless it cannot be a line."""
    return (
        len(data) >= 6
        and data[0] == TLS_HANDSHAKE
        and data[1] == 3
        and data[2] <= 4
        and 0 < int.from_bytes(data[3:5], "big") <= MAX_RECORD
        and data[5] == CLIENT_HELLO
    )


def tls_on_plaintext(counters: Counters, peer: str) -> None:
    """Count and log a ClientHello on a plaintext listener (the connection closes it)."""
    counters.tls["wrong:tls"] = counters.tls.get("wrong:tls", 0) + 1
    why = "a TLS ClientHello on a plaintext listener (no server.tls_cert)"
    TLS_LOG.tls_refused(peer, why, "tls-on-plaintext")


def identity_of(tls: Any) -> TlsIdentity | None:
    """The verified client certificate's identity, or None (no client certificate asked or given)."""
    try:
        cert = tls.getpeercert()
    except (ValueError, OSError):
        return None
    if not cert:
        return None
    subject = cert.get("subject", ())
    sans = tuple(f"{kind}:{value}" for kind, value in cert.get("subjectAltName", ()))
    return TlsIdentity(subject=subject_text(subject), common_name=common_name(subject), sans=sans)


def _refused(counters: Counters, peer: str, exc: HandshakeFailed) -> None:
    key = f"failed:{exc.reason}"
    counters.tls[key] = counters.tls.get(key, 0) + 1
    TLS_LOG.tls_refused(peer, str(exc), exc.reason)


def _reason(exc: ssl.SSLError) -> str:
    if getattr(exc, "verify_code", None) == X509_V_ERR_CERT_HAS_EXPIRED:
        return "certificate-expired"
    if isinstance(exc, ssl.SSLEOFError):
        return "eof"
    return _REASONS.get(exc.reason or "", "error")


def _said(exc: ssl.SSLError) -> str:
    verify = getattr(exc, "verify_message", None)
    return f"{exc.reason}: {verify}" if verify else str(exc.reason or exc)
