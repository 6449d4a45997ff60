"""Attacks on a TLS listener (the real master, one worker, `workers.echo:app`), each while a normal TLS client
is served: thousands of half-open handshakes, an oversized ClientHello, a renegotiation attempt, an expired
client certificate. None stalls the other client, none leaks a slot of the worker, each ends with a log
line (rate-limited: the line itself, or the summary by reason) and a count.

The worker has WORKER_CONNECTIONS slots and a handshake deadline far longer than any test here: a slot that
leaked, or a client held up behind the attack, would show as the normal client's read timing out, never as
a test that passes slowly.
"""

from __future__ import annotations

import os
import re
import select
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.mariadb import free_port
from tests.certs import Pki, _signed
from tests.server import ServerProcess, wait_for
from tests.test_tls import IO_S, exchange, logged, refused, tls_client, tls_connect

pytestmark = pytest.mark.hostile

WORKER_CONNECTIONS = 1200
HANDSHAKE_S = 120  # never reached: a test that waited for it would time out first
HALF_OPEN = WORKER_CONNECTIONS - 1  # one slot left for the normal client
CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a record and a ClientHello begun


class Server:
    def __init__(self, srv: ServerProcess, port: int, metrics: int) -> None:
        self.srv, self.port, self.metrics = srv, port, metrics

    def counts(self) -> dict[str, int]:
        """The TLS counters of /metrics: handshakes, and failures by reason."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=IO_S) as reply:
            text = reply.read().decode()
        found = {"handshakes": int(re.search(r"^prefork_tls_handshakes_total\{[^}]*\} (\d+)", text, re.M)[1])}
        for reason, n in re.findall(
            r'^prefork_tls_handshake_failures_total\{[^}]*reason="([^"]+)"\} (\d+)', text, re.M
        ):
            found[reason] = int(n)
        return found

    def counted(self, before: dict[str, int], reason: str, n: int) -> None:
        """Wait until /metrics counts ``n`` more of ``reason`` than ``before`` (the workers report every second)."""
        last: dict[str, int] = {}

        def enough() -> bool:
            last.update(self.counts())
            return last.get(reason, 0) - before.get(reason, 0) >= n

        try:
            wait_for(enough, timeout=30, what=f"{n} more {reason}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {before} -> {last}") from None

    def served(self, pki: Pki, ctx: ssl.SSLContext | None = None) -> None:
        """A normal client is served now (its read times out if the worker is held up)."""
        with tls_connect(self.port, ctx or tls_client(pki)) as sock:
            assert exchange(sock, b"still served\n", 1) == [b"still served"]


@pytest.fixture(scope="module")
def server(pki: Pki) -> Iterator[Server]:
    port, metrics = free_port(), free_port()
    args = ["workers.echo:app", "--workers", "1", "--worker-connections", str(WORKER_CONNECTIONS)]
    args += ["--bind", f"127.0.0.1:{port}", "--metrics-bind", f"127.0.0.1:{metrics}"]
    args += ["--tls-cert", str(pki.server_chain), "--tls-key", str(pki.server_key)]
    args += ["-s", f"server.tls_client_ca={pki.ca}", "-s", f"server.tls_handshake_timeout={HANDSHAKE_S}"]
    with ServerProcess(args, bind=None) as srv:
        yield Server(srv, port, metrics)


@pytest.fixture(scope="module")
def client_ctx(pki: Pki) -> ssl.SSLContext:
    return tls_client(pki, pki.client, pki.client_key)


def open_half(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=IO_S)
        sock.sendall(CLIENT_HELLO_START)
        socks.append(sock)
    return socks


@pytest.mark.timeout(120)
def test_thousands_of_half_open_handshakes_hold_up_nobody_and_leak_no_slot(server: Server, pki: Pki, client_ctx):
    before = server.counts()
    wave = open_half(server.port, HALF_OPEN)
    try:
        server.served(pki, client_ctx)  # the one slot left
    finally:
        for sock in wave:
            sock.close()  # each handshake ends (eof) and gives its slot back
    server.counted(before, "eof", HALF_OPEN)  # every half-open handshake ended
    # Every slot is free again: as many half-open handshakes again, and the normal client still gets in.
    wave = open_half(server.port, HALF_OPEN)
    try:
        server.served(pki, client_ctx)
    finally:
        for sock in wave:
            sock.close()
    wait_for(lambda: logged(server.srv, "eof", "TLS handshake failed"), what="the log line")


def test_an_oversized_client_hello_is_closed(server: Server, pki: Pki, client_ctx):
    before = server.counts()
    # A record longer than TLS allows (2^14 + 2048), then a ClientHello claiming 16 MiB across records.
    record = b"\x16\x03\x01\xff\xff" + b"\x01" * 65535
    huge = b"\x16\x03\x01\x40\x00" + b"\x01\xff\xff\xff\x03\x03" + b"\x00" * (0x4000 - 6)
    for attack in (record, huge):
        with socket.create_connection(("127.0.0.1", server.port), timeout=IO_S) as sock:
            try:
                sock.sendall(attack)
                assert sock.recv(65536) is not None  # an alert, or the close
                while sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass
        server.served(pki, client_ctx)
    server.counted(before, "bad-handshake", 2)
    wait_for(lambda: logged(server.srv, "bad-handshake", "TLS handshake failed"), what="the log line")


def test_renegotiation_is_refused(server: Server, pki: Pki, client_ctx):
    """TLS 1.2 renegotiation (s_client's R command): refused with a no_renegotiation alert; the session
    ends with one line, and the worker serves on."""
    pid = server.srv.worker_pids()
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-CAfile", str(pki.ca), "-tls1_2"]
    command += ["-cert", str(pki.client), "-key", str(pki.client_key)]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        try:
            proc.stdin.write(b"before\n")
            proc.stdin.flush()
            seen = b""
            while b"\nbefore\n" not in seen:  # the echo: the session is up, the R comes as a line of its own
                assert select.select([proc.stdout], [], [], IO_S)[0], seen[-600:]
                chunk = os.read(proc.stdout.fileno(), 65536)  # not readline: select cannot see its buffer
                assert chunk, seen[-600:]
                seen += chunk
            proc.stdin.write(b"R\n")
            proc.stdin.flush()
            out, _ = proc.communicate(timeout=IO_S)
        finally:
            proc.kill()
    assert b"RENEGOTIATING" in out and b"no renegotiation" in out, out[-600:]
    wait_for(lambda: logged(server.srv, "tls-session-closed", "TLS session closed"), what="the log line")
    server.served(pki, client_ctx)
    assert server.srv.worker_pids() == pid


@pytest.fixture(scope="module")
def expired_client(pki: Pki) -> tuple[Path, Path]:
    _signed(
        pki.dir,
        "expired-client",
        "ca",
        "/CN=old",
        "DNS:old.example",
        "clientAuth",
        ("20200101000000Z", "20200131000000Z"),
    )
    return pki.dir / "expired-client.pem", pki.dir / "expired-client.key"


def test_an_expired_client_certificate_is_refused(server: Server, pki: Pki, client_ctx, expired_client):
    before = server.counts()
    ctx = tls_client(pki, *expired_client)
    assert refused(server.port, ctx)  # no reply: an error or EOF
    server.counted(before, "certificate-expired", 1)
    wait_for(lambda: logged(server.srv, "certificate-expired", "certificate has expired"), what="the log line")
    server.served(pki, client_ctx)
