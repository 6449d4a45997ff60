"""The shipper bench (`make bench`, or alone: `make bench BENCH=shippers`): rsyslog forwarding N messages into
the bench's MariaDB three ways, in one run, each into a table of its own with the same shape:

- omfwd -> prefork: rsyslog `omfwd`, RFC 5424 octet-counted over TCP, into `prefork run workers.syslog:app
  --framing octet-count` (ack auto = off: plain TCP, nothing acked);
- omrelp -> prefork: rsyslog `omrelp` into `prefork run workers.syslog:app --framing relp`, each message
  acked after its COMMIT;
- ommysql: rsyslog's own MySQL output (Debian's rsyslog-mysql) writing straight to the database, one
  INSERT per message, a transaction per dequeued batch, into a table of the syslog app's shape (its
  columns and indexes) filled from rsyslog's own parsed properties.

Each round, per contender: a fresh table, a fresh prefork (2 workers, the syslog app's defaults) and a
fresh rsyslogd (devtools.shippers.Rsyslog, its own config and work directory). One generator connection
sends the N distinct RFC 5424 messages to rsyslog's `imptcp` input in one go (well under a second, ahead
of every output here), so rsyslog's queues hold what its output has not forwarded yet and the output path
is what is timed. The rate is counted in the database, not from rsyslog's stats: polling the table's
MAX(id) (and COUNT(*) once that reaches N), messages/s = the rows committed after the first poll that saw
a row, over the time from that poll to the one that saw all N. After rsyslogd is stopped (it flushes), the
rows are counted again: stored, distinct messages, lost (N - distinct) and duplicates (rows - distinct).
A contender that loses messages, or stops making progress for STALL_S, is reported LOST, loudly.

rsyslog settings, the same for the three (a user's reliable forwarding, in memory): main queue and action
queue LinkedList of QUEUE_SIZE messages (more than N: no flow control on the input), one worker thread per
action (rsyslog's default), retry forever (`action.resumeRetryCount="-1"`), and, per set of SETTINGS, the
queues' dequeue batch (`queue.dequeueBatchSize`; ommysql commits once per batch) and omrelp's `windowSize`:
1024 and 1024 (tuned), then rsyslog's own default batch, 128, with etc/shippers/rsyslog-omrelp.conf's
window, 128. The window must not be smaller than the batch: omrelp corks its socket (TCP_CORK) for a batch,
and a full window then waits for its last partial segment to leave, up to the kernel's 200 ms, for every
window (measured: window 128 with batches of 1024, 660 messages/s).

Environment: BENCH_SHIPPER_MESSAGES (200000), BENCH_SHIPPER_ROUNDS (3), BENCH_SHIPPER_SETTINGS
(BATCH:WINDOW,...: 1024:1024,128:128), BENCH_WORKERS (CPUs).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
import pymysql.cursors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from procstat import group_cpu_seconds, process_cpu_seconds  # noqa: E402

from devtools.mariadb import MariaDBServer, free_port  # noqa: E402
from devtools.shippers import RFC5424_TEMPLATE, Rsyslog  # noqa: E402
from workers.schema import create_syslog_table_sql  # noqa: E402

MESSAGES = int(os.environ.get("BENCH_SHIPPER_MESSAGES", 200_000))
ROUNDS = int(os.environ.get("BENCH_SHIPPER_ROUNDS", 3))
# (queue.dequeueBatchSize of every queue, omrelp's windowSize) per set of settings the contenders run with
SETTINGS = tuple(
    (int(b), int(w))
    for b, w in (s.split(":") for s in os.environ.get("BENCH_SHIPPER_SETTINGS", "1024:1024,128:128").split(","))
)
WORKERS = int(os.environ.get("BENCH_WORKERS", len(os.sched_getaffinity(0))))
QUEUE_SIZE = max(1_000_000, 2 * MESSAGES)
POLL_S = 0.02
STALL_S = 30.0  # no new row for this long: the contender is stuck, what is missing is lost
PY = sys.executable
RELP_VS_OMMYSQL = 1.0  # the target: RELP at least as fast as ommysql

# ommysql's row: the syslog app's columns, from rsyslog's parsed properties (no structured data is sent).
OMMYSQL_ROW = (
    "INSERT INTO `{table}` (received_at, client_addr, worker_pid, facility, severity, ts_text, ts_utc, "
    "hostname, app_name, procid, msgid, structured_data, message, raw) VALUES ("
    "'%timegenerated:::date-mysql%', '%fromhost-ip%', 0, %syslogfacility%, %syslogseverity%, "
    "'%timereported:::date-rfc3339%', '%timereported:::date-mysql%', '%hostname%', '%app-name%', "
    "'%procid%', '%msgid%', NULL, '%msg%', '%rawmsg%')"
)


def progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# -- the contenders -------------------------------------------------------------------------------------


@dataclass
class Contender:
    """One way from rsyslog into the table under one set of rsyslog settings: its action, and prefork's
    framing (None: no prefork)."""

    key: str
    name: str
    framing: str | None
    batch: int  # queue.dequeueBatchSize of rsyslog's queues
    window: int  # omrelp's windowSize (RELP only)
    rates: list[float] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # each round that lost messages or stalled, said why

    @property
    def rate(self) -> float | None:
        return max(self.rates) if self.rates else None

    def best(self) -> dict | None:
        done = [r for r in self.rounds if r["ok"]]
        return max(done, key=lambda r: r["rate"]) if done else None

    def queue(self) -> str:
        """The action's queue and retry settings."""
        return (
            f'queue.type="LinkedList" queue.size="{QUEUE_SIZE}" queue.dequeueBatchSize="{self.batch}" '
            'action.resumeRetryCount="-1" action.resumeInterval="1"'
        )

    def action(self, port: int, table: str) -> str:
        """rsyslog's config lines of the action, sending to `port` (prefork's, or the database's)."""
        if self.framing == "octet-count":
            return (
                f'action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp" TCP_Framing="octet-counted"\n'
                f'       template="{RFC5424_TEMPLATE}" {self.queue()})'
            )
        if self.framing == "relp":
            return (
                'module(load="omrelp")\n'
                f'action(type="omrelp" target="127.0.0.1" port="{port}" template="{RFC5424_TEMPLATE}"\n'
                f'       windowSize="{self.window}" timeout="10" conn.timeout="5" {self.queue()})'
            )
        row = OMMYSQL_ROW.format(table=table)
        return (
            'module(load="ommysql")\n'
            f'template(name="bench_row" type="string" option.sql="on" string="{row}")\n'
            f'action(type="ommysql" server="127.0.0.1" serverport="{port}" db="test" uid="root" pwd=""\n'
            f'       template="bench_row" {self.queue()})'
        )


def contenders() -> list[Contender]:
    """Every contender under every set of settings (SETTINGS)."""
    out = []
    for batch, window in SETTINGS:
        relp = f"omrelp -> prefork (relp)  batch {batch} window {window}"
        out += [
            Contender(f"omfwd_b{batch}", f"omfwd -> prefork (octet-count)  batch {batch}", "octet-count", batch, 0),
            Contender(f"relp_b{batch}", relp, "relp", batch, window),
            Contender(f"ommysql_b{batch}", f"ommysql  batch {batch}", None, batch, window),
        ]
    return out


def rsyslog_config(directory: Path, in_port: int, batch: int, action: str) -> str:
    """rsyslogd with one TCP input and one action, the queue settings of the module docstring."""
    return f"""\
global(workDirectory="{directory}" maxMessageSize="64k")
main_queue(queue.type="LinkedList" queue.size="{QUEUE_SIZE}" queue.dequeueBatchSize="{batch}")
module(load="imptcp")
input(type="imptcp" address="127.0.0.1" port="{in_port}")
{action}
"""


# -- database -------------------------------------------------------------------------------------------


def connect(db: MariaDBServer) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=db.port, user="root", database="test", autocommit=True)


def query(conn: pymysql.Connection, statement: str) -> tuple:
    with conn.cursor() as cur:
        cur.execute(statement)
        return cur.fetchone()


def fresh_table(conn: pymysql.Connection, table: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        cur.execute(create_syslog_table_sql(table))


def commits(conn: pymysql.Connection) -> int:
    """The database's COMMIT statements so far (the watcher's own queries are autocommitted: not counted)."""
    return int(query(conn, "SHOW GLOBAL STATUS LIKE 'Com_commit'")[1])


def stored(conn: pymysql.Connection, table: str) -> tuple[int, int]:
    """The table's rows and distinct messages, counted here: the database's COUNT(DISTINCT) of long texts
    goes through a temporary table on disk."""
    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute(f"SELECT message FROM `{table}`")
        rows, seen = 0, set()
        for (message,) in cur:
            rows += 1
            seen.add(message)
    return rows, len(seen)


def watch(conn: pymysql.Connection, table: str, n: int, alive: Callable[[], str | None]) -> dict:
    """Poll the table until it holds n rows; the times of the first poll that saw a row and of the one that
    saw them all (None when it stalled for STALL_S or a process died: then ``why``)."""
    first_t = None
    first_rows = 0
    last_max, last_change = 0, time.monotonic()
    while True:
        now = time.monotonic()
        (top,) = query(conn, f"SELECT MAX(id) FROM `{table}`")
        top = top or 0
        if top and first_t is None:
            first_t, first_rows = now, query(conn, f"SELECT COUNT(*) FROM `{table}`")[0]
        if top != last_max:
            last_max, last_change = top, now
        if top >= n and query(conn, f"SELECT COUNT(*) FROM `{table}`")[0] >= n:
            return {"first_t": first_t, "first_rows": first_rows, "last_t": now, "why": None}
        dead = alive()
        if dead is not None or now - last_change > STALL_S:
            why = dead or f"no new row for {STALL_S:g} s"
            return {"first_t": first_t, "first_rows": first_rows, "last_t": None, "why": why}
        time.sleep(POLL_S)


# -- processes ------------------------------------------------------------------------------------------


def start_prefork(db: MariaDBServer, framing: str, table: str, workdir: Path) -> tuple[subprocess.Popen, int]:
    """`prefork run workers.syslog:app` with WORKERS workers and the syslog app's defaults, one listener."""
    port = free_port()
    log = workdir / "prefork.log"
    args = [PY, "-m", "prefork.cli", "run", "workers.syslog:app", "--workers", str(WORKERS)]
    args += ["--bind", f"127.0.0.1:{port}", "--framing", framing, "--dsn", db.dsn, "--syslog-table", table]
    args += ["--log-level", "warning", "--pidfile", str(workdir / "prefork.pid")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"prefork ({framing}) exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"prefork ({framing}) does not listen on {port}") from None
            time.sleep(0.1)


def stop_prefork(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # a graceful stop: what it read is committed first
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything left of its group
    except ProcessLookupError:
        pass
    proc.wait()


def messages(n: int, tag: str) -> bytes:
    """n distinct RFC 5424 messages (about 150 bytes each), LF-terminated, as one buffer."""
    head = "<134>1 2026-12-06T16:00:00.000000+00:00 benchhost benchapp 4242 ID47 - "
    body = "shipper bench {tag} message {i:07d}: GET /index.html 200 5123 0.012 Mozilla/5.0 (X11; Linux x86_64)\n"
    return "".join(head + body.format(tag=tag, i=i) for i in range(n)).encode()


def send(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


# -- one round ------------------------------------------------------------------------------------------


def run_round(db: MariaDBServer, conn: pymysql.Connection, c: Contender, mysqld: int | None, tag: str) -> dict:
    """One contender, one round: fresh table, prefork and rsyslogd; N messages; the figures."""
    table = f"bench_ship_{c.key}"
    fresh_table(conn, table)
    data = messages(MESSAGES, tag)
    with tempfile.TemporaryDirectory(prefix=f"prefork-bench-{c.key}-") as tmp:
        work = Path(tmp)
        server = None
        try:
            if c.framing is not None:
                server, target = start_prefork(db, c.framing, table, work)
            else:
                target = db.port
            in_port = free_port()
            rs = Rsyslog(work / "rsyslog", "", wait_port=in_port)
            rs.config_path.write_text(rsyslog_config(rs.directory, in_port, c.batch, c.action(target, table)))
            with rs:
                assert rs.proc is not None
                cpu0 = _cpus(rs.proc.pid, server, mysqld)
                commits0 = commits(conn)
                send(in_port, data)

                def alive() -> str | None:
                    if rs.proc is None or rs.proc.poll() is not None:
                        return "rsyslogd exited"
                    if server is not None and server.poll() is not None:
                        return f"prefork exited with {server.returncode}"
                    return None

                seen = watch(conn, table, MESSAGES, alive)
                cpu1 = _cpus(rs.proc.pid, server, mysqld)
                commits1 = commits(conn)
            rows, distinct = stored(conn, table)
            errors = _errors(rs.logs())
            if server is not None:
                stop_prefork(server)
                server = None
                rows, distinct = stored(conn, table)
        finally:
            if server is not None:
                stop_prefork(server)
    result = {"rows": rows, "distinct": distinct, "lost": MESSAGES - distinct, "dups": rows - distinct}
    result["ok"] = seen["why"] is None and result["lost"] == 0
    result["why"] = seen["why"]
    result["rsyslog_errors"] = errors
    result["commits"] = commits1 - commits0
    if seen["last_t"] is not None and seen["first_t"] is not None:
        seconds = seen["last_t"] - seen["first_t"]
        result["seconds"] = seconds
        result["rate"] = (MESSAGES - seen["first_rows"]) / seconds if seconds > 0 else float("inf")
        result["cpu"] = {k: (cpu1[k] - cpu0[k]) / MESSAGES * 1e6 for k in cpu0 if k in cpu1}
    else:
        result["rate"] = 0.0
    return result


def _cpus(rsyslogd: int, server: subprocess.Popen | None, mysqld: int | None) -> dict:
    """CPU seconds so far of rsyslogd, prefork's group and mysqld (those known and alive)."""
    out = {}
    readers = {"rsyslogd": lambda: process_cpu_seconds(rsyslogd)}
    if server is not None:
        readers["prefork"] = lambda: group_cpu_seconds(server.pid)
    if mysqld is not None:
        readers["mysqld"] = lambda: process_cpu_seconds(mysqld)
    for name, read in readers.items():
        try:
            out[name] = read()
        except OSError:  # it exited: the round reports why, its CPU is left out
            pass
    return out


def _errors(logs: str) -> list[str]:
    """rsyslogd's error lines (it logs a failed action, a refused message, a lost connection)."""
    return [line for line in logs.splitlines() if "error" in line.lower()][-5:]


# -- the bench ------------------------------------------------------------------------------------------


def measure(db: MariaDBServer, mysqld: int | None) -> list[Contender]:
    """ROUNDS rounds of every contender in turn (in reverse order every other round) on the running db."""
    entries = contenders()
    conn = connect(db)
    try:
        for round_ in range(ROUNDS):
            order = entries if round_ % 2 == 0 else list(reversed(entries))
            for c in order:
                r = run_round(db, conn, c, mysqld, f"r{round_}")
                c.rounds.append(r)
                if r["ok"]:
                    c.rates.append(r["rate"])
                else:
                    why = r["why"] or "messages lost"
                    c.failures.append(
                        f"round {round_ + 1}: {why}; {r['distinct']:,} of {MESSAGES:,} stored ({r['lost']:,} LOST)"
                    )
                    progress(f"LOST: {c.name}: {c.failures[-1]}; rsyslogd: {r['rsyslog_errors']}")
                if r["dups"]:
                    progress(f"{c.name}: {r['dups']:,} messages stored twice")
            progress(
                f"shippers round {round_ + 1}/{ROUNDS}: "
                + ", ".join(f"{c.name} {c.rounds[-1]['rate']:,.0f}/s" for c in entries)
            )
    finally:
        conn.close()
    return entries


def report(entries: list[Contender]) -> tuple[list[str], list[str], bool]:
    """The ratios' lines, the table's, and whether every contender stored every message in every round."""
    complete = not any(c.failures for c in entries)
    ratios = []
    for batch, window in SETTINGS:
        group = {c.framing: c for c in entries if c.batch == batch}
        relp, fwd, ommysql = group["relp"], group["octet-count"], group[None]
        x = None if relp.rate is None or not ommysql.rate else relp.rate / ommysql.rate
        verdict = "ok" if x is not None and x >= RELP_VS_OMMYSQL else "MISSED"
        ratios.append(
            f"rsyslog batch {batch} window {window}: omrelp -> prefork = {'-' if x is None else f'{x:.2f}'} x ommysql "
            f"(target >= {RELP_VS_OMMYSQL:g})   [{verdict}]"
        )
        if fwd.rate is not None and ommysql.rate:
            ratios.append(f"  omfwd -> prefork = {fwd.rate / ommysql.rate:.2f} x ommysql")
    if not complete:
        ratios.append("MESSAGES LOST: " + "; ".join(f"{c.name}: {f}" for c in entries for f in c.failures))

    table = [
        f"{'rsyslog ->':<50}{'msgs/s':>9}{'stored':>10}{'lost':>6}{'dups':>6}"
        f"{'msgs/COMMIT':>12}{'rsyslogd':>9}{'prefork':>8}{'mysqld':>8}   rounds (k msgs/s)"
    ]
    for c in entries:
        best = c.best()
        lost = max((r["lost"] for r in c.rounds), default=0)
        dups = max((r["dups"] for r in c.rounds), default=0)
        rounds = " ".join(f"{r['rate'] / 1e3:.1f}" if r["ok"] else "LOST" for r in c.rounds)
        if best is None:
            table.append(f"{c.name:<50}{'LOST':>9}{'':>10}{lost:>6,}{dups:>6,}{'':>37}    {rounds}")
            continue
        cpu = best.get("cpu", {})
        table.append(
            f"{c.name:<50}{best['rate']:>9,.0f}{best['rows']:>10,}{lost:>6,}{dups:>6,}"
            f"{best['rows'] / max(1, best['commits']):>12,.0f}"
            + "".join(f"{cpu[k]:>8.2f}" if k in cpu else f"{'-':>8}" for k in ("rsyslogd", "prefork", "mysqld"))
            + f"    {rounds}"
        )
    table += [
        f"{MESSAGES:,} messages per round, best of {ROUNDS} interleaved rounds; msgs/s: from the first row committed "
        "to the last, counted in the table; stored, lost (of N, by distinct message) and dups: the worst round.",
        "msgs/COMMIT: rows over the database's COMMIT statements in the best round. "
        "CPU: seconds per million messages of rsyslogd (its input too), prefork (master + workers) and mysqld, "
        "best round, from the first message sent to the last row.",
        f"rsyslog: imptcp input; main and action queues LinkedList of {QUEUE_SIZE:,}, dequeueBatchSize as named "
        "(both; 128 is an action queue's default), 1 worker thread, retry forever. prefork: workers.syslog:app, "
        f"{WORKERS} workers, its defaults; omfwd: RFC 5424 octet-counted, framing octet-count, no acks; omrelp: "
        "framing relp, acked after COMMIT; ommysql: an INSERT per message, a COMMIT per batch, into a table of "
        "the syslog app's shape.",
    ]
    return ratios, table, complete


def main() -> None:
    """`python bench/shippers.py`: the shipper bench alone, on a private MariaDB of its own (var/bench-db)."""
    db = MariaDBServer(ROOT / "var/bench-db", durable=True)
    db.start()
    try:
        entries = measure(db, db.proc.pid if db.proc is not None else None)
    finally:
        db.stop()
    ratios, table, complete = report(entries)
    print("\n".join([*ratios, "", *table]))
    if not complete:
        raise SystemExit("shipper bench: messages were lost")


if __name__ == "__main__":
    main()
