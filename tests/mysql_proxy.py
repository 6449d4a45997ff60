"""A TCP proxy in front of MariaDB that injects faults around COMMIT, for testing unknown outcomes.

A plan decides, for the n-th COMMIT that passes through (n = 1, 2, ...), what happens to it:

- ``None``: nothing, the COMMIT and its reply pass.
- ``"reply-lost"``: the server gets the COMMIT (it commits); its OK is thrown away and both sides are
  closed: the batch is stored, but the client never learns it.
- ``"cut-before"``: the COMMIT is dropped and both sides are closed (the server rolls back).
- ``"error-after"``: the server commits; its OK is replaced by an error packet (``error_code``, by
  default 1927 "Connection was killed"), and both sides are closed as MariaDB does after that error.
- ``"error-open"``: as error-after, but the connection stays open (an error the driver does not take for
  a disconnect, after a COMMIT that landed).
- ``"bad-sequence"``: the server commits; its OK reaches the client with a wrong sequence number (the
  driver raises a packet-sequence InternalError and closes its socket).
- ``"reply-held"``: the server commits; its OK is kept back for good and the connection stays open: the
  client waits for it until the connection is closed (say, the process is killed: stored, never answered).
  ``held`` counts the replies kept back so far.

``refuse = True`` makes the proxy close every new connection at once; connections already open are
untouched. ``down()`` also cuts every open connection (the database is unreachable), ``up()`` ends that;
with ``down_after_fault`` the proxy goes down right after each fault it injects. ``counts`` tells how often
each fault was injected, ``fault_threads`` the server thread id of each connection that got one.

It runs on real sockets in plain threads, so it works whatever the test's own greenlets are doing.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable

from workers.schema import MARKER_TABLE

COMMIT_PACKET = b"\x03COMMIT"
FAULTS = ("reply-lost", "cut-before", "error-after", "error-open", "bad-sequence", "reply-held")
KEEP_OPEN = ("error-open", "reply-held")  # faults after which the connection stays open
ERROR_TEXT = {1927: (b"70100", b"Connection was killed"), 1053: (b"08S01", b"Server shutdown in progress")}


def every(n: int, *faults: str) -> Callable[[int], str | None]:
    """A plan: every n-th COMMIT gets the next fault of `faults`, in turn."""

    def plan(count: int) -> str | None:
        if count % n:
            return None
        return faults[(count // n - 1) % len(faults)]

    return plan


class _Link:
    """One proxied connection: what the server-to-client relay must do with the next reply."""

    def __init__(self, client: socket.socket, server: socket.socket):
        self.client = client
        self.server = server
        self.on_reply: str | None = None
        self.marked = False  # the open transaction sent the proxy's `only_in` statement
        self.thread_id: int | None = None  # from the server's handshake


class FaultProxy:
    def __init__(
        self,
        upstream: tuple[str, int],
        plan: Callable[[int], str | None],
        error_code: int = 1927,
        only_in: bytes | None = None,
    ):
        self.upstream = upstream
        self.plan = plan
        # Only the COMMITs of transactions that sent a statement holding these bytes are counted and planned
        # for (a batch's marker INSERT): the app's other COMMITs (table setup, marker pruning) come at times
        # that depend on the machine's speed, and a fault landing on one of them tests nothing.
        self.only_in = only_in
        self.error_code = error_code
        self.refuse = False
        self.down_after_fault = False
        self.commits = 0
        self.counts: Counter[str] = Counter()
        self.fault_threads: list[int | None] = []
        self.held = 0  # COMMIT replies kept back ("reply-held"): the server has committed
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = False

    @property
    def dsn(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/test"

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        _close(self._listener)
        for sock in list(self._sockets):
            _close(sock)

    def down(self) -> None:
        """Refuse new connections and cut every open one."""
        self.refuse = True
        for link in list(self._links):
            _close(link.client)
            _close(link.server)

    def up(self) -> None:
        """Accept connections again."""
        self.refuse = False

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refuse:
                _close(client)
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _close(client)
                continue
            self._sockets += [client, server]
            link = _Link(client, server)
            self._links.append(link)
            threading.Thread(target=self._client_to_server, args=(link,), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(link,), daemon=True).start()

    def _decide(self, link: _Link) -> str | None:
        with self._lock:
            self.commits += 1
            fault = self.plan(self.commits)
            if fault is not None:
                assert fault in FAULTS, fault
                self.counts[fault] += 1
                self.fault_threads.append(link.thread_id)
            return fault

    def _after_fault(self) -> None:
        if self.down_after_fault:
            self.down()

    def _client_to_server(self, link: _Link) -> None:
        client, server = link.client, link.server
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
                packets, buf = _split_packets(buf)
                for packet in packets:
                    if self.only_in is not None and self.only_in in packet:
                        link.marked = True
                    if packet[4:] == COMMIT_PACKET and (self.only_in is None or link.marked):
                        link.marked = False
                        fault = self._decide(link)
                        if fault == "cut-before":
                            server.sendall(out)
                            self._after_fault()
                            return
                        if fault is not None:
                            # The server gets the COMMIT; the relay deals with its reply.
                            link.on_reply = fault
                            server.sendall(out + packet)
                            out = b""
                            if fault not in KEEP_OPEN:
                                keep_server = True  # the relay closes it once the reply has come
                                return
                            continue
                    out += packet
                if out:
                    server.sendall(out)
        except OSError:
            pass
        finally:
            if not keep_server:
                _close(client)
                _close(server)

    def _server_to_client(self, link: _Link) -> None:
        client, server = link.client, link.server
        buf = b""
        try:
            handshake = b""
            while link.thread_id is None:
                data = server.recv(65536)
                if not data:
                    return
                client.sendall(data)
                handshake += data
                if len(handshake) > 5 and b"\0" in handshake[5:]:
                    # protocol version (1 byte), server version (NUL-terminated), connection id (4 bytes LE)
                    end = handshake.index(b"\0", 5)
                    if len(handshake) >= end + 5:
                        link.thread_id = int.from_bytes(handshake[end + 1 : end + 5], "little")
            while True:
                data = server.recv(65536)
                if not data:
                    return
                if link.on_reply is None and not buf:
                    client.sendall(data)  # the common case: pass bytes through unparsed
                    continue
                buf += data
                out = b""
                packets, buf = _split_packets(buf)
                for packet in packets:
                    fault, link.on_reply = link.on_reply, None
                    if fault is None:
                        out += packet
                        continue
                    if fault in ("error-after", "error-open"):
                        client.sendall(out + self._error_packet(packet[3]))
                        out = b""
                    elif fault == "bad-sequence":
                        client.sendall(out + packet[:3] + bytes([(packet[3] + 7) % 256]) + packet[4:])
                    elif fault == "reply-held":
                        client.sendall(out)  # what came before the COMMIT's reply; the reply itself never
                        out = b""
                        with self._lock:
                            self.held += 1
                    self._after_fault()
                    if fault not in KEEP_OPEN:
                        return
                if out:
                    client.sendall(out)
        except OSError:
            pass
        finally:
            _close(client)
            _close(server)

    def _error_packet(self, seq: int) -> bytes:
        state, text = ERROR_TEXT.get(self.error_code, (b"HY000", b"Got error during COMMIT"))
        body = b"\xff" + struct.pack("<H", self.error_code) + b"#" + state + text
        return len(body).to_bytes(3, "little") + bytes([seq]) + body


def _split_packets(buf: bytes) -> tuple[list[bytes], bytes]:
    """The whole MySQL packets at the start of buf, and the rest."""
    packets = []
    while len(buf) >= 4:
        length = int.from_bytes(buf[:3], "little")
        if len(buf) < 4 + length:
            break
        packets.append(buf[: 4 + length])
        buf = buf[4 + length :]
    return packets, buf


class CommitBreakingProxy(FaultProxy):
    """Every `every`-th COMMIT of an ingest batch is cut, alternately after the server committed and before it
    saw it."""

    def __init__(self, upstream: tuple[str, int], every: int = 3):
        plan = globals()["every"](every, "reply-lost", "cut-before")
        super().__init__(upstream, plan, only_in=b"INSERT INTO `" + MARKER_TABLE.encode() + b"`")

    @property
    def cut_after_commit(self) -> int:
        return self.counts["reply-lost"]

    @property
    def cut_before_commit(self) -> int:
        return self.counts["cut-before"]


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
