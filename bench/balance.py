"""How evenly the workers share long-lived clients: `python bench/balance.py [WORKERS]` prints a dict.

Starts a real `prefork run workers.echo:app --workers N` (no database), then two phases on the same
server, each with CLIENTS clients that stay connected until the phase ends:

- burst:  every client connects at once (non-blocking connects issued back to back), then each pipelines
          LINES lines and reads every reply;
- steady: one client connects every 10-20 ms (seeded), each pipelining its LINES lines as soon as it is
          connected, while the next ones arrive.

Per-worker figures come from `prefork status --json` (``clients`` while every client of the phase is
connected; ``lines_in`` as the increase over the phase). Each client sends the same number of lines, so
the share of lines follows the share of connections: a worker's share of the lines is the share of the
work it was given. Ratios are max/min over the workers (inf when a worker got nothing).

``measure()`` is also imported by bench/run.py (``from balance import measure``); it never patches the
calling process (plain non-blocking sockets and a selector).
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 100
LINES = 500  # per client
STEADY_GAP = (0.010, 0.020)  # seconds between two arrivals in the steady phase
STATUS_TIMEOUT = 10.0  # worker figures are at most ~1.25 s old (heartbeat 1 s, master pass 0.25 s)


def measure(workers: int = 2, *, clients: int = CLIENTS, lines: int = LINES, seed: int = 1) -> dict:
    """Start prefork (echo app) with `workers` workers, run the burst and steady phases, return the figures."""
    with _Server(workers) as server:
        burst = _phase(server, clients, lines, gap=None, rng=random.Random(seed))
        steady = _phase(server, clients, lines, gap=STEADY_GAP, rng=random.Random(seed))
    return {
        "workers": workers,
        "clients": clients,
        "lines_per_client": lines,
        "burst_conn_ratio": _ratio(burst["conns"]),
        "burst_line_ratio": _ratio(burst["lines"]),
        "steady_conn_ratio": _ratio(steady["conns"]),
        "steady_line_ratio": _ratio(steady["lines"]),
        "burst_conns": burst["conns"],
        "burst_lines": burst["lines"],
        "steady_conns": steady["conns"],
        "steady_lines": steady["lines"],
        "burst_connect_s": burst["connect_s"],
        "steady_connect_s": steady["connect_s"],
        # seconds from the first connect until the last client got its first reply (all were accepted)
        "burst_first_reply_s": burst["first_reply_s"],
        "steady_first_reply_s": steady["first_reply_s"],
    }


def _ratio(counts: list[int]) -> float:
    if not counts or min(counts) <= 0:
        return float("inf")
    return round(max(counts) / min(counts), 3)


# -- the server -----------------------------------------------------------------------------------------


class _Server:
    """A `prefork run workers.echo:app` master in its own session, killed with it at exit."""

    def __init__(self, workers: int):
        self.workers = workers
        self.tmp = tempfile.TemporaryDirectory(prefix="prefork-balance-")
        self.pidfile = str(Path(self.tmp.name) / "prefork.pid")
        self.log = Path(self.tmp.name) / "prefork.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), self.env.get("PYTHONPATH")]))
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> _Server:
        args = ["run", "workers.echo:app", "--workers", str(self.workers), "--bind", "127.0.0.1:0"]
        args += ["--pidfile", self.pidfile, "--log-file", str(self.log), "--log-level", "warning"]
        args += ["--runtime-dir", self.tmp.name]
        self.proc = subprocess.Popen(
            self._cmd(*args), cwd=ROOT, env=self.env, start_new_session=True, stdin=subprocess.DEVNULL
        )
        try:
            report = self._wait(lambda r: len(r["workers"]) == self.workers, "workers to serve")
            self.port = int(report["master"]["listeners"][0].rsplit(":", 1)[1])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # anything left of its session
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.tmp.cleanup()

    def _cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "prefork.cli", *args]

    def status(self) -> dict | None:
        out = subprocess.run(
            self._cmd("status", "--json", "--pidfile", self.pidfile),
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return json.loads(out.stdout) if out.returncode == 0 else None

    def _wait(self, predicate, what: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefork exited with {self.proc.returncode}: {self._log_tail()}")
            report = self.status()
            if report is not None and report.get("workers") is not None and predicate(report):
                return report
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: {report}")
            time.sleep(0.1)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def figures(self, what: str, predicate) -> dict[int, dict]:
        report = self._wait(predicate, what, STATUS_TIMEOUT)
        return {w["pid"]: w for w in report["workers"]}


# -- the clients ----------------------------------------------------------------------------------------


class _Client:
    """One non-blocking connection: connect, send its lines, count its replies."""

    def __init__(self, port: int, index: int, lines: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.connect_ex(("127.0.0.1", port))  # EINPROGRESS: completes in the backlog
        self.out = b"".join(b"client %d line %d of a long-lived connection\n" % (index, i) for i in range(lines))
        self.expected = lines
        self.replies = 0
        self.first_reply = 0.0  # monotonic time of its first reply: it was accepted by then

    @property
    def done(self) -> bool:
        return self.replies >= self.expected

    def on_event(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE and self.out:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise ConnectionError(f"connect failed: {os.strerror(err)}")
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                sent = 0
            self.out = self.out[sent:]
        if mask & selectors.EVENT_READ:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            if not data:
                raise ConnectionError(f"server closed after {self.replies} of {self.expected} replies")
            if not self.replies:
                self.first_reply = time.monotonic()
            self.replies += data.count(b"\n")

    def events(self) -> int:
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)


def _phase(server: _Server, clients: int, lines: int, gap: tuple[float, float] | None, rng: random.Random) -> dict:
    """Connect `clients` clients (all at once, or one per `gap`), have each pipeline `lines` lines, read the
    per-worker figures while they are all connected, then close them."""
    before = server.figures("the previous clients to leave", lambda r: r["totals"]["clients"] == 0)
    sel = selectors.DefaultSelector()
    conns: list[_Client] = []
    started = time.monotonic()

    def pump(until: float) -> None:
        while True:
            timeout = until - time.monotonic()
            if timeout <= 0 and until != float("inf"):
                return
            if until == float("inf") and all(c.done for c in conns):
                return
            for key, mask in sel.select(timeout=min(max(timeout, 0), 1.0)):
                client: _Client = key.data
                client.on_event(mask)
                if client.done:
                    sel.unregister(client.sock)
                else:
                    sel.modify(client.sock, client.events(), client)
            if time.monotonic() - started > 60:
                raise RuntimeError("clients not answered within 60 s")

    try:
        for i in range(clients):
            conn = _Client(server.port, i, lines)
            conns.append(conn)
            sel.register(conn.sock, conn.events(), conn)
            if gap is not None:
                pump(time.monotonic() + rng.uniform(*gap))
        connect_s = time.monotonic() - started
        pump(float("inf"))
        total_before = sum(w["lines_in"] for w in before.values())
        after = server.figures(
            "every client to be counted",
            lambda r: r["totals"]["clients"] == clients and r["totals"]["lines_in"] - total_before == clients * lines,
        )
    finally:
        for conn in conns:
            conn.sock.close()
        sel.close()
    pids = sorted(after)
    return {
        "conns": [after[p]["clients"] for p in pids],
        "lines": [after[p]["lines_in"] - (before[p]["lines_in"] if p in before else 0) for p in pids],
        "connect_s": round(connect_s, 3),
        "first_reply_s": round(max(c.first_reply for c in conns) - started, 3),
    }


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 2), indent=2))
