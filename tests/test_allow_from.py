"""server.allow_from: the networks each listener takes connections from. The value parsed and checked against
server.bind (unit tests), then a real master with listeners on 127.0.0.1 and 127.0.0.2 and clients bound to
other loopback addresses: a peer outside is closed unserved, counted in /metrics and status, logged at most
once a second; with the PROXY protocol the address the header names is what counts; a reload changes it."""

from __future__ import annotations

import re
import signal
import socket
import time

import pytest

from devtools.mariadb import free_port
from prefork.config.errors import ConfigError
from prefork.config.loader import load_config
from prefork.protocol.allow import EVERYONE, AllowList, parse_allow_from
from prefork.protocol.proxy import parse_networks
from prefork.protocol.rejects import LOG_INTERVAL_S
from tests.server import ServerProcess, read_lines, wait_for
from tests.test_cli import one_error_line, run_cli
from tests.test_master import http_get

ECHO = "workers.echo:app"
SUMMARY = re.compile(r"connections closed as they came, not logged one by one: (\d+) server\.allow_from")

# -- the value -------------------------------------------------------------------------------------


def allow(text: str, bind: str = "127.0.0.1:1") -> tuple[AllowList, ...]:
    return load_config(None, {}, {"server.bind": bind, "server.allow_from": text}).server.allow_from


@pytest.mark.parametrize(
    "text, bind, expected",
    [
        ("any", "127.0.0.1:1", ["any"]),  # the default
        ("", "127.0.0.1:1", ["any"]),
        ("  ANY ", "127.0.0.1:1", ["any"]),
        ("10.0.0.0/8 192.168.0.0/16", "127.0.0.1:1", ["10.0.0.0/8 192.168.0.0/16"]),
        ("10.1.2.3  ::1", "127.0.0.1:1", ["10.1.2.3/32 ::1/128"]),  # bare addresses, spaces as they come
        ("2001:db8::/32 10.0.0.1/8", "[::1]:1", ["2001:db8::/32 10.0.0.0/8"]),  # host bits dropped
        (
            "10.0.0.0/8 192.168.0.0/16, 127.0.0.1/32",
            "127.0.0.1:1,127.0.0.2:2",
            ["10.0.0.0/8 192.168.0.0/16", "127.0.0.1/32"],
        ),
        ("10.0.0.0/8,", "127.0.0.1:1,127.0.0.2:2", ["10.0.0.0/8", "any"]),
        ("10.0.0.0/8", "127.0.0.1:1,127.0.0.2:2", ["10.0.0.0/8"]),  # one for all
        # A unix socket listener: a list for all applies to the TCP ones; any (or nothing) for the socket itself.
        ("10.0.0.0/8", "127.0.0.1:1,unix:/tmp/prefork-allow.sock", ["10.0.0.0/8"]),
        ("10.0.0.0/8, any", "127.0.0.1:1,unix:/tmp/prefork-allow.sock", ["10.0.0.0/8", "any"]),
    ],
)
def test_good_values(text, bind, expected):
    assert [str(a) for a in allow(text, bind)] == expected
    values = load_config(None, {}, {"server.bind": bind, "server.allow_from": text}).as_dict()
    assert values["server"]["allow_from"] == expected  # as `prefork config` shows it


@pytest.mark.parametrize(
    "text, bind, expected",
    [
        ("10.0.0.0/33", "127.0.0.1:1", "server.allow_from: invalid value '10.0.0.0/33'"),
        ("10.0.0.0/8 nonsense", "127.0.0.1:1", "'nonsense' is not a network"),
        ("any 10.0.0.0/8", "127.0.0.1:1", "server.allow_from: invalid value 'any 10.0.0.0/8'"),
        # Commas separate listeners: two lists for one address, with the hint of what was meant.
        ("10.0.0.0/8,192.168.0.0/16", "127.0.0.1:1", "the networks of one listener are separated by spaces"),
        ("any, any, any", "127.0.0.1:1,127.0.0.2:2", "server.allow_from: 3 values for the 2 addresses of server.bind"),
        ("10.0.0.0/8", "unix:/tmp/prefork-allow.sock", "networks for unix:/tmp/prefork-allow.sock"),
        ("any, 10.0.0.0/8", "127.0.0.1:1,unix:/tmp/prefork-allow.sock", "a unix socket listener"),
    ],
)
def test_bad_values(text, bind, expected):
    with pytest.raises(ConfigError) as info:
        allow(text, bind)
    assert expected in str(info.value) and "server.allow_from" in str(info.value)


def test_a_bad_value_stops_the_command_with_exit_2_and_one_line():
    line = one_error_line(run_cli("check", ECHO, "--allow-from", "10.0.0.300"))
    assert "server.allow_from: invalid value '10.0.0.300'" in line


def test_addresses_v6_and_ipv4_mapped_peers():
    lists = parse_allow_from("10.0.0.0/8 2001:db8::/32, ::1")
    assert lists[0].admits("10.9.8.7") and lists[0].admits("2001:db8::5")
    assert not lists[0].admits("11.0.0.1") and not lists[0].admits("2001:db9::1")
    assert lists[0].admits("::ffff:10.1.2.3")  # a v4 client on a dual-stack listener matches the v4 network
    assert not lists[0].admits("::ffff:11.1.2.3")
    assert lists[1].admits("::1") and not lists[1].admits("127.0.0.1")
    assert EVERYONE.admits("192.0.2.1") and EVERYONE.everyone
    # The comma-separated networks of server.proxy_allow_from come from the same parser.
    assert parse_networks("10.0.0.0/8, ::1") == parse_networks("10.0.0.0/8 ::1", separator=None)


# -- a real server ---------------------------------------------------------------------------------

V1_NAMING = "PROXY TCP4 {} 192.0.2.1 5000 32777\r\n"


class Listeners:
    def __init__(self, srv: ServerProcess, ports: list[int], metrics: int):
        self.srv, self.metrics = srv, metrics
        self.first, self.second, self.proxied = ports


@pytest.fixture(scope="module")
def server():
    """One worker (one rate limiter), three listeners: 127.0.0.1 for 127.0.0.1 and ::1, 127.0.0.2 for
    127.0.0.3 and 127.0.0.4, and a PROXY v1 one on 127.0.0.1 for the clients of 198.51.100.0/24 (its balancer:
    127.0.0.1, in the default server.proxy_allow_from)."""
    ports = [free_port(), free_port(), free_port()]
    bind = f"127.0.0.1:{ports[0]},127.0.0.2:{ports[1]},127.0.0.1:{ports[2]}"
    args = [ECHO, "--workers", "1", "--metrics-bind", "127.0.0.1:0", "--proxy-protocol", "off,off,v1"]
    args += ["--allow-from", "127.0.0.1 ::1, 127.0.0.3/32 127.0.0.4, 198.51.100.0/24"]
    with ServerProcess(args, bind=bind) as srv:
        match = wait_for(lambda: re.search(r"Metrics at: http://127\.0\.0\.1:(\d+)/metrics", srv.logs()))
        yield Listeners(srv, ports, int(match.group(1)))


def dial(host: str, port: int, source: str) -> socket.socket:
    return socket.create_connection((host, port), timeout=10, source_address=(source, 0))


def served(host: str, port: int, source: str, data: bytes = b"") -> bool:
    """Whether a client from ``source`` gets its line echoed; False when the server closes it unserved."""
    with dial(host, port, source) as sock:
        try:
            sock.sendall(data + b"hello\n")
            return read_lines(sock, 1) == [b"hello"]
        except (AssertionError, ConnectionResetError, BrokenPipeError):
            return False


def refused_total(metrics: int) -> int:
    status, body = http_get(metrics, "/metrics")
    assert status == "HTTP/1.1 200 OK"
    match = re.search(r'^prefork_connections_refused_total\{name="prefork",reason="allow_from"\} (\d+)$', body, re.M)
    assert match, body
    return int(match.group(1))


def counted_in_log(text: str) -> tuple[int, int]:
    """Refusals logged one by one, and those summed up."""
    return text.count("outside server.allow_from"), sum(int(n) for n in SUMMARY.findall(text))


def settled(server: Listeners) -> int | None:
    """The refusals so far, once every one is in the log, one by one or summed up (none left out waits)."""
    total = refused_total(server.metrics)
    return total if sum(counted_in_log(server.srv.logs())) == total else None


def logged(server: Listeners, line: str, refuse) -> None:
    """Wait for ``line`` in the log, refusing one more connection (``refuse()``) until it comes: refusals are
    logged one by one at most once a second, so each try waits until the log has caught up and the
    limiter's interval has passed since its last line (a refusal sooner would only be summed up)."""

    def seen() -> bool:
        if line in server.srv.logs():
            return True
        if settled(server) is not None:
            time.sleep(LOG_INTERVAL_S)
            refuse()
        return False

    wait_for(seen, 30, interval=0.2, what=line)


def test_a_peer_outside_is_closed_unserved_one_inside_is_served(server):
    first, second = server.first, server.second
    before = refused_total(server.metrics)
    assert served("127.0.0.1", first, "127.0.0.1")
    assert not served("127.0.0.1", first, "127.0.0.3")
    assert served("127.0.0.2", second, "127.0.0.3") and served("127.0.0.2", second, "127.0.0.4")
    assert not served("127.0.0.2", second, "127.0.0.1")
    wait_for(lambda: refused_total(server.metrics) == before + 2, what="2 refused connections counted")
    # The log names the peer and the listener.
    logged(
        server,
        f"closing a connection from 127.0.0.3 at 127.0.0.1:{first}: outside server.allow_from",
        lambda: served("127.0.0.1", first, "127.0.0.3"),
    )
    logged(
        server,
        f"closing a connection from 127.0.0.1 at 127.0.0.2:{second}: outside server.allow_from",
        lambda: served("127.0.0.2", second, "127.0.0.1"),
    )


def test_a_refused_peer_is_closed_before_a_byte_is_read(server):
    """Closed at accept: a peer that sends nothing sees the close at once (no read, no client_timeout)."""
    with dial("127.0.0.1", server.first, "127.0.0.5") as sock:
        assert sock.recv(100) == b""


def test_with_proxy_protocol_the_address_the_header_names_counts(server):
    port = server.proxied
    header = V1_NAMING.format
    assert served("127.0.0.1", port, "127.0.0.1", header("198.51.100.7").encode())
    assert not served("127.0.0.1", port, "127.0.0.1", header("203.0.113.7").encode())
    # A dual-stack balancer names an IPv4 client as IPv4-mapped IPv6: it matches the IPv4 network.
    assert served("127.0.0.1", port, "127.0.0.1", b"PROXY TCP6 ::ffff:198.51.100.9 2001:db8::1 5000 32777\r\n")
    assert not served("127.0.0.1", port, "127.0.0.1", b"PROXY TCP6 ::ffff:203.0.113.9 2001:db8::1 5000 32777\r\n")
    assert served("127.0.0.1", port, "127.0.0.1", b"PROXY UNKNOWN\r\n")  # the balancer itself (a health check)
    # A direct client (no balancer) is its own address: closed as it comes, before any header is looked for.
    with dial("127.0.0.1", port, "127.0.0.3") as sock:
        assert sock.recv(100) == b""
    logged(
        server,
        f"closing a connection from 203.0.113.7 (PROXY header from 127.0.0.1) at 127.0.0.1:{port}: outside "
        "server.allow_from",
        lambda: served("127.0.0.1", port, "127.0.0.1", header("203.0.113.7").encode()),
    )


def test_a_burst_of_refused_connections_is_counted_and_logged_once_a_second(server):
    srv, first = server.srv, server.first

    before = wait_for(lambda: (n := settled(server)) is not None and (n,), what="the log to catch up")[0]
    offset = len(srv.logs())
    start = time.monotonic()
    for _ in range(200):
        dial("127.0.0.1", first, "127.0.0.6").close()
    wait_for(lambda: settled(server) == before + 200, what="200 more refusals counted and logged")
    elapsed = time.monotonic() - start
    one_by_one, summed = counted_in_log(srv.logs()[offset:])
    assert one_by_one + summed == 200
    # At most one line a second (one by one or a summary), and never less than one for the burst.
    log_lines = one_by_one + len(SUMMARY.findall(srv.logs()[offset:]))
    assert 1 <= log_lines <= elapsed + 2, (log_lines, elapsed)
    # The clients of the listeners are still served, and `prefork status` has each worker's count.
    assert served("127.0.0.1", first, "127.0.0.1")
    workers = wait_for(lambda: (w := srv.status()["workers"]) and w[0]["refused"]["allow_from"] >= 200 and w)
    assert sum(w["refused"]["allow_from"] for w in workers) == refused_total(server.metrics)
    # No client slot kept by a refused connection.
    wait_for(lambda: sum(w["clients"] or 0 for w in srv.status()["workers"]) == 0, what="no client left")


def test_a_reload_changes_who_may_connect(tmp_path):
    conf = tmp_path / "prefork.ini"
    conf.write_text("[server]\nallow_from = 127.0.0.7\n")
    with ServerProcess(["-c", str(conf), ECHO, "--workers", "1"]) as srv:
        assert not served("127.0.0.1", srv.port, "127.0.0.1")
        assert served("127.0.0.1", srv.port, "127.0.0.7")
        old = srv.worker_pids()
        conf.write_text("[server]\nallow_from = 127.0.0.1/32\n")
        srv.signal(signal.SIGHUP)
        # The new generation serves and the old worker is gone (it could still accept a moment before).
        wait_for(lambda: "Reloaded: generation 2" in srv.logs(), what="the reload")
        wait_for(lambda: (pids := srv.worker_pids()) and len(pids) == 1 and pids != old, what="the old worker to go")
        assert served("127.0.0.1", srv.port, "127.0.0.1")
        assert not served("127.0.0.1", srv.port, "127.0.0.7")
