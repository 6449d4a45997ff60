"""The fault suite: the ingest app under continuous load while everything around it breaks.

One test runs the real master (``workers.ingest:app``, 2 workers) against the session's private MariaDB
through a FaultProxy that spoils COMMITs all along (reply lost, error after, cut before, bad sequence,
error on an open connection, in turn). 50 pipelining clients send unique lines in windows and record every
reply. Meanwhile, spread over about 75 seconds in a seeded random order, workers are SIGKILLed, MariaDB is
SIGKILLed and restarted, and the master is sent HUP; finally it gets TERM while the load still runs.

What is asserted holds whatever the timing (README: "Line protocol (v1)", "Reliability",
"Signals (to the master)"): every line answered ``OK`` is stored
exactly once, no line answered ``ERR`` is stored, no line is stored twice, a connection never gets more
replies than lines or anything but ``OK`` / ``ERR ...``, no connection attempt fails while a reload is
under way, and the master exits 0 after TERM. Lines without a reply (a connection broke) may or may not be
stored.

And the other half of the promise, so that a server answering every line ``ERR`` (or a proxy that no longer
sees COMMITs) cannot pass: every kind of fault was injected, every kill, restart and HUP was made and every
HUP reloaded; no line got ``ERR`` (commit_timeout outlasts every outage); most lines were answered ``OK``
and every client got an ``OK`` again after the last event; and no connection was dropped mid-window
(reset, timed out, or closed with part of a window unanswered) unless its worker was SIGKILLed by the test:
reloads and the final stop are graceful. The worker of a connection is the ``worker_pid`` of its stored
rows; one with no row stored must have seen a kill during its life.

Set FAULTS_SEED to replay an order of events; `pytest -s` shows the figures.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pymysql.cursors
import pytest

from devtools.mariadb import MariaDBServer
from tests.helpers import connect as connect_db
from tests.helpers import query
from tests.mysql_proxy import FaultProxy, every
from tests.server import ServerProcess

pytestmark = pytest.mark.faults

TABLE = "t_faults"
CLIENTS = 50
WINDOW = 100  # lines a client pipelines before it reads their replies
WORKERS = 2
COMMIT_TIMEOUT = 60  # long enough that lines caught by an outage are normally OK'd once it is over
GRACEFUL_TIMEOUT = 30
FAULT_EVERY = 7
FAULT_CYCLE = ("reply-lost", "error-after", "cut-before", "bad-sequence", "error-open")
WORKER_KILLS = 8
DB_RESTARTS = 3
HUPS = 5
EVENT_GAP = (2.0, 3.0)  # seconds between two events: 16 events take about 40 s
CONNECT_TIMEOUT = 10.0
# A reply may take commit_timeout plus a marker lookup; a client that waits longer gives up on the
# connection (its lines count as without reply) and the figures show it.
REPLY_TIMEOUT = 2.5 * COMMIT_TIMEOUT
RELOAD_WAIT = 60.0  # bound on waiting for a HUP's reload to be logged as done (or failed)
RECOVERY_WAIT = 90.0  # bound on waiting for every client to get an OK after the last event
MIN_OK_SHARE = 0.5  # of the lines sent: the rest are the windows of connections broken by worker kills
KNOWN_REPLIES = {b"OK": "OK", b"ERR unavailable": "ERR unavailable"}
CLOSED_BY_SERVER = "closed by the server"
STOPPED = "stopped"
PROBLEM_LOG = re.compile(r"\[(WARNING|ERROR|CRITICAL)\] (\S+): (.*)")


@dataclass
class Connection:
    """One client connection: its lines and their replies, in order.

    Its lines are f"f-{client}-{seq}" for seq in range(first_seq, first_seq + sent): a client's sequence
    runs on across its connections, so ranges are enough, and 10 million lines stay small in memory."""

    client: int
    first_seq: int
    sent: int = 0
    replies: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # reply lines beyond the lines sent: must stay empty
    end: str = ""
    started: float = 0.0  # time.monotonic() at connect
    ended: float = 0.0  # and once the connection is over

    def dropped(self) -> str | None:
        """How the connection was dropped mid-window, or None: it ended cleanly (the client stopped, or the
        server closed it between windows: whole windows answered, and at most the last one, sent after the
        server stopped reading, without any reply)."""
        if self.end == STOPPED:
            return None
        if self.end != CLOSED_BY_SERVER:
            return self.end  # a reset, a timeout
        answered = len(self.replies)
        if answered % WINDOW or self.sent - answered not in (0, WINDOW):
            return f"closed by the server after {answered} replies to {self.sent} lines"
        return None


@dataclass
class ConnectAttempt:
    client: int
    started: float  # time.monotonic()
    ended: float
    error: str | None  # None: the connection was established


@dataclass
class Hup:
    sent_at: float
    old_pids: frozenset[int]  # the workers before the HUP: the reload is over once they are all gone
    outcome: str = ""
    ended_at: float | None = None


class Load:
    """CLIENTS threads (plain blocking sockets, independent of this process's gevent hub), each sending
    unique lines in windows of WINDOW, reading their replies, and reconnecting after any error with new
    lines, until `stop` is set. Then each client finishes its window, half-closes and reads to EOF, so a
    reply beyond the lines sent would show."""

    def __init__(self, port: int):
        self.port = port
        self.stop = threading.Event()
        self.connections: list[Connection] = []
        self.attempts: list[ConnectAttempt] = []
        self.last_ok = [0.0] * CLIENTS  # monotonic time of each client's latest OK
        self.reply_timeouts = 0
        self._lock = threading.Lock()
        self.next_seq = [0] * CLIENTS  # per client: the seq of its next line, i.e. how many it sent
        self._threads = [threading.Thread(target=self._client, args=(c,), daemon=True) for c in range(CLIENTS)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self, timeout: float) -> int:
        """Wait for every client thread (bounded); return how many are still running."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return sum(t.is_alive() for t in self._threads)

    def oks(self) -> int:
        with self._lock:
            conns = list(self.connections)
        return sum(r == "OK" for conn in conns for r in list(conn.replies))

    def _client(self, c: int) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=CONNECT_TIMEOUT)
            except OSError as exc:
                with self._lock:
                    self.attempts.append(ConnectAttempt(c, started, time.monotonic(), repr(exc)))
                self.stop.wait(0.05)  # no busy loop while nothing accepts
                continue
            conn = Connection(c, self.next_seq[c], started=started)
            with self._lock:
                self.attempts.append(ConnectAttempt(c, started, time.monotonic(), None))
                self.connections.append(conn)
            sock.settimeout(REPLY_TIMEOUT)
            try:
                self._serve(sock, conn)
            except TimeoutError:
                conn.end = f"no reply for {REPLY_TIMEOUT:g}s"
                with self._lock:
                    self.reply_timeouts += 1
            except OSError as exc:
                conn.end = repr(exc)
            finally:
                sock.close()
                conn.ended = time.monotonic()

    def _serve(self, sock: socket.socket, conn: Connection) -> None:
        c = conn.client
        buf = b""
        while not self.stop.is_set():
            seq = self.next_seq[c]
            window = [payload(c, seq + i) for i in range(WINDOW)]
            self.next_seq[c] = seq + WINDOW  # a reconnect continues with new payloads
            conn.sent += WINDOW
            sock.sendall(("\n".join(window) + "\n").encode())
            while len(conn.replies) < conn.sent:
                data = sock.recv(65536)
                if not data:
                    conn.end = CLOSED_BY_SERVER
                    return
                buf = self._take(conn, buf + data)
            if "OK" in conn.replies[-WINDOW:]:
                self.last_ok[c] = time.monotonic()
        sock.shutdown(socket.SHUT_WR)
        while data := sock.recv(65536):
            buf = self._take(conn, buf + data)
        conn.end = STOPPED

    @staticmethod
    def _take(conn: Connection, buf: bytes) -> bytes:
        """Record the complete reply lines of buf; return the unterminated rest."""
        *lines, rest = buf.split(b"\n")
        for line in lines:
            text = KNOWN_REPLIES.get(line) or line.decode("utf-8", "replace")  # one shared str per usual reply
            (conn.replies if len(conn.replies) < conn.sent else conn.extra).append(text)
        return rest


class PidMonitor:
    """Samples the master's live workers every 50 ms, to tell afterwards when each reload was over."""

    def __init__(self, srv: ServerProcess):
        self.srv = srv
        self.samples: list[tuple[float, frozenset[int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PidMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), frozenset(self.srv.worker_pids())))
            self._stop.wait(0.05)

    def gone_at(self, since: float, pids: frozenset[int]) -> float | None:
        """The first sample at or after `since` with none of `pids` alive."""
        for t, live in list(self.samples):
            if t >= since and not live & pids:
                return t
        return None


def payload(client: int, seq: int) -> str:
    return f"f-{client}-{seq}"


def stored_counts(
    dsn: str, next_seq: list[int], watched: list[Connection]
) -> tuple[list[bytearray], list[str], int, dict[int, set[int]]]:
    """How often each line is stored: counts[client][seq] (capped at 255), read with a streaming cursor
    (the table holds millions of rows); also the rows no client sent, the number of rows, and the workers
    that stored lines of each `watched` connection ({index in watched: worker pids})."""
    counts = [bytearray(n) for n in next_seq]
    strangers: list[str] = []
    rows = 0
    ranges: dict[int, list[tuple[int, int, int]]] = {}  # client -> (first seq, end seq, index in watched)
    for i, w in enumerate(watched):
        ranges.setdefault(w.client, []).append((w.first_seq, w.first_seq + w.sent, i))
    workers: dict[int, set[int]] = {}
    conn = connect_db(dsn)
    try:
        cur = conn.cursor(pymysql.cursors.SSCursor)
        cur.execute(f"SELECT payload, worker_pid FROM `{TABLE}`")
        for text, worker in cur:
            rows += 1
            parts = text.split("-")
            try:
                client, seq = int(parts[1]), int(parts[2])
                if len(parts) != 3 or parts[0] != "f" or text != payload(client, seq):
                    raise ValueError(text)
                counts[client][seq] = min(255, counts[client][seq] + 1)
            except (ValueError, IndexError):
                strangers.append(text)
                continue
            for first, end, i in ranges.get(client, ()):
                if first <= seq < end:
                    workers.setdefault(i, set()).add(worker)
        cur.close()
    finally:
        conn.close()
    return counts, strangers, rows, workers


def unexplained_drops(
    connections: list[Connection], kills: list[tuple[float, int]], dsn: str, next_seq: list[int], term_at: float
):
    """The connections dropped mid-window that no SIGKILL of the test explains, as descriptions; with the
    stored counts, strangers and rows of `stored_counts` (read in the same pass). A connection begun once
    the final TERM was sent, with nothing of it stored, is the stop's: the listeners close, and one that the
    kernel completed in the instant before the last worker closed its copy is reset with none of its lines
    read (the client resends them). One begun before the TERM must be served: the stop accepts what the
    listen backlog holds."""
    dropped = [conn for conn in connections if conn.dropped()]
    stored, strangers, rows, workers = stored_counts(dsn, next_seq, dropped)
    killed = {pid for _, pid in kills}
    unexplained = []
    for i, conn in enumerate(dropped):
        served_by = workers.get(i)
        if served_by:
            explained = bool(served_by & killed)
        else:  # nothing of it stored: a kill must have happened while it was open, or it came after the TERM
            explained = any(conn.started <= at <= conn.ended for at, _ in kills) or conn.started >= term_at > 0
        if not explained:
            unexplained.append(
                f"client {conn.client} (worker {sorted(served_by) if served_by else 'unknown'}, "
                f"{conn.ended - conn.started:.1f} s): {conn.dropped()}"
            )
    return unexplained, len(dropped), stored, strangers, rows


@dataclass
class Tally:
    """The clients' view checked against the table; the lists hold a few examples and the counts."""

    sent: int = 0
    ok: int = 0
    err: int = 0
    err_reasons: Counter[str] = field(default_factory=Counter)
    no_reply: int = 0
    no_reply_stored: int = 0
    bad_replies: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # answered OK, not stored
    err_stored: list[str] = field(default_factory=list)  # answered ERR, stored
    twice: list[str] = field(default_factory=list)  # stored more than once


def tally(connections: list[Connection], stored: list[bytearray]) -> Tally:
    t = Tally()
    for conn in connections:
        counts = stored[conn.client]
        t.sent += conn.sent
        for i in range(conn.sent):
            seq = conn.first_seq + i
            n = counts[seq]
            reply = conn.replies[i] if i < len(conn.replies) else None
            if reply == "OK":
                t.ok += 1
                if not n:
                    t.lost.append(payload(conn.client, seq))
            elif reply is None:
                t.no_reply += 1
                t.no_reply_stored += n > 0
            elif reply.startswith("ERR "):
                t.err += 1
                t.err_reasons[reply] += 1
                if n:
                    t.err_stored.append(payload(conn.client, seq))
            else:
                t.bad_replies.append(f"{payload(conn.client, seq)} -> {reply!r}")
            if n > 1:
                t.twice.append(f"{payload(conn.client, seq)} x{n}")
    return t


def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll until predicate() holds (True) or timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def kill_random_worker(srv: ServerProcess, rng: random.Random) -> int | None:
    """SIGKILL one live worker, chosen at random; return its pid (None if no worker was found)."""
    for _ in range(50):
        pids = srv.worker_pids()
        if pids:
            pid = rng.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
                return pid
            except ProcessLookupError:
                continue
        time.sleep(0.1)
    return None


def hup(srv: ServerProcess) -> Hup:
    """Send HUP and wait (bounded) until the master logs the reload as done or failed: the next HUP
    would otherwise be ignored as a reload in progress."""
    logs = srv.logs()
    done, failed = logs.count("Reloaded: generation"), logs.count("reload failed")
    event = Hup(time.monotonic(), frozenset(srv.worker_pids()))
    srv.signal(signal.SIGHUP)

    def outcome() -> str:
        now = srv.logs()
        if now.count("Reloaded: generation") > done:
            return "reloaded"
        return "reload failed" if now.count("reload failed") > failed else ""

    poll(lambda: bool(outcome()), RELOAD_WAIT)
    event.outcome = outcome() or f"no reload logged within {RELOAD_WAIT:g}s"
    return event


def restart_db(db: MariaDBServer, rng: random.Random) -> None:
    """SIGKILL MariaDB, leave it down 1-3 s, start it again on the same datadir and port."""
    db.kill()
    try:
        time.sleep(rng.uniform(1.0, 3.0))
    finally:
        db.restart()


@dataclass
class Chaos:
    """The events done to the server, one after the other, EVENT_GAP apart."""

    kills: list[tuple[float, int]] = field(default_factory=list)  # (time.monotonic(), pid) of each SIGKILL
    db_restarts: int = 0
    hups: list[Hup] = field(default_factory=list)

    def run(self, srv: ServerProcess, db: MariaDBServer, rng: random.Random, events: list[str]) -> None:
        for event in events:
            time.sleep(rng.uniform(*EVENT_GAP))
            if event == "kill":
                at = time.monotonic()
                pid = kill_random_worker(srv, rng)
                if pid is not None:
                    self.kills.append((at, pid))
            elif event == "db":
                restart_db(db, rng)
                self.db_restarts += 1
            else:
                self.hups.append(hup(srv))


def log_summary(logs: str, limit: int = 25) -> str:
    """The most frequent warnings and errors of the master and workers (numbers folded), with an example
    of each, plus the exception lines of tracebacks."""
    kinds: Counter[str] = Counter()
    example: dict[str, str] = {}
    for line in logs.splitlines():
        m = PROBLEM_LOG.search(line)
        if m:
            text = f"{m.group(1)} {m.group(2)}: {m.group(3)}"
        elif re.match(r"^[\w.]+(Error|Exception|Timeout|Closed|Outcome)\b", line):
            text = f"exception {line}"
        else:
            continue
        key = re.sub(r"\d+", "N", text)[:160]
        kinds[key] += 1
        example.setdefault(key, line[:300])
    if not kinds:
        return "  (no warnings or errors logged)"
    return "\n".join(f"  {n:6d} x {example[key]}" for key, n in kinds.most_common(limit))


@pytest.mark.timeout(400)
def test_faults_under_load_never_lose_nor_duplicate_a_line(db: MariaDBServer, tmp_path: Path) -> None:
    seed = int(os.environ.get("FAULTS_SEED", str(random.SystemRandom().randrange(2**32))))
    rng = random.Random(seed)
    events = ["kill"] * WORKER_KILLS + ["db"] * DB_RESTARTS + ["hup"] * HUPS
    rng.shuffle(events)
    query(db.dsn, f"DROP TABLE IF EXISTS `{TABLE}`")

    chaos = Chaos()
    exit_code: int | str = "not stopped"
    recovered = False
    started = time.monotonic()
    term_at = 0.0
    logs = ""
    plan = every(FAULT_EVERY, *FAULT_CYCLE)
    try:
        with FaultProxy(("127.0.0.1", db.port), plan) as proxy:
            args = ["--dsn", proxy.dsn, "--table", TABLE, "--workers", str(WORKERS)]
            args += ["--commit-timeout", str(COMMIT_TIMEOUT), "--graceful-timeout", str(GRACEFUL_TIMEOUT)]
            with ServerProcess(args) as srv, PidMonitor(srv) as monitor:
                load = Load(srv.port)
                load.start()
                try:
                    poll(lambda: load.oks() > 0, 30)  # the load runs before anything breaks
                    chaos.run(srv, db, rng, events)
                    chaos_over = time.monotonic()
                    # Every client gets OKs again once nothing breaks but COMMITs (a bound to wait, not a timing).
                    recovered = poll(lambda: min(load.last_ok) > chaos_over, RECOVERY_WAIT)
                    # TERM while the load runs: every line already read must still be answered.
                    term_at = time.monotonic()
                    srv.signal(signal.SIGTERM)
                    load.stop.set()
                    try:
                        exit_code = srv.wait(GRACEFUL_TIMEOUT + 30)
                    except subprocess.TimeoutExpired:
                        exit_code = f"still running {GRACEFUL_TIMEOUT + 30}s after TERM"
                finally:
                    load.stop.set()
                    logs = srv.logs()
            # The master and workers are gone now (ServerProcess kills what is left): every client sees EOF.
            stuck_clients = load.join(60)
            commits = proxy.commits
            fault_counts = dict(proxy.counts)
    finally:
        if not db.is_running():
            db.restart()
    hups = chaos.hups
    for h in hups:
        h.ended_at = monitor.gone_at(h.sent_at, h.old_pids) or term_at

    # -- what the clients saw, and what the table holds -------------------------------------------------
    drops, dropped, stored, strangers, rows = unexplained_drops(
        load.connections, chaos.kills, db.dsn, load.next_seq, term_at
    )
    seen = tally(load.connections, stored)
    extra = [(conn.client, conn.extra[:3]) for conn in load.connections if conn.extra]
    during_reload = [
        a for a in load.attempts if any(h.ended_at and a.started <= h.ended_at and a.ended >= h.sent_at for h in hups)
    ]
    failed_connects = [a for a in load.attempts if a.error is not None]
    refused = [a for a in during_reload if a.error is not None]

    figures = "\n".join(
        [
            f"fault suite (seed {seed}, {time.monotonic() - started:.0f}s)",
            f"  lines sent            {seen.sent}",
            f"  acked OK              {seen.ok}",
            f"  ERR                   {seen.err} {dict(seen.err_reasons)}",
            f"  no reply              {seen.no_reply} ({seen.no_reply_stored} of them stored)",
            f"  bad replies           {len(seen.bad_replies)}",
            f"  connections           {len(load.connections)} ({len(extra)} with replies beyond lines sent)",
            f"  reply timeouts        {load.reply_timeouts}",
            f"  COMMITs via proxy     {commits}",
            f"  faults injected       {fault_counts}",
            f"  dropped mid-window    {dropped} connections, {len(drops)} not by a worker kill",
            f"  worker kills          {len(chaos.kills)}",
            f"  db restarts           {chaos.db_restarts}",
            f"  HUPs                  {len(hups)} {Counter(h.outcome for h in hups)}",
            f"  reload windows (s)    {[round(h.ended_at - h.sent_at, 1) for h in hups if h.ended_at]}",
            f"  connect attempts      {len(load.attempts)}, {len(during_reload)} during a reload",
            f"  failed connects       {len(failed_connects)}, {len(refused)} during a reload",
            f"  OKs after the events  {'every client' if recovered else 'NOT every client'}",
            f"  master exit           {exit_code}",
            f"  rows stored           {rows}",
            f"  lines lost (OK'd, not stored)  {len(seen.lost)}",
            f"  ERR'd but stored      {len(seen.err_stored)}",
            f"  stored twice          {len(seen.twice)}",
            f"  stored, never sent    {len(strangers)}",
        ]
    )
    log_path = tmp_path / "prefork.log"
    log_path.write_text(logs)  # the whole log, kept for the analysis of a failure
    figures += f"\n  full log              {log_path}"
    print("\n" + figures)
    print("warnings and errors logged:\n" + log_summary(logs))

    failures = []
    if seen.lost:
        failures.append(f"{len(seen.lost)} lines answered OK are not in the table, e.g. {seen.lost[:5]}")
    if seen.err_stored:
        failures.append(f"{len(seen.err_stored)} lines answered ERR are in the table, e.g. {seen.err_stored[:5]}")
    if seen.twice:
        failures.append(f"{len(seen.twice)} payloads are stored more than once, e.g. {seen.twice[:5]}")
    if strangers:
        failures.append(f"{len(strangers)} rows hold payloads no client sent, e.g. {strangers[:5]}")
    if seen.bad_replies:
        failures.append(f"{len(seen.bad_replies)} replies are neither OK nor ERR ..., e.g. {seen.bad_replies[:5]}")
    if extra:
        failures.append(f"{len(extra)} connections got more replies than lines sent, e.g. {extra[:3]}")
    if refused:
        failures.append(
            f"{len(refused)} connection attempts failed during a reload, e.g. "
            + ", ".join(f"client {a.client}: {a.error} at +{a.started - started:.1f}s" for a in refused[:5])
        )
    if exit_code != 0:
        failures.append(f"the master did not exit 0 after TERM: {exit_code}")
    if stuck_clients:
        failures.append(f"{stuck_clients} clients still running 60s after the master was stopped")
    # The other half: the faults happened, and the lines were stored, not refused.
    missing_faults = [f for f in FAULT_CYCLE if not fault_counts.get(f)]
    if missing_faults or sum(fault_counts.values()) != commits // FAULT_EVERY:
        failures.append(f"faults not injected as planned ({commits} COMMITs seen): {fault_counts}")
    if len(chaos.kills) != WORKER_KILLS or chaos.db_restarts != DB_RESTARTS or len(hups) != HUPS:
        failures.append(f"events missing: {len(chaos.kills)} kills, {chaos.db_restarts} restarts, {len(hups)} HUPs")
    if any(h.outcome != "reloaded" for h in hups):
        failures.append(f"HUPs that did not reload: {[h.outcome for h in hups]}")
    if seen.err:
        failures.append(f"{seen.err} lines answered ERR although commit_timeout outlasts every outage")
    if seen.ok < MIN_OK_SHARE * seen.sent:
        failures.append(f"only {seen.ok} of {seen.sent} lines answered OK")
    if not recovered:
        failures.append(f"not every client got an OK within {RECOVERY_WAIT:g}s after the last event")
    if drops:
        failures.append(f"{len(drops)} connections dropped mid-window, not by a worker kill, e.g. {drops[:5]}")
    assert not failures, "\n".join(["", *failures, figures, "warnings and errors logged:", log_summary(logs)])
