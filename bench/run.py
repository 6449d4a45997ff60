"""`make bench`: prefork against ceilings and baselines measured in the same run, same database.

Throughput contenders, each writing the same number of rows into its own table of one private MariaDB
(var/bench-db, production durability: an fsync per commit, doublewrite on):

- LOAD DATA:   LOAD DATA LOCAL INFILE over one connection (bench/loaddata_baseline.py), batches of 1000 rows
               + COMMIT: the ceiling, what the database takes at its cheapest;
- executemany: PyMySQL executemany, batches of 1000 + COMMIT, one process per worker (no server, no acks);
- ingest:      `prefork run workers.ingest:app -s ingest.method=M`, once per method (load, insert), acking
               each line after its commit; a method prefork does not know is reported, not fatal;
- echo:        `prefork run workers.echo:app`, the framework alone, no database;
- minimal:     bench/minimal_server.py, the smallest pre-forked gevent line server (echo): the baseline of
               the framework's own cost (lines/s and server CPU per line).

Load: LOADGENS processes x CONNS connections, each pipelining its lines (bench/loadgen.py). Two phases:
with the database (LOAD DATA, executemany, ingest per method: DB_ROUNDS rounds, the contenders in turn in
each round, in reverse order every other round; the prefork servers are started once), then without it
(echo and minimal: ECHO_ROUNDS rounds, likewise).
The machine may be shared, so each contender's figure is its best round (highest lines/s, lowest CPU per
line); every round is listed. For each contender: lines/s, ratios to LOAD DATA and executemany, CPU seconds
per million lines of the server (of the baseline's own processes for LOAD DATA and executemany) and of
mysqld (utime + stime of /proc/PID/stat, the pid from MariaDBServer's process or pid file).

Then:

- latency: bench/openloop.py offers half of the best lines/s just measured, at a fixed rate over
  OPENLOOP_CONNS connections for OPENLOOP_SECONDS, to each ingest method, echo and the minimal server (for
  reference): p50/p99/max reply latency;
- latency against offered load: ingest (method load) alone, as `--only latency` below, on the same database
  (about a minute): its section of bench/RESULTS.md and the curve drawn into bench/latency.png (bench/plot.py);
- memory: bench/idle_memory.py, RSS per idle client with 10,000 clients, prefork echo vs bare gevent;
- balance: bench/balance.py's measure(WORKERS), when that file exists;
- shippers: bench/shippers.py on the same database, before it stops: rsyslog forwarding N messages to
  prefork over octet-counted TCP and over RELP, and rsyslog's own ommysql writing straight to MariaDB
  (messages/s counted in the tables, every message checked stored); `--only shippers` (`make bench
  BENCH=shippers`) runs this part alone and replaces its section of bench/RESULTS.md;
- TLS: bench/tls.py on the same database: TLS echo and ingest against plaintext on the same server, new
  TLS connections/s of one worker against HAProxy terminating TLS, memory per idle TLS client; `--only tls`
  (`make bench BENCH=tls`) runs it alone, likewise;
- `--only latency` (`make bench BENCH=latency`): ingest (method load) alone, in a minute or two: its
  lines/s (best of DB_ROUNDS rounds, or BENCH_LATENCY_RATE lines/s taken as measured, so that runs compare
  at the same offered load), then open loops at a quarter, half and three quarters of it; replaces its
  section of bench/RESULTS.md and redraws bench/latency.png (p50 and p99 against offered load; matplotlib,
  the bench extra, which `make bench` installs; without it the section says the plot was not written).

Prints ratios first, then the table and the sections, and writes the same to bench/RESULTS.md; exits 1
when the shipper bench lost messages (after writing them down).
Environment: BENCH_LINES (200000), BENCH_ECHO_LINES (25 x BENCH_LINES), BENCH_DB_ROUNDS (3),
BENCH_ECHO_ROUNDS (3), BENCH_WORKERS (CPUs), BENCH_LOADDATA_CONNS (1), BENCH_IDLE_CLIENTS (10000),
BENCH_OPENLOOP_SECONDS (5), BENCH_LATENCY_RATE (unset: measured), BENCH_LATENCY_SETTINGS (none: KEY=VALUE ...
for the ingest server of --only latency).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from procstat import group_cpu_seconds, process_cpu_seconds  # noqa: E402

from devtools.mariadb import MariaDBServer, free_port  # noqa: E402
from workers.schema import create_table_sql  # noqa: E402

WORKERS = int(os.environ.get("BENCH_WORKERS", len(os.sched_getaffinity(0))))
LINES = int(os.environ.get("BENCH_LINES", 200_000))
LOADDATA_CONNS = int(os.environ.get("BENCH_LOADDATA_CONNS", 1))
IDLE_CLIENTS = int(os.environ.get("BENCH_IDLE_CLIENTS", 10_000))
OPENLOOP_SECONDS = float(os.environ.get("BENCH_OPENLOOP_SECONDS", 5))
DB_ROUNDS = int(os.environ.get("BENCH_DB_ROUNDS", 3))
ECHO_ROUNDS = int(os.environ.get("BENCH_ECHO_ROUNDS", 3))
# echo and the minimal server are 10-20 times faster than the database: more lines, so a round lasts a while
ECHO_LINES = int(os.environ.get("BENCH_ECHO_LINES", 25 * LINES))
LOADGENS = 2
CONNS = 50
OPENLOOP_PROCS = 2
OPENLOOP_CONNS = 50  # in all, spread over the OPENLOOP_PROCS processes
HALF = 0.5
LATENCY_LOADS = (0.25, 0.5, 0.75)  # --only latency: fractions of the maximum offered in turn
LATENCY_RATE = float(os.environ.get("BENCH_LATENCY_RATE", 0))  # --only latency: the maximum, if given
# --only latency: settings for the ingest server, space-separated KEY=VALUE (to compare ingest.flushers=3 ...)
LATENCY_SETTINGS = tuple(os.environ.get("BENCH_LATENCY_SETTINGS", "").split())
INGEST_METHODS = ("load", "insert")
PY = sys.executable

# Targets (the issue's).
ECHO_VS_MINIMAL = 0.8
CPU_VS_MINIMAL = 1.25
INGEST_VS_LOADDATA = 0.85
P99_MS = 20.0  # ingest at half load (and p50 below)
P50_MS = 5.0
ECHO_P99_MS = 10.0  # echo at half load
IDLE_KB_RATIO = 1.3
BALANCE_RATIO = 1.3


def progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# -- database ---------------------------------------------------------------------------------------------


def sql(dsn_port: int, statement: str):
    conn = pymysql.connect(host="127.0.0.1", port=dsn_port, user="root", database="test", autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute(statement)
        return cur.fetchall()
    finally:
        conn.close()


def fresh_table(port: int, table: str) -> None:
    sql(port, f"DROP TABLE IF EXISTS `{table}`")
    sql(port, create_table_sql(table))


def count_rows(port: int, table: str) -> int:
    return sql(port, f"SELECT COUNT(*) FROM `{table}`")[0][0]


def mysqld_pid(db: MariaDBServer) -> int | None:
    """The pid of the private mariadbd: its Popen's, else its pid file's, checked against its datadir."""
    candidates = []
    if db.proc is not None and db.proc.poll() is None:
        candidates.append(db.proc.pid)
    try:
        candidates.append(int(db.pidfile.read_text().strip()))
    except (OSError, ValueError):
        pass
    for pid in candidates:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"--datadir={db.datadir}".encode() in cmdline:
            return pid
    return None


# -- CPU ----------------------------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds used by mysqld between start() and stop() (None when its pid is unknown)."""

    def __init__(self, pid: int | None):
        self.pid = pid
        self.before = 0.0

    def start(self) -> None:
        if self.pid is not None:
            self.before = process_cpu_seconds(self.pid)

    def stop(self) -> float | None:
        if self.pid is None:
            return None
        try:
            return process_cpu_seconds(self.pid) - self.before
        except OSError:
            return None


# -- results ------------------------------------------------------------------------------------------------


@dataclass
class Result:
    """A contender's figures: the best of its rounds (highest lines/s, lowest CPU per line)."""

    name: str
    note: str = ""  # why it was not measured
    rates: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)  # server CPU seconds per million lines
    mysqlds: list[float] = field(default_factory=list)  # mysqld CPU seconds per million lines
    cpu_is_client: bool = False  # the CPU is the baseline's own processes' (there is no server)
    latency: dict | None = None
    rss: int | None = None

    def add(self, rate: float, cpu_s: float | None, mysqld_s: float | None, lines: int) -> None:
        self.rates.append(rate)
        if cpu_s is not None:
            self.cpus.append(cpu_s / lines * 1e6)
        if mysqld_s is not None:
            self.mysqlds.append(mysqld_s / lines * 1e6)

    @property
    def rate(self) -> float | None:
        return max(self.rates) if self.rates else None

    @property
    def cpu_per_m(self) -> float | None:
        return min(self.cpus) if self.cpus else None

    @property
    def mysqld_per_m(self) -> float | None:
        return min(self.mysqlds) if self.mysqlds else None


# -- processes ------------------------------------------------------------------------------------------


def start_waiting(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([PY, *args], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def wait_ready(procs: list[subprocess.Popen], timeout: float | None = None) -> None:
    """Wait for the "ready" line of each generator (connections open, lines built); or sleep `timeout`
    for processes that do not say it."""
    if timeout is not None:
        time.sleep(timeout)
        return
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != b"ready":
            raise SystemExit(f"bench process not ready: {line!r} (exit {p.wait()})")


def release(procs: list[subprocess.Popen]) -> tuple[list[dict], float]:
    """Start the waiting processes together, collect their JSON results and the CPU seconds they used
    from the start to their exit (from wait4's resource usage)."""
    cpu_before = sum(process_cpu_seconds(p.pid) for p in procs)
    for p in procs:
        p.stdin.write(b"x")
        p.stdin.flush()
    results = []
    cpu_after = 0.0
    for p in procs:
        p.stdin.close()
        p.stdin = None
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        cpu_after += usage.ru_utime + usage.ru_stime
        if p.returncode != 0:
            raise SystemExit(f"bench process failed ({p.returncode})")
        results.append(json.loads(out))
    return results, cpu_after - cpu_before


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Wait until something listens on the port, or the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


# -- ceilings -----------------------------------------------------------------------------------------------


def baseline_pass(db: MariaDBServer, result: Result, script: str, table: str, procs_n: int) -> None:
    """One round of a baseline: its processes write LINES rows into a fresh table."""
    fresh_table(db.port, table)
    rows_each = LINES // procs_n
    procs = [start_waiting([str(ROOT / script), db.dsn, table, str(rows_each), f"w{i}"]) for i in range(procs_n)]
    wait_ready(procs, timeout=1.5)  # they build their rows, then wait for the byte
    meter = CpuMeter(mysqld_pid(db))
    meter.start()
    results, cpu = release(procs)
    mysqld = meter.stop()
    rows = rows_each * procs_n
    stored = count_rows(db.port, table)
    if stored != rows:
        raise SystemExit(f"{result.name}: {stored} rows stored of {rows}")
    result.cpu_is_client = True
    result.add(rows / max(r["seconds"] for r in results), cpu, mysqld, rows)


# -- load ---------------------------------------------------------------------------------------------------


def run_load(port: int, prefix: str, lines: int) -> tuple[float, int]:
    """LOADGENS x CONNS pipelining clients send `lines` lines in all; lines/s and the lines sent."""
    per_conn = lines // (LOADGENS * CONNS)
    procs = [
        start_waiting([str(ROOT / "bench/loadgen.py"), str(port), str(CONNS), str(per_conn), f"{prefix}{i}-"])
        for i in range(LOADGENS)
    ]
    wait_ready(procs)
    results, _ = release(procs)
    total = sum(r["replies"] for r in results)
    ok = sum(r["ok"] for r in results)
    if total != per_conn * CONNS * LOADGENS:
        raise SystemExit(f"{prefix}: {total} replies for {per_conn * CONNS * LOADGENS} lines")
    if prefix != "echo" and ok != total:
        raise SystemExit(f"{prefix}: only {ok} of {total} replies were OK")
    return total / max(r["seconds"] for r in results), total


def run_openloop(port: int, rate: float, prefix: str, expect_ok: bool) -> dict:
    """Offer `rate` lines/s for OPENLOOP_SECONDS over OPENLOOP_CONNS connections; latency figures."""
    conns = OPENLOOP_CONNS // OPENLOOP_PROCS
    procs = [
        start_waiting(
            [
                str(ROOT / "bench/openloop.py"),
                str(port),
                str(conns),
                str(rate / OPENLOOP_PROCS),
                str(OPENLOOP_SECONDS),
                f"{prefix}{i}-",
            ]
        )
        for i in range(OPENLOOP_PROCS)
    ]
    wait_ready(procs)
    results, _ = release(procs)
    hist: dict[int, int] = {}
    for r in results:
        for bucket, n in r["hist"].items():
            hist[int(bucket)] = hist.get(int(bucket), 0) + n
    bucket_s = results[0]["bucket_s"]
    counted = sum(hist.values())

    def percentile(q: float) -> float:
        seen = 0
        for bucket in sorted(hist):
            seen += hist[bucket]
            if seen >= q * counted:
                return (bucket + 1) * bucket_s * 1e3  # upper edge of the bucket, ms
        return float("nan")

    sent = sum(r["sent"] for r in results)
    replies = sum(r["replies"] for r in results)
    errors = sum(r["errors"] for r in results)
    seconds = max(r["send_seconds"] for r in results)
    return {
        "target_rate": rate,
        "offered_rate": sent / seconds,
        "sent": sent,
        "missing": sent - replies,
        "errors": errors if expect_ok else 0,
        "counted": counted,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "max_ms": max(r["max_s"] for r in results) * 1e3,
        "seconds": max(r["send_seconds"] + r.get("drain_seconds", 0) for r in results),
        "gen_cpu": max(r["cpu_seconds"] / r["send_seconds"] for r in results),
        "gen_lag_ms": max(r["max_tick_lag_s"] for r in results) * 1e3,
    }


# -- servers ------------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen  # leader of its own process group
    port: int
    pidfile: Path | None = None  # prefork's, for `prefork status`
    table: str = ""  # ingest's table, whose rows are counted
    stored: int = 0  # rows it should hold


def prefork_env() -> dict:
    """The environment without PREFORK_ settings: each contender gets only what the bench asks for."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}


def start_prefork(
    db: MariaDBServer | None, name: str, app: str, table: str = "", settings: tuple[str, ...] = ()
) -> Server | str:
    """Start `prefork run APP` with WORKERS workers; a Server, or why not when a setting is unknown."""
    port = free_port()
    slug = "".join(c if c.isalnum() else "-" for c in name)
    pidfile = ROOT / f"var/bench-{slug}.pid"
    logfile = ROOT / f"var/bench-{slug}.log"
    if table:
        fresh_table(db.port, table)
    args = [PY, "-m", "prefork.cli", "run", app, "--workers", str(WORKERS), "--bind", f"127.0.0.1:{port}"]
    args += ["--log-level", "warning", "--pidfile", str(pidfile)]
    if db is not None:
        args += ["--dsn", db.dsn]
    if table:
        args += ["--table", table]
    for setting in settings:
        args += ["-s", setting]
    with open(logfile, "wb") as log:
        master = subprocess.Popen(
            args, cwd=ROOT, env=prefork_env(), start_new_session=True, stdout=log, stderr=subprocess.STDOUT
        )
    wait_port(port, master)
    if master.poll() is not None:
        text = logfile.read_text(errors="replace")
        keys = [s.split("=", 1)[0] for s in settings]
        if master.returncode == 2 and any(k in text for k in keys):
            progress(f"{name}: {', '.join(keys)} not supported: {text.strip().splitlines()[-1]}")
            return f"{', '.join(keys)} not supported"
        raise SystemExit(f"{name}: prefork exited with {master.returncode}:\n{text[-2000:]}")
    return Server(name, master, port, pidfile=pidfile, table=table)


def start_minimal() -> Server:
    port = free_port()
    server = subprocess.Popen(
        [PY, str(ROOT / "bench/minimal_server.py"), str(port), str(WORKERS)], start_new_session=True
    )
    wait_port(port, server)
    if server.poll() is not None:
        raise SystemExit(f"minimal server exited with {server.returncode}")
    return Server("minimal gevent (echo)", server, port)


def stop_server(server: Server) -> None:
    if server.pidfile is not None and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)  # prefork: a graceful stop
        try:
            server.proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.proc.pid, signal.SIGKILL)  # anything left of its group
    except ProcessLookupError:
        pass
    server.proc.wait()


def load_pass(server: Server, result: Result, db: MariaDBServer | None, lines: int) -> None:
    """One round against a server: lines/s, its CPU and mysqld's per million lines."""
    meter = CpuMeter(mysqld_pid(db) if db is not None else None)
    before = group_cpu_seconds(server.proc.pid)
    meter.start()
    rate, sent = run_load(server.port, "prefork" if server.table else "echo", lines)
    mysqld = meter.stop()
    cpu = group_cpu_seconds(server.proc.pid) - before
    if server.proc.poll() is not None:
        raise SystemExit(f"{server.name} exited with {server.proc.returncode}")
    if server.table:
        server.stored += sent
        stored = count_rows(db.port, server.table)
        if stored != server.stored:
            raise SystemExit(f"{server.name}: {stored} rows stored of {server.stored}")
    result.add(rate, cpu, mysqld, sent)


def prefork_status(server: Server) -> dict | None:
    """`prefork status --json` of a prefork server (None if it cannot be had)."""
    try:
        return json.loads(
            subprocess.check_output(
                [PY, "-m", "prefork.cli", "status", "--json", "--pidfile", str(server.pidfile)],
                cwd=ROOT,
                env=prefork_env(),
            )
        )
    except (subprocess.CalledProcessError, ValueError):
        return None


def worker_rss(server: Server) -> int | None:
    """The largest RSS of the prefork server's workers, from `prefork status --json`."""
    status = prefork_status(server)
    if status is None or not status.get("workers"):
        return None
    return max(w.get("rss_bytes") or 0 for w in status["workers"])


PHASES = ("taken", "taken_lines", "queued_s", "write_s", "commit_s")  # ingest's stats (workers/ingest/flow.py)


def ingest_phases(server: Server) -> dict[str, float] | None:
    """The ingest workers' time counters, summed over the workers (None for a server without them)."""
    if not server.table or server.pidfile is None:
        return None
    status = prefork_status(server)
    if status is None or "workers" not in status:
        return None
    apps = [w.get("app") or {} for w in status["workers"]]
    return {key: sum(float(app.get(key, 0)) for app in apps) for key in PHASES}


def open_loop(server: Server, result: Result, expect_ok: bool, load: float = HALF) -> dict:
    """The open loop at `load` x the contender's best lines/s; its figures (also kept as its latency), with
    where an ingest line's time went (``phases``: queue wait per line, send and COMMIT per batch)."""
    rate = load * result.rate
    progress(f"{server.name}: {result.rate:,.0f} lines/s (best of {len(result.rates)}); open loop at {rate:,.0f}")
    time.sleep(1)
    phases = ingest_phases(server)
    before = group_cpu_seconds(server.proc.pid)
    latency = run_openloop(server.port, rate, "ol", expect_ok)
    cpu = group_cpu_seconds(server.proc.pid) - before
    after = ingest_phases(server)
    latency["server_cpu_per_m"] = cpu / max(1, latency["sent"]) * 1e6
    latency["server_cores"] = cpu / latency["seconds"]
    if phases is not None and after is not None:
        delta = {key: after[key] - phases[key] for key in PHASES}
        batches = max(1.0, delta["taken"])
        latency["phases"] = {
            "lines_per_batch": delta["taken_lines"] / batches,
            "queued_ms": delta["queued_s"] / max(1.0, delta["taken_lines"]) * 1e3,
            "write_ms": delta["write_s"] / batches * 1e3,
            "commit_ms": delta["commit_s"] / batches * 1e3,
        }
    result.latency = latency
    return latency


def bench_database(db: MariaDBServer, results: dict[str, Result]) -> None:
    """LOAD DATA, executemany and ingest (each method), DB_ROUNDS rounds in turn; then the open loops."""
    results["loaddata"] = Result(f"LOAD DATA LOCAL ({LOADDATA_CONNS} conn)")
    results["executemany"] = Result(f"executemany ({WORKERS} conns)")
    servers: dict[str, Server] = {}
    try:
        for method in INGEST_METHODS:
            key, name = f"ingest {method}", f"prefork ingest method={method}"
            started = start_prefork(
                db, name, "workers.ingest:app", f"bench_ingest_{method}", (f"ingest.method={method}",)
            )
            if isinstance(started, str):
                results[key] = Result(name, note=started)
            else:
                servers[key], results[key] = started, Result(name)
        time.sleep(1)
        passes = [
            lambda: baseline_pass(
                db, results["loaddata"], "bench/loaddata_baseline.py", "bench_loaddata", LOADDATA_CONNS
            ),
            lambda: baseline_pass(
                db, results["executemany"], "bench/executemany_baseline.py", "bench_executemany", WORKERS
            ),
        ]
        passes += [lambda s=server, k=key: load_pass(s, results[k], db, LINES) for key, server in servers.items()]
        for round_ in range(DB_ROUNDS):
            for one_pass in passes if round_ % 2 == 0 else reversed(passes):  # no contender always goes first
                one_pass()
            progress(
                f"round {round_ + 1}/{DB_ROUNDS}: "
                + ", ".join(f"{r.name} {r.rates[-1]:,.0f}" for r in results.values() if r.rates)
            )
        for key, server in servers.items():
            results[key].rss = worker_rss(server)
            open_loop(server, results[key], expect_ok=True)
    finally:
        for server in servers.values():
            stop_server(server)


def bench_echo(results: dict[str, Result]) -> None:
    """prefork echo and the minimal server, ECHO_ROUNDS rounds in turn; then the open loops."""
    results["echo"] = Result("prefork echo")
    results["minimal"] = Result("minimal gevent (echo)")
    servers: dict[str, Server] = {}
    try:
        echo = start_prefork(None, "prefork echo", "workers.echo:app")
        if isinstance(echo, str):
            raise SystemExit(f"prefork echo: {echo}")
        servers["echo"] = echo
        servers["minimal"] = start_minimal()
        time.sleep(1)
        for round_ in range(ECHO_ROUNDS):
            order = list(servers.items())
            for key, server in order if round_ % 2 == 0 else reversed(order):  # none always goes first
                load_pass(server, results[key], None, ECHO_LINES)
            progress(
                f"round {round_ + 1}/{ECHO_ROUNDS}: "
                + ", ".join(f"{results[k].name} {results[k].rates[-1]:,.0f}" for k in servers)
            )
        results["echo"].rss = worker_rss(servers["echo"])
        for key, server in servers.items():
            open_loop(server, results[key], expect_ok=False)
    finally:
        for server in servers.values():
            stop_server(server)


# -- the report ---------------------------------------------------------------------------------------------


LATENCY_HEAD = (
    f"{'server':<32}{'offered/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'missing':>9}{'ERR':>6}"
    f"{'gen CPU':>9}{'gen lag ms':>12}{'srv CPU s/M':>13}{'srv cores':>11}"
)
LATENCY_LEGEND = (
    "gen CPU: the busiest generator process's CPU over its sending time (near 100% would make it the "
    "bottleneck); gen lag: its latest tick; srv: the server's CPU (master + workers) per million lines of "
    "the open loop, and in cores over its time."
)


def latency_row(name: str, lat: dict | None) -> str:
    """One open loop's figures, under LATENCY_HEAD."""
    if lat is None:
        return f"{name:<32} not measured"
    return (
        f"{name:<32}{lat['offered_rate']:>11,.0f}{lat['p50_ms']:>9.2f}{lat['p99_ms']:>9.2f}{lat['max_ms']:>9.2f}"
        f"{lat['missing']:>9}{lat['errors']:>6}{lat['gen_cpu']:>8.0%} {lat['gen_lag_ms']:>11.1f}"
        f"{fmt(lat.get('server_cpu_per_m'), '.2f'):>13}{fmt(lat.get('server_cores'), '.2f'):>11}"
    )


PHASES_HEAD = f"{'where the time goes':<32}{'lines/batch':>12}{'queued ms':>11}{'rows sent ms':>14}{'COMMIT ms':>11}"
PHASES_LEGEND = (
    "queued: a line's mean wait from its read to a flusher taking its batch; rows sent: per batch, from the "
    "connection in hand to the rows sent (marker and LOAD in one round trip); COMMIT: per batch, the COMMIT's "
    "round trip (the redo log's fsync). A line's latency is about queued + rows sent + COMMIT + its reply's way "
    "back; the rest of p50 is the server's and the generator's CPU queueing."
)


def phases_row(name: str, lat: dict | None) -> str:
    """Where an open loop's ingest time went, under PHASES_HEAD."""
    ph = (lat or {}).get("phases")
    if ph is None:
        return f"{name:<32} not measured"
    return (
        f"{name:<32}{ph['lines_per_batch']:>12,.0f}{ph['queued_ms']:>11.2f}{ph['write_ms']:>14.2f}"
        f"{ph['commit_ms']:>11.2f}"
    )


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def machine() -> list[str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [f"{model}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable)"]


def git_head() -> str:
    try:
        head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "prefork", "workers"], cwd=ROOT).returncode
    return head + (" (+ uncommitted changes in prefork/ or workers/)" if dirty else "")


def report(results: dict[str, Result], memory: dict | None, balance: dict | str) -> list[tuple[str, list[str]]]:
    """The report as (title, lines) sections, ratios first."""
    loaddata, executemany = results["loaddata"], results["executemany"]
    echo, minimal = results["echo"], results["minimal"]
    ingest = [results[f"ingest {m}"] for m in INGEST_METHODS]
    measured = [r for r in ingest if r.rate is not None]
    best = max(measured, key=lambda r: r.rate) if measured else None

    ratios = []
    echo_x = ratio(echo.rate, minimal.rate)
    cpu_x = ratio(echo.cpu_per_m, minimal.cpu_per_m)
    ratios.append(
        f"echo = {fmt(echo_x, '.2f')} x minimal (target >= {ECHO_VS_MINIMAL}), CPU/line = {fmt(cpu_x, '.2f')} x "
        f"minimal (target <= {CPU_VS_MINIMAL})   "
        f"[{verdict(echo_x is not None and echo_x >= ECHO_VS_MINIMAL)}, "
        f"{verdict(cpu_x is not None and cpu_x <= CPU_VS_MINIMAL)}]"
    )
    if best is not None:
        best_x = ratio(best.rate, loaddata.rate)
        ratios.append(
            f"ingest(best method) = {best_x:.2f} x LOAD DATA (target >= {INGEST_VS_LOADDATA})   "
            f"[{verdict(best_x >= INGEST_VS_LOADDATA)}]  (best: {best.name.split()[-1]}; "
            f"{ratio(best.rate, executemany.rate):.2f} x executemany)"
        )
    else:
        ratios.append("ingest(best method) = not measured (ingest.method not supported)")
    for r in ingest:
        if r.rate is None:
            ratios.append(f"  {r.name}: {r.note}")
        else:
            ratios.append(
                f"  {r.name}: {ratio(r.rate, loaddata.rate):.2f} x LOAD DATA, {ratio(r.rate, executemany.rate):.2f} "
                f"x executemany"
            )
    for r in ([best] if best is not None else []) + [echo]:
        if r.latency is not None:
            p99, p50 = r.latency["p99_ms"], r.latency["p50_ms"]
            if r is echo:
                ratios.append(
                    f"{r.name} p99 latency at half load = {p99:.2f} ms (target <= {ECHO_P99_MS:g} ms)   "
                    f"[{verdict(p99 <= ECHO_P99_MS)}]"
                )
                continue
            ratios.append(
                f"{r.name} latency at half load: p99 = {p99:.2f} ms (target <= {P99_MS:g} ms), p50 = {p50:.2f} ms "
                f"(target <= {P50_MS:g} ms)   [{verdict(p99 <= P99_MS)}, {verdict(p50 <= P50_MS)}]"
            )
    if minimal.latency is not None:
        ratios.append(f"  (minimal gevent at half its load: p99 {minimal.latency['p99_ms']:.2f} ms, for reference)")
    if memory is not None:
        kb = memory["kb_ratio"]
        ratios.append(
            f"idle client memory = {kb:.2f} x bare gevent (target <= {IDLE_KB_RATIO})   "
            f"[{verdict(kb <= IDLE_KB_RATIO)}]"
        )
    else:
        ratios.append("idle client memory: not measured")
    if isinstance(balance, dict) and any(k in balance for k in BALANCE_KEYS):
        worst = max(balance[k] for k in BALANCE_KEYS if k in balance)
        ratios.append(
            f"balance: worst max/min = {worst:.2f} (target <= {BALANCE_RATIO})   [{verdict(worst <= BALANCE_RATIO)}]"
        )
    else:
        ratios.append(f"balance: {balance if isinstance(balance, str) else 'no ratios in its figures'}")

    table = [
        f"{'contender':<32}{'lines/s':>11}{'vs LOAD DATA':>14}{'vs executemany':>16}"
        f"{'CPU s/M lines':>15}{'mysqld s/M lines':>18}   rounds (k lines/s)"
    ]
    for r in [loaddata, executemany, *ingest, echo, minimal]:
        if r.rate is None:
            table.append(f"{r.name:<32} {r.note or 'not measured'}")
            continue
        cpu = fmt(r.cpu_per_m, ".2f") + ("*" if r.cpu_is_client else " ")
        rounds = " ".join(f"{x / 1e3:.0f}" for x in r.rates)
        table.append(
            f"{r.name:<32}{r.rate:>11,.0f}{fmt(ratio(r.rate, loaddata.rate), '.2f'):>13}x"
            f"{fmt(ratio(r.rate, executemany.rate), '.2f'):>15}x{cpu:>15}{fmt(r.mysqld_per_m, '.2f'):>17}    {rounds}"
        )
    table.append(
        "lines/s: the best round; CPU: the lowest round. * CPU of the baseline's own processes from start to exit "
        "(no server); otherwise of the server's process group (master + workers)."
    )
    table.append(
        f"LOAD DATA: {LOADDATA_CONNS} connection(s); executemany: {WORKERS} processes; prefork: {WORKERS} workers, "
        f"{LOADGENS}x{CONNS} pipelining clients; rounds interleave the contenders of each phase."
    )
    rss = [f"{r.name} {r.rss / 2**20:.1f} MiB" for r in [*ingest, echo] if r.rss is not None]
    if rss:
        table.append("largest worker RSS after the run: " + ", ".join(rss))

    latency = [
        f"open loop: {OPENLOOP_CONNS} connections ({OPENLOOP_PROCS} processes), {OPENLOOP_SECONDS:g} s at half the "
        f"lines/s measured above, first 0.5 s not counted",
        LATENCY_HEAD,
    ]
    for r in [*ingest, echo, minimal]:
        latency.append(latency_row(r.name, r.latency))
    latency.append(LATENCY_LEGEND)

    if memory is None:
        mem = ["not measured"]
    else:
        mem = [
            f"{memory['clients']:,} idle clients, each sent one line and got its reply; RSS of the serving process",
            f"{'server':<34}{'RSS before':>12}{'RSS after':>12}{'KB/client':>11}{'accept s':>10}{'failed':>8}",
        ]
        for key, label in (("prefork", "prefork echo, 1 worker"), ("bare", "bare gevent StreamServer echo")):
            m = memory[key]
            mem.append(
                f"{label:<34}{m['rss_before_kb'] / 1024:>9.1f} MiB{m['rss_after_kb'] / 1024:>8.1f} MiB"
                f"{m['kb_per_client']:>11.2f}{m['accept_seconds']:>10.2f}{m['failed']:>8}"
            )
        mem.append(
            f"ratio prefork/bare: memory per client {memory['kb_ratio']:.2f} (target <= {IDLE_KB_RATIO}), "
            f"time to accept {memory['accept_ratio']:.2f}"
        )

    if isinstance(balance, dict):
        bal = [
            f"{balance.get('workers', WORKERS)} workers, {balance.get('clients', '?')} clients x "
            f"{balance.get('lines_per_client', '?')} lines per phase; max/min over workers (target <= {BALANCE_RATIO})"
        ]
        for key in BALANCE_KEYS:
            if key in balance:
                bal.append(f"{key:<20}{balance[key]:>8.2f}   [{verdict(balance[key] <= BALANCE_RATIO)}]")
        for key in ("burst_conns", "steady_conns", "burst_lines", "steady_lines"):
            if key in balance:
                bal.append(f"{key:<20}{balance[key]}")
    else:
        bal = [f"balance: {balance}"]

    return [
        ("Ratios", ratios),
        ("Throughput", table),
        ("Latency at half load", latency),
        ("Memory per idle client", mem),
        ("Balance", bal),
    ]


BALANCE_KEYS = ("burst_conn_ratio", "burst_line_ratio", "steady_conn_ratio", "steady_line_ratio")


def measure_balance() -> dict | str:
    try:
        sys.path.insert(0, str(ROOT / "bench"))
        from balance import measure
    except ImportError:
        return "not measured"
    except Exception as exc:  # the file exists but does not import
        return f"not measured (bench/balance.py does not import: {exc})"
    try:
        return measure(WORKERS)
    except Exception as exc:
        return f"not measured (balance.measure failed: {exc})"


SHIPPERS_TITLE = "Shippers: rsyslog into MariaDB"


def bench_shippers(db: MariaDBServer) -> tuple[list[str], list[str], bool]:
    """bench/shippers.py on the bench's database: its ratios' lines, its table's, and whether nothing was lost."""
    from shippers import MESSAGES, ROUNDS
    from shippers import measure as shippers_measure
    from shippers import report as shippers_report

    progress(f"shippers: rsyslog forwarding {MESSAGES:,} messages three ways, {ROUNDS} rounds")
    return shippers_report(shippers_measure(db, mysqld_pid(db)))


TLS_TITLE = "TLS: the cost"


def bench_tls(db: MariaDBServer) -> tuple[list[str], list[str]]:
    """bench/tls.py on the bench's database: its ratios' lines and its section's."""
    from tls import measure as tls_measure
    from tls import report as tls_report

    return tls_report(tls_measure(db))


def replace_section(text: str, title: str, lines: list[str]) -> str:
    """RESULTS.md with its section `title` made of these lines (added at the end when it has none)."""
    block = f"## {title}\n\n```\n" + "\n".join(lines) + "\n```\n"
    head = f"## {title}\n"
    if head not in text:
        return text.rstrip("\n") + "\n\n" + block
    before, rest = text.split(head, 1)
    after = rest[rest.index("\n## ") + 1 :] if "\n## " in rest else ""
    return before + block + ("\n" + after if after else "")


def main() -> None:
    parser = argparse.ArgumentParser(description="prefork's bench (README, Benchmarks)")
    parser.add_argument(
        "--only", choices=["shippers", "tls", "latency"], help="run this part alone (bench/RESULTS.md: its section)"
    )
    only = parser.parse_args().only
    started = time.monotonic()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    db = MariaDBServer(ROOT / "var/bench-db", durable=True)
    db.start()
    version = sql(db.port, "SELECT VERSION()")[0][0]
    flush = sql(db.port, "SELECT @@innodb_flush_log_at_trx_commit")[0][0]
    header = [
        f"date: {when}",
        f"commit: {git_head()}",
        f"machine: {machine()[0]}, load average {os.getloadavg()[0]:.2f} at the start",
        f"database: MariaDB {version} (private, var/bench-db, innodb_flush_log_at_trx_commit={flush}, doublewrite on)",
        f"bench: {WORKERS} workers; {LINES:,} lines per round with the database (best of {DB_ROUNDS} rounds), "
        f"{ECHO_LINES:,} without (best of {ECHO_ROUNDS})",
    ]
    for line in header:
        progress(line)
    if mysqld_pid(db) is None:
        progress("mysqld's pid not found: no mysqld CPU figures")
    if only == "shippers":
        main_shippers(db, header)
        return
    if only == "tls":
        main_tls(db, header)
        return
    if only == "latency":
        main_latency(db, header)
        return
    results: dict[str, Result] = {}
    try:
        bench_database(db, results)
        curve = bench_latency(db, header)
        shippers = bench_shippers(db)
        tls_ratios, tls_table = bench_tls(db)
    finally:
        db.stop()
    bench_echo(results)
    progress(f"idle memory with {IDLE_CLIENTS:,} clients")
    try:
        from idle_memory import measure as idle_measure

        memory = idle_measure(IDLE_CLIENTS)
    except Exception as exc:
        progress(f"idle memory failed: {exc}")
        memory = None
    progress("balance")
    balance = measure_balance()
    sections = report(results, memory, balance)
    # the curve beside the half-load figures it extends
    sections.insert([title for title, _ in sections].index("Latency at half load") + 1, (LATENCY_TITLE, curve))
    ship_ratios, ship_table, complete = shippers
    sections[0][1].extend(ship_ratios)
    sections.append((SHIPPERS_TITLE, ship_table))
    sections[0][1].extend(tls_ratios)
    sections.append((TLS_TITLE, tls_table))
    elapsed = time.monotonic() - started

    out = []
    for title, lines in sections:
        out.append(f"== {title} ==")
        out.extend(lines)
        out.append("")
    out.extend(header)
    out.append(f"bench time: {elapsed:.0f} s")
    print("\n".join(out))

    md = ["# prefork bench results", "", "Written by `make bench` (bench/run.py); figures from one run.", ""]
    md.extend(f"- {line}" for line in header)
    md.append(f"- bench time: {elapsed:.0f} s")
    md.append("")
    for title, lines in sections:
        md.extend([f"## {title}", "", "```", *lines, "```", ""])
    (ROOT / "bench/RESULTS.md").write_text("\n".join(md))
    if not complete:
        raise SystemExit("bench: the shipper bench LOST messages (see MESSAGES LOST above)")


def report_alone(title: str, lines: list[str], header: list[str]) -> None:
    """A part run alone (`--only`): print it and replace its section of bench/RESULTS.md, the rest kept."""
    lines = [*lines, "", *(f"(run alone) {line}" for line in header if not line.startswith("bench:"))]
    print("\n".join(lines))
    results = ROOT / "bench/RESULTS.md"
    results.write_text(replace_section(results.read_text() if results.exists() else "", title, lines))


def main_shippers(db: MariaDBServer, header: list[str]) -> None:
    """`--only shippers`: the shipper bench alone; its section of bench/RESULTS.md is replaced, the rest kept."""
    try:
        ratios, table, complete = bench_shippers(db)
    finally:
        db.stop()
    report_alone(SHIPPERS_TITLE, [*ratios, "", *table], header)
    if not complete:
        raise SystemExit("bench: the shipper bench LOST messages (see MESSAGES LOST above)")


def main_tls(db: MariaDBServer, header: list[str]) -> None:
    """`--only tls`: the TLS bench alone; its section of bench/RESULTS.md is replaced, the rest kept."""
    try:
        ratios, table = bench_tls(db)
    finally:
        db.stop()
    report_alone(TLS_TITLE, [*ratios, "", *table], header)


LATENCY_TITLE = "Ingest latency against offered load"


LATENCY_PNG = "bench/latency.png"  # beside RESULTS.md, relative to ROOT


def plot_latency(
    name: str, lats: list[dict], maximum: float | None, settings: tuple[str, ...], header: list[str]
) -> str:
    """The curve of bench_latency drawn into LATENCY_PNG; the line that names it in the section (or says why
    it is missing: a failed plot must not cost the figures of the run)."""
    try:
        from plot import write_latency_plot

        write_latency_plot(
            {name: [(lat["offered_rate"], lat["p50_ms"], lat["p99_ms"]) for lat in lats]},
            ROOT / LATENCY_PNG,
            [
                f"{name}: reply latency against offered load",
                f"open loop, {OPENLOOP_CONNS} connections; {' '.join(settings)}",
            ],
            maximum=maximum,
            footer=[line for line in header if line.startswith(("date:", "commit:", "machine:"))],
        )
    except ImportError as exc:
        progress(f"latency plot not written: {exc}")
        return f"plot: not written ({exc}; `make bench` installs matplotlib, the bench extra)"
    except Exception as exc:
        progress(f"latency plot failed: {exc!r}")
        return f"plot: not written ({exc!r})"
    progress(f"latency plot: {LATENCY_PNG}")
    return f"plot: {LATENCY_PNG} (p50 and p99 against offered load)"


def bench_latency(db: MariaDBServer, header: list[str]) -> list[str]:
    """Ingest (method load): its lines/s (or LATENCY_RATE), then an open loop at each of LATENCY_LOADS; the
    section's lines, the curve also drawn into LATENCY_PNG (`header` gives its footer: date, commit)."""
    name = "prefork ingest method=load"
    result = Result(name)
    settings = ("ingest.method=load", *LATENCY_SETTINGS)
    started = start_prefork(db, name, "workers.ingest:app", "bench_ingest_load", settings)
    if isinstance(started, str):
        raise SystemExit(f"{name}: {started}")
    server = started
    rows: list[str] = []
    phases: list[str] = []
    lats: list[dict] = []
    try:
        time.sleep(1)
        if LATENCY_RATE:
            result.rates.append(LATENCY_RATE)
            measured = f"{LATENCY_RATE:,.0f} lines/s given (BENCH_LATENCY_RATE)"
        else:
            for _ in range(DB_ROUNDS):
                load_pass(server, result, db, LINES)
            rounds = " ".join(f"{x / 1e3:.0f}" for x in result.rates)
            measured = f"{result.rate:,.0f} lines/s measured (best of {DB_ROUNDS} rounds: {rounds} k lines/s)"
        for load in LATENCY_LOADS:
            lat = open_loop(server, result, expect_ok=True, load=load)
            lats.append(lat)
            rows.append(latency_row(f"{name} at {load:.2f}", lat))
            phases.append(phases_row(f"at {load:.2f}", lat))
    finally:
        stop_server(server)
    return [
        f"open loop: {OPENLOOP_CONNS} connections ({OPENLOOP_PROCS} processes), {OPENLOOP_SECONDS:g} s at each "
        f"fraction of the maximum, first 0.5 s not counted; maximum: {measured}; settings: {' '.join(settings)}",
        LATENCY_HEAD,
        *rows,
        LATENCY_LEGEND,
        "",
        PHASES_HEAD,
        *phases,
        PHASES_LEGEND,
        "",
        plot_latency(name, lats, result.rate, settings, header),
    ]


def main_latency(db: MariaDBServer, header: list[str]) -> None:
    """`--only latency`: ingest's latency curve alone; its section of bench/RESULTS.md is replaced, the rest kept."""
    try:
        table = bench_latency(db, header)
    finally:
        db.stop()
    report_alone(LATENCY_TITLE, table, header)


if __name__ == "__main__":
    main()
