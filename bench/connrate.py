"""New connections per second: CONCURRENCY clients in a loop, each connecting, sending one line, reading its
reply and closing, for SECONDS. Prints JSON.

    python bench/connrate.py PORT CONCURRENCY SECONDS [CAFILE]

With CAFILE each connection is a full TLS handshake (no session resumption: every connection is new), the
server verified against CAFILE as ``localhost``. Prints "ready" once its first connection worked (the server
answers), then waits for a byte on stdin to start the clock, as bench/loadgen.py does. Counts the
connections completed within SECONDS (ones still under way then are not counted), errors, the TLS
version negotiated and this process's CPU seconds over the run (its own handshakes cost CPU too).
"""

from __future__ import annotations

import json
import ssl
import sys
import time

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
import gevent.socket  # noqa: E402
from idle_memory import exchange_line  # noqa: E402


def one(port: int, tls: ssl.SSLContext | None, line: bytes) -> str:
    """One connection: connect, handshake, one line, its reply, close; the TLS version (or "plaintext")."""
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=30)
    version = "plaintext"
    try:
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="localhost")
            version = sock.version() or "?"
        exchange_line(sock, line)
    finally:
        sock.close()
    return version


def main() -> None:
    port, concurrency, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    tls = ssl.create_default_context(cafile=sys.argv[4]) if len(sys.argv) > 4 else None
    line = b"one line of a short-lived client\n"
    version = one(port, tls, line)
    print("ready", flush=True)
    sys.stdin.read(1)
    counts = {"connections": 0, "errors": 0}
    errors: list[str] = []
    cpu_before = time.process_time()
    start = time.perf_counter()
    end = start + seconds

    def loop() -> None:
        while time.perf_counter() < end:
            try:
                one(port, tls, line)
            except OSError as exc:
                counts["errors"] += 1
                errors.append(str(exc))
                continue
            if time.perf_counter() <= end:
                counts["connections"] += 1

    gevent.joinall([gevent.spawn(loop) for _ in range(concurrency)])
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_before
    out = {**counts, "first_error": errors[:1], "seconds": seconds, "elapsed": elapsed, "cpu_seconds": cpu}
    print(json.dumps({**out, "version": version}))


if __name__ == "__main__":
    main()
