"""Shared fixtures: a private MariaDB server for the whole test session.

The server runs from the installed binary in a temporary directory with its own port and socket, so tests
may kill and restart it; the machine's own database service is never touched. A missing server binary is
a loud failure that says what to install, never a skip.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gevent.socket
import pymysql.connections
import pytest
from hypothesis import HealthCheck, settings

from devtools.galera import GaleraCluster, GaleraMissing
from devtools.mariadb import MariaDBServer, ServerBinaryMissing
from tests.certs import Pki, make_pki

# The property tests run on a machine shared with the rest of the suite (make test runs Debian's Python pass
# beside the main one): how long an example takes says nothing about its correctness.
settings.register_profile("prefork", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("prefork")

# PyMySQL in this (test) process talks over gevent sockets, as it does in a monkey-patched worker, so that
# pool tests can run many greenlets against the real server without patching pytest itself.
pymysql.connections.socket = gevent.socket


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory):
    """The session's private MariaDB server (a devtools.mariadb.MariaDBServer)."""
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb"))
    try:
        server.start()
    except ServerBinaryMissing as exc:
        pytest.fail(f"{exc} (the tests need a private MariaDB server)", pytrace=False)
    yield server
    server.kill()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The test CA with server and client certificates made by openssl (tests/certs.py), once per run."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def db(mariadb: MariaDBServer) -> MariaDBServer:
    """The private server, (re)started if an earlier test left it down."""
    if not mariadb.is_running():
        mariadb.start()
    return mariadb


@pytest.fixture
def dsn(db: MariaDBServer) -> str:
    """The DSN of the private server's test database."""
    return db.dsn


@pytest.fixture(scope="session")
def show(request: pytest.FixtureRequest):
    """show(message): write a line to the terminal now, whatever the capture mode (timings a test reports)."""
    config = request.config

    def write(message: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if reporter is None or capture is None:
            print(message)
            return
        with capture.global_and_fixture_disabled():
            if reporter._tw.width_of_current_line:  # after a test's progress dot: a line of its own
                reporter.write("\n")
            reporter.write_line(message)

    return write


@pytest.fixture(scope="session")
def galera_cluster(request: pytest.FixtureRequest, show):
    """The session's 3-node MariaDB Galera cluster (a devtools.galera.GaleraCluster), formed on first use.

    Its nodes run as the mysql user when the tests run as root, so it lives in a directory of its own under
    /tmp (pytest's temporary directories are private to root). Every node is killed at the end; the directory
    is removed unless the cluster failed to form or a test failed (then its logs are kept and named)."""
    base = Path(tempfile.mkdtemp(prefix="prefork-galera-"))
    cluster = GaleraCluster(base)
    failed_before = request.session.testsfailed
    clean = False
    try:
        try:
            seconds = cluster.start()
        except (ServerBinaryMissing, GaleraMissing) as exc:
            clean = True
            pytest.fail(f"{exc} (the cluster tests need a Galera cluster)", pytrace=False)
        show(f"galera: {len(cluster.nodes)}-node cluster on {cluster.hosts()} formed in {seconds:.1f} s")
        yield cluster
        clean = request.session.testsfailed == failed_before
    finally:
        cluster.kill_all()
        if clean:
            shutil.rmtree(base, ignore_errors=True)
        else:
            show(f"galera: node logs kept in {base}")


@pytest.fixture
def galera(galera_cluster: GaleraCluster) -> GaleraCluster:
    """The session's Galera cluster with every node running (a node an earlier test left down rejoins)."""
    galera_cluster.heal()
    return galera_cluster
