"""The ingest table (SPEC section 6). The name is configurable and always quoted with backticks."""

from __future__ import annotations

from typing import Any


def quote_identifier(name: str) -> str:
    """Quote a table name for MySQL; config validation already refused backticks and NUL."""
    return "`" + name.replace("`", "``") + "`"


def create_table_sql(table: str) -> str:
    """The CREATE TABLE statement of the ingest table."""
    return f"""CREATE TABLE IF NOT EXISTS {quote_identifier(table)} (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  received_at DATETIME(6)     NOT NULL,
  client_addr VARCHAR(64)     NOT NULL,
  worker_pid  INT UNSIGNED    NOT NULL,
  payload     MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL
) ENGINE=InnoDB"""


def ensure_table(conn: Any, table: str) -> None:
    """Create the ingest table, the marker table and the server run table if they are missing."""
    cur = conn.cursor()
    cur.execute(create_table_sql(table))
    cur.execute(create_marker_table_sql())
    cur.execute(create_server_run_table_sql())
    cur.close()
    conn.commit()


# One marker row per committed batch, written in the batch's transaction: after a connection broke during
# COMMIT, its presence tells whether the batch was stored (SPEC section 6). Old markers are pruned.
MARKER_TABLE = "prefork_batches"


def create_marker_table_sql() -> str:
    """The CREATE TABLE statement of the batch marker table."""
    return f"""CREATE TABLE IF NOT EXISTS {quote_identifier(MARKER_TABLE)} (
  batch_id   BINARY(16) NOT NULL PRIMARY KEY,
  created_at DATETIME   NOT NULL DEFAULT CURRENT_TIMESTAMP,
  KEY (created_at)
) ENGINE=InnoDB"""


# One row naming the current run of the server: a MEMORY table is empty after every restart, so the token
# found there changes with each run (thread ids start again too). See workers.outcome.
SERVER_RUN_TABLE = "prefork_server_run"


def create_server_run_table_sql() -> str:
    """The CREATE TABLE statement of the server run table."""
    return f"""CREATE TABLE IF NOT EXISTS {quote_identifier(SERVER_RUN_TABLE)} (
  id    TINYINT    NOT NULL PRIMARY KEY,
  token BINARY(16) NOT NULL
) ENGINE=MEMORY"""
