"""The cluster suite's own machinery works: a real 3-node MariaDB Galera cluster on loopback addresses
(devtools.galera) survives a killed node and takes it back, and a real HAProxy (devtools.haproxy) checks its
servers and routes around a dead one. Later cluster tests put prefork between the two."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
import uuid

import pytest

from devtools.galera import GaleraCluster
from devtools.haproxy import Frontend, HAProxy, Server
from devtools.mariadb import free_port

pytestmark = pytest.mark.cluster


def tcp_listeners(ports: tuple[int, ...]) -> set[tuple[str, int]]:
    """The (address, port) of every listening TCP socket on one of ports, IPv4 and IPv6, from /proc."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                address, port = local.split(":")
                if state != "0A" or int(port, 16) not in ports:
                    continue
                if len(address) == 8:  # IPv4, little-endian
                    address = socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1])
                found.add((address, int(port, 16)))
    return found


def test_galera_cluster_replicates_and_takes_a_killed_node_back(galera: GaleraCluster, show):
    assert galera.hosts() == ",".join(f"127.0.0.{11 + i}:{galera.port}" for i in range(3))
    # Every node listens on its own loopback address only, never on a wildcard address.
    listeners = tcp_listeners(galera.ports)
    assert listeners, "no listener found for the cluster's ports"
    assert {address for address, _ in listeners} <= set(galera.addresses), listeners

    galera.query(0, "CREATE TABLE IF NOT EXISTS infra_rows (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(64))")
    run = uuid.uuid4().hex[:8]
    galera.query(0, "INSERT INTO infra_rows (note) VALUES (%s)", (f"{run} before",))
    for i in (1, 2):
        assert galera.query(i, "SELECT note FROM infra_rows WHERE note LIKE %s", (f"{run}%",)) == ((f"{run} before",),)

    killed = time.monotonic()
    galera.kill(1)
    for i in (0, 2):
        galera.wait_synced(i, size=2, timeout=30)
        assert galera.cluster_size(i) == 2
    show(f"galera: the others saw node 1 gone (cluster size 2) {time.monotonic() - killed:.1f} s after SIGKILL")
    galera.query(0, "INSERT INTO infra_rows (note) VALUES (%s)", (f"{run} during 0",))
    galera.query(2, "INSERT INTO infra_rows (note) VALUES (%s)", (f"{run} during 2",))

    seconds = galera.restart(1)
    show(f"galera: node 1 rejoined (Synced, cluster size 3) in {seconds:.1f} s")
    assert galera.is_synced(1) and galera.cluster_size(1) == 3
    notes = {note for (note,) in galera.query(1, "SELECT note FROM infra_rows WHERE note LIKE %s", (f"{run}%",))}
    assert notes == {f"{run} before", f"{run} during 0", f"{run} during 2"}


class EchoServer(socketserver.ThreadingTCPServer):
    """A tiny TCP server answering each line with its name and the line, one thread per connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str, address: str):
        self.name = name

        class Handler(socketserver.StreamRequestHandler):
            def handle(handler) -> None:
                for line in handler.rfile:
                    handler.wfile.write(f"{name} ".encode() + line)

        super().__init__((address, free_port(address)), Handler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.closed = False

    def close(self) -> None:
        """Stop accepting connections and close the listening socket (health checks then fail)."""
        if not self.closed:
            self.closed = True
            self.shutdown()
            self.server_close()


def echo_through(frontend: Frontend) -> str:
    """Send one line through the proxy; return the name of the server that answered."""
    with socket.create_connection((frontend.address, frontend.port), timeout=5) as conn:
        conn.sendall(b"hello\n")
        reply = conn.makefile("rb").readline()
    name, _, rest = reply.decode().partition(" ")
    assert rest == "hello\n", reply
    return name


def test_haproxy_checks_servers_and_routes_around_a_dead_one(tmp_path, show):
    servers = [EchoServer("a", "127.0.0.21"), EchoServer("b", "127.0.0.22")]
    try:
        frontend = Frontend(
            "echo",
            "127.0.0.20",
            free_port("127.0.0.20"),
            [Server(s.name, *s.server_address) for s in servers],
            inter="200ms",
            fall=2,
            rise=2,
        )
        with HAProxy(tmp_path, [frontend]) as proxy:
            for name in ("a", "b"):
                proxy.wait_state(name, "UP", timeout=5)
            assert echo_through(frontend) in ("a", "b")

            servers[0].close()
            seconds = proxy.wait_state("a", "DOWN", timeout=10 * 0.2)  # a few check intervals
            show(f"haproxy: a dead server reported DOWN after {seconds:.2f} s (inter 200ms, fall 2)")
            assert proxy.server_states() == {"a": "DOWN", "b": "UP"}
            assert [echo_through(frontend) for _ in range(5)] == ["b"] * 5
    finally:
        for s in servers:
            s.close()
