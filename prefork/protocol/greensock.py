"""The gevent socket internals the connection relies on, in one place (checked by tests/test_greensock.py).

gevent's socket offers no public way to do two things the hot path needs:

- Send without ever blocking the reader. gevent's ``send`` waits for room when the OS socket is full; the
  reader must instead leave what the socket did not take to a writer greenlet. The OS socket under gevent's
  (``_sock``, which gevent keeps non-blocking) sends what it can and raises BlockingIOError otherwise.
- Wait until data comes without first trying to read. gevent's ``recv`` tries the socket and waits only
  when it says EAGAIN: after a short read (the socket was emptied) that try is a wasted system call and
  exception. ``_wait(_read_event)`` is the wait ``recv`` itself does, with the socket's timeout. The public
  ``gevent.socket.wait_read`` would make a new watcher for every wait.

Both degrade rather than break: for a socket without them (not a gevent socket, or a gevent that renamed
them) they give None, and the connection sends through its writer greenlet and reads with plain ``recv``:
slower, never wrong. tests/test_greensock.py fails, naming the attribute, if the installed gevent no longer
has them.

A TLS socket (gevent's SSLSocket, a gevent socket too) must take the slow path: its ``_sock`` would send
plaintext under the TLS stream, and its OS socket may have nothing to read while OpenSSL holds decrypted
bytes (``pending()``), so a wait on it could last forever. ``send_close_notify`` is the one TLS internal:
it sends the close_notify alert without waiting for the client's (the stdlib's ``unwrap`` waits, and its
``shutdown`` drops the TLS layer before the linger that follows a server's close).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any


def is_tls(sock: Any) -> bool:
    """Whether ``sock`` is a TLS socket (its bytes go through OpenSSL)."""
    return hasattr(type(sock), "do_handshake")


def raw_socket(sock: Any) -> socket.socket | None:
    """The non-blocking OS socket under a gevent socket, for sends that must not block; None if none (and
    for a TLS socket, whose bytes must go through OpenSSL)."""
    if is_tls(sock):
        return None
    return getattr(sock, "_sock", None)


def can_wait_readable(sock: Any) -> bool:
    """Whether ``wait_readable`` works on ``sock`` (a gevent socket as known here, not a TLS one)."""
    if is_tls(sock):
        return False
    return all(getattr(sock, name, None) is not None for name in ("_wait", "_read_event", "hub"))


def send_close_notify(sock: Any) -> None:
    """Send a TLS socket's close_notify alert (the TLS end of the stream) without waiting for the client's;
    what the client sends afterwards can still be read. Any error is the caller's to ignore (a client gone)."""
    sslobj = getattr(sock, "_sslobj", None)
    if sslobj is None:
        return
    try:
        # OpenSSL's SSL_shutdown: the alert goes out at the first call; the stdlib then tries to read the
        # client's, which on gevent's non-blocking socket stops at once with SSLWantReadError.
        sslobj.shutdown()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        pass


def wait_readable(sock: Any) -> None:
    """Wait until ``sock`` has data (or EOF), raising ``socket.timeout`` (a TimeoutError) after the socket's
    timeout as ``recv`` would. Only for a socket ``can_wait_readable`` accepts. A function, not a closure
    kept per connection: thousands of idle connections would each hold one."""
    sock._wait(sock._read_event)  # the watcher looked up each time: gevent drops it when the socket closes


def wait_readable_untimed(sock: Any) -> None:
    """Wait until ``sock`` has data (or EOF) with no timeout: no timer is made, so a wait costs only the
    watcher. What bounds it is the caller's (``prefork.protocol.sweeper`` throws TimeoutError into it).
    Only for a socket ``can_wait_readable`` accepts."""
    sock.hub.wait(sock._read_event)
