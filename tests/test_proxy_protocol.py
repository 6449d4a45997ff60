"""prefork.protocol.proxy: PROXY v1 and v2 headers parsed exactly, read from a socket without eating the
client's first bytes, with a deadline and a size bound."""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time

import pytest

from devtools.mariadb import free_port
from prefork.protocol.proxy import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    allowed,
    client_address,
    header_length,
    looks_like_header,
    parse,
    parse_networks,
    read_header,
)
from tests.helpers import query
from tests.server import ServerProcess, read_lines, wait_for
from tests.test_cli import one_error_line, run_cli


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


V2_TCP4 = v2(1, 0x11, socket.inet_aton("203.0.113.7") + socket.inet_aton("192.0.2.1") + struct.pack("!HH", 5000, 80))
V2_TCP6 = v2(
    1,
    0x21,
    socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    + struct.pack("!HH", 6000, 443),
)


@pytest.mark.parametrize(
    "header, expected",
    [
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 32777\r\n", (1, ("203.0.113.7", 56324), False)),
        (b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n", (1, ("2001:db8::7", 1), False)),
        (b"PROXY UNKNOWN\r\n", (1, None, False)),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", (1, None, False)),
        (V2_TCP4, (2, ("203.0.113.7", 5000), False)),
        (V2_TCP6, (2, ("2001:db8::7", 6000), False)),
        (v2(0, 0x00, b""), (2, None, True)),  # LOCAL: HAProxy's own health check
        (v2(0, 0x11, b"\x00" * 12), (2, None, True)),
        (v2(1, 0x00, b""), (2, None, False)),  # PROXY over an unspecified family
        (v2(1, 0x11, V2_TCP4[16:] + b"\x04\x00\x01x"), (2, ("203.0.113.7", 5000), False)),  # a TLV, skipped
    ],
)
def test_valid_headers(header, expected):
    assert header_length(header + b"hello\n") == len(header)
    found = parse(header)
    assert (found.version, found.source, found.local) == expected and found.length == len(header)


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 203.0.113.7 192.0.2.1 56324\r\n",  # a port missing
        b"PROXY TCP4 203.0.113.7 192.0.2.1 056324 1\r\n",  # a leading zero
        b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 1\r\n",  # past 65535
        b"PROXY TCP4 2001:db8::7 192.0.2.1 1 1\r\n",  # not TCP4
        b"PROXY TCP4 203.0.113.300 192.0.2.1 1 1\r\n",
        b"PROXY TCP5 203.0.113.7 192.0.2.1 1 1\r\n",
        b"PROXY  TCP4 203.0.113.7 192.0.2.1 1 1\r\n",  # two spaces
        b"PROXY TCP4 203.0.113.7 192.0.2.1 \xd9\xa1 1\r\n",  # a non-ASCII digit
        V2_SIGNATURE + bytes([0x11, 0x11]) + struct.pack("!H", 12) + b"\x00" * 12,  # version 1 in v2
        V2_SIGNATURE + bytes([0x22, 0x11]) + struct.pack("!H", 12) + b"\x00" * 12,  # command 2
        v2(1, 0x11, b"\x00" * 11),  # too short for IPv4
    ],
)
def test_invalid_headers(header):
    with pytest.raises(ProxyHeaderError):
        parse(header)


def test_header_length_asks_for_more_or_refuses():
    assert header_length(b"") is None and header_length(b"PRO") is None and header_length(b"PROXY TCP4 1") is None
    assert header_length(V2_TCP4[:5]) is None and header_length(V2_TCP4[:15]) is None
    assert header_length(V2_TCP4[:16]) == len(V2_TCP4)
    with pytest.raises(ProxyHeaderError, match="expected a PROXY header"):
        header_length(b"hello\n")
    with pytest.raises(ProxyHeaderError, match="expected a PROXY v2 header"):
        header_length(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1\r\n", "v2")
    with pytest.raises(ProxyHeaderError, match="expected a PROXY v1 header"):
        header_length(V2_TCP4, "v1")
    with pytest.raises(ProxyHeaderError, match="no CR LF in the first 107 bytes"):
        header_length(b"PROXY " + b"x" * 200)
    with pytest.raises(ProxyHeaderError, match="too long"):
        header_length(V2_SIGNATURE + b"\x21\x11\xff\xff")
    assert looks_like_header(b"PROX") and looks_like_header(V2_TCP4[:3]) and not looks_like_header(b"hello")


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    return a, b


@pytest.mark.parametrize("header", [b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 32777\r\n", V2_TCP4, V2_TCP6])
@pytest.mark.parametrize("step", [1, 3, 17, 1000])
def test_read_header_takes_exactly_the_header_however_it_is_split(header, step):
    server, client = pair()
    data = header + b"first line\nsecond\n"

    def send() -> None:
        for i in range(0, len(data), step):
            client.sendall(data[i : i + step])
            time.sleep(0.001)

    sender = threading.Thread(target=send)
    sender.start()
    found = read_header(server, "auto", timeout=10)
    sender.join()
    assert isinstance(found, ProxyHeader) and found.source is not None and found.length == len(header)
    rest = b""
    while len(rest) < len(b"first line\nsecond\n"):
        rest += server.recv(100)
    assert rest == b"first line\nsecond\n"  # the client's bytes are all still there
    server.close()
    client.close()


@pytest.mark.timeout(30)
def test_read_header_has_a_deadline_and_sees_a_bare_close():
    server, client = pair()
    server.settimeout(None)  # only read_header's own deadline can end the wait (or the test's timeout)
    client.sendall(b"PROXY TCP4 203.0.113.7")  # and then nothing
    started = time.monotonic()
    with pytest.raises(ProxyHeaderError, match="within 0.3s"):
        read_header(server, "auto", timeout=0.3)
    assert time.monotonic() - started >= 0.3  # not before the deadline: the clock started before the call
    server, client = pair()
    client.close()  # a TCP health check: connect, close
    with pytest.raises(EOFError):
        read_header(server, "auto", timeout=5)
    server, client = pair()
    client.sendall(b"hello\n")  # a client speaking before (or instead of) a header
    with pytest.raises(ProxyHeaderError, match="expected a PROXY header"):
        read_header(server, "auto", timeout=5)


def test_allowed_networks():
    networks = parse_networks("127.0.0.1/32, ::1/128,10.0.0.0/8")
    assert allowed("127.0.0.1", networks) and allowed("10.1.2.3", networks) and allowed("::1", networks)
    assert allowed("::ffff:127.0.0.1", networks)  # an IPv4 client on a dual-stack listener
    assert not allowed("127.0.0.2", networks) and not allowed("unix", networks)
    with pytest.raises(ValueError, match="not a network"):
        parse_networks("127.0.0.1/33")


def tcp_pair() -> tuple[socket.socket, socket.socket, tuple]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=10)
    server, addr = listener.accept()
    server.settimeout(10)
    listener.close()
    return server, client, addr


TRUSTED = parse_networks("127.0.0.1/32")
ELSEWHERE = parse_networks("10.0.0.0/8")
V1_HEADER = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 32777\r\n"


@pytest.mark.parametrize(
    "mode, trusted, sent, expected",
    [
        ("auto", TRUSTED, V1_HEADER + b"line\n", ("203.0.113.7", 56324)),
        ("v2", TRUSTED, V2_TCP4 + b"line\n", ("203.0.113.7", 5000)),
        ("auto", TRUSTED, v2(0, 0, b"") + b"line\n", "peer"),  # LOCAL: the balancer itself
        ("auto", TRUSTED, b"PROXY UNKNOWN\r\nline\n", "peer"),
        ("auto", TRUSTED, b"line\n", None),  # a trusted peer must send a header
        ("v1", TRUSTED, V2_TCP4 + b"line\n", None),  # of the version the listener takes
        ("auto", TRUSTED, b"", None),  # a bare TCP health check
        ("auto", ELSEWHERE, b"line\n", "peer"),  # a direct client
        ("auto", ELSEWHERE, V1_HEADER + b"line\n", None),  # a direct client may not spoof an address
        ("auto", ELSEWHERE, V2_TCP4 + b"line\n", None),
        ("off", TRUSTED, V1_HEADER, "peer"),  # off: nothing is read
    ],
)
def test_client_address(mode, trusted, sent, expected):
    server, client, addr = tcp_pair()
    if sent:
        client.sendall(sent)
    else:
        client.close()
    found = client_address(server, addr, mode, trusted)
    assert found == (addr if expected == "peer" else expected)
    if found is not None and mode != "off":
        assert server.recv(100) == b"line\n"  # the client's bytes are left for the line reader
    server.close()
    client.close()


def test_an_untrusted_header_sent_in_pieces_is_still_refused():
    server, client, addr = tcp_pair()

    def send() -> None:
        client.sendall(b"PRO")
        time.sleep(0.2)
        client.sendall(V1_HEADER[3:])

    threading.Thread(target=send).start()
    assert client_address(server, addr, "auto", ELSEWHERE) is None
    server.close()
    client.close()


# ---- a real server: server.proxy_protocol and server.proxy_allow_from ----


def closed(sock: socket.socket) -> bool:
    """The server closed the connection without a reply (a reset, as unread bytes were left, counts)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def lines_via(port: int, data: bytes, count: int) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return read_lines(sock, count)


def test_the_app_sees_the_client_the_header_names():
    with ServerProcess(["testapps:client_addr", "--workers", "1", "--proxy-protocol", "auto"]) as srv:
        assert lines_via(srv.port, V1_HEADER + b"a\nb\n", 2) == [b"203.0.113.7 a", b"203.0.113.7 b"]
        assert lines_via(srv.port, V2_TCP6 + b"c\n", 1) == [b"2001:db8::7 c"]
        assert lines_via(srv.port, v2(0, 0, b"") + b"d\n", 1) == [b"127.0.0.1 d"]  # LOCAL: the peer itself
        # A trusted peer without a header, and a health check that only connects: closed, logged or not.
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(b"no header\n")
            assert closed(sock)
        socket.create_connection(("127.0.0.1", srv.port), timeout=10).close()
        wait_for(lambda: "closing a connection from 127.0.0.1: expected a PROXY header" in srv.logs())
        assert srv.logs().count("closing a connection") == 1


def test_proxy_protocol_per_listener_and_untrusted_peers():
    direct, proxied = free_port(), free_port()
    args = ["testapps:client_addr", "--workers", "1", "--proxy-protocol", "off,v2"]
    bind = f"127.0.0.1:{direct},127.0.0.1:{proxied}"
    with ServerProcess(args, bind=bind) as srv:
        assert lines_via(direct, b"plain\n", 1) == [b"127.0.0.1 plain"]
        assert lines_via(proxied, V2_TCP4 + b"x\n", 1) == [b"203.0.113.7 x"]
    # 127.0.0.1 outside the trusted networks: a direct client is served as itself, a spoofed header closed.
    args = ["testapps:client_addr", "--workers", "1", "--proxy-protocol", "auto", "--proxy-allow-from", "10.0.0.0/8"]
    with ServerProcess(args) as srv:
        assert lines_via(srv.port, b"direct\n", 1) == [b"127.0.0.1 direct"]
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(V1_HEADER + b"spoofed\n")
            assert closed(sock)
        wait_for(lambda: "a PROXY header from outside server.proxy_allow_from" in srv.logs())


def test_ingest_stores_the_original_client_address(dsn):
    table = "proxied_lines"
    query(dsn, f"DROP TABLE IF EXISTS `{table}`")
    args = ["--dsn", dsn, "--table", table, "--workers", "1", "--proxy-protocol", "v1"]
    with ServerProcess(args) as srv:
        assert lines_via(srv.port, V1_HEADER + b"stored\n", 1) == [b"OK"]
    assert query(dsn, f"SELECT client_addr, payload FROM `{table}`") == [("203.0.113.7", "stored")]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--proxy-protocol", "v3"], "server.proxy_protocol: invalid value 'v3'"),
        (["--proxy-protocol", "v1,v2"], "server.proxy_protocol: 2 values for the 1 addresses of server.bind"),
        (["--proxy-allow-from", "10.0.0.0/33"], "server.proxy_allow_from: invalid value '10.0.0.0/33'"),
    ],
)
def test_bad_proxy_settings(args, expected):
    assert expected in one_error_line(run_cli("check", "workers.echo:app", *args))


@pytest.mark.timeout(60)
def test_a_graceful_stop_closes_connections_still_reading_their_header():
    """TERM with graceful_timeout 60 s while two connections have not become clients yet: a trusted one
    that sent half a v2 header (and sends the rest once the stop has begun), and an untrusted one from
    127.0.0.2 that sent nothing (the worker waits to see whether it sends a header). The stop closes both,
    and the worker exits by itself, long before graceful_timeout: before, each became a client the stop had
    not seen, and the worker was killed after graceful_timeout."""
    args = ["testapps:client_addr", "--workers", "1", "--graceful-timeout", "60"]
    args += ["--proxy-protocol", "v2", "--proxy-allow-from", "127.0.0.1/32"]
    with ServerProcess(args) as srv:
        half = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        half.sendall(V2_TCP4[:8])
        untrusted = socket.create_connection(("127.0.0.1", srv.port), timeout=10, source_address=("127.0.0.2", 0))
        # One worker accepts in order: once a later connection is served, both were accepted.
        assert lines_via(srv.port, V2_TCP4 + b"x\n", 1) == [b"203.0.113.7 x"]
        srv.signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
            except OSError:
                return True
            return False

        wait_for(refused, what="the listener to close")  # the worker's graceful stop has begun
        try:
            half.sendall(V2_TCP4[8:] + b"late\n")
        except OSError:
            pass  # already closed by the stop
        assert closed(half) and closed(untrusted)
        assert srv.wait(timeout=30) == 0
        logs = srv.logs()
        assert "outlived" not in logs and "did not stop within graceful_timeout" not in logs, logs
        half.close()
        untrusted.close()


@pytest.mark.timeout(60)
def test_headers_are_read_past_descriptor_1023():
    """1,100 connections each waiting for the rest of its header: the worker's descriptors go past 1023, where
    select() refuses to wait (the greenlet died with a ValueError and its slot leaked); the next client's
    header is still read and its lines answered."""
    args = ["testapps:client_addr", "--workers", "1", "--proxy-protocol", "v1", "--worker-connections", "1200"]
    with ServerProcess(args) as srv:
        waiting = []
        try:
            for _ in range(1100):
                sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                sock.sendall(b"PROXY ")
                waiting.append(sock)
            assert lines_via(srv.port, V1_HEADER + b"served\n", 1) == [b"203.0.113.7 served"]
        finally:
            for sock in waiting:
                sock.close()
        assert "ValueError" not in srv.logs()
