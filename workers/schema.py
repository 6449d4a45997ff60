"""The ingest app's tables (README, "The ingest app") and the syslog app's (README, "The syslog app"). A
table's name is configurable and always quoted with backticks.

``etc/schema.sql`` and ``etc/syslog.sql`` are made from this module (``python -m workers.schema >
etc/schema.sql``, ``python -m workers.schema syslog > etc/syslog.sql``), and a test fails when they differ
from it: the statements here are the ones the workers and ``prefork initdb`` run.
"""

from __future__ import annotations

from typing import Any

import pymysql

from prefork.db.errors import DUPLICATE_COLUMN, DUPLICATE_KEY_NAME, error_code


def quote_identifier(name: str) -> str:
    """Quote a table name for MySQL; config validation already refused backticks and NUL."""
    return "`" + name.replace("`", "``") + "`"


def table_exists(conn: Any, table: str) -> bool:
    """Whether the connection's database has this table (what an app's ``check`` hook looks for)."""
    cur = conn.cursor()
    cur.execute("SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s", (table,))
    found = cur.fetchone() is not None
    cur.close()
    return found


def create_table_sql(table: str) -> str:
    """The CREATE TABLE statement of the ingest table."""
    return f"""CREATE TABLE IF NOT EXISTS {quote_identifier(table)} (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  received_at DATETIME(6)     NOT NULL,
  client_addr VARCHAR(64)     NOT NULL,
  worker_pid  INT UNSIGNED    NOT NULL,
  payload     MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL
) ENGINE=InnoDB"""


def create_syslog_table_sql(table: str) -> str:
    """The CREATE TABLE statement of the syslog app's table: the ingest table's head, the fields of the
    message (NULL where it has none, or is no syslog message), the line as sent, and indexes for time
    ranges (the message's own time, and its arrival), hosts and severities."""
    text = "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    return f"""CREATE TABLE IF NOT EXISTS {quote_identifier(table)} (
  id              BIGINT UNSIGNED  NOT NULL AUTO_INCREMENT PRIMARY KEY,
  received_at     DATETIME(6)      NOT NULL,
  client_addr     VARCHAR(64)      NOT NULL,
  worker_pid      INT UNSIGNED     NOT NULL,
  facility        TINYINT UNSIGNED NULL,
  severity        TINYINT UNSIGNED NULL,
  ts_text         VARCHAR(40) CHARACTER SET ascii COLLATE ascii_bin NULL,
  ts_utc          DATETIME(6)      NULL,
  hostname        VARCHAR(255) {text} NULL,
  app_name        VARCHAR(48)  {text} NULL,
  procid          VARCHAR(128) {text} NULL,
  msgid           VARCHAR(32)  {text} NULL,
  structured_data JSON             NULL,
  message         MEDIUMTEXT {text} NULL,
  raw             MEDIUMTEXT {text} NOT NULL,
  KEY ts_utc (ts_utc),
  KEY host_ts (hostname, ts_utc),
  KEY severity_ts (severity, ts_utc),
  KEY received_at (received_at)
) ENGINE=InnoDB"""


# With server.line_ids on: the client-chosen id of each line (NULL for a line without one), unique, so that
# a line resent after a lost reply is found instead of stored again. Case-sensitive, as ids are.
LINE_ID_COLUMN = "line_id"
LINE_ID_TYPE = "VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL"


def add_line_id_sql(table: str, column: bool = True, key: bool = True) -> str:
    """The ALTER TABLE that adds the line id column (``column``) and its unique key (``key``): plain
    statements, which MySQL and MariaDB both take (``IF NOT EXISTS`` in ALTER is MariaDB's alone), so the
    caller looks in information_schema first for what is missing (``add_line_id``)."""
    parts = []
    if column:
        parts.append(f"ADD COLUMN {LINE_ID_COLUMN} {LINE_ID_TYPE}")
    if key:
        parts.append(f"ADD UNIQUE KEY {LINE_ID_COLUMN} ({LINE_ID_COLUMN})")
    if not parts:
        raise ValueError("nothing to add")
    return f"ALTER TABLE {quote_identifier(table)} " + ", ".join(parts)


# With ingest.client_cert on: the subject of the client's verified TLS certificate (RFC 4514), NULL without one.
CLIENT_CERT_COLUMN = "client_cert"
CLIENT_CERT_CHARS = 255
CLIENT_CERT_TYPE = f"VARCHAR({CLIENT_CERT_CHARS}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL"


def add_client_cert_sql(table: str) -> str:
    """The ALTER TABLE that adds the client certificate column: a plain one, which MySQL takes too; the
    caller looks in information_schema first (``add_client_cert``)."""
    return f"ALTER TABLE {quote_identifier(table)} ADD COLUMN {CLIENT_CERT_COLUMN} {CLIENT_CERT_TYPE}"


def add_client_cert(conn: Any, table: str) -> bool:
    """Add the client certificate column if information_schema says the table lacks it; True if this call
    altered the table. A duplicate column (1060: another session added it meanwhile) means it is there."""
    if not missing_columns(conn, table, (CLIENT_CERT_COLUMN,)):
        return False  # looked up first: an ALTER waits for the table's metadata lock even with nothing to do
    try:
        conn.cursor().execute(add_client_cert_sql(table))
    except pymysql.err.MySQLError as exc:
        if error_code(exc) != DUPLICATE_COLUMN:
            raise
        return False
    conn.commit()
    return True


def missing_columns(conn: Any, table: str, columns: tuple[str, ...]) -> list[str]:
    """Those of ``columns`` the table lacks (what an app's ``check`` hook reports)."""
    cur = conn.cursor()
    cur.execute(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
        (table,),
    )
    have = {str(row[0]).lower() for row in cur.fetchall()}
    cur.close()
    return [column for column in columns if column.lower() not in have]


def has_line_id(conn: Any, table: str) -> bool:
    """Whether the table has the line id column with a unique key on it alone."""
    return missing_line_id(conn, table) == (False, False)


def missing_line_id(conn: Any, table: str) -> tuple[bool, bool]:
    """Whether the table lacks the line id column, and whether it lacks its unique key (a unique key named
    ``line_id`` on that column alone), as information_schema says."""
    column = bool(missing_columns(conn, table, (LINE_ID_COLUMN,)))
    cur = conn.cursor()
    cur.execute(
        "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
        "AND INDEX_NAME = %s AND COLUMN_NAME = %s AND NON_UNIQUE = 0",
        (table, LINE_ID_COLUMN, LINE_ID_COLUMN),
    )
    key = cur.fetchone()[0] == 0
    cur.close()
    return column, key


def add_line_id(conn: Any, table: str) -> bool:
    """Add the line id column and its unique key to the table where information_schema says they are
    missing; True if this call altered the table. Another session (a worker of this or another host) may
    add them meanwhile: a duplicate column or key name (1060, 1061) means that part is there, and what is
    left is looked up again."""
    # Looked up first: even an ALTER with nothing to do waits for the table's metadata lock, and the
    # statements of every other session on the table would queue behind it meanwhile.
    altered = False
    for _ in range(3):  # each failed try finds one more part there: column and key, then one, then none
        column, key = missing_line_id(conn, table)
        if not column and not key:
            break
        try:
            conn.cursor().execute(add_line_id_sql(table, column, key))
            altered = True
        except pymysql.err.MySQLError as exc:
            if error_code(exc) not in (DUPLICATE_COLUMN, DUPLICATE_KEY_NAME):
                raise
        conn.commit()
    return altered


def ensure_table(
    conn: Any, table: str, line_ids: bool = False, create_sql: str | None = None, client_cert: bool = False
) -> None:
    """Create the ingest table (``create_sql``, another app's CREATE TABLE, in its place), the marker table
    and the server run table if they are missing; with ``line_ids``, add the line id column and its unique
    key to the ingest table if they are missing; with ``client_cert``, the client certificate column."""
    cur = conn.cursor()
    cur.execute(create_sql if create_sql is not None else create_table_sql(table))
    cur.execute(create_marker_table_sql())
    cur.execute(create_server_run_table_sql())
    cur.close()
    conn.commit()
    if line_ids:
        add_line_id(conn, table)
    if client_cert:
        add_client_cert(conn, table)


# One marker row per committed batch, written in the batch's transaction: after a connection broke during
# COMMIT, its presence tells whether the batch was stored (README, "Reliability"). Old markers are pruned.
MARKER_TABLE = "prefork_batches"


def create_marker_table_sql() -> str:
    """The CREATE TABLE statement of the batch marker table."""
    return f"""CREATE TABLE IF NOT EXISTS {quote_identifier(MARKER_TABLE)} (
  batch_id   BINARY(16) NOT NULL PRIMARY KEY,
  created_at DATETIME   NOT NULL DEFAULT CURRENT_TIMESTAMP,
  KEY (created_at)
) ENGINE=InnoDB"""


# One row naming the current run of the server: a MEMORY table is empty after every restart, so the token
# found there changes with each run (thread ids start again too). See workers.ingest.outcome.
SERVER_RUN_TABLE = "prefork_server_run"


def create_server_run_table_sql() -> str:
    """The CREATE TABLE statement of the server run table."""
    return f"""CREATE TABLE IF NOT EXISTS {quote_identifier(SERVER_RUN_TABLE)} (
  id    TINYINT    NOT NULL PRIMARY KEY,
  token BINARY(16) NOT NULL
) ENGINE=MEMORY"""


SCHEMA_FILE_HEADER = """\
-- The ingest table, the batch marker table and the server run table; `prefork initdb` and every worker
-- create them when missing. A configured ingest.table replaces `{table}`.
-- Made by `python -m workers.schema` from workers/schema.py: change that, then run it again.
"""
LINE_IDS_NOTE = """
-- With server.line_ids = on, the workers and `prefork initdb` add the line id column and its unique key to
-- the ingest table (left out while it is off), each only if information_schema says it is missing:
-- {sql};
"""


CLIENT_CERT_NOTE = """
-- With ingest.client_cert = on, the workers and `prefork initdb` add the client certificate column (the
-- subject of the client's verified TLS certificate) to the ingest table, if information_schema says it is
-- missing:
-- {sql};
"""


def schema_sql(table: str) -> str:
    """The text of ``etc/schema.sql`` for the ingest table ``table``: every statement the app may run."""
    statements = [create_table_sql(table), create_marker_table_sql(), create_server_run_table_sql()]
    created = "".join(f"\n{sql};\n" for sql in statements)
    return (
        SCHEMA_FILE_HEADER.format(table=table)
        + created
        + LINE_IDS_NOTE.format(sql=add_line_id_sql(table))
        + CLIENT_CERT_NOTE.format(sql=add_client_cert_sql(table))
    )


SYSLOG_FILE_HEADER = """\
-- The syslog app's table (workers.syslog:app); `prefork initdb workers.syslog:app` and every worker create it
-- when missing, with the marker and server run tables of etc/schema.sql. A configured syslog.table replaces
-- `{table}`.
-- Made by `python -m workers.schema syslog` from workers/schema.py: change that, then run it again.
"""


def syslog_schema_sql(table: str) -> str:
    """The text of ``etc/syslog.sql`` for the syslog table ``table``."""
    return (
        SYSLOG_FILE_HEADER.format(table=table)
        + f"\n{create_syslog_table_sql(table)};\n"
        + LINE_IDS_NOTE.format(sql=add_line_id_sql(table))
    )


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["syslog"]:
        print(syslog_schema_sql("syslog_messages"), end="")
    else:
        print(schema_sql("received_lines"), end="")
