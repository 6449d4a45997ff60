"""prefork.client and `prefork send` over TLS, against a real TLS terminator: HAProxy (`ssl crt` on its bind
lines, TCP mode) in front of a plaintext prefork storing into the private MariaDB. Lines and rows, a connection
cut mid-stream resent and stored once (line ids), mutual TLS, a wrong CA, a name the certificate does not
carry, the command line, the client under gevent; against `openssl s_server`, an expired certificate and a
server older than TLS 1.2; the units that need no server at the end.

One HAProxy and one prefork serve the whole module. The tests reach them only through ``TLSFronts``, so
another TLS endpoint (prefork's own TLS listeners) can stand in for HAProxy."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from devtools.haproxy import Frontend, HAProxy, Server
from devtools.mariadb import MariaDBServer, free_port
from prefork.client import Client, ClientError
from prefork.client_tls import client_context
from tests.certs import Pki
from tests.helpers import INNODB_TRX_POLL_S, connect, query
from tests.server import ServerProcess, test_env, wait_for
from tests.test_cli import one_error_line, run_cli

TABLE = "t_client_tls"
ALIAS_HOST = "127.0.0.3"  # a loopback address the server certificate does not name


@dataclass
class TLSFronts:
    """TLS endpoints in front of one ingest server (line ids on): ``tls`` asks for no client certificate,
    ``mutual`` requires one signed by pki.ca, ``alias`` is ``tls`` on an address the certificate does not
    name. ``freeze()`` stops passing bytes either way (held, not lost); ``cut()`` then breaks every connection
    through them, what was held included, and returns once new connections are taken again."""

    tls: str
    mutual: str
    alias: str
    dsn: str
    freeze: Callable[[], None]
    cut: Callable[[], None]


@pytest.fixture(scope="module")
def fronts(mariadb: MariaDBServer, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSFronts]:
    base = tmp_path_factory.mktemp("client-tls")
    crt = base / "haproxy-server.pem"  # HAProxy takes the chain and the key from one file
    crt.write_text(pki.server_chain.read_text() + pki.server_key.read_text())
    with ServerProcess(["--dsn", mariadb.dsn, "--table", TABLE, "--workers", "1", "--line-ids", "on"]) as srv:
        ports = [free_port(), free_port(), free_port(ALIAS_HOST)]
        tls, mutual = f"ssl crt {crt}", f"ssl crt {crt} ca-file {pki.ca} verify required"
        frontends = [
            Frontend(name, host, port, [Server(name + "1", "127.0.0.1", srv.port)], bind_options=options)
            for name, host, port, options in (
                ("tls", "127.0.0.1", ports[0], tls),
                ("mutual", "127.0.0.1", ports[1], mutual),
                ("alias", ALIAS_HOST, ports[2], tls),
            )
        ]
        haproxy = HAProxy(base / "haproxy", frontends)

        def freeze() -> None:
            assert haproxy.proc is not None
            haproxy.proc.send_signal(signal.SIGSTOP)

        def cut() -> None:
            # Killed, HAProxy drops what it holds both ways: lines it read, replies it had not passed on.
            assert haproxy.proc is not None
            haproxy.proc.kill()
            haproxy.proc.wait(10)
            haproxy.start()

        with haproxy:
            addresses = (f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", f"{ALIAS_HOST}:{ports[2]}")
            yield TLSFronts(*addresses, mariadb.dsn, freeze, cut)


def stored(dsn: str, prefix: str) -> list[str]:
    return [row[0] for row in query(dsn, f"SELECT payload FROM `{TABLE}` WHERE payload LIKE %s", (prefix + "%",))]


@pytest.mark.timeout(60)
def test_lines_over_tls_are_answered_and_stored(fronts, pki):
    """Big lines too, so that TLS records are split across reads and writes."""
    lines = [f"tls-{i} " + "x" * (i % 3 * 9000) for i in range(1500)]
    with Client(fronts.tls, tls_ca=str(pki.ca), window=300) as client:
        assert client.send_all(lines) == ["OK"] * len(lines)
        assert client.tls_version in ("TLSv1.2", "TLSv1.3") and client.using_ids
    rows = stored(fronts.dsn, "tls-")
    assert sorted(rows) == sorted(lines)


def cut_with_replies_held(fronts: TLSFronts, locked: threading.Event) -> set[str]:
    """Lock the table (ingest's INSERT waits: the lines the client sends next cannot be committed), say so,
    freeze the fronts once the server waits with lines, unlock, let it commit them and write their replies
    into the frozen fronts, and cut: those lines are stored and their replies lost. Returns the payloads
    stored at the cut. (In a thread of its own, with connections of its own: PyMySQL runs on gevent sockets
    here, which belong to the thread that made them.)"""
    waiting = "SELECT 1 FROM information_schema.PROCESSLIST WHERE STATE LIKE 'Waiting for table%'"
    count = f"SELECT COUNT(*) FROM `{TABLE}` WHERE payload LIKE 'cut-%'"
    try:
        with connect(fronts.dsn) as lock:
            cursor = lock.cursor()
            cursor.execute(f"LOCK TABLES `{TABLE}` WRITE")
            locked.set()
            try:
                wait_for(lambda: query(fronts.dsn, waiting), what="ingest's INSERT to wait for the lock")
                fronts.freeze()
                cursor.execute(count)  # the lock's holder alone can read the table: the rows before the held lines
                before = cursor.fetchone()[0]
            finally:
                cursor.execute("UNLOCK TABLES")
        wait_for(lambda: query(fronts.dsn, count)[0][0] > before, what="the held lines to be committed")
        idle = "SELECT 1 FROM information_schema.INNODB_TRX UNION ALL " + waiting
        wait_for(lambda: not query(fronts.dsn, idle), 20, INNODB_TRX_POLL_S, what="ingest's transactions to end")
        return set(stored(fronts.dsn, "cut-"))
    finally:
        locked.set()
        fronts.cut()  # whatever happened: the client must not wait for ever


@pytest.mark.timeout(60)
def test_a_cut_connection_is_resent_and_each_line_stored_once(fronts, pki, show):
    """The connection is cut while the server has stored lines whose replies the TLS terminator held: the
    client makes a new TLS connection, sends again every line without a reply, with its id, and each line is
    stored once."""
    lines = [f"cut-{i}" for i in range(3000)]
    cut_at = 1000
    replies: dict[str, str] = {}
    connection: dict[str, int] = {}  # a line's reply came on the connection after this many cuts
    cutter: concurrent.futures.Future[set[str]] | None = None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with Client(fronts.tls, tls_ca=str(pki.ca), ids=True, window=200, backoff=(0.05, 0.2)) as client:
            for n, (line, reply) in enumerate(client.stream(lines)):
                replies[line.decode()] = reply
                connection[line.decode()] = client.reconnects
                if n == cut_at:  # the cut comes from another thread while the client waits for replies
                    locked = threading.Event()
                    cutter = pool.submit(cut_with_replies_held, fronts, locked)
                    locked.wait(20)
        assert cutter is not None
        stored_at_cut = cutter.result()
    assert client.reconnects == 1 and client.resent > 0
    assert list(replies) == lines and set(replies.values()) == {"OK"}
    assert sorted(stored(fronts.dsn, "cut-")) == sorted(lines)  # every line, each once
    # Stored before the cut, answered only on the next connection: sent twice, stored once by their ids.
    twice_sent = {line for line in stored_at_cut if connection[line] == 1}
    show(f"client TLS: a cut, {client.resent} lines resent, {len(twice_sent)} of them already stored")
    assert twice_sent


@pytest.mark.timeout(60)
def test_mutual_tls_takes_the_client_certificate_and_refuses_none(fronts, pki):
    with Client(fronts.mutual, tls_ca=str(pki.ca), tls_cert=str(pki.client), tls_key=str(pki.client_key)) as client:
        assert client.send_all(["mtls-1"]) == ["OK"]
    with pytest.raises(ClientError, match=rf"TLS with {fronts.mutual} failed: the server requires a client cert"):
        Client(fronts.mutual, tls_ca=str(pki.ca)).send_all(["mtls-2"])
    key = str(pki.other_client_key)
    with pytest.raises(ClientError, match=rf"TLS with {fronts.mutual} failed: the server does not trust"):
        Client(fronts.mutual, tls_ca=str(pki.ca), tls_cert=str(pki.other_client), tls_key=key).send_all(["mtls-3"])
    assert stored(fronts.dsn, "mtls-") == ["mtls-1"]


@pytest.mark.timeout(60)
def test_a_certificate_from_another_ca_or_for_another_name_is_refused(fronts, pki):
    """Refused at once (trying again cannot mend it), naming the server and the reason."""
    with pytest.raises(ClientError, match=rf"cannot verify the certificate of {fronts.tls}: self-signed certificate"):
        Client(fronts.tls, tls_ca=str(pki.other_ca)).send_all(["name-1"])
    with pytest.raises(ClientError, match=rf"of {fronts.alias}: IP address mismatch.*--tls-server-name"):
        Client(fronts.alias, tls_ca=str(pki.ca)).send_all(["name-2"])
    with pytest.raises(ClientError, match=rf"of {fronts.tls} as other.example: Hostname mismatch"):
        Client(fronts.tls, tls_ca=str(pki.ca), server_name="other.example").send_all(["name-3"])
    with Client(fronts.alias, tls_ca=str(pki.ca), server_name="localhost") as client:  # the name it does carry
        assert client.send_all(["name-4"]) == ["OK"]
    assert stored(fronts.dsn, "name-") == ["name-4"]


@pytest.mark.timeout(60)
def test_prefork_send_over_tls(fronts, pki, tmp_path):
    source = tmp_path / "lines.txt"
    source.write_text("".join(f"cli-{i}\n" for i in range(300)))
    out = run_cli("send", "--tls-ca", str(pki.ca), "--to", fronts.tls, str(source))
    assert out.returncode == 0, out.stderr
    assert "300 lines, 300 OK, 0 ERR" in out.stdout and "line ids: yes, TLS: TLSv1." in out.stdout, out.stdout
    client_cert = ("--tls-cert", str(pki.client), "--tls-key", str(pki.client_key))
    out = run_cli("send", "--tls-ca", str(pki.ca), *client_cert, "--to", fronts.mutual, str(source))
    assert out.returncode == 0 and "300 lines, 300 OK" in out.stdout, out.stdout + out.stderr
    assert sorted(stored(fronts.dsn, "cli-")) == sorted(f"cli-{i}" for i in range(300))  # the re-run: ids
    # --tls alone verifies against the system's CAs, which never signed the test CA: one line, exit 1.
    out = run_cli("send", "--tls", "--to", fronts.tls, str(source))
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"prefork send: TLS: cannot verify the certificate of {fronts.tls}: "), out.stderr
    line = one_error_line(run_cli("send", "--tls-ca", str(tmp_path / "none.pem"), "--to", fronts.tls, str(source)))
    assert line.startswith("prefork: error: tls_ca / --tls-ca: cannot load") and "none.pem" in line, line


@pytest.mark.timeout(60)
def test_under_gevent_monkey_patching(fronts, pki):
    """gevent's SSLSocket where the standard library's was: what a client inside a worker or a gevent app
    gets. Big lines, so that TLS records are split across reads and writes here too."""
    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import sys\n"
        "from prefork.client import Client\n"
        "lines = [f'gevent-{i} ' + 'y' * (i % 3 * 9000) for i in range(1500)]\n"
        "with Client(sys.argv[1], tls_ca=sys.argv[2], window=300) as client:\n"
        "    assert client.send_all(lines) == ['OK'] * len(lines)\n"
        "    print(type(client._sock).__module__, client.tls_version)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, fronts.tls, str(pki.ca)],
        env=test_env(),
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("gevent.") and "TLSv1." in out.stdout, out.stdout
    assert len(stored(fronts.dsn, "gevent-")) == 1500


@contextmanager
def s_server(*args: str) -> Iterator[str]:
    """``openssl s_server`` with ``args`` on a free loopback port, as HOST:PORT once it accepts."""
    port = free_port()
    proc = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", *args],
        stdin=subprocess.PIPE,  # it stops at the end of its input
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # "ACCEPT" once it listens
            if line.startswith("ACCEPT"):
                break
        else:
            raise AssertionError(f"openssl s_server exited with {proc.wait()}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.timeout(30)
def test_tls_1_2_is_enough(pki):
    """A bare TLS 1.2 peer (s_server -rev answers each line reversed, the probe with no OK ids)."""
    with s_server("-cert", str(pki.server), "-key", str(pki.server_key), "-tls1_2", "-rev") as address:
        with Client(address, tls_ca=str(pki.ca)) as client:
            assert client.send_all(["abc", "hello world"]) == ["cba", "dlrow olleh"]
            assert client.tls_version == "TLSv1.2" and client.server_ids is False


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "server, reason",
    [
        (
            ("-cert", "expired.pem", "-key", "expired.key"),
            "TLS: cannot verify the certificate of {}: certificate has expired",
        ),
        (
            ("-cert", "server.pem", "-key", "server.key", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"),
            r"TLS with {} failed: no TLS version in common \(this client speaks TLS 1.2 and later\)",
        ),
    ],
    ids=["expired", "tls1.1"],
)
def test_an_expired_certificate_or_a_server_older_than_tls_1_2_is_refused(pki, server, reason):
    args = [str(pki.dir / arg) if arg.endswith((".pem", ".key")) else arg for arg in server]
    with s_server(*args) as address:
        with pytest.raises(ClientError, match=reason.format(address)):
            Client(address, tls_ca=str(pki.ca)).send_all(["never sent"])


# -- units ------------------------------------------------------------------------------------------


def test_tls_options_turn_tls_on_and_files_that_will_not_load_are_named(pki, tmp_path):
    assert Client("127.0.0.1:1").tls_context is None
    assert Client("127.0.0.1:1", tls=True).tls_context is not None  # the system's trust store
    client = Client("127.0.0.1:1", tls_ca=str(pki.ca))
    assert client.tls and client.server_name == "127.0.0.1"
    context = client.tls_context
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert Client("[::1]:1", server_name="db.example").tls
    with pytest.raises(ValueError, match="tls=False"):
        Client("127.0.0.1:1", tls=False, tls_ca=str(pki.ca))
    with pytest.raises(ValueError, match="tls_key / --tls-key: a client key without its certificate"):
        client_context(key_file=str(pki.client_key))
    with pytest.raises(ValueError, match=r"tls_cert / --tls-cert: cannot load the client certificate .*client.pem"):
        client_context(cert_file=str(pki.client), key_file=str(pki.server_key))  # not its key
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    with pytest.raises(ValueError, match="tls_ca / --tls-ca: cannot load .*bad.pem"):
        client_context(str(tmp_path / "bad.pem"))


class _SlowTLS:
    """An SSLSocket stand-in whose first write cannot finish (SSLWantWriteError), then takes everything."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        if len(self.writes) == 1:
            raise ssl.SSLWantWriteError()
        return len(data)


def test_a_tls_write_that_could_not_finish_is_retried_with_the_same_bytes(pki):
    """OpenSSL's rule: the retry of a write that wanted the socket writable passes the same bytes, even
    when more lines were queued behind them meanwhile."""
    client = Client("127.0.0.1:1", tls_ca=str(pki.ca))
    sock = _SlowTLS()
    client._sock = sock  # type: ignore[assignment]
    out = bytearray(b"a\n" * 10)
    client._send(out)
    assert out == b"a\n" * 10  # nothing was taken
    out += b"b\n"
    client._send(out)
    assert sock.writes == [b"a\n" * 10, b"a\n" * 10] and out == b"b\n"
    client._send(out)
    assert sock.writes[-1] == b"b\n" and out == b""
    client._sock = None


@pytest.mark.timeout(120)
def test_straight_to_preforks_own_tls_listener_through_reloads(mariadb, pki):
    """No terminator in between: the client speaks TLS to prefork's own listener (mutual TLS) while the server
    reloads twice. A TLS connection does not move at a reload (its state is in the old worker's OpenSSL): the
    old worker answers what it read and closes it, the client opens a new TLS session and resends what had no
    reply, with its ids, so every line is answered OK and stored exactly once."""
    table = "t_client_tls_direct"
    args = ["--dsn", mariadb.dsn, "--table", table, "--workers", "1", "--line-ids", "on"]
    args += ["-s", f"server.tls_cert={pki.server_chain}", "-s", f"server.tls_key={pki.server_key}"]
    args += ["-s", f"server.tls_client_ca={pki.ca}"]
    lines = [f"direct-{i}" for i in range(6000)]
    with ServerProcess(args) as srv:
        reloads_done = threading.Event()

        def reload_twice() -> None:
            for _ in range(2):
                wait_for(lambda: len(query(mariadb.dsn, f"SHOW TABLES LIKE '{table}'")) > 0, what="the table")
                old = set(srv.worker_pids())
                srv.signal(signal.SIGHUP)
                wait_for(lambda o=old: not o & set(srv.worker_pids()), 30, what="the old worker to exit")
            reloads_done.set()

        reloader = threading.Thread(target=reload_twice, daemon=True)
        client = Client(
            f"127.0.0.1:{srv.port}", tls_ca=str(pki.ca), tls_cert=str(pki.client), tls_key=str(pki.client_key),
            window=200,
        )  # fmt: skip
        with client:
            replies = []
            for n, (_, reply) in enumerate(client.stream(lines)):
                replies.append(reply)
                if n == 500:
                    reloader.start()
                if n == 3000:
                    assert reloads_done.wait(60), "the reloads did not finish"
            assert client.tls_version in ("TLSv1.2", "TLSv1.3")
        reloader.join(10)
        handoffs = srv.status()["handoffs"]
    assert replies == ["OK"] * len(lines)
    rows = query(mariadb.dsn, f"SELECT payload FROM `{table}`")
    assert sorted(r[0] for r in rows) == sorted(lines)  # each once
    assert handoffs["out"] == 0 and handoffs["fallback"] >= 1, handoffs


@pytest.mark.timeout(60)
def test_haproxy_passing_tls_through_with_a_proxy_header(mariadb, pki, tmp_path):
    """HAProxy in TCP mode, not terminating TLS, sends a PROXY v2 header and then passes the client's TLS
    through to prefork's TLS listener: prefork reads the header, then does the handshake, and stores every
    line under the client's own address (127.0.0.5 here), not HAProxy's."""
    table = "t_tls_passthrough"
    args = ["--dsn", mariadb.dsn, "--table", table, "--workers", "1", "--proxy-protocol", "v2"]
    args += ["--tls-cert", str(pki.server_chain), "--tls-key", str(pki.server_key)]
    lines = [f"through-{i}" for i in range(200)]
    with ServerProcess(args) as srv:
        front = Frontend("pass", "127.0.0.1", free_port(), [Server("prefork", "127.0.0.1", srv.port, send_proxy=True)])
        with HAProxy(tmp_path / "haproxy", [front]):
            raw = socket.create_connection((front.address, front.port), timeout=20, source_address=("127.0.0.5", 0))
            with client_context(str(pki.ca)).wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall("".join(line + "\n" for line in lines).encode())
                replies = b""
                while replies.count(b"\n") < len(lines):
                    data = sock.recv(65536)
                    assert data, f"EOF after {replies!r}"
                    replies += data
    assert replies.split(b"\n")[: len(lines)] == [b"OK"] * len(lines)
    rows = query(mariadb.dsn, f"SELECT client_addr, payload FROM `{table}` ORDER BY id")
    assert rows == [("127.0.0.5", line) for line in lines]
