"""Syslog over TLS with client certificates from real shippers no one here wrote: the TLS configs of
etc/shippers/ (prefork's placeholder host, port and certificate directory replaced, nothing else changed)
run by Debian's rsyslog (``omfwd`` with the ``ossl`` stream driver of ``rsyslog-openssl``: RFC 5425;
``omrelp`` with librelp's TLS) and syslog-ng (``syslog()`` with ``transport("tls")``), into one prefork
with the syslog app and the private MariaDB.

One server for the module: an octet-count listener and a RELP listener, both TLS requiring a client
certificate from the test CA with the name ``client1`` (``server.tls_client_ca``, ``tls_client_names``),
``ingest.client_cert`` on. Each daemon runs its config as a drop-in of a main config whose only input is a
private unix socket, fed by ``logger -u`` with its own tag; the table is then read back for that tag:
every message stored once, exactly as sent, in its columns, none merged or split, each row with the client
certificate's subject. The certificates come from tests/certs.py (openssl). Refusals (no certificate,
another CA, plaintext) are tested with ``openssl s_client`` and Python's ssl in tests/test_tls.py.

Marker ``shippers``.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.mariadb import MariaDBServer, free_port
from devtools.shippers import (
    PLACEHOLDER_CERTS,
    PLACEHOLDER_HOST,
    Rsyslog,
    SyslogNg,
    rsyslog_main_config,
    rsyslog_module,
    shipper_config,
    syslog_ng_main_config,
    syslog_ng_root,
)
from tests.certs import Pki
from tests.helpers import query
from tests.server import ServerProcess, wait_for
from tests.test_shipper_configs import texts

pytestmark = [pytest.mark.shippers, pytest.mark.timeout(120)]

TABLE = "shipper_tls"
MESSAGES = 500
STORE_TIMEOUT_S = 60.0
LOCAL3, NOTICE = 19, 5
CLIENT_SUBJECT = "CN=client1"  # tests/certs.py's client certificate, as client.tls.subject writes it
# The name the shippers connect to and check prefork's certificate for (tests/certs.py's server certificate
# names localhost and 127.0.0.1; rsyslog's x509/name checks DNS names only).
HOST = "localhost"
# What each rsyslog config loads besides rsyslogd: (module, the Debian package that has it).
RSYSLOG_MODULES = {
    "rsyslog-omfwd-tls.conf": [("lmnsd_ossl", "rsyslog-openssl")],
    "rsyslog-omrelp-tls.conf": [("omrelp", "rsyslog-relp")],
}


class Listeners:
    def __init__(self, srv: ServerProcess, dsn: str, octet_count: int, relp: int, metrics: int) -> None:
        self.srv, self.dsn, self.octet_count, self.relp, self.metrics = srv, dsn, octet_count, relp, metrics

    def failed_handshakes(self, reason: str) -> int:
        """Handshakes that failed for ``reason`` (bad-certificate: a client certificate that does not
        verify), from /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        label = re.escape(f'reason="{reason}"')
        return sum(
            map(int, re.findall(rf"^prefork_tls_handshake_failures_total\{{[^}}]*{label}[^}}]*\}} (\d+)", text, re.M))
        )


@pytest.fixture(scope="module")
def server(mariadb: MariaDBServer, pki: Pki) -> Iterator[Listeners]:
    if not mariadb.is_running():
        mariadb.start()
    dsn = mariadb.dsn
    query(dsn, f"DROP TABLE IF EXISTS `{TABLE}`")
    octet_count, relp, metrics = free_port(), free_port(), free_port()
    args = ["workers.syslog:app", "--dsn", dsn, "--syslog-table", TABLE, "--workers", "1"]
    args += ["--metrics-bind", f"127.0.0.1:{metrics}"]
    args += ["--bind", f"127.0.0.1:{octet_count},127.0.0.1:{relp}", "--framing", "octet-count,relp"]
    args += ["--tls-cert", str(pki.server_chain), "--tls-key", str(pki.server_key)]
    args += ["-s", f"server.tls_client_ca={pki.ca}", "-s", "server.tls_client_names=client1"]
    args += ["-s", "ingest.client_cert=on"]
    with ServerProcess(args, bind=None) as srv:
        yield Listeners(srv, dsn, octet_count, relp, metrics)


def send_with_logger(socket_path: Path, tag: str, lines: list[str], tmp: Path) -> None:
    """``logger -u``: one datagram per line into the daemon's private socket (blocks while it is full)."""
    path = tmp / f"{tag}.txt"
    path.write_text("".join(line + "\n" for line in lines))
    cmd = ["logger", "-u", str(socket_path), "-d", "-t", tag, "-p", "local3.notice", "-f", str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=STORE_TIMEOUT_S)
    assert result.returncode == 0, (cmd, result.stderr)


def stored(server: Listeners, tag: str, sent: list[str], lead: str, once: bool = True) -> Counter:
    """Wait until the table holds every message of ``tag`` sent; then check each row is one whole message
    of ``sent`` in its columns (``lead``: what the shipper puts before the text, rsyslog's space after
    `TAG:`), sent with the client certificate, and with ``once`` that none is stored twice; the count of
    each message."""
    expected = {lead + text for text in sent}
    sql = f"SELECT message FROM `{TABLE}` WHERE app_name = %s"
    wait_for(lambda: expected <= {r[0] for r in query(server.dsn, sql, (tag,))}, STORE_TIMEOUT_S, 0.1, f"{tag} rows")
    columns = "facility, severity, ts_utc, hostname, procid, client_cert, message"
    rows = query(server.dsn, f"SELECT {columns} FROM `{TABLE}` WHERE app_name = %s", (tag,))
    counts: Counter = Counter()
    for facility, severity, ts_utc, hostname, procid, client_cert, message in rows:
        assert message in expected, message  # not merged, split, framed wrong or altered
        assert (facility, severity, procid, client_cert) == (LOCAL3, NOTICE, None, CLIENT_SUBJECT), message
        assert ts_utc is not None and hostname, message
        counts[message] += 1
    assert set(counts) == expected
    assert not once or set(counts.values()) == {1}, counts.most_common(3)
    return counts


def no_errors(log: str) -> None:
    lines = [line for line in log.splitlines() if "error" in line.lower() or "closed connection" in line]
    assert not lines, lines


def certificate_dir(directory: Path, ca: Path, client: Path, client_key: Path) -> Path:
    """A certificate directory as the configs expect it: ca.pem, client.pem, client.key."""
    directory.mkdir()
    for name, source in (("ca.pem", ca), ("client.pem", client), ("client.key", client_key)):
        (directory / name).symlink_to(source)
    return directory


def shipper(conf: str, directory: Path, port: int, certs: Path) -> Rsyslog:
    """The daemon that runs etc/shippers/CONF as a drop-in, fed by ``logger -u`` at directory/log.sock."""
    directory.mkdir()
    socket_path = directory / "log.sock"
    drop_in = directory / "prefork.conf"
    drop_in.write_text(shipper_config(conf, HOST, port, certs))
    if conf.startswith("syslog-ng"):
        main = syslog_ng_main_config(socket_path, drop_in)
        return SyslogNg(directory, main, wait_path=socket_path, root=syslog_ng_root())
    for module, package in RSYSLOG_MODULES[conf]:
        rsyslog_module(module, package)  # missing: fails naming the package, not an rsyslog error to decode
    return Rsyslog(directory, rsyslog_main_config(directory, socket_path, drop_in), wait_path=socket_path)


CONFS = ["rsyslog-omfwd-tls.conf", "rsyslog-omrelp-tls.conf", "syslog-ng-tls.conf"]


@pytest.mark.parametrize(
    "conf, tag, lead",
    [
        # RFC 5425 through rsyslog's ossl stream driver, prefork's certificate checked by name (x509/name)
        ("rsyslog-omfwd-tls.conf", "rsyslog-tls", " "),
        # RELP sessions inside TLS (librelp's OpenSSL), each message acked after its COMMIT
        ("rsyslog-omrelp-tls.conf", "relp-tls", " "),
        # syslog() over transport("tls"), peer-verify(required-trusted); Debian's syslog-ng unpacked
        ("syslog-ng-tls.conf", "syslog-ng-tls", ""),
    ],
    ids=["rsyslog-omfwd", "rsyslog-omrelp", "syslog-ng"],
)
def test_tls_conf(server: Listeners, pki: Pki, tmp_path: Path, conf: str, tag: str, lead: str):
    """etc/shippers/CONF as a drop-in (/etc/rsyslog.d/, /etc/syslog-ng/conf.d/) with the test CA, client
    certificate and key: every message stored once, as sent, with the client's certificate subject
    (``lead``: what the shipper puts before the text, rsyslog's space after `TAG:`)."""
    certs = certificate_dir(tmp_path / "certs", pki.ca, pki.client, pki.client_key)
    port = server.relp if "omrelp" in conf else server.octet_count
    with shipper(conf, tmp_path / "daemon", port, certs) as daemon:
        send_with_logger(daemon.directory / "log.sock", tag, texts(MESSAGES), tmp_path)
        stored(server, tag, texts(MESSAGES), lead)
        no_errors(daemon.logs())


def test_tls_confs_name_the_placeholders():
    """The TLS configs name prefork and the certificate directory by the placeholders shipper_config
    replaces (a test cannot run one that still points at prefork.example.com or /etc/ssl/prefork)."""
    for conf in CONFS:
        text = shipper_config(conf, "localhost", 1, Path("/certs"))
        assert PLACEHOLDER_HOST not in text and PLACEHOLDER_CERTS not in text, conf
        assert all(f'/certs/{name}"' in text for name in ("ca.pem", "client.pem", "client.key")), conf


@pytest.mark.parametrize("conf", CONFS)
@pytest.mark.parametrize("untrusted", ["client", "server"])
def test_a_certificate_of_another_ca_is_refused(server: Listeners, pki: Pki, tmp_path: Path, conf: str, untrusted: str):
    """The same configs with a certificate of another CA, on either side. ``client``: the shipper's
    certificate was not signed by prefork's client CA: prefork refuses the handshake (counted and logged as
    bad-certificate). ``server``: the shipper's ca.pem is another CA, so it refuses prefork's certificate
    (its alert, unknown CA, is counted by prefork as `error`). Either way nothing of theirs is stored."""
    tag = f"refused-{untrusted}-{conf.removesuffix('.conf')}"
    if untrusted == "client":
        certs = certificate_dir(tmp_path / "certs", pki.ca, pki.other_client, pki.other_client_key)
        reason = "bad-certificate"
    else:
        certs = certificate_dir(tmp_path / "certs", pki.other_ca, pki.client, pki.client_key)
        reason = "error"
    port = server.relp if "omrelp" in conf else server.octet_count
    before = server.failed_handshakes(reason)
    with shipper(conf, tmp_path / "daemon", port, certs) as daemon:
        send_with_logger(daemon.directory / "log.sock", tag, texts(10), tmp_path)
        wait_for(lambda: server.failed_handshakes(reason) > before, STORE_TIMEOUT_S, 0.1, f"{reason} counted")
    sql = f"SELECT COUNT(*) FROM `{TABLE}` WHERE app_name = %s"
    assert query(server.dsn, sql, (tag,)) == [(0,)]


def test_a_missing_rsyslog_module_names_its_package():
    with pytest.raises(FileNotFoundError, match="install the Debian package rsyslog-nothing"):
        rsyslog_module("lmnsd_nothing", "rsyslog-nothing")
    assert rsyslog_module("lmnsd_ossl", "rsyslog-openssl").is_file()


RELOAD_PARTS = 3
RELOAD_PART = 200  # messages per part; the middle one is sent in chunks while prefork reloads
RELOAD_CHUNK = 20
RELOAD_PACE_S = 0.1  # between chunks: a stream that spans the reload, not a burst before it
RELOAD_TIMEOUT_S = 40.0
WINDOW = 128  # the omrelp windowSize of etc/shippers/rsyslog-omrelp-tls.conf


def test_rsyslog_omrelp_tls_through_a_reload(server: Listeners, pki: Pki, tmp_path: Path):
    """RELP in TLS across a SIGHUP reload of prefork: a TLS session is not handed to the new generation (its
    state is in the old worker's OpenSSL), so the old worker answers what it read, sends serverclose and
    closes; rsyslog reconnects and resends what was not acked. Every message stored: 0 lost (at most a
    window stored twice, when a session broke with acks unsent; printed). Last in the module: it reloads the
    shared server. (omfwd and syslog-ng over TLS lose the messages they write into the closed session before
    they notice: README, "Shipping syslog".)"""
    tag = "relp-tls-reload"
    sent = [f"{i:04d} {text}" for i, text in enumerate(texts(RELOAD_PARTS * RELOAD_PART))]
    first, middle, last = (sent[i * RELOAD_PART : (i + 1) * RELOAD_PART] for i in range(RELOAD_PARTS))
    certs = certificate_dir(tmp_path / "certs", pki.ca, pki.client, pki.client_key)
    srv = server.srv
    with shipper("rsyslog-omrelp-tls.conf", tmp_path / "daemon", server.relp, certs) as daemon:
        socket_path = daemon.directory / "log.sock"
        send_with_logger(socket_path, tag, first, tmp_path)
        old_workers = srv.worker_pids()
        reloads = srv.logs().count("Reloaded: generation")
        for n in range(0, RELOAD_PART, RELOAD_CHUNK):
            send_with_logger(socket_path, tag, middle[n : n + RELOAD_CHUNK], tmp_path)
            if n == 0:
                srv.signal(signal.SIGHUP)
            time.sleep(RELOAD_PACE_S)
        wait_for(lambda: srv.logs().count("Reloaded: generation") > reloads, RELOAD_TIMEOUT_S, 0.1, "the reload")
        exited = [f"Worker {pid} exited" for pid in old_workers]
        wait_for(lambda: all(line in srv.logs() for line in exited), RELOAD_TIMEOUT_S, 0.1, "the old workers' exit")
        send_with_logger(socket_path, tag, last, tmp_path)
        counts = stored(server, tag, sent, lead=" ", once=False)
    twice = sum(count - 1 for count in counts.values())
    print(f"\nRELP in TLS through a reload: {len(sent)} sent, 0 lost, {twice} stored twice", file=sys.stderr)
    assert twice <= WINDOW
