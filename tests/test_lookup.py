"""workers.lookup: a second real app on the framework's public seams (its own [lookup] section, the pool,
future replies, check/initdb hooks), against the private MariaDB."""

from __future__ import annotations

import threading

import pytest

from tests.helpers import query
from tests.server import ServerProcess, connect, read_lines, roundtrip, wait_for
from tests.test_cli import one_error_line, run_cli

APP = "workers.lookup:app"
VALUES = {
    "alpha": "one",
    "beta": "two words",
    "multi": "line one\nline two\r\nback\\slash",
    "ünï": "ċödé ✓ 🎉",
    "empty": "",
}


def fill(dsn: str, table: str) -> None:
    for key, value in VALUES.items():
        query(dsn, f"INSERT INTO `{table}` (k, v) VALUES (%s, %s)", (key, value))


def test_check_says_the_table_is_missing_until_initdb_creates_it(dsn):
    table = "lookup_hooks"
    query(dsn, f"DROP TABLE IF EXISTS `{table}`")
    line = one_error_line(run_cli("check", APP, "--dsn", dsn, "--lookup-table", table))
    assert f"table `{table}` is missing" in line and "prefork initdb" in line
    result = run_cli("initdb", APP, "--dsn", dsn, "--lookup-table", table)
    assert result.returncode == 0 and f"table `{table}` ready" in result.stdout, result.stderr
    result = run_cli("check", APP, "--dsn", dsn, "-s", f"lookup.table={table}")
    assert result.returncode == 0 and f"table `{table}` found" in result.stdout, result.stderr
    assert "lookup.batch_size: invalid value '0'" in one_error_line(run_cli("check", APP, "--lookup-batch", "0"))


def test_keys_are_answered_in_order_in_batches(dsn):
    table = "lookup_order"
    query(dsn, f"DROP TABLE IF EXISTS `{table}`")
    assert run_cli("initdb", APP, "--dsn", dsn, "--lookup-table", table).returncode == 0
    fill(dsn, table)
    expected = {
        "alpha": b"one",
        "beta": b"two words",
        "multi": b"line one\\nline two\\r\\nback\\\\slash",
        "ünï": "ċödé ✓ 🎉".encode(),
        "empty": b"",
        "nope": b"ERR not-found",
        "x" * 300: b"ERR not-found",  # longer than the column: simply not there
    }
    keys = list(expected) * 300
    with ServerProcess([APP, "--dsn", dsn, "--lookup-table", table, "--workers", "2"]) as srv:
        selects_before = int(query(dsn, "SHOW GLOBAL STATUS LIKE 'Com_select'")[0][1])
        errors: list = []

        def client() -> None:
            try:
                sock = connect(srv.port)
                sock.sendall(b"".join(k.encode() + b"\n" for k in keys))
                replies = read_lines(sock, len(keys))
                sock.close()
                assert replies == [expected[k] for k in keys]
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=client) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[0]
        selects = int(query(dsn, "SHOW GLOBAL STATUS LIKE 'Com_select'")[0][1]) - selects_before
        # 21,000 keys: batched, far fewer SELECTs than keys (the pool's pings and this query count too).
        assert selects < len(keys) * 10 / 20, selects
        assert roundtrip(srv.port, [b"alpha", b"", b"beta"]) == [b"one", b"ERR empty", b"two words"]


@pytest.mark.faults
def test_database_down_answers_unavailable_then_recovers(db):
    table = "lookup_outage"
    query(db.dsn, f"DROP TABLE IF EXISTS `{table}`")
    assert run_cli("initdb", APP, "--dsn", db.dsn, "--lookup-table", table).returncode == 0
    fill(db.dsn, table)
    args = [APP, "--dsn", db.dsn, "--lookup-table", table, "--workers", "1", "--pool-timeout", "1"]
    with ServerProcess([*args, "-s", "lookup.timeout=2"]) as srv:
        assert roundtrip(srv.port, [b"alpha"]) == [b"one"]
        db.kill()
        try:
            assert roundtrip(srv.port, [b"alpha", b"beta"]) == [b"ERR unavailable"] * 2
        finally:
            db.start()
        wait_for(lambda: roundtrip(srv.port, [b"beta"]) == [b"two words"], timeout=30, what="lookups again")
