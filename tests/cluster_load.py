"""Load for the cluster tests: pipelining clients that record every payload and every reply.

Each client binds its own loopback address (127.0.0.100 + i), so that the address a server stores is
checkably the client's own. It sends windows of lines, reads their replies in order, and on any
connection error reconnects (with a short backoff) and resends the lines of the window that got no
reply (with ``ids``, each line carries its payload as its line id, so a resend is stored once). Per
payload it keeps the list of replies of every attempt (None: the reply was lost), the time of
each OK, and it never resends a line that got a reply: ERR is final.

``verify(stored)`` then holds the server to its promise: every OK stored, nothing stored whose every
attempt was answered ERR, a payload stored twice only when it was resent after a lost reply.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Record:
    replies: list[str | None] = field(default_factory=list)  # one per attempt; None = no reply came


class RecordingClient(threading.Thread):
    """One client: windows of `window` lines to `target` from 127.0.0.(100 + index) until stopped."""

    def __init__(
        self, index: int, target: tuple[str, int], stop: threading.Event, window: int = 50, ids: bool = False
    ) -> None:
        super().__init__(daemon=True, name=f"client-{index}")
        self.index = index
        self.source = f"127.0.0.{100 + index}"
        self.target = target
        self.stop = stop
        self.window = window
        self.ids = ids  # send each line as "@PAYLOAD PAYLOAD": its id, so that a resend is stored once
        self.records: dict[str, Record] = {}
        self.ok_times: list[float] = []
        self.reconnects = 0
        self.resent = 0
        self.error: BaseException | None = None
        self._next = 0
        self._unsent: collections.deque[str] = collections.deque()

    def _new_payload(self) -> str:
        self._next += 1
        payload = f"c{self.index}-{self._next}"
        self.records[payload] = Record()
        return payload

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self) -> None:
        give_up = None
        while True:
            if self.stop.is_set() and not self._unsent:
                return
            if self.stop.is_set():
                give_up = give_up or time.monotonic() + 120
                if time.monotonic() > give_up:
                    raise AssertionError(f"{self.name}: {len(self._unsent)} lines still unanswered after 120 s")
            try:
                sock = socket.create_connection(self.target, timeout=5, source_address=(self.source, 0))
            except OSError:
                time.sleep(0.1)
                continue
            try:
                sock.settimeout(60)
                self._serve(sock)
            except OSError:
                self.reconnects += 1
                time.sleep(0.05)
            finally:
                sock.close()

    def _serve(self, sock: socket.socket) -> None:
        buf = b""
        while not (self.stop.is_set() and not self._unsent):
            window = [self._unsent.popleft() for _ in range(min(self.window, len(self._unsent)))]
            while len(window) < self.window and not self.stop.is_set():
                window.append(self._new_payload())
            answered = 0
            try:
                if self.ids:
                    sock.sendall(b"".join(b"@%s %s\n" % (p.encode(), p.encode()) for p in window))
                else:
                    sock.sendall(b"".join(p.encode() + b"\n" for p in window))
                while answered < len(window):
                    while b"\n" not in buf:
                        chunk = sock.recv(65536)
                        if not chunk:
                            raise ConnectionResetError("closed by the server")
                        buf += chunk
                    line, buf = buf.split(b"\n", 1)
                    reply = line.decode()
                    self.records[window[answered]].replies.append(reply)
                    if reply == "OK":
                        self.ok_times.append(time.monotonic())
                    answered += 1
            except OSError:
                lost = window[answered:]
                for payload in lost:
                    self.records[payload].replies.append(None)
                self.resent += len(lost)
                self._unsent.extendleft(reversed(lost))
                raise


def verify(clients: list[RecordingClient], stored: dict[str, int]) -> dict[str, int]:
    """Check the promise against ``stored`` (payload -> rows holding it); return the figures."""
    figures = {"lines": 0, "ok": 0, "err": 0, "resent": 0, "duplicates": 0, "lost": 0}
    problems = []
    for client in clients:
        figures["resent"] += client.resent
        for payload, record in client.records.items():
            if not record.replies:
                continue  # created as the clients stopped, never sent
            figures["lines"] += 1
            final = record.replies[-1]
            count = stored.get(payload, 0)
            maybe = sum(1 for r in record.replies if r in ("OK", None))  # attempts that may have stored it
            if final == "OK":
                figures["ok"] += 1
                if count == 0:
                    figures["lost"] += 1
                    problems.append(f"{payload}: OK but not stored ({record.replies})")
            else:
                figures["err"] += 1
            if count > maybe or (final != "OK" and None not in record.replies and count):
                problems.append(f"{payload}: stored {count} times after replies {record.replies}")
            if count > 1:
                figures["duplicates"] += count - 1
    assert not problems, f"{len(problems)} broken promises, e.g. {problems[:5]}"
    return figures


def longest_gap(clients: list[RecordingClient], start: float, end: float) -> float:
    """The longest time, in [start, end], that some client went without an OK: how long a failover held
    up the clients it hit."""
    longest = 0.0
    for client in clients:
        times = [t for t in client.ok_times if start <= t <= end]
        edges = [start, *times, end]
        longest = max(longest, *(b - a for a, b in zip(edges, edges[1:], strict=False)))
    return longest
