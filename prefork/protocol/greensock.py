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
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any


def raw_socket(sock: Any) -> socket.socket | None:
    """The non-blocking OS socket under a gevent socket, for sends that must not block; None if none."""
    return getattr(sock, "_sock", None)


def read_waiter(sock: Any) -> Callable[[], None] | None:
    """A function that waits until ``sock`` has data (or EOF), raising ``socket.timeout`` (a TimeoutError)
    after the socket's timeout as ``recv`` would; None if ``sock`` is not a gevent socket as known here."""
    wait = getattr(sock, "_wait", None)
    if wait is None or getattr(sock, "_read_event", None) is None:
        return None

    def wait_readable() -> None:
        wait(sock._read_event)  # looked up each time: gevent drops the watcher when the socket closes

    return wait_readable
