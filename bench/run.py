"""`make bench`: ingest throughput of prefork against baselines measured in the same run, same database.

Contenders, each writing the same number of rows into its own table of one private MariaDB (var/bench-db):

- executemany: PyMySQL executemany, batches of 1000 + COMMIT, one process per worker: what the database
  takes from the plainest client (no server, no acks);
- prefork:     `prefork run workers.ingest:app`, acking each line after its commit;
- echo:        `prefork run workers.echo:app`, the framework alone, no database;
- minimal:     bench/minimal_server.py, the smallest pre-forked gevent line server (echo): the baseline of
               the framework's own cost (lines/s and server CPU per line).

The private MariaDB runs with production durability (an fsync per commit, doublewrite on).

Load: LOADGENS processes x CONNS connections, each pipelining its lines. Prints lines/s and ratios.
Reference (issue 4): a plain asyncio + aiomysql server with group commit acks about 0.85x executemany.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pymysql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prefork.devdb import MariaDBServer, free_port  # noqa: E402
from workers.schema import create_table_sql  # noqa: E402

WORKERS = int(os.environ.get("BENCH_WORKERS", len(os.sched_getaffinity(0))))
LINES = int(os.environ.get("BENCH_LINES", 200_000))
LOADGENS = 2
CONNS = 50
PY = sys.executable


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


def release(procs: list[subprocess.Popen]) -> list[dict]:
    """Start the waiting processes together and collect their JSON results."""
    for p in procs:
        p.stdin.write(b"x")
        p.stdin.flush()
    results = []
    for p in procs:
        p.stdin.close()
        p.stdin = None
        out = p.stdout.read()
        p.wait(600)
        if p.returncode != 0:
            raise SystemExit(f"bench process failed ({p.returncode})")
        results.append(json.loads(out))
    return results


def bench_executemany(db: MariaDBServer) -> float:
    fresh_table(db.port, "bench_executemany")
    procs = [
        subprocess.Popen(
            [
                PY,
                str(ROOT / "bench/executemany_baseline.py"),
                db.dsn,
                "bench_executemany",
                str(LINES // WORKERS),
                f"w{i}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for i in range(WORKERS)
    ]
    time.sleep(1)
    results = release(procs)
    return LINES / max(r["seconds"] for r in results)


def run_load(port: int, prefix: str) -> float:
    per_conn = LINES // (LOADGENS * CONNS)
    procs = [
        subprocess.Popen(
            [PY, str(ROOT / "bench/loadgen.py"), str(port), str(CONNS), str(per_conn), f"{prefix}{i}-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for i in range(LOADGENS)
    ]
    time.sleep(1)
    results = release(procs)
    total = sum(r["replies"] for r in results)
    ok = sum(r["ok"] for r in results)
    if total != per_conn * CONNS * LOADGENS:
        raise SystemExit(f"{prefix}: {total} replies for {per_conn * CONNS * LOADGENS} lines")
    if prefix != "echo" and ok != total:
        raise SystemExit(f"{prefix}: only {ok} of {total} replies were OK")
    return total / max(r["seconds"] for r in results)


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def bench_minimal() -> tuple[float, float]:
    """The minimal pre-forked gevent line server: lines/s and server CPU seconds per million lines."""
    port = free_port()
    server = subprocess.Popen(
        [PY, str(ROOT / "bench/minimal_server.py"), str(port), str(WORKERS)], start_new_session=True
    )
    try:
        wait_port(port)
        time.sleep(1)
        before = group_cpu_seconds(server.pid)
        rate = run_load(port, "echo")
        cpu = group_cpu_seconds(server.pid) - before
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
    return rate, cpu / LINES * 1e6


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def bench_prefork(db: MariaDBServer, app: str, table: str) -> tuple[float, int, float]:
    port = free_port()
    if table:
        fresh_table(db.port, table)
    args = [
        PY,
        "-m",
        "prefork.cli",
        "run",
        app,
        "--workers",
        str(WORKERS),
        "--bind",
        f"127.0.0.1:{port}",
        "--dsn",
        db.dsn,
        "--log-level",
        "warning",
        "--pidfile",
        str(ROOT / "var/bench-prefork.pid"),
    ]
    if table:
        args += ["--table", table]
    master = subprocess.Popen(args, cwd=ROOT, start_new_session=True)
    try:
        wait_port(port)
        time.sleep(1)
        before = group_cpu_seconds(master.pid)
        rate = run_load(port, "echo" if not table else "prefork")
        cpu = group_cpu_seconds(master.pid) - before
        status = json.loads(
            subprocess.check_output(
                [PY, "-m", "prefork.cli", "status", "--json", "--pidfile", str(ROOT / "var/bench-prefork.pid")],
                cwd=ROOT,
            )
        )
        rss = max(w["rss_bytes"] for w in status["workers"])
    finally:
        master.send_signal(signal.SIGTERM)
        master.wait(60)
    if table:
        stored = sql(db.port, f"SELECT COUNT(*) FROM `{table}`")[0][0]
        if stored != LINES // (LOADGENS * CONNS) * LOADGENS * CONNS:
            raise SystemExit(f"prefork stored {stored} rows")
    return rate, rss, cpu / LINES * 1e6


def main() -> None:
    db = MariaDBServer(ROOT / "var/bench-db", durable=True)
    db.start()
    print(
        f"bench: {LINES} lines, {WORKERS} workers, {LOADGENS}x{CONNS} pipelining clients, "
        f"MariaDB {sql(db.port, 'SELECT VERSION()')[0][0]} (private, var/bench-db, "
        f"innodb_flush_log_at_trx_commit={sql(db.port, 'SELECT @@innodb_flush_log_at_trx_commit')[0][0]})"
    )
    try:
        rates = {"executemany": bench_executemany(db)}
        rates["prefork"], rss, ingest_cpu = bench_prefork(db, "workers.ingest:app", "bench_prefork")
        rates["echo"], echo_rss, echo_cpu = bench_prefork(db, "workers.echo:app", "")
    finally:
        db.stop()
    minimal, minimal_cpu = bench_minimal()
    base = rates["executemany"]
    print(f"{'contender':<14}{'lines/s':>12}{'vs executemany':>16}")
    for name, rate in rates.items():
        print(f"{name:<14}{rate:>12,.0f}{rate / base:>15.2f}x")
    print("reference: asyncio + aiomysql with group commit acks about 0.85x executemany")
    print(f"worker RSS after the run: ingest {rss / 2**20:.1f} MiB, echo {echo_rss / 2**20:.1f} MiB")
    print(
        f"framework cost: echo {rates['echo']:,.0f} lines/s = {rates['echo'] / minimal:.2f}x the minimal gevent "
        f"line server ({minimal:,.0f} lines/s); server CPU {echo_cpu:.2f} s vs {minimal_cpu:.2f} s per million "
        f"lines = {echo_cpu / minimal_cpu:.2f}x (ingest: {ingest_cpu:.2f} s per million lines)"
    )


if __name__ == "__main__":
    main()
