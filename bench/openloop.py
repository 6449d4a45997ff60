"""Open-loop load generator: lines at a fixed rate over CONNS connections, reply latency per line. Prints JSON.

    python bench/openloop.py PORT CONNS RATE SECONDS PREFIX

RATE is the lines per second of this process, spread evenly over its CONNS connections. Every TICK seconds
the loop sends each connection the lines that are due by then (rate x elapsed time, so a late tick is
caught up at the next: the offered rate does not bend to the server's speed), in one write, and notes the
time of that write and the count in the connection's FIFO. Replies come back in order on each connection,
so a read matches them to the FIFO's oldest entries: a line's latency is the time from the write that
sent it to the read that brought its reply. Lines sent during the first WARMUP seconds are sent and
answered but not counted in the latencies. After SECONDS of sending, waits up to DRAIN seconds for the
replies still due.

The generator shares the machine's cores with the server it measures, so it is made to cost little: one
thread, non-blocking sockets and one epoll (no greenlets: no switch per read or write), lines of a fixed
length from one pre-encoded buffer per connection (the cost per tick is a slice and a send, not a line at
a time). A write the socket does not take whole is finished when the socket has room, the other
connections going on meanwhile; its lines count from the first write. The JSON says how much CPU it used
and how late its ticks were, to check that it is not what limits the rate. Latencies are counted in a
histogram of BUCKET_S buckets.

Runs in its own process (the bench starts several); prints "ready" once its connections are open, and the
clock starts when the parent then writes a byte on stdin, so all generators start together.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from collections import deque

TICK = 0.002
WARMUP = 0.5
DRAIN = 15.0
BUCKET_S = 1e-5  # 10 µs
RING_LINES = 4096
READ_SIZE = 1 << 16


class Conn:
    def __init__(self, port: int, name: str):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as a latency-minded client would
        self.sock.setblocking(False)
        lines = [
            f"{name}-{i:05d} an open loop line, some typical log payload of moderate length\n"
            for i in range(RING_LINES)
        ]
        self.line_len = len(lines[0].encode())
        self.ring = "".join(lines).encode()
        self.pos = 0  # index in the ring of the next line to send
        self.sent = 0
        self.fifo: deque[list] = deque()  # [time of the write, lines of it still unanswered, counted]
        self.replies = 0
        self.errors = 0
        self.tail = b""  # a reply not complete yet
        self.unsent = b""  # what the socket did not take (sent when it has room)

    def take(self, n: int) -> bytes:
        """The next n lines of the ring, as one bytes object."""
        size = self.line_len
        out = []
        while n:
            k = min(n, RING_LINES - self.pos)
            out.append(self.ring[self.pos * size : (self.pos + k) * size])
            self.pos = (self.pos + k) % RING_LINES
            n -= k
        return out[0] if len(out) == 1 else b"".join(out)

    def write(self, data: bytes) -> bool:
        """Send what the socket takes; False if some is left for later (then ``unsent``)."""
        if self.unsent:
            self.unsent += data
            return False
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        self.unsent = data[sent:]
        return not self.unsent

    def flush(self) -> bool:
        """Send more of ``unsent``; True once it is all sent."""
        data, self.unsent = self.unsent, b""
        return self.write(data)

    def read(self, now: float, hist: dict, stats: dict) -> bool:
        """Read what came and match the replies to the FIFO; False at EOF."""
        try:
            data = self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return True
        if not data:
            return False
        n = data.count(b"\n")
        if not n:
            self.tail += data
            return True
        data = self.tail + data
        cut = data.rfind(b"\n") + 1
        self.errors += data.count(b"ERR ", 0, cut)
        self.tail = data[cut:]
        self.replies += n
        fifo = self.fifo
        while n:
            entry = fifo[0]
            take = entry[1] if entry[1] <= n else n
            if entry[2]:
                latency = now - entry[0]
                bucket = int(latency / BUCKET_S)
                hist[bucket] = hist.get(bucket, 0) + take
                if latency > stats["max_s"]:
                    stats["max_s"] = latency
            if take == entry[1]:
                fifo.popleft()
            else:
                entry[1] -= take
            n -= take
        return True


def main() -> None:
    port, conns_n, rate, seconds, prefix = (
        int(sys.argv[1]),
        int(sys.argv[2]),
        float(sys.argv[3]),
        float(sys.argv[4]),
        sys.argv[5],
    )
    conns = [Conn(port, f"{prefix}{c:03d}") for c in range(conns_n)]
    by_fd = {c.sock.fileno(): c for c in conns}
    poller = select.epoll()
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    hist: dict[int, int] = {}
    stats = {"max_s": 0.0}
    per_conn = rate / conns_n
    print("ready", flush=True)  # the parent then writes the byte that starts the clock
    sys.stdin.read(1)
    cpu0 = time.process_time()
    start = time.perf_counter()
    counted_from = start + WARMUP
    end = start + seconds
    tick_at = start
    max_lag = 0.0
    open_conns = len(conns)

    def poll(timeout: float) -> None:
        nonlocal open_conns
        for fd, mask in poller.poll(timeout):
            conn = by_fd[fd]
            if mask & select.EPOLLOUT and conn.flush():
                poller.modify(fd, select.EPOLLIN)
            if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                if not conn.read(time.perf_counter(), hist, stats):
                    poller.unregister(fd)
                    open_conns -= 1

    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if now >= tick_at:
            max_lag = max(max_lag, now - tick_at)
            due_total = per_conn * (now - start)
            for conn in conns:
                due = int(due_total) + 1 - conn.sent
                if due > 0:
                    t = time.perf_counter()
                    conn.fifo.append([t, due, t >= counted_from])
                    conn.sent += due
                    if not conn.write(conn.take(due)):
                        poller.modify(conn.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
            tick_at += TICK
            if tick_at < time.perf_counter():
                tick_at = time.perf_counter()  # behind: do not send bursts of missed ticks on top
        poll(max(0.0, tick_at - time.perf_counter()))
    send_seconds = time.perf_counter() - start
    sent = sum(c.sent for c in conns)
    deadline = time.perf_counter() + DRAIN
    while sum(c.replies for c in conns) < sent and open_conns and time.perf_counter() < deadline:
        poll(0.01)
    drain_seconds = time.perf_counter() - start - send_seconds
    cpu = time.process_time() - cpu0
    for c in conns:
        c.sock.close()
    print(
        json.dumps(
            {
                "sent": sent,
                "replies": sum(c.replies for c in conns),
                "errors": sum(c.errors for c in conns),
                "send_seconds": send_seconds,
                "drain_seconds": drain_seconds,
                "target_rate": rate,
                "cpu_seconds": cpu,
                "max_tick_lag_s": max_lag,
                "max_s": stats["max_s"],
                "bucket_s": BUCKET_S,
                "hist": hist,
            }
        )
    )


if __name__ == "__main__":
    main()
