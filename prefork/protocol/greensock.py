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
from typing import Any


def raw_socket(sock: Any) -> socket.socket | None:
    """The non-blocking OS socket under a gevent socket, for sends that must not block; None if none."""
    return getattr(sock, "_sock", None)


def can_wait_readable(sock: Any) -> bool:
    """Whether ``wait_readable`` works on ``sock`` (a gevent socket as known here)."""
    return getattr(sock, "_wait", None) is not None and getattr(sock, "_read_event", None) is not None


def wait_readable(sock: Any) -> None:
    """Wait until ``sock`` has data (or EOF), raising ``socket.timeout`` (a TimeoutError) after the socket's
    timeout as ``recv`` would. Only for a socket ``can_wait_readable`` accepts. A function, not a closure
    kept per connection: thousands of idle connections would each hold one."""
    sock._wait(sock._read_event)  # the watcher looked up each time: gevent drops it when the socket closes
