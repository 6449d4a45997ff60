"""Past one machine (marker ``cluster``): prefork in front of a MariaDB Galera cluster, and prefork hosts
behind HAProxy, each "host" on its own loopback address, a node of either tier killed under load.

The promise holds through every failover: a line answered OK is stored, a line answered ERR is not, and
a line is stored twice only when it was resent after its reply was lost.
"""

from __future__ import annotations

import threading
import time

import pytest

from devtools.mariadb import free_port
from tests.cluster_load import RecordingClient, longest_gap, verify
from tests.server import ServerProcess, wait_for
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
