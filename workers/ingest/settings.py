"""``[ingest]``: the ingest app's own settings section (prefork's config loader fills it in)."""

from __future__ import annotations

from prefork.settings import Section, boolean, choice, option, positive_int, positive_seconds, size, table_name


# fmt: off
class IngestSettings(Section, name="ingest"):
    """``[ingest]``: where and how the lines are stored."""

    table: str = option(
        "received_lines", table_name, "target table (always quoted with backticks in SQL)", flag="--table")
    batch_size: int = option("1000", positive_int, "most rows per transaction", flag="--batch-size")
    flushers: int = option("2", positive_int, "concurrent transactions per worker", flag="--flushers")
    commit_timeout: float = option(
        "30", positive_seconds, "give up on a line (reply ERR unavailable) after this many seconds",
        flag="--commit-timeout")
    max_pending: int = option(
        "100000", positive_int, "lines buffered per worker before it stops reading from clients",
        flag="--max-pending")
    max_pending_bytes: int = option(
        "64MiB", size,
        "memory of buffered lines per worker before it stops reading from clients (512K, 64MiB, 1G)",
        flag="--max-pending-bytes")
    method: str = option(
        "auto", choice("auto", "load", "insert"),
        "how batches are sent: load (LOAD DATA LOCAL INFILE from memory), insert (multi-row INSERT), "
        "auto (load, falling back to insert when the server refuses it)", flag="--ingest-method")
    ready_within: float = option(
        "10", positive_seconds,
        "a worker is not ready (/readyz answers 503) when no database connection could be had for this long",
        flag="--ready-within")
    client_cert: bool = option(
        "off", boolean,
        "on: store the subject of the client's verified TLS certificate (server.tls_client_ca) in a client_cert "
        "column, added if missing (NULL for a client without one)")
# fmt: on
