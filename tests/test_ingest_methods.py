"""ingest.method: LOAD DATA LOCAL INFILE from memory and multi-row INSERT store the same bytes.

Every payload comes back byte for byte whichever way it was sent, with or without NO_BACKSLASH_ESCAPES;
`auto` falls back to INSERT when the server refuses LOCAL INFILE, `load` then answers ERR and stores
nothing, and a load whose values the table refuses (LOCAL makes that a warning) is redone with INSERT.
"""

from __future__ import annotations

import contextlib

import pytest

from tests.helpers import query
from tests.server import ServerProcess, roundtrip


def ingest_server(dsn: str, table: str, method: str, *extra: str) -> ServerProcess:
    # One worker and one flusher: rows are stored in the order the lines were sent.
    return ServerProcess(
        ["--dsn", dsn, "--table", table, "--workers", "1", "--flushers", "1", "-s", f"ingest.method={method}", *extra]
    )


def payloads_of(dsn: str, table: str) -> list[str]:
    return [r[0] for r in query(dsn, f"SELECT payload FROM `{table}` ORDER BY id")]


def com_load(dsn: str) -> int:
    """LOAD DATA statements the server has run since it started."""
    return int(query(dsn, "SHOW GLOBAL STATUS LIKE 'Com_load'")[0][1])


@contextlib.contextmanager
def global_setting(dsn: str, name: str, value: str | int):
    """Set a global server variable for new sessions, and put it back afterwards."""
    old = query(dsn, f"SELECT @@GLOBAL.{name}")[0][0]
    query(dsn, f"SET GLOBAL {name} = %s", (value,))
    try:
        yield
    finally:
        query(dsn, f"SET GLOBAL {name} = %s", (old,))


def first_difference(got: str, sent: str) -> str:
    for j, (a, b) in enumerate(zip(got, sent, strict=False)):
        if a != b:
            return f"character {j}: stored {a!r}, sent {b!r}"
    return f"lengths: stored {len(got)}, sent {len(sent)}"


def every_code_point() -> list[str]:
    """Every Unicode scalar value (every 1- to 4-byte UTF-8 sequence) but LF, in lines of at most 64 KB."""
    chars = [chr(c) for c in range(1, 0x110000) if c != 0x0A and not 0xD800 <= c <= 0xDFFF]
    return ["".join(chars[i : i + 16_000]) for i in range(0, len(chars), 16_000)]


AWKWARD = [
    "plain",
    "tab\tinside\tand at the end\t",
    "\tleading tab",
    "carriage\rreturn inside",
    "ends with a carriage return\r",  # sent as ...\r\r\n: one CR is the terminator's
    "back\\slash, \\N, \\0, \\t, \\n, \\\\ and a trailing backslash\\",
    "\\N",
    "nul\x00byte\x00",
    "\x00",
    "quotes ' \" ` and '' \"\"",
    "'; DROP TABLE t; --",
    "control \x01\x02\x1a\x1b\x7f",
    " leading and trailing spaces ",
    "x" * 65_536,  # the longest line server.max_line allows: 64 KiB
    "\U0001f389" * 16_384,  # 64 KiB of 4-byte sequences
    "é" * 32_768,
    *every_code_point(),
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("no_backslash_escapes", [False, True], ids=["default-sql-mode", "NO_BACKSLASH_ESCAPES"])
@pytest.mark.parametrize("method", ["load", "insert"])
def test_every_byte_is_stored_exactly(dsn, method, no_backslash_escapes):
    table = f"t_exact_{method}_{int(no_backslash_escapes)}"
    mode = query(dsn, "SELECT @@GLOBAL.sql_mode")[0][0]
    if no_backslash_escapes:
        mode = ",".join([*mode.split(","), "NO_BACKSLASH_ESCAPES"]).strip(",")
    loads_before = com_load(dsn)
    with global_setting(dsn, "sql_mode", mode), ingest_server(dsn, table, method) as srv:
        lines = [p.encode() + (b"\r" if p.endswith("\r") else b"") for p in AWKWARD]
        assert roundtrip(srv.port, lines) == [b"OK"] * len(lines)
        logs = srv.logs()
    # The method asked for is the one that stored them: no fallback, no load redone with INSERT.
    assert "refuses LOAD DATA" not in logs and "sent again with INSERT" not in logs, logs[-2000:]
    stored = payloads_of(dsn, table)
    assert len(stored) == len(AWKWARD)
    for i, (got, sent) in enumerate(zip(stored, AWKWARD, strict=True)):
        assert got == sent, f"payload {i} differs: {first_difference(got, sent)}"
    loads = com_load(dsn) - loads_before
    assert (loads > 0) == (method == "load"), f"{loads} LOAD statements with ingest.method={method}"


@pytest.mark.timeout(120)
def test_auto_falls_back_to_insert_once_when_the_server_refuses_local_infile(dsn):
    table = "t_auto_refused"
    with global_setting(dsn, "local_infile", 0), ingest_server(dsn, table, "auto") as srv:
        for round_ in range(3):
            lines = [f"r{round_}-{i}\tx".encode() for i in range(50)]
            assert roundtrip(srv.port, lines) == [b"OK"] * 50, srv.logs()[-3000:]
        logs = srv.logs()
    assert logs.count("refuses LOAD DATA LOCAL INFILE") == 1, logs[-2000:]
    assert len(payloads_of(dsn, table)) == 150


@pytest.mark.timeout(120)
def test_load_refused_with_method_load_answers_err_and_stores_nothing(dsn):
    table = "t_load_refused"
    with global_setting(dsn, "local_infile", 0), ingest_server(dsn, table, "load") as srv:
        replies = roundtrip(srv.port, [f"line {i}".encode() for i in range(20)])
        logs = srv.logs()
    assert replies == [b"ERR unavailable"] * 20
    assert "ingest.method is load, but the server refuses LOAD DATA LOCAL INFILE" in logs
    assert payloads_of(dsn, table) == []


@pytest.mark.timeout(120)
def test_a_load_with_warnings_is_redone_with_insert_and_the_bad_line_fails_alone(dsn):
    """LOCAL INFILE turns a value the column cannot hold into a warning and a mangled row: the load is
    rolled back and INSERT finds the offending line (ERR rejected); the others are stored intact."""
    table = "t_load_warnings"
    with ingest_server(dsn, table, "load") as srv:
        roundtrip(srv.port, [b"create the table"])
        query(dsn, f"ALTER TABLE `{table}` MODIFY payload VARCHAR(20) CHARACTER SET utf8mb4 NOT NULL")
        lines = [f"line-{i}" + ("-far-too-long-for-twenty" if i == 33 else "") for i in range(100)]
        replies = roundtrip(srv.port, [line.encode() for line in lines])
        logs = srv.logs()
    assert replies == [b"ERR rejected" if i == 33 else b"OK" for i in range(100)]
    assert payloads_of(dsn, table) == ["create the table"] + [line for i, line in enumerate(lines) if i != 33]
    assert logs.count("such batches are sent again with INSERT (logged once)") == 1
