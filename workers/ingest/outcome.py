"""Learning whether a COMMIT whose reply never came was stored (README, "Reliability").

When the COMMIT itself fails (the connection broke, an error packet came back, the driver lost the packet
sequence), the transaction may or may not have been committed. Each batch writes a marker row in its own
transaction, so the answer is in the marker table, provided that:

- the old session can no longer commit: on the same run of the same server it is killed and waited for
  (a COMMIT still in flight there could land after the lookup); when the server restarted in between, the
  old session died with it, and its thread id may now belong to an unrelated session that must not be
  killed (a token in a MEMORY table, empty after each restart, tells the runs apart);
- the lookup reads the newest committed data: it runs in a fresh transaction, since a read view opened
  before the old COMMIT landed would not see the marker, and the batch would be stored twice;
- in a Galera cluster the lookup may run on another node than the COMMIT did (that node died, and the pool
  moved on to the next host of the DSN). The run token tells the nodes apart as it tells runs apart (a
  MEMORY table is not replicated), so no session is killed on the wrong node; and the lookup waits for
  its node to have applied every write set the cluster certified before it (``wsrep_sync_wait``): a
  COMMIT that the dead node got certified is then visible, one that it did not never will be.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import gevent
import pymysql
from pymysql.constants import CR, ER

from prefork.db.errors import error_code
from prefork.pool import set_session_variable
from workers.schema import MARKER_TABLE, SERVER_RUN_TABLE

SESSION_GONE_WAIT_S = 10.0


@dataclass(frozen=True)
class Server:
    """Which run of which server a connection talks to: host and port as the server reports them, and the
    token of its current run (a restart gives a new token, and restarts thread ids)."""

    hostname: str
    port: int
    run: bytes


def server_of(conn: Any) -> Server:
    """The server a connection talks to, asked once per connection (a connection never changes server)."""
    server = getattr(conn, "prefork_server", None)
    if server is None:
        cur = conn.cursor()
        row = _server_row(cur)
        if row is None:
            # The first connection after a start writes the run's token (INSERT IGNORE keeps the first
            # one), as an autocommitted statement of its own: MySQL with enforce_gtid_consistency (GTID
            # replication) refuses a write to a non-transactional table inside a transaction (error 1785).
            # No COMMIT is sent for it: a COMMIT here would be mistaken for a batch's.
            conn.autocommit(True)
            try:
                cur.execute(f"INSERT IGNORE INTO `{SERVER_RUN_TABLE}` (id, token) VALUES (1, %s)", (os.urandom(16),))
            finally:
                conn.autocommit(False)
            row = _server_row(cur)
        cur.close()
        hostname, port, run = row
        server = Server(str(hostname), int(port), bytes(run))
        conn.prefork_server = server
    return server


def _server_row(cur: Any) -> Any:
    """The server's host name and port and its run's token (a MEMORY table, so it is visible at once and
    empty after each restart); None while the token is not written."""
    cur.execute(f"SELECT @@hostname, @@port, token FROM `{SERVER_RUN_TABLE}` WHERE id = 1")
    return cur.fetchone()


@dataclass(frozen=True)
class Session:
    """The session that sent a COMMIT: its server and thread id."""

    server: Server
    thread_id: int


def marker_committed(conn: Any, marker: bytes, session: Session | None) -> bool:
    """True if the batch with this marker is stored, False if it is not and never will be.

    Raises the driver's errors (the caller retries until the database answers).
    """
    cur = conn.cursor()
    if session is not None and server_of(conn) == session.server:
        _end_session(cur, session.thread_id)
    conn.rollback()  # a fresh read view for the lookup
    # Galera: wait until this node has applied every write set the cluster certified before the lookup.
    causal = set_session_variable(cur, "wsrep_sync_wait", 1)
    cur.execute(f"SELECT 1 FROM `{MARKER_TABLE}` WHERE batch_id = %s", (marker,))
    found = cur.fetchone() is not None
    conn.rollback()
    if causal:
        set_session_variable(cur, "wsrep_sync_wait", 0)
    return found


def kill_sql(thread_id: int) -> str:
    """The statement that ends a session: ``KILL CONNECTION``, the same on MySQL and MariaDB (a user may kill
    its own sessions without any privilege; 1095 answers for another user's, 1094 for one that is gone)."""
    return f"KILL CONNECTION {int(thread_id)}"


def _end_session(cur: Any, thread_id: int) -> None:
    """Kill the old session if the server still has it, and wait until it is gone."""
    try:
        cur.execute(kill_sql(thread_id))
    except pymysql.err.MySQLError as exc:
        code = error_code(exc)
        if code == ER.KILL_DENIED_ERROR:
            return  # "you are not owner of thread": the id belongs to another user's session, ours is gone
        if code != ER.NO_SUCH_THREAD:
            raise
    deadline = SESSION_GONE_WAIT_S
    while deadline > 0:
        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (thread_id,))
        if cur.fetchone()[0] == 0:
            return
        gevent.sleep(0.05)
        deadline -= 0.05
    raise pymysql.err.OperationalError(CR.CR_SERVER_LOST, f"session {thread_id} is still alive after KILL")
