"""Past one machine (marker ``cluster``): prefork in front of a MariaDB Galera cluster, and prefork hosts
behind HAProxy, each "host" on its own loopback address, a node of either tier killed under load.

The promise holds through every failover: a line answered OK is stored, a line answered ERR is not, and
a line is stored twice only when it was resent after its reply was lost.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from devtools.haproxy import HAProxy
from devtools.mariadb import free_port
from tests.cluster_load import RecordingClient, longest_gap, verify
from tests.helpers import query
from tests.server import ROOT, ServerProcess, wait_for
from tests.test_cli import run_cli

pytestmark = pytest.mark.cluster

CLIENTS = 20


def stored_on(galera, i: int, table: str) -> dict[str, int]:
    rows = galera.query(i, f"SELECT payload, COUNT(*) FROM `{table}` GROUP BY payload")
    return {payload: count for payload, count in rows}


@pytest.mark.timeout(300)
def test_a_galera_node_killed_under_load_loses_and_doubles_nothing(galera, show):
    """One prefork host writes through a multi-host DSN to the first node; that node is SIGKILLed mid-load
    (the pool moves to the next, unknown COMMIT outcomes are looked up there), later restarted to rejoin."""
    table = "cluster_data_tier"
    galera.query(0, f"DROP TABLE IF EXISTS `{table}`")
    dsn = f"mysql://root@{galera.hosts()}/test?connect_timeout=2&read_timeout=10&write_timeout=10"
    result = run_cli("initdb", "--dsn", dsn, "--table", table)
    assert result.returncode == 0, result.stderr
    port = free_port("127.0.0.31")
    args = ["--dsn", dsn, "--table", table, "--workers", "2", "--commit-timeout", "30", "--pool-timeout", "5"]
    with ServerProcess(args, bind=f"127.0.0.31:{port}") as srv:
        stop = threading.Event()
        clients = [RecordingClient(i, ("127.0.0.31", port), stop) for i in range(CLIENTS)]
        for client in clients:
            client.start()
        wait_for(lambda: sum(len(c.ok_times) for c in clients) > 2000, timeout=60, what="load to flow")
        killed_at = time.monotonic()
        galera.kill(0)
        acked_at_kill = sum(len(c.ok_times) for c in clients)
        wait_for(lambda: sum(len(c.ok_times) for c in clients) > acked_at_kill + 2000, timeout=90, what="acks again")
        recovered_at = time.monotonic()
        rejoin = galera.restart(0)
        time.sleep(2)  # load with the node back (new connections go to it again)
        stop.set()
        for client in clients:
            client.join(180)
        errors = [c.error for c in clients if c.error]
        assert not errors, errors[0]
        logs = srv.logs()
    for i in range(len(galera.nodes)):
        figures = verify(clients, stored_on(galera, i, table))
        assert figures["lost"] == 0
    assert figures["duplicates"] == 0  # the prefork host lost no reply: nothing had to be resent
    gap = longest_gap(clients, killed_at, recovered_at)
    unknown = logs.count("COMMIT outcome was unknown")
    show(
        f"galera failover: {figures['lines']} lines, {figures['ok']} OK, {figures['err']} ERR, "
        f"{figures['duplicates']} stored twice, {figures['lost']} lost; 1 failover, acks stopped "
        f"{gap:.1f} s, {unknown} unknown COMMIT outcomes looked up on another node; the killed node "
        f"rejoined in {rejoin:.1f} s"
    )
    assert "Traceback" not in logs, logs[-3000:]


def haproxy_from_example(base: Path, front: int, hosts: int) -> HAProxy:
    """etc/haproxy.cfg as it is, with free ports in place of 32777."""
    text = (ROOT / "etc" / "haproxy.cfg").read_text()
    text = text.replace("127.0.0.20:32777", f"127.0.0.20:{front}")
    for address in ("127.0.0.21", "127.0.0.22"):
        text = text.replace(f"{address}:32777", f"{address}:{hosts}")
    return HAProxy(base, text=text)


def prefork_host(address: str, port: int, dsn: str, table: str) -> ServerProcess:
    args = ["--dsn", dsn, "--table", table, "--workers", "2", "--line-ids", "on"]
    args += ["--proxy-protocol", "v2", "--proxy-allow-from", "127.0.0.20/32", "--name", address]
    return ServerProcess(args, bind=f"{address}:{port}")


@pytest.mark.timeout(240)
def test_a_prefork_host_killed_behind_haproxy_loses_and_doubles_nothing(db, tmp_path, show):
    """Two prefork hosts (127.0.0.21, .22) behind HAProxy (127.0.0.20, etc/haproxy.cfg); one host's master
    and workers are SIGKILLed mid-load: HAProxy takes it out, the clients reconnect through HAProxy to the
    survivor and resend what had no reply (with line ids: stored once); later the host comes back."""
    table = "cluster_front_tier"
    query(db.dsn, f"DROP TABLE IF EXISTS `{table}`")
    assert run_cli("initdb", "--dsn", db.dsn, "--table", table, "--line-ids", "on").returncode == 0
    front, port = free_port("127.0.0.20"), free_port("127.0.0.21")
    hosts = [prefork_host(address, port, db.dsn, table) for address in ("127.0.0.21", "127.0.0.22")]
    stop = threading.Event()
    try:
        for host in hosts:
            host.start()
        with haproxy_from_example(tmp_path / "haproxy", front, port) as haproxy:
            haproxy.wait_state("host1", "UP")
            haproxy.wait_state("host2", "UP")
            clients = [RecordingClient(i, ("127.0.0.20", front), stop, ids=True) for i in range(CLIENTS)]
            for client in clients:
                client.start()
            wait_for(lambda: sum(len(c.ok_times) for c in clients) > 5000, timeout=60, what="load to flow")
            killed_at = time.monotonic()
            os.killpg(hosts[0].proc.pid, signal.SIGKILL)  # the host's master and workers, at once
            down = haproxy.wait_state("host1", "DOWN", timeout=10)
            acked = sum(len(c.ok_times) for c in clients)
            wait_for(lambda: sum(len(c.ok_times) for c in clients) > acked + 5000, timeout=60, what="acks again")
            recovered_at = time.monotonic()
            hosts[0].stop()
            restarted_at = time.monotonic()
            hosts[0] = prefork_host("127.0.0.21", port, db.dsn, table).start()
            haproxy.wait_state("host1", "UP", timeout=20)
            up = time.monotonic() - restarted_at
            time.sleep(1)
            stop.set()
            for client in clients:
                client.join(180)
            errors = [c.error for c in clients if c.error]
            assert not errors, errors[0]
        logs = hosts[1].logs()
    finally:
        stop.set()
        for host in hosts:
            host.stop()
    rows = query(
        db.dsn, f"SELECT payload, COUNT(*), MIN(client_addr), MAX(client_addr) FROM `{table}` GROUP BY payload"
    )
    figures = verify(clients, {payload: count for payload, count, _, _ in rows})
    assert figures["lost"] == 0 and figures["duplicates"] == 0  # line ids: a resend is never stored twice
    assert figures["resent"] > 0  # the kill did cut lines off from their replies
    for payload, _, low, high in rows:  # the client's own address, from HAProxy's header
        assert low == high == f"127.0.0.{100 + int(payload[1:].split('-')[0])}", (payload, low, high)
    assert "closing a connection" not in logs and "Traceback" not in logs, logs[-3000:]
    gap = longest_gap(clients, killed_at, recovered_at)
    show(
        f"haproxy failover: {figures['lines']} lines, {figures['ok']} OK, {figures['resent']} resent, "
        f"{figures['duplicates']} stored twice, {figures['lost']} lost; host1 DOWN after {down:.1f} s, "
        f"acks stopped {gap:.1f} s, host1 back UP {up:.1f} s after its restart began"
    )
