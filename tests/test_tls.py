"""TLS on the listeners, for real: the master as a subprocess, certificates made by openssl (tests/certs.py),
Python's ssl and the ``openssl s_client`` binary as clients, rows read back from MariaDB.

One server serves most tests (module scope): four listeners on one worker, TLS, plaintext, mutual TLS and
mutual TLS that lets in no name the test CA signed, with a 2 s handshake deadline.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.mariadb import free_port
from tests.certs import Pki
from tests.helpers import query
from tests.server import ServerProcess, roundtrip, wait_for
from tests.test_cli import one_error_line, run_cli

HANDSHAKE_S = 2  # server.tls_handshake_timeout of these servers
IO_S = 15  # a client's socket timeout: far above the handshake deadline, so a close by the server is what ends a read
V1_HEADER = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 32777\r\n"


class Ports:
    def __init__(self, srv: ServerProcess, metrics: int, names: list[str]) -> None:
        self.srv = srv
        self.metrics = metrics
        self.by_name = dict(zip(names, (int(a.rsplit(":", 1)[1]) for a in srv.listening()), strict=True))

    def __getattr__(self, name: str) -> int:
        return self.by_name[name]


@pytest.fixture(scope="module")
def server(pki: Pki) -> Iterator[Ports]:
    names = ["tls", "plain", "mtls", "strict"]
    ports = [free_port() for _ in names]
    metrics = free_port()
    cert, key, ca = pki.server_chain, pki.server_key, pki.ca
    args = ["testapps:TlsWhoAmI", "--workers", "1", "--metrics-bind", f"127.0.0.1:{metrics}"]
    args += ["--bind", ",".join(f"127.0.0.1:{p}" for p in ports)]
    args += ["-s", f"server.tls_cert={cert},,{cert},{cert}", "-s", f"server.tls_key={key},,{key},{key}"]
    args += ["-s", f"server.tls_client_ca=,,{ca},{ca}", "-s", "server.tls_client_names=,,client1,someone-else"]
    args += ["-s", f"server.tls_handshake_timeout={HANDSHAKE_S}"]
    with ServerProcess(args, bind=None) as srv:
        yield Ports(srv, metrics, names)


def tls_client(pki: Pki, cert: Path | None = None, key: Path | None = None, **versions) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    for name, value in versions.items():
        setattr(ctx, name, value)
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def tls_connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=IO_S)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def exchange(sock: ssl.SSLSocket | socket.socket, payload: bytes, count: int) -> list[bytes]:
    """Send, then read until ``count`` reply lines came (or the server closed: fewer)."""
    sock.sendall(payload)
    buf = b""
    while buf.count(b"\n") < count:
        data = sock.recv(1 << 20)
        if not data:
            break
        buf += data
    return buf.split(b"\n")[:-1]


def refused(port: int, ctx: ssl.SSLContext) -> str:
    """Connect with ``ctx`` and say how the server refused: the error, or EOF, before any reply."""
    try:
        with tls_connect(port, ctx) as sock:
            # TLS 1.3: the client's handshake ends before the server checked the client's certificate; the
            # server's alert comes at the first read.
            replies = exchange(sock, b"hello\n", 1)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
        return repr(exc)
    assert replies == [], replies
    return "EOF"


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def logged(srv: ServerProcess, reason: str, line: str) -> bool:
    """The worker's rate-limited log said it: the line itself, or the sum of those left out by reason."""
    logs = srv.logs()
    return line in logs or re.search(rf"not logged one by one: .*\b{re.escape(reason)}\b", logs)


def test_lines_pipelined_and_large_over_tls(server: Ports, pki: Pki):
    """Many pipelined lines and lines close to max_line: the connection reads and sends through OpenSSL
    (greensock's slow path), never around it."""
    lines = [f"line {i}".encode() for i in range(2000)] + [b"x" * 60000, b"y" * 65536, b"z"]
    with tls_connect(server.tls, tls_client(pki)) as sock:
        assert exchange(sock, b"".join(line + b"\n" for line in lines), len(lines)) == lines
        assert exchange(sock, b"whoami\n", 1) == [b"none"]  # no client certificate asked


def test_mutual_tls(server: Ports, pki: Pki):
    with tls_connect(server.mtls, tls_client(pki, pki.client, pki.client_key)) as sock:
        assert exchange(sock, b"a\nwhoami\n", 2) == [b"a", b"CN=client1 client1 DNS:client1.example"]
    assert refused(server.mtls, tls_client(pki))
    assert refused(server.mtls, tls_client(pki, pki.other_client, pki.other_client_key))
    assert refused(server.strict, tls_client(pki, pki.client, pki.client_key))  # not in tls_client_names
    srv = server.srv
    wait_for(lambda: logged(srv, "no-certificate", "PEER_DID_NOT_RETURN_A_CERTIFICATE"), what="no-certificate")
    wait_for(lambda: logged(srv, "bad-certificate", "CERTIFICATE_VERIFY_FAILED"), what="bad-certificate")
    wait_for(lambda: logged(srv, "name-not-allowed", "not in server.tls_client_names"), what="name-not-allowed")


def test_openssl_s_client(server: Ports, pki: Pki):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is missing; install it with: sudo apt-get install openssl", pytrace=False)
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{server.tls}", "-CAfile", str(pki.ca)]
    # -quiet ignores the end of its input: the reply is read, then its input closed and its exit awaited.
    quiet = [*base, "-quiet", "-no_ign_eof", "-verify_return_error"]
    with subprocess.Popen(quiet, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            proc.stdin.write(b"hi\n")
            proc.stdin.flush()
            assert select.select([proc.stdout], [], [], IO_S)[0], "no reply to openssl s_client"
            assert os.read(proc.stdout.fileno(), 100) == b"hi\n"  # -quiet: the echo alone
            proc.stdin.close()
            assert proc.wait(IO_S) == 0, proc.stderr.read()
        finally:
            proc.kill()
    # TLS 1.1 (OpenSSL 3 allows it only at security level 0): refused by the server's minimum, 1.2.
    old = [*base, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]
    done = subprocess.run(old, input=b"hi\n", capture_output=True, timeout=30)
    assert done.returncode != 0 and b"hi\n" not in done.stdout, done
    wait_for(lambda: logged(server.srv, "protocol-version", "UNSUPPORTED_PROTOCOL"), what="protocol-version")


def test_handshakes_never_completing_block_nobody_and_are_closed(server: Ports, pki: Pki):
    silent = socket.create_connection(("127.0.0.1", server.tls), timeout=IO_S)
    hello = socket.create_connection(("127.0.0.1", server.tls), timeout=IO_S)
    hello.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, never the rest
    try:
        # Meanwhile the same (only) worker serves other clients, TLS and plaintext.
        with tls_connect(server.tls, tls_client(pki)) as sock:
            assert exchange(sock, b"served\n", 1) == [b"served"]
        assert roundtrip(server.plain, [b"plain"]) == [b"plain"]
        assert closed_by_server(silent) and closed_by_server(hello)  # after the 2 s deadline
    finally:
        silent.close()
        hello.close()
    wait_for(lambda: logged(server.srv, "timeout", "no TLS handshake within"), what="timeout")


def test_the_wrong_protocol_is_closed_at_once(server: Ports, pki: Pki):
    with socket.create_connection(("127.0.0.1", server.tls), timeout=IO_S) as sock:
        sock.sendall(b"plaintext\n")
        assert closed_by_server(sock)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls_connect(server.plain, tls_client(pki)).close()
    srv = server.srv
    wait_for(lambda: logged(srv, "plaintext-on-tls", "plaintext on a TLS listener"), what="plaintext-on-tls")
    wait_for(lambda: logged(srv, "tls-on-plaintext", "a TLS ClientHello on a plaintext listener"), what="tls on plain")
    # The plaintext listener goes on serving lines.
    assert roundtrip(server.plain, [b"after"]) == [b"after"]


def test_metrics_count_handshakes_and_failures(server: Ports, pki: Pki):
    with tls_connect(server.tls, tls_client(pki)) as sock:
        assert exchange(sock, b"m\n", 1) == [b"m"]
    with socket.create_connection(("127.0.0.1", server.tls), timeout=IO_S) as sock:
        sock.sendall(b"plaintext\n")
        assert closed_by_server(sock)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=IO_S) as reply:
            return reply.read().decode()

    def counted(text: str) -> bool:
        handshakes = re.search(r"^prefork_tls_handshakes_total\{[^}]*\} (\d+)", text, re.M)
        wrong = re.search(r'^prefork_wrong_protocol_total\{[^}]*found="plaintext"\} (\d+)', text, re.M)
        return bool(handshakes and int(handshakes[1]) >= 1 and wrong and int(wrong[1]) >= 1)

    text = wait_for(lambda: (t := scrape()) and counted(t) and t, what="TLS counts in /metrics")
    assert "# TYPE prefork_tls_handshake_failures_total counter" in text


def served_cert(port: int, pki: Pki) -> dict:
    with tls_connect(port, tls_client(pki)) as sock:
        assert exchange(sock, b"x\n", 1) == [b"x"]
        return sock.getpeercert()


def test_reload_reads_new_certificates_and_refuses_a_bad_pair(pki: Pki, tmp_path: Path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.server, cert)
    shutil.copy(pki.server_key, key)
    args = ["workers.echo:app", "--workers", "1", "--tls-cert", str(cert), "--tls-key", str(key)]
    with ServerProcess(args) as srv:
        first = served_cert(srv.port, pki)
        # cp new.pem cert.pem; kill -HUP: the new generation serves the new certificate.
        shutil.copy(pki.soon, cert)
        shutil.copy(pki.soon_key, key)
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "Reloaded: generation 2" in srv.logs(), what="the reload")
        second = served_cert(srv.port, pki)
        assert second["notAfter"] != first["notAfter"]
        # A key that is not the certificate's: the reload is refused, generation 2 keeps serving.
        shutil.copy(pki.client_key, key)
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in srv.logs(), what="the refused reload")
        line = next(x for x in srv.logs().splitlines() if "reload failed" in x)
        assert f"server.tls_key: {key} is not the key of the certificate {cert}" in line, line
        assert served_cert(srv.port, pki)["notAfter"] == second["notAfter"]
        assert "Reloaded: generation 3" not in srv.logs()


def test_check_shows_expiry_and_warns(pki: Pki):
    done = run_cli("check", "workers.echo:app", "--tls-cert", str(pki.server_chain), "--tls-key", str(pki.server_key))
    assert done.returncode == 0, done.stderr
    assert re.search(r"TLS on 127\.0\.0\.1:32777: .*server-chain\.pem \(CN=localhost\) expires 20\d\d-", done.stdout)
    assert "warning" not in done.stderr
    done = run_cli("check", "workers.echo:app", "--tls-cert", str(pki.soon), "--tls-key", str(pki.soon_key))
    assert done.returncode == 0, done.stderr
    assert "in 5 days" in done.stdout or "in 4 days" in done.stdout, done.stdout
    assert "warning: the TLS certificate of 127.0.0.1:32777 expires within 14 days" in done.stderr


@pytest.mark.parametrize(
    "cert, key, expected",
    [
        ("expired", "expired_key", r"server.tls_cert: .*expired\.pem expired on 2020-01-31 00:00:00 UTC"),
        ("missing", "server_key", r"server.tls_cert: cannot read .*missing\.pem: No such file or directory"),
        ("server", "client_key", r"server.tls_key: .*client\.key is not the key of the certificate .*server\.pem"),
        ("ca_key", "server_key", r"server.tls_cert: .*ca\.key holds no PEM certificate"),
    ],
)
def test_start_refuses_bad_files_with_one_line(pki: Pki, cert: str, key: str, expected: str):
    """An expired certificate refuses the start (exit 2), as an unreadable or mismatched pair does."""
    done = run_cli("run", "workers.echo:app", "--bind", f"127.0.0.1:{free_port()}", "--tls-cert",
                   str(getattr(pki, cert)), "--tls-key", str(getattr(pki, key)))  # fmt: skip
    assert re.search(expected, one_error_line(done)), done.stderr


def test_ingest_over_tls_behind_a_proxy_header(pki: Pki, dsn: str):
    """HAProxy in TCP mode passing TLS through: the PROXY header first, then the handshake; every line
    stored under the address the header names."""
    table = "tls_lines"
    query(dsn, f"DROP TABLE IF EXISTS `{table}`")
    args = ["--dsn", dsn, "--table", table, "--workers", "1", "--proxy-protocol", "v1"]
    args += ["--tls-cert", str(pki.server_chain), "--tls-key", str(pki.server_key)]
    lines = [f"stored {i}".encode() for i in range(50)]
    with ServerProcess(args) as srv:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=IO_S)
        raw.sendall(V1_HEADER)
        with tls_client(pki).wrap_socket(raw, server_hostname="localhost") as sock:
            assert exchange(sock, b"".join(line + b"\n" for line in lines), len(lines)) == [b"OK"] * len(lines)
    rows = query(dsn, f"SELECT client_addr, payload FROM `{table}` ORDER BY id")
    assert rows == [("203.0.113.7", line.decode()) for line in lines]


def test_bad_tls_settings():
    for args, expected in [
        (["--tls-key", "/k.pem"], "server.tls_key: '/k.pem' is set for a listener without server.tls_cert"),
        (["-s", "server.tls_min_version=1.1"], "server.tls_min_version: invalid value '1.1'"),
        (["--tls-cert", "/c.pem", "-s", "server.tls_ciphers=NOPE"], "server.tls_ciphers: invalid value 'NOPE'"),
        (["--tls-cert", "/c.pem,/d.pem"], "server.tls_cert: 2 values for the 1 addresses of server.bind"),
        (["--tls-cert", "/c.pem", "-s", "server.tls_client_names=a"], "server.tls_client_names: allowed client"),
    ]:
        assert expected in one_error_line(run_cli("check", "workers.echo:app", *args)), args


def test_a_tls_connection_is_served_through_a_reload_and_closed(pki: Pki):
    """Its TLS state lives in the old worker's OpenSSL: not handed off, served through the stop (counted as
    a fallback), then closed with close_notify."""
    args = ["workers.echo:app", "--workers", "1", "--tls-cert", str(pki.server_chain), "--tls-key", str(pki.server_key)]
    with ServerProcess(args) as srv:
        with tls_connect(srv.port, tls_client(pki)) as sock:
            assert exchange(sock, b"before\n", 1) == [b"before"]
            srv.signal(signal.SIGHUP)
            wait_for(lambda: "Reloaded: generation 2" in srv.logs(), what="the reload")
            time.sleep(0.1)  # the old worker has begun its stop: what comes now is still served by it
            assert exchange(sock, b"during\n", 1) == [b"during"]
            sock.settimeout(IO_S)
            assert sock.recv(100) == b""  # the server's close_notify, once the client was quiet
        wait_for(lambda: srv.status()["handoffs"]["fallback"] >= 1, what="the fallback counted")


@pytest.mark.parametrize("method", ["load", "insert"])
def test_ingest_stores_the_client_certificate(pki: Pki, dsn: str, method: str):
    """ingest.client_cert = on: the column is added to a table made without it, and each row holds the subject
    of its client's verified certificate (NULL from the plaintext listener)."""
    from workers.schema import create_table_sql

    table = "tls_cert_lines"
    query(dsn, f"DROP TABLE IF EXISTS `{table}`")
    query(dsn, create_table_sql(table))
    mtls, plain = free_port(), free_port()
    args = ["--dsn", dsn, "--table", table, "--workers", "1", "--ingest-method", method, "--bind"]
    args += [f"127.0.0.1:{mtls},127.0.0.1:{plain}", "-s", "ingest.client_cert=on"]
    args += [
        "--tls-cert",
        f"{pki.server_chain},",
        "--tls-key",
        f"{pki.server_key},",
        "-s",
        f"server.tls_client_ca={pki.ca},",
    ]
    with ServerProcess(args, bind=None) as srv:
        with tls_connect(mtls, tls_client(pki, pki.client, pki.client_key)) as sock:
            assert exchange(sock, b"signed 1\nsigned 2\n", 2) == [b"OK", b"OK"]
        assert roundtrip(plain, [b"anonymous"]) == [b"OK"]
        assert "cannot create the tables" not in srv.logs()
    rows = query(dsn, f"SELECT client_cert, payload FROM `{table}` ORDER BY id")
    assert rows == [("CN=client1", "signed 1"), ("CN=client1", "signed 2"), (None, "anonymous")]


def test_allow_from_is_checked_before_the_handshake(pki: Pki):
    args = ["workers.echo:app", "--workers", "1", "--allow-from", "127.0.0.2/32"]
    args += ["--tls-cert", str(pki.server_chain), "--tls-key", str(pki.server_key)]
    with ServerProcess(args) as srv:
        assert refused(srv.port, tls_client(pki))  # from 127.0.0.1: closed at accept
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=IO_S, source_address=("127.0.0.2", 0))
        with tls_client(pki).wrap_socket(raw, server_hostname="localhost") as sock:
            assert exchange(sock, b"allowed\n", 1) == [b"allowed"]
        wait_for(lambda: "outside server.allow_from" in srv.logs(), what="the refusal")
        assert "TLS handshake failed" not in srv.logs()


@pytest.mark.timeout(60)
def test_a_graceful_stop_ends_handshakes_under_way(pki: Pki):
    """TERM with graceful_timeout and the handshake deadline both 60 s, while one connection sent nothing and
    another half a ClientHello: the stop closes both at once and the worker exits by itself, long before
    either deadline (it would be killed at graceful_timeout otherwise)."""
    args = ["workers.echo:app", "--workers", "1", "--graceful-timeout", "60", "-s", "server.tls_handshake_timeout=60"]
    args += ["--tls-cert", str(pki.server_chain), "--tls-key", str(pki.server_key)]
    with ServerProcess(args) as srv:
        silent = socket.create_connection(("127.0.0.1", srv.port), timeout=IO_S)
        half = socket.create_connection(("127.0.0.1", srv.port), timeout=IO_S)
        half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        with tls_connect(srv.port, tls_client(pki)) as sock:  # one worker accepts in order: both are in
            assert exchange(sock, b"x\n", 1) == [b"x"]
        srv.signal(signal.SIGTERM)
        try:
            assert closed_by_server(silent) and closed_by_server(half)
            assert srv.wait(timeout=30) == 0
        finally:
            silent.close()
            half.close()
        logs = srv.logs()
        assert "outlived" not in logs and "did not stop within graceful_timeout" not in logs, logs


def test_tls_on_a_unix_socket_listener(pki: Pki, tmp_path: Path):
    """TLS is the listener's, whatever its family: a unix socket listener with a certificate speaks TLS (the
    client checks the name it was given), and a plaintext client there is closed at once."""
    path = tmp_path / "tls.sock"
    args = ["workers.echo:app", "--workers", "1", "--bind", f"unix:{path}"]
    args += ["--tls-cert", str(pki.server_chain), "--tls-key", str(pki.server_key)]
    with ServerProcess(args, bind=None):
        raw = socket.socket(socket.AF_UNIX)
        raw.settimeout(IO_S)
        raw.connect(str(path))
        with tls_client(pki).wrap_socket(raw, server_hostname="localhost") as sock:
            assert exchange(sock, b"over\nunix\n", 2) == [b"over", b"unix"]
        with socket.socket(socket.AF_UNIX) as plain:
            plain.settimeout(IO_S)
            plain.connect(str(path))
            try:
                assert exchange(plain, b"plaintext\n", 1) == []  # closed without a reply
            except ConnectionResetError:
                pass  # closed with the line unread: a reset
