"""The baseline for the framework's own cost: the smallest pre-forked gevent line server that does the
protocol's essential work, echoing each line.

    python bench/minimal_server.py PORT WORKERS

Binds, forks WORKERS processes that each serve the socket with a gevent StreamServer; per chunk read: split
on LF, strip one CR, check empty and UTF-8, one sendall of all replies. No limits, no timeouts, no
backpressure, no supervision: what prefork's echo app is measured against in `make bench`.
"""

from __future__ import annotations

import os
import signal
import socket
import sys


def serve(listener: socket.socket) -> None:
    from gevent import monkey

    monkey.patch_all()
    from gevent.server import StreamServer
    from gevent.socket import socket as green_socket

    # The listener was made before patching: serve it through a gevent socket on the same descriptor.
    listener = green_socket(listener.family, listener.type, listener.proto, fileno=listener.detach())

    def handle(sock, addr) -> None:
        tail = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            lines = (tail + data).split(b"\n")
            tail = lines.pop()
            out = []
            for line in lines:
                if line[-1:] == b"\r":
                    line = line[:-1]
                if not line:
                    out.append(b"ERR empty")
                    continue
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    out.append(b"ERR bad-utf8")
                    continue
                out.append(line)
            if out:
                out.append(b"")
                sock.sendall(b"\n".join(out))
        sock.close()

    StreamServer(listener, handle).serve_forever()


def main() -> None:
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(2048)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            serve(listener)
            os._exit(0)
        children.append(pid)

    def stop(*_: object) -> None:
        for child in children:
            os.kill(child, signal.SIGKILL)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    for _ in children:
        os.wait()


if __name__ == "__main__":
    main()
