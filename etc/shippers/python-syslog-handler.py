"""Python's logging into prefork with the standard library's SysLogHandler over TCP, as shipped.

Copy ``prefork_handler()`` into your program; run this file to send each line of stdin as a message:
``python3 python-syslog-handler.py < messages.txt``.

Change: PREFORK_HOST and PREFORK_PORT below.
prefork: give that listener ``framing = syslog`` (SysLogHandler ends each message with a NUL, no LF:
``lines`` and ``octet-count`` do not take it) and leave ``ack`` at ``auto`` (= off: it reads no replies),
e.g. ``prefork run workers.syslog:app --bind 0.0.0.0:6514 --framing syslog``. Each message is stored as
``<PRI>IDENT MESSAGE``: facility and severity from PRI, app-name and procid from an ident ``name[pid]: ``.

Guarantee: plain TCP, one connection, no reconnect: after prefork restarts or reloads, the handler's
``emit`` fails (``handleError`` prints the traceback) until a new handler is made; what is in flight then
is lost.
"""

import logging
import logging.handlers
import os
import socket
import sys

PREFORK_HOST = "prefork.example.com"
PREFORK_PORT = 6514


def prefork_handler(ident: str = "") -> logging.handlers.SysLogHandler:
    """A handler sending each record to prefork as one NUL-terminated syslog message over TCP."""
    handler = logging.handlers.SysLogHandler(
        (PREFORK_HOST, PREFORK_PORT), facility=logging.handlers.SysLogHandler.LOG_LOCAL3, socktype=socket.SOCK_STREAM
    )
    handler.ident = ident  # e.g. "myapp[1234]: "
    return handler


if __name__ == "__main__":
    log = logging.getLogger("prefork-example")
    log.propagate = False
    log.addHandler(prefork_handler(f"myapp[{os.getpid()}]: "))
    for line in sys.stdin:
        log.warning("%s", line.rstrip("\n"))
    logging.shutdown()
