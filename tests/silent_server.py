"""A TCP listener that accepts connections and never says a word: a hung database server, a half-dead proxy.

It runs in a plain thread on a real socket, so it works whatever the test's own greenlets do, and holds
every connection it accepted open until it is closed. ``accepted`` counts the connections it took.
"""

from __future__ import annotations

import socket
import threading


class SilentServer:
    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def address(self) -> str:
        """``host:port``, as written in a DSN's host list."""
        return f"{self.host}:{self.port}"

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._listener.close()
        for sock in self._held:
            sock.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._held.append(sock)
            self.accepted += 1
