"""A TCP proxy in front of MariaDB that breaks connections around COMMIT, for testing unknown outcomes.

Every `every`-th COMMIT that passes through is cut, alternately:

- after the server committed: the COMMIT is forwarded, the server's OK is read and thrown away, then both
  sides are closed (the batch is stored, but the client never learns it);
- before the server saw it: the COMMIT is dropped and both sides are closed (the server rolls back).

It runs on real sockets in plain threads, so it works whatever the test's own greenlets are doing.
"""

from __future__ import annotations

import socket
import threading

COMMIT_PACKET = b"\x03COMMIT"


class CommitBreakingProxy:
    def __init__(self, upstream: tuple[str, int], every: int = 3):
        self.upstream = upstream
        self.every = every
        self.commits = 0
        self.cut_after_commit = 0
        self.cut_before_commit = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = False

    def __enter__(self) -> CommitBreakingProxy:
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        _close(self._listener)
        for sock in list(self._sockets):
            _close(sock)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _close(client)
                continue
            self._sockets += [client, server]
            threading.Thread(target=self._client_to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=self._relay, args=(server, client), daemon=True).start()

    def _decide(self) -> str | None:
        with self._lock:
            self.commits += 1
            if self.commits % self.every:
                return None
            if (self.commits // self.every) % 2:
                self.cut_after_commit += 1
                return "after"
            self.cut_before_commit += 1
            return "before"

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        buf = b""
        keep_server = False
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                buf += data
                out = b""
                # Forward whole packets; look at each one for a COMMIT.
                while len(buf) >= 4:
                    length = int.from_bytes(buf[:3], "little")
                    if len(buf) < 4 + length:
                        break
                    packet, buf = buf[: 4 + length], buf[4 + length :]
                    if packet[4:] == COMMIT_PACKET:
                        decision = self._decide()
                        if decision == "before":
                            server.sendall(out)
                            return
                        if decision == "after":
                            # The server gets the COMMIT and keeps its socket until it has answered (the
                            # relay then fails to pass the OK on and closes it): committed, reply lost.
                            server.sendall(out + packet)
                            keep_server = True
                            return
                    out += packet
                if out:
                    server.sendall(out)
        except OSError:
            pass
        finally:
            _close(client)
            if not keep_server:
                _close(server)

    def _relay(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(dst)
            _close(src)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
