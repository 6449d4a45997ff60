"""Shared fixtures: a private MariaDB server for the whole test session.

The server runs from the installed binary in a temporary directory with its own port and socket, so tests
may kill and restart it; the machine's own database service is never touched. A missing server binary is
a loud failure that says what to install, never a skip.
"""

from __future__ import annotations

import gevent.socket
import pymysql.connections
import pytest

from devtools.mariadb import MariaDBServer, ServerBinaryMissing

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
