"""Load generator: CONNS connections, each pipelining LINES lines, counting replies. Prints JSON.

    python bench/loadgen.py PORT CONNS LINES PREFIX [CAFILE]

Runs in its own process (the bench starts several), with gevent sockets. Connections are opened and their
lines built first, then it prints "ready"; the clock starts when the parent writes a byte on stdin, so all
generators start together and only sending, serving and reading replies are timed. With CAFILE the
connections speak TLS (the server verified against CAFILE as ``localhost``), handshakes done before "ready":
the generator's own encryption is then part of its CPU, which the bench reports (bench/tls.py).
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

CHUNK_LINES = 2000
UNIQUE_LINES = 10_000  # per connection


def prepare(port: int, lines: int, prefix: str, tls: ssl.SSLContext | None = None) -> tuple:
    """A connection and its lines, in chunks of CHUNK_LINES, ready to send. Past UNIQUE_LINES a connection
    sends its lines again from the first (the same chunk objects: memory stays small for millions of lines)."""
    sock = gevent.socket.create_connection(("127.0.0.1", port))
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="localhost")  # the handshake happens here
    unique = min(lines, UNIQUE_LINES)
    payload = [
        f"{prefix}-{i} some typical log line payload of moderate length, with a number {i}\n" for i in range(unique)
    ]
    made: dict[tuple[int, int], bytes] = {}
    chunks = []
    start = 0
    left = lines
    while left:
        n = min(CHUNK_LINES, left, unique - start)
        chunk = made.get((start, n))
        if chunk is None:
            chunk = made[start, n] = "".join(payload[start : start + n]).encode()
        chunks.append(chunk)
        left -= n
        start = (start + n) % unique
    return sock, chunks


def client(sock, chunks: list[bytes], lines: int, result: dict) -> None:
    def send() -> None:
        for chunk in chunks:
            sock.sendall(chunk)

    sender = gevent.spawn(send)
    got = ok = 0
    tail = b""
    while got < lines:
        data = sock.recv(1 << 16)
        if not data:
            break
        data = tail + data
        n = data.count(b"\n")
        got += n
        ok += data.count(b"OK\n") if n else 0
        tail = data[data.rfind(b"\n") + 1 :]
    sender.join()
    sock.close()
    result["replies"] += got
    result["ok"] += ok


def main() -> None:
    port, conns, lines, prefix = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    tls = ssl.create_default_context(cafile=sys.argv[5]) if len(sys.argv) > 5 else None
    prepared = [prepare(port, lines, f"{prefix}{c}", tls) for c in range(conns)]
    print("ready", flush=True)  # the parent then writes the byte that starts the clock
    sys.stdin.read(1)
    result = {"replies": 0, "ok": 0}
    start = time.perf_counter()
    gevent.joinall([gevent.spawn(client, sock, chunks, lines, result) for sock, chunks in prepared])
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result))


if __name__ == "__main__":
    main()
