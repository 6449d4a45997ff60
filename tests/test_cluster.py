"""Past one machine (marker ``cluster``): prefork in front of a MariaDB Galera cluster, and prefork hosts
behind HAProxy, each "host" on its own loopback address, a node of either tier killed under load.

The promise holds through every failover: a line answered OK is stored, a line answered ERR is not, and
a line is stored twice only when it was resent after its reply was lost.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from devtools.galera import free_ports
from devtools.haproxy import HAProxy
from devtools.mariadb import free_port
from tests.cluster_load import RecordingClient, longest_gap, verify
from tests.helpers import query
from tests.server import ROOT, ServerProcess, read_lines, wait_for
from tests.test_cli import run_cli

pytestmark = pytest.mark.cluster

CLIENTS = 20


def stored_on(galera, i: int, table: str) -> dict[str, int]:
    rows = galera.query(i, f"SELECT payload, COUNT(*) FROM `{table}` GROUP BY payload")
    return {payload: count for payload, count in rows}


def isolate(galera, i: int, on: bool) -> None:
    """Cut node i off from the others (Galera's gmcast.isolate, a partition without touching the network):
    it leaves the primary component and refuses queries (1047) while the others go on; off: it rejoins."""
    galera.query(i, f"SET GLOBAL wsrep_provider_options = 'gmcast.isolate={int(on)}'")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["kill", "partition"])
def test_the_galera_node_written_to_fails_under_load_and_nothing_is_lost_or_doubled(galera, show, fault):
    """One prefork host writes through a multi-host DSN to the first node; that node is SIGKILLed, or cut off
    from the others, mid-load (the pool moves to the next ready node, unknown COMMIT outcomes are looked up
    there); later it rejoins."""
    table = f"cluster_data_tier_{fault}"
    galera.query(0, f"DROP TABLE IF EXISTS `{table}`")
    dsn = f"mysql://root@{galera.hosts()}/test?connect_timeout=2&read_timeout=10&write_timeout=10"
    result = run_cli("initdb", "--dsn", dsn, "--table", table)
    assert result.returncode == 0, result.stderr
    port = free_port("127.0.0.31")
    args = ["--dsn", dsn, "--table", table, "--workers", "2", "--commit-timeout", "30", "--pool-timeout", "5"]
    args += ["--pool-min", "4"]  # idle connections to the failing node too, as a pool usually has
    with ServerProcess(args, bind=f"127.0.0.31:{port}") as srv:
        stop = threading.Event()
        clients = [RecordingClient(i, ("127.0.0.31", port), stop) for i in range(CLIENTS)]
        for client in clients:
            client.start()
        wait_for(lambda: sum(len(c.ok_times) for c in clients) > 2000, timeout=60, what="load to flow")
        failed_at = time.monotonic()
        if fault == "kill":
            galera.kill(0)
        else:
            isolate(galera, 0, True)
        acked_at_fault = sum(len(c.ok_times) for c in clients)
        wait_for(lambda: sum(len(c.ok_times) for c in clients) > acked_at_fault + 2000, timeout=90, what="acks again")
        recovered_at = time.monotonic()
        if fault == "kill":
            rejoin = galera.restart(0)
        else:
            started = time.monotonic()
            isolate(galera, 0, False)
            galera.wait_synced(0, size=len(galera.nodes), timeout=120)
            rejoin = time.monotonic() - started
        acked = sum(len(c.ok_times) for c in clients)  # load with the node back
        wait_for(lambda: sum(len(c.ok_times) for c in clients) > acked + 2000, timeout=90, what="acks, node back")
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
    assert figures["err"] == 0  # two nodes still form the cluster: the failover ends within commit_timeout
    gap = longest_gap(clients, failed_at, recovered_at)
    unknown = logs.count("COMMIT outcome was unknown")
    show(
        f"galera {fault}: {figures['lines']} lines, {figures['ok']} OK, {figures['err']} ERR, "
        f"{figures['duplicates']} stored twice, {figures['lost']} lost; acks stopped {gap:.1f} s, "
        f"{unknown} unknown COMMIT outcomes looked up on another node; the node was back in {rejoin:.1f} s"
    )
    assert "Traceback" not in logs, logs[-3000:]


def haproxy_from_example(base: Path, front: int, hosts: int, metrics: int) -> HAProxy:
    """etc/haproxy.cfg as it is, with free ports in place of 32777 (lines) and 9108 (the hosts' /readyz)."""
    text = (ROOT / "etc" / "haproxy.cfg").read_text()
    assert "check port 9108 " in text
    text = text.replace("127.0.0.20:32777", f"127.0.0.20:{front}").replace("port 9108 ", f"port {metrics} ")
    for address in ("127.0.0.21", "127.0.0.22"):
        text = text.replace(f"{address}:32777", f"{address}:{hosts}")
    return HAProxy(base, text=text)


def prefork_host(address: str, port: int, metrics: int, dsn: str, table: str) -> ServerProcess:
    args = ["--dsn", dsn, "--table", table, "--workers", "2", "--line-ids", "on"]
    args += ["--proxy-protocol", "v2", "--proxy-allow-from", "127.0.0.20/32", "--name", address]
    return ServerProcess([*args, "--metrics-bind", f"{address}:{metrics}"], bind=f"{address}:{port}")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_a_prefork_host_failing_behind_haproxy_loses_and_doubles_nothing(db, tmp_path, show, fault):
    """Two prefork hosts (127.0.0.21, .22) behind HAProxy (127.0.0.20, etc/haproxy.cfg); one host's master
    and workers are SIGKILLed mid-load, or frozen (SIGSTOP: its kernel still accepts connections, only the
    health check's probe line finds it dead): HAProxy takes it out and closes its sessions, the clients
    reconnect through HAProxy to the survivor and resend what had no reply (with line ids: stored once,
    also when the frozen host wakes up and commits what it held); later the host comes back."""
    table = f"cluster_front_tier_{fault}"
    query(db.dsn, f"DROP TABLE IF EXISTS `{table}`")
    assert run_cli("initdb", "--dsn", db.dsn, "--table", table, "--line-ids", "on").returncode == 0
    front, (port, metrics) = free_port("127.0.0.20"), free_ports(["127.0.0.21", "127.0.0.22"], 2)
    hosts = [prefork_host(address, port, metrics, db.dsn, table) for address in ("127.0.0.21", "127.0.0.22")]
    stop = threading.Event()
    try:
        for host in hosts:
            host.start()
        with haproxy_from_example(tmp_path / "haproxy", front, port, metrics) as haproxy:
            haproxy.wait_state("host1", "UP")
            haproxy.wait_state("host2", "UP")
            clients = [RecordingClient(i, ("127.0.0.20", front), stop, ids=True) for i in range(CLIENTS)]
            for client in clients:
                client.start()
            wait_for(lambda: sum(len(c.ok_times) for c in clients) > 5000, timeout=60, what="load to flow")
            killed_at = time.monotonic()
            # The host's master and workers, at once.
            os.killpg(hosts[0].proc.pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
            down = haproxy.wait_state("host1", "DOWN", timeout=10)
            acked = sum(len(c.ok_times) for c in clients)
            wait_for(lambda: sum(len(c.ok_times) for c in clients) > acked + 5000, timeout=60, what="acks again")
            recovered_at = time.monotonic()
            restarted_at = time.monotonic()
            if fault == "kill":
                hosts[0].stop()
                hosts[0] = prefork_host("127.0.0.21", port, metrics, db.dsn, table).start()
            else:
                os.killpg(hosts[0].proc.pid, signal.SIGCONT)
            haproxy.wait_state("host1", "UP", timeout=20)
            up = time.monotonic() - restarted_at
            acked = sum(len(c.ok_times) for c in clients)  # load with the host back
            wait_for(lambda: sum(len(c.ok_times) for c in clients) > acked + 2000, timeout=60, what="acks, host back")
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
    assert figures["err"] == 0  # the survivor stores every line it gets: a failover answers no ERR
    assert figures["resent"] > 0  # the fault did cut lines off from their replies
    for payload, _, low, high in rows:  # the client's own address, from HAProxy's header
        assert low == high == f"127.0.0.{100 + int(payload[1:].split('-')[0])}", (payload, low, high)
    assert "closing a connection" not in logs and "Traceback" not in logs, logs[-3000:]
    gap = longest_gap(clients, killed_at, recovered_at)
    back = "was restarted" if fault == "kill" else "woke up"
    show(
        f"haproxy {fault}: {figures['lines']} lines, {figures['ok']} OK, {figures['resent']} resent, "
        f"{figures['duplicates']} stored twice, {figures['lost']} lost; host1 DOWN after {down:.1f} s, "
        f"acks stopped {gap:.1f} s, host1 back UP {up:.1f} s after it {back}"
    )


@pytest.mark.timeout(240)
def test_a_node_cut_off_while_the_pool_is_idle_costs_no_err(galera, show):
    """The node a prefork host writes to is cut off while every pooled connection to it sits idle: the next
    batches find those connections refused (1047, not ready) and must move to a ready node, not answer
    ERR, although the cluster (two nodes) is healthy."""
    table = "cluster_idle_cut"
    galera.query(0, f"DROP TABLE IF EXISTS `{table}`")
    dsn = f"mysql://root@{galera.hosts()}/test?connect_timeout=2&read_timeout=10&write_timeout=10"
    assert run_cli("initdb", "--dsn", dsn, "--table", table).returncode == 0
    port = free_port("127.0.0.31")
    args = ["--dsn", dsn, "--table", table, "--workers", "1", "--pool-min", "4", "--flushers", "4"]
    with ServerProcess(args, bind=f"127.0.0.31:{port}") as srv:
        before = [f"before-{i}".encode() for i in range(2000)]
        assert set(roundtrip_at(("127.0.0.31", port), before)) == {b"OK"}
        wait_for(lambda: srv.status()["workers"][0]["pool"]["idle"] >= 4, what="four idle connections")
        try:
            isolate(galera, 0, True)
            wait_for(lambda: galera.status(0).get("wsrep_ready") == "OFF", timeout=30, what="node 0 cut off")
            after = [f"after-{i}".encode() for i in range(2000)]
            replies = roundtrip_at(("127.0.0.31", port), after)
        finally:
            isolate(galera, 0, False)
        logs = srv.logs()
    assert replies == [b"OK"] * len(after), sorted(set(replies))
    stored = stored_on(galera, 1, table)
    assert all(stored.get(p.decode()) == 1 for p in before + after)
    assert "Traceback" not in logs, logs[-3000:]
    galera.wait_synced(0, size=len(galera.nodes), timeout=120)


def roundtrip_at(target: tuple[str, int], lines: list[bytes]) -> list[bytes]:
    with socket.create_connection(target, timeout=60) as sock:
        sock.sendall(b"".join(line + b"\n" for line in lines))
        return read_lines(sock, len(lines))
