"""Load generator: CONNS connections, each pipelining LINES lines, counting replies. Prints JSON.

    python bench/loadgen.py PORT CONNS LINES PREFIX

Runs in its own process (the bench starts several), with gevent sockets; the clock starts when the
parent writes a byte on stdin, so all generators start together.
"""

from __future__ import annotations

import json
import sys
import time

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
import gevent.socket  # noqa: E402

CHUNK_LINES = 2000


def client(port: int, lines: int, prefix: str, result: dict) -> None:
    sock = gevent.socket.create_connection(("127.0.0.1", port))
    payload = [
        f"{prefix}-{i} some typical log line payload of moderate length, with a number {i}\n" for i in range(lines)
    ]

    def send() -> None:
        for i in range(0, lines, CHUNK_LINES):
            sock.sendall("".join(payload[i : i + CHUNK_LINES]).encode())

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
    sys.stdin.read(1)
    result = {"replies": 0, "ok": 0}
    start = time.perf_counter()
    gevent.joinall([gevent.spawn(client, port, lines, f"{prefix}{c}", result) for c in range(conns)])
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result))


if __name__ == "__main__":
    main()
