"""Helpers for tests: plain connections to the private server, from the test's side."""

from __future__ import annotations

import pymysql

from prefork.db.dsn import parse_dsn

# How often a test may poll information_schema.INNODB_TRX: InnoDB serves it from a cache that it refreshes
# only when the table was not read for 0.1 s, so polls closer than that see the same rows for ever (a
# batch's LOCK WAIT never showed up under 50 ms polls).
INNODB_TRX_POLL_S = 0.25


def connect(dsn: str, **overrides) -> pymysql.connections.Connection:
    """Open a plain (autocommit) PyMySQL connection for checks from the test's side."""
    kwargs = parse_dsn(dsn).connect_kwargs()
    kwargs.update({"autocommit": True, **overrides})
    return pymysql.connect(**kwargs)


def query(dsn: str, sql: str, args=None) -> list[tuple]:
    """Run one statement on a fresh connection and return all rows."""
    conn = connect(dsn)
    try:
        cur = conn.cursor()
        cur.execute(sql, args)
        return list(cur.fetchall())
    finally:
        conn.close()
