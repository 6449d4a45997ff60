"""`prefork check` and `prefork initdb`: what an operator runs before starting the server."""

from __future__ import annotations

import sys

from prefork.config import Config

EXIT_OK = 0
EXIT_FAILED = 2


def _fail(message: str) -> int:
    print(f"prefork: check failed: {message}", file=sys.stderr)
    return EXIT_FAILED


def _connect(cfg: Config):
    import pymysql

    return pymysql.connect(**cfg.pool.dsn.connect_kwargs())


def check(cfg: Config) -> int:
    """Validate the config (already done by loading it), import the app, connect to the database."""
    import os

    from prefork.app import AppLoadError, load_app

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        load_app(cfg.server.app)
    except AppLoadError as exc:
        return _fail(str(exc))
    import pymysql

    try:
        _connect(cfg).close()
    except pymysql.err.MySQLError as exc:
        return _fail(f"cannot connect to {cfg.pool.dsn.redacted}: {exc}")
    print(f"prefork: config ok, app {cfg.server.app} imports, database {cfg.pool.dsn.redacted} answers")
    return EXIT_OK


def initdb(cfg: Config) -> int:
    """Create the ingest table if it is missing."""
    import pymysql

    from workers.schema import ensure_table

    try:
        conn = _connect(cfg)
        try:
            ensure_table(conn, cfg.ingest.table)
        finally:
            conn.close()
    except pymysql.err.MySQLError as exc:
        return _fail(f"cannot create table `{cfg.ingest.table}` in {cfg.pool.dsn.redacted}: {exc}")
    print(f"prefork: table `{cfg.ingest.table}` ready in {cfg.pool.dsn.redacted}")
    return EXIT_OK
