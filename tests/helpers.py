"""Helpers for tests: plain connections to the private server, from the test's side."""

from __future__ import annotations

import pymysql

from prefork.db.dsn import parse_dsn


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
