"""The cost of TLS (`make bench`, or alone: `make bench BENCH=tls`): each TLS figure against its plaintext
twin, measured in the same run on the same server.

- echo: `prefork run workers.echo:app` with two listeners, one plaintext and one TLS (server.tls_cert for
  the second only: the same workers serve both); LOADGENS x CONNS pipelining connections (bench/loadgen.py,
  TLS through its CAFILE argument) send ECHO_LINES lines to one listener, then to the other, ROUNDS rounds,
  the order swapped every other round, after a warm-up of each listener (a tenth of the lines). Lines/s,
  the server's CPU (master + workers) and the generators' own CPU per million lines: the generators encrypt
  and decrypt too, on the same 2 cores. Since both are CPU-bound on those cores, the ratio of their CPU per
  line (server + generators, plaintext / TLS) is also shown: the ratio the rates tend to on an idle
  machine, steadier than the rates when other work shares it.
- ingest: the same with `workers.ingest:app` (its default method) on the bench's database, both listeners
  writing into one table, every line acked after its COMMIT and the rows counted after each round.
- new connections: a connection is connect + handshake + one line + its reply + close (bench/connrate.py,
  CONN_PROCS processes x CONN_CONCURRENCY clients in a loop for CONN_SECONDS, full handshakes: no session
  resumption; CONN_ROUNDS rounds). Against prefork's echo app with ONE worker (plaintext listener, TLS
  listener) and against HAProxy with ONE thread terminating TLS (`bind ... ssl crt`) in front of that
  worker's plaintext listener. Connections/s, and CPU milliseconds per connection of the server side
  (prefork: master and worker; HAProxy: haproxy, and the prefork behind it) and of the generators.
- idle memory: bench/idle_memory.py's measure_tls, N idle clients of prefork's echo app (one worker),
  plaintext then TLS (each handshake done, one line and its reply, then idle): KB per client.

Certificates: tests/certs.py's make_pki (the openssl command line) under var/bench-tls: EC P-256, the
server's for localhost / 127.0.0.1, verified by every client. TLS 1.3 is what the clients and servers
negotiate (OpenSSL 3's default).
Each figure is the best round (highest rate, lowest CPU); every round is listed.
Environment: BENCH_TLS_ECHO_LINES (2000000), BENCH_TLS_LINES (2 x BENCH_LINES, 400000), BENCH_TLS_ROUNDS (5),
BENCH_TLS_CONN_ROUNDS (3), BENCH_TLS_CONN_SECONDS (4), BENCH_TLS_IDLE_CLIENTS (5000), BENCH_WORKERS (CPUs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from procstat import group_cpu_seconds, process_cpu_seconds  # noqa: E402
from run import (  # noqa: E402
    CONNS,
    LINES,
    LOADGENS,
    PY,
    WORKERS,
    Server,
    count_rows,
    fresh_table,
    prefork_env,
    progress,
    release,
    start_waiting,
    stop_server,
    wait_port,
    wait_ready,
)

from devtools.haproxy import HAProxy  # noqa: E402
from devtools.mariadb import MariaDBServer, free_port  # noqa: E402

ECHO_LINES = int(os.environ.get("BENCH_TLS_ECHO_LINES", 2_000_000))
INGEST_LINES = int(os.environ.get("BENCH_TLS_LINES", 2 * LINES))
ROUNDS = int(os.environ.get("BENCH_TLS_ROUNDS", 5))
CONN_ROUNDS = int(os.environ.get("BENCH_TLS_CONN_ROUNDS", 3))
CONN_SECONDS = float(os.environ.get("BENCH_TLS_CONN_SECONDS", 4))
IDLE_CLIENTS = int(os.environ.get("BENCH_TLS_IDLE_CLIENTS", 5000))
CONN_PROCS = 2
CONN_CONCURRENCY = 25  # per process

# Targets (the issue's).
ECHO_RATIO = 0.6
INGEST_RATIO = 0.9


@dataclass
class Figures:
    """A contender's rounds: rate (lines/s or connections/s), server and generator CPU per unit."""

    name: str
    rates: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)  # CPU seconds per million lines, or ms per connection
    gen: list[float] = field(default_factory=list)
    proxy: list[float] = field(default_factory=list)  # HAProxy's own share of `server`, ms per connection

    @property
    def rate(self) -> float | None:
        return max(self.rates) if self.rates else None

    @property
    def server_cpu(self) -> float | None:
        return min(self.server) if self.server else None

    @property
    def gen_cpu(self) -> float | None:
        return min(self.gen) if self.gen else None

    @property
    def proxy_cpu(self) -> float | None:
        return min(self.proxy) if self.proxy else None


@dataclass
class Pair:
    """One prefork with a plaintext and a TLS listener."""

    server: Server
    tls_port: int


def certificates() -> dict[str, str]:
    """The server certificate, its key, the CA, and certificate + key in one file for HAProxy's `crt`."""
    from tests.certs import make_pki

    pki = make_pki(ROOT / "var/bench-tls")
    both = pki.dir / "server-and-key.pem"
    both.write_text(pki.server.read_text() + pki.server_key.read_text())
    both.chmod(0o600)
    return {"cert": str(pki.server), "key": str(pki.server_key), "ca": str(pki.ca), "haproxy": str(both)}


def start_pair(
    name: str, app: str, workers: int, certs: dict[str, str], db: MariaDBServer | None = None, table: str = ""
) -> Pair:
    """`prefork run APP` on two listeners: 127.0.0.1:P plaintext, 127.0.0.1:Q TLS."""
    plain, tls = free_port(), free_port()
    slug = "".join(c if c.isalnum() else "-" for c in name)
    pidfile, logfile = ROOT / f"var/bench-{slug}.pid", ROOT / f"var/bench-{slug}.log"
    args = [PY, "-m", "prefork.cli", "run", app, "--workers", str(workers)]
    args += ["--bind", f"127.0.0.1:{plain},127.0.0.1:{tls}", "--tls-cert", f",{certs['cert']}"]
    args += ["--tls-key", f",{certs['key']}", "--log-level", "warning", "--pidfile", str(pidfile)]
    if db is not None:
        fresh_table(db.port, table)
        args += ["--dsn", db.dsn, "--table", table]
    with open(logfile, "wb") as log:
        master = subprocess.Popen(
            args, cwd=ROOT, env=prefork_env(), start_new_session=True, stdout=log, stderr=subprocess.STDOUT
        )
    for port in (plain, tls):
        wait_port(port, master)
    if master.poll() is not None:
        raise SystemExit(f"{name}: prefork exited with {master.returncode}:\n{logfile.read_text()[-2000:]}")
    return Pair(Server(name, master, plain, pidfile=pidfile, table=table), tls)


# -- throughput ---------------------------------------------------------------------------------------------


def load_round(pair: Pair, tls: bool, lines: int, certs: dict[str, str], result: Figures, db=None) -> None:
    """LOADGENS x CONNS pipelining connections send `lines` lines to one listener of the pair."""
    server = pair.server
    port = pair.tls_port if tls else server.port
    per_conn = lines // (LOADGENS * CONNS)
    ca = [certs["ca"]] if tls else []
    prefix = f"{'tls' if tls else 'plain'}{len(result.rates)}-"
    procs = [
        start_waiting([str(ROOT / "bench/loadgen.py"), str(port), str(CONNS), str(per_conn), f"{prefix}{i}", *ca])
        for i in range(LOADGENS)
    ]
    wait_ready(procs)
    before = group_cpu_seconds(server.proc.pid)
    results, gen_cpu = release(procs)
    cpu = group_cpu_seconds(server.proc.pid) - before
    total = sum(r["replies"] for r in results)
    sent = per_conn * CONNS * LOADGENS
    if total != sent:
        raise SystemExit(f"{result.name}: {total} replies for {sent} lines")
    if server.table:
        ok = sum(r["ok"] for r in results)
        if ok != total:
            raise SystemExit(f"{result.name}: only {ok} of {total} replies were OK")
        server.stored += sent
        stored = count_rows(db.port, server.table)
        if stored != server.stored:
            raise SystemExit(f"{result.name}: {stored} rows stored of {server.stored}")
    result.rates.append(total / max(r["seconds"] for r in results))
    result.server.append(cpu / total * 1e6)
    result.gen.append(gen_cpu / total * 1e6)


def throughput(pair: Pair, lines: int, certs: dict[str, str], what: str, db=None) -> tuple[Figures, Figures]:
    """ROUNDS rounds of plaintext then TLS (swapped every other round) against the pair."""
    plain, tls = Figures(f"{what} plaintext"), Figures(f"{what} TLS")
    for is_tls in (False, True):  # a warm-up of each listener, not counted (a first round ran slower)
        load_round(pair, is_tls, lines // 10, certs, Figures("warm-up"), db)
    for round_ in range(ROUNDS):
        order = [(False, plain), (True, tls)]
        for is_tls, figures in order if round_ % 2 == 0 else reversed(order):
            load_round(pair, is_tls, lines, certs, figures, db)
        progress(f"{what} round {round_ + 1}/{ROUNDS}: plaintext {plain.rates[-1]:,.0f}, TLS {tls.rates[-1]:,.0f}")
    return plain, tls


# -- new connections ----------------------------------------------------------------------------------------


HAPROXY_CONFIG = """# bench/tls.py: TLS terminated by one thread, in front of a plaintext prefork
global
    nbthread 1
    maxconn 5000

defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend tls
    bind 127.0.0.1:{port} ssl crt {pem}
    default_backend prefork

backend prefork
    server prefork 127.0.0.1:{backend}
"""


def conn_round(port: int, ca: str | None, cpu_pids: list[int], groups: list[int], result: Figures) -> str:
    """CONN_PROCS x CONN_CONCURRENCY clients connecting in a loop for CONN_SECONDS; the TLS version."""
    procs = [
        start_waiting([str(ROOT / "bench/connrate.py"), str(port), str(CONN_CONCURRENCY), str(CONN_SECONDS)])
        if ca is None
        else start_waiting([str(ROOT / "bench/connrate.py"), str(port), str(CONN_CONCURRENCY), str(CONN_SECONDS), ca])
        for _ in range(CONN_PROCS)
    ]
    wait_ready(procs)

    def server_cpu() -> float:
        return sum(process_cpu_seconds(p) for p in cpu_pids) + sum(group_cpu_seconds(g) for g in groups)

    before, proxy_before = server_cpu(), sum(process_cpu_seconds(p) for p in cpu_pids)
    results, gen_cpu = release(procs)
    cpu = server_cpu() - before
    proxy_cpu = sum(process_cpu_seconds(p) for p in cpu_pids) - proxy_before
    errors = sum(r["errors"] for r in results)
    if errors:
        first = next(r["first_error"] for r in results if r["first_error"])
        progress(f"{result.name}: {errors} connections failed, first: {first}")
    n = sum(r["connections"] for r in results)
    result.rates.append(n / CONN_SECONDS)
    result.server.append(cpu / max(1, n) * 1e3)
    result.gen.append(gen_cpu / max(1, n) * 1e3)
    if cpu_pids:
        result.proxy.append(proxy_cpu / max(1, n) * 1e3)
    return results[0]["version"]


def connections(certs: dict[str, str]) -> tuple[list[Figures], str]:
    """New connections per second against one prefork worker (plaintext, TLS) and one HAProxy thread."""
    pair = start_pair("tls conns", "workers.echo:app", 1, certs)
    plain, tls, haproxy = Figures("prefork plaintext"), Figures("prefork TLS"), Figures("HAProxy TLS -> prefork")
    workdir = tempfile.TemporaryDirectory(prefix="bench-haproxy-")
    front = free_port()
    proxy = HAProxy(
        workdir.name, text=HAPROXY_CONFIG.format(port=front, pem=certs["haproxy"], backend=pair.server.port)
    )
    versions = set()
    try:
        proxy.start()
        wait_port(front)
        group = pair.server.proc.pid
        contenders = [
            (pair.server.port, None, [], [group], plain),
            (pair.tls_port, certs["ca"], [], [group], tls),
            (front, certs["ca"], [proxy.proc.pid], [group], haproxy),
        ]
        for round_ in range(CONN_ROUNDS):
            for port, ca, pids, groups, figures in contenders if round_ % 2 == 0 else reversed(contenders):
                version = conn_round(port, ca, pids, groups, figures)
                if ca is not None:
                    versions.add(version)
            progress(
                f"connections round {round_ + 1}/{CONN_ROUNDS}: "
                + ", ".join(f"{f.name} {f.rates[-1]:,.0f}/s" for *_, f in contenders)
            )
    finally:
        proxy.stop()
        stop_server(pair.server)
        workdir.cleanup()
    return [plain, tls, haproxy], ", ".join(sorted(versions))


# -- all of it ----------------------------------------------------------------------------------------------


def measure(db: MariaDBServer) -> dict:
    """Every part of the TLS bench on the bench's database; the figures for report()."""
    started = time.monotonic()
    certs = certificates()
    out: dict = {"load": os.getloadavg()[0]}
    progress(f"TLS: echo, {ECHO_LINES:,} lines per round, {WORKERS} workers")
    pair = start_pair("tls echo", "workers.echo:app", WORKERS, certs)
    try:
        time.sleep(1)
        out["echo"] = throughput(pair, ECHO_LINES, certs, "echo")
    finally:
        stop_server(pair.server)
    progress(f"TLS: ingest, {INGEST_LINES:,} lines per round, {WORKERS} workers")
    pair = start_pair("tls ingest", "workers.ingest:app", WORKERS, certs, db, "bench_tls_ingest")
    try:
        time.sleep(1)
        out["ingest"] = throughput(pair, INGEST_LINES, certs, "ingest", db)
    finally:
        stop_server(pair.server)
    progress(f"TLS: new connections, {CONN_SECONDS:g} s per round")
    out["conns"], out["versions"] = connections(certs)
    progress(f"TLS: idle memory, {IDLE_CLIENTS:,} clients")
    from idle_memory import measure_tls

    out["memory"] = measure_tls(IDLE_CLIENTS, certs["cert"], certs["key"], certs["ca"])
    out["seconds"] = time.monotonic() - started
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _rounds(base: Figures, other: Figures) -> str:
    """Each round's ratio of other to base (measured back to back: the spread of the ratio)."""
    return "(rounds: " + " ".join(f"{o / b:.2f}" for b, o in zip(base.rates, other.rates, strict=True)) + ")"


def _cpu_bound(plain: Figures, tls: Figures) -> float:
    """The ratio of rates when server and generators use all the cores: all CPU per line, plaintext / TLS."""
    return (plain.server_cpu + plain.gen_cpu) / (tls.server_cpu + tls.gen_cpu)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _verdict(value: float | None, target: float) -> str:
    return "ok" if value is not None and value >= target else "MISSED"


def report(m: dict) -> tuple[list[str], list[str]]:
    """The lines for the Ratios section and the section of its own."""
    (echo_p, echo_t), (ing_p, ing_t) = m["echo"], m["ingest"]
    plain, tls, haproxy = m["conns"]
    mem = m["memory"]
    echo_x, ing_x = _ratio(echo_t.rate, echo_p.rate), _ratio(ing_t.rate, ing_p.rate)
    conn_x = _ratio(tls.rate, haproxy.rate)
    ratios = [
        f"TLS echo = {echo_x:.2f} x plaintext echo (target >= {ECHO_RATIO})   [{_verdict(echo_x, ECHO_RATIO)}]  "
        f"{_rounds(echo_p, echo_t)}",
        f"  CPU per line, TLS / plaintext: server {_ratio(echo_t.server_cpu, echo_p.server_cpu):.2f} x, generators "
        f"{_ratio(echo_t.gen_cpu, echo_p.gen_cpu):.2f} x; CPU-bound ratio (all CPU per line, plaintext / TLS) "
        f"{_cpu_bound(echo_p, echo_t):.2f}",
        f"TLS ingest = {ing_x:.2f} x plaintext ingest (target >= {INGEST_RATIO})   [{_verdict(ing_x, INGEST_RATIO)}]  "
        f"{_rounds(ing_p, ing_t)}",
        f"  CPU per line, TLS / plaintext: server {_ratio(ing_t.server_cpu, ing_p.server_cpu):.2f} x, generators "
        f"{_ratio(ing_t.gen_cpu, ing_p.gen_cpu):.2f} x",
        f"new TLS connections/s, one worker: prefork {tls.rate:,.0f} = {conn_x:.2f} x HAProxy (one thread) "
        f"terminating TLS ({haproxy.rate:,.0f}); plaintext prefork {plain.rate:,.0f}  {_rounds(haproxy, tls)}",
        f"  per second of server CPU: prefork TLS {1e3 / tls.server_cpu:,.0f} = "
        f"{fmt(_ratio(haproxy.proxy_cpu, tls.server_cpu), '.2f')} x haproxy's own "
        f"({fmt(None if not haproxy.proxy_cpu else 1e3 / haproxy.proxy_cpu, ',.0f')}), "
        f"{_ratio(haproxy.server_cpu, tls.server_cpu):.2f} x haproxy + the prefork behind it "
        f"({1e3 / haproxy.server_cpu:,.0f}); the rates share 2 cores with generators using "
        f"{tls.gen_cpu:.2f} ms CPU per TLS connection",
        f"idle TLS client = {mem['tls']['kb_per_client']:.1f} KB = {mem['kb_ratio']:.2f} x plaintext "
        f"({mem['plaintext']['kb_per_client']:.1f} KB)",
    ]
    table = [f"{'throughput':<22}{'lines/s':>12}{'server CPU s/M':>16}{'gen CPU s/M':>13}   rounds (k lines/s)"]
    for f in (echo_p, echo_t, ing_p, ing_t):
        rounds = " ".join(f"{x / 1e3:.0f}" for x in f.rates)
        table.append(f"{f.name:<22}{f.rate:>12,.0f}{f.server_cpu:>16.2f}{f.gen_cpu:>13.2f}   {rounds}")
    table += [
        f"{WORKERS} workers serving both listeners; {LOADGENS}x{CONNS} pipelining connections; echo "
        f"{ECHO_LINES:,} lines per round, ingest {INGEST_LINES:,} (its default method, acked after COMMIT);",
        "server CPU: master + workers; gen CPU: the load generators' own (they encrypt too, on the same cores).",
        "",
        f"{'new connections':<26}{'conns/s':>10}{'server CPU ms/conn':>20}{'conns/server CPU s':>20}"
        f"{'gen CPU ms/conn':>17}   rounds (conns/s)",
    ]
    for f in (plain, tls, haproxy):
        rounds = " ".join(f"{x:,.0f}" for x in f.rates)
        table.append(
            f"{f.name:<26}{f.rate:>10,.0f}{f.server_cpu:>20.3f}{1e3 / f.server_cpu:>20,.0f}"
            f"{f.gen_cpu:>17.3f}   {rounds}"
        )
    table += [
        f"(of HAProxy's {haproxy.server_cpu:.3f} ms/conn, haproxy itself {fmt(haproxy.proxy_cpu, '.3f')}, the "
        "prefork worker behind it the rest)",
        f"connect + handshake ({m['versions']}, full, EC P-256) + one line + reply + close; {CONN_PROCS}x"
        f"{CONN_CONCURRENCY} clients in a loop, {CONN_SECONDS:g} s per round; ONE prefork worker; HAProxy 1 thread",
        "(nbthread 1) with `ssl crt` in front of that worker's plaintext listener: its server CPU is haproxy's",
        "plus the prefork behind it.",
        "",
        f"{mem['clients']:,} idle clients of prefork echo, 1 worker, each sent one line and got its reply; worker RSS",
        f"{'':<12}{'RSS before':>12}{'RSS after':>12}{'KB/client':>11}{'accept s':>10}{'failed':>8}",
    ]
    for key in ("plaintext", "tls"):
        r = mem[key]
        table.append(
            f"{key:<12}{r['rss_before_kb'] / 1024:>8.1f} MiB{r['rss_after_kb'] / 1024:>8.1f} MiB"
            f"{r['kb_per_client']:>11.2f}{r['accept_seconds']:>10.2f}{r['failed']:>8}"
        )
    table.append(f"load average at the start of the TLS part {m['load']:.2f}; it took {m['seconds']:.0f} s")
    return ratios, table
