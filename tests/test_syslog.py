"""workers.syslog:app end to end: a real master, the private MariaDB, the messages real shippers sent
(tests/fixtures/syslog/) and the RFCs' examples sent as lines; the table checked column by column."""

from __future__ import annotations

import calendar
import datetime
import json
import threading

import pytest

from tests.helpers import query
from tests.server import ServerProcess, roundtrip, wait_for
from tests.syslog_fixtures import EXPECTED, messages
from tests.test_cli import one_error_line, run_cli
from workers.syslog.parse import COLUMNS, parse

pytestmark = pytest.mark.timeout(120)

APP = "workers.syslog:app"
# The RFCs' own examples and a few hard cases, beside the shippers' messages.
EXAMPLES = [
    "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \ufeff'su root' failed for lonvick on /dev/pts/8",
    "<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts.",
    '<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" '
    'eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]',
    "<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
    "<0>1 - - - - - -",
    r'<191>1 2016-12-31T23:59:60.5+01:00 h\x a\tb 1 M [x@1 v="\]\"\\ é"] back\slash and tab	here',
]
UNPARSED = ["Use the BFG!", "<192>1 - - - - - - bad pri", "tab\there and back\\slash"]
SELECT = f"SELECT {', '.join(COLUMNS)}, raw, client_addr, worker_pid, received_at FROM `{{table}}` ORDER BY id"


def unparsed_counted(srv: ServerProcess) -> int | None:
    workers = srv.status()["workers"]
    return workers[0]["app"].get("unparsed") if workers else None


def loads(dsn: str) -> int:
    return int(query(dsn, "SHOW GLOBAL STATUS LIKE 'Com_load'")[0][1])


def every_message() -> list[str]:
    return [text for name in sorted(EXPECTED) for text in messages(name)] + EXAMPLES


def stored(dsn: str, table: str) -> list[dict]:
    names = [*COLUMNS, "raw", "client_addr", "worker_pid", "received_at"]
    return [dict(zip(names, row, strict=True)) for row in query(dsn, SELECT.format(table=table))]


def as_sent(value: str | None, column: str) -> object:
    """A parsed field as the table gives it back."""
    if value is None:
        return None
    if column in ("facility", "severity"):
        return int(value)
    if column == "ts_utc":
        return datetime.datetime.fromisoformat(value)
    if column == "structured_data":
        return json.loads(value)
    return value


def check_row(row: dict, text: str, pids: list[int]) -> None:
    received = calendar.timegm(row["received_at"].timetuple())
    fields = parse(text, received)
    for column, value in zip(COLUMNS, fields or (None,) * len(COLUMNS), strict=True):
        got = row[column]
        if column == "structured_data" and got is not None:
            got = json.loads(got)
        assert got == as_sent(value, column), (column, text)
    assert row["raw"] == text
    assert row["client_addr"] == "127.0.0.1" and row["worker_pid"] in pids


@pytest.mark.parametrize("method", ["load", "insert"])
def test_shippers_messages_and_rfc_examples_are_stored_column_by_column(dsn, method):
    table = f"syslog_e2e_{method}"
    query(dsn, f"DROP TABLE IF EXISTS `{table}`")
    sent = every_message() + UNPARSED
    args = [APP, "--dsn", dsn, "--syslog-table", table, "--workers", "1", "--ingest-method", method]
    loads_before = loads(dsn)
    with ServerProcess(args) as srv:
        replies = roundtrip(srv.port, [text.encode() for text in sent])
        pids = srv.worker_pids()
        wait_for(lambda: unparsed_counted(srv) == len(UNPARSED), what="the unparsed lines in the stats")
        logs = srv.logs()
    assert replies == [b"OK"] * len(sent)
    assert logs.count("is no syslog message") == 1 and "stored raw" in logs  # the first, once
    assert "again with INSERT" not in logs and "refuses" not in logs  # a LOAD that was clean, not redone
    assert (loads(dsn) > loads_before) == (method == "load")
    rows = stored(dsn, table)
    assert [row["raw"] for row in rows] == sent
    for row, text in zip(rows, sent, strict=True):
        check_row(row, text, pids)
    # The shippers' messages, against what each must be (not only against the parser).
    by_raw = {row["raw"]: row for row in rows}
    for name, expected in EXPECTED.items():
        for text, (facility, severity, host, app_name, procid, msgid, sd, message) in zip(
            messages(name), expected, strict=True
        ):
            row = by_raw[text]
            assert (row["facility"], row["severity"], row["hostname"]) == (facility, severity, host), text
            assert (row["app_name"], row["procid"], row["msgid"], row["message"]) == (app_name, procid, msgid, message)
            assert (json.loads(row["structured_data"]) if row["structured_data"] else None) == sd
    example = by_raw[EXAMPLES[-1]]
    assert example["ts_utc"] == datetime.datetime(2016, 12, 31, 23, 0, 0, 500000)  # 23:59:60.5+01:00
    assert (example["hostname"], example["app_name"]) == ("h\\x", "a\\tb")
    assert json.loads(example["structured_data"]) == {"x@1": {"v": ']"\\ é'}}
    assert example["message"] == "back\\slash and tab\there"
    for text in UNPARSED:
        assert [by_raw[text][c] for c in COLUMNS] == [None] * len(COLUMNS)
    # README's example query on a structured-data parameter.
    sd_query = (
        f"SELECT raw FROM `{table}` WHERE JSON_VALUE(structured_data, '$.\"exampleSDID@32473\".eventID') = '1011'"
    )
    assert query(dsn, sd_query) == [(EXAMPLES[2],)]


def test_unparsed_reject_answers_err_rejected_and_stores_the_rest(dsn):
    table = "syslog_reject"
    query(dsn, f"DROP TABLE IF EXISTS `{table}`")
    good = every_message()[:5]
    sent = [good[0], UNPARSED[0], good[1], UNPARSED[1], UNPARSED[2], *good[2:]]
    args = [APP, "--dsn", dsn, "--syslog-table", table, "--workers", "1", "-s", "syslog.unparsed=reject"]
    with ServerProcess(args) as srv:
        replies = roundtrip(srv.port, [text.encode() for text in sent])
        alone = roundtrip(srv.port, [UNPARSED[0].encode()])
        wait_for(lambda: unparsed_counted(srv) == len(UNPARSED) + 1, what="the rejected lines in the stats")
    assert replies == [b"OK", b"ERR rejected", b"OK", b"ERR rejected", b"ERR rejected", b"OK", b"OK", b"OK"]
    assert alone == [b"ERR rejected"]
    assert [row["raw"] for row in stored(dsn, table)] == good


def test_check_and_initdb_make_and_check_the_table(dsn):
    table = "syslog_hooks"
    query(dsn, f"DROP TABLE IF EXISTS `{table}`")
    # Missing is no error (the workers create it), a missing column is (nobody would add it).
    result = run_cli("check", APP, "--dsn", dsn, "--syslog-table", table)
    assert result.returncode == 0 and f"table `{table}` is missing" in result.stdout, result.stderr
    result = run_cli("initdb", APP, "--dsn", dsn, "--syslog-table", table)
    assert result.returncode == 0 and f"table `{table}` ready" in result.stdout, result.stderr
    result = run_cli("check", APP, "--dsn", dsn, "-s", f"syslog.table={table}")
    assert result.returncode == 0 and f"table `{table}` exists" in result.stdout, result.stderr
    indexes = {row[2] for row in query(dsn, f"SHOW INDEX FROM `{table}`")}
    assert {"ts_utc", "host_ts", "severity_ts", "received_at"} <= indexes
    query(dsn, f"ALTER TABLE `{table}` DROP COLUMN msgid, DROP COLUMN structured_data")
    line = one_error_line(run_cli("check", APP, "--dsn", dsn, "--syslog-table", table))
    assert f"table `{table}`" in line and "no column msgid, structured_data" in line
    assert "syslog.unparsed: invalid value 'drop'" in one_error_line(
        run_cli("check", APP, "-s", "syslog.unparsed=drop")
    )


def test_line_ids_store_a_resent_message_once_and_reject_mode_keeps_ids_in_step(dsn):
    table = "syslog_ids"
    query(dsn, f"DROP TABLE IF EXISTS `{table}`")
    good = every_message()[:3]
    sent = [f"@m{i} {text}" for i, text in enumerate(good)] + [f"@junk {UNPARSED[0]}", f"@m9 {good[0]}"]
    args = [APP, "--dsn", dsn, "--syslog-table", table, "--workers", "1", "--line-ids", "on"]
    with ServerProcess([*args, "-s", "syslog.unparsed=reject"]) as srv:
        assert roundtrip(srv.port, [text.encode() for text in sent]) == [b"OK"] * 3 + [b"ERR rejected", b"OK"]
        # Resent (a lost reply): OK, and not stored again.
        assert roundtrip(srv.port, [text.encode() for text in sent[:3]]) == [b"OK"] * 3
    ids = query(dsn, f"SELECT line_id, raw, app_name FROM `{table}` ORDER BY id")
    assert [(r[0], r[1]) for r in ids] == [("m0", good[0]), ("m1", good[1]), ("m2", good[2]), ("m9", good[0])]
    assert ids[0][2] == parse(good[0], 0)[COLUMNS.index("app_name")]  # type: ignore[index]


def test_many_clients_many_messages_are_group_committed_each_once(dsn):
    """Several clients pipelining thousands of messages each: every one OK, stored once, in its columns, in
    batches of many rows (the ingest app's group commit, not a row per transaction)."""
    table = "syslog_volume"
    query(dsn, f"DROP TABLE IF EXISTS `{table}`")
    clients, each = 4, 5000
    args = [APP, "--dsn", dsn, "--syslog-table", table, "--workers", "2"]
    replies: dict[int, list[bytes]] = {}

    def send(c: int) -> None:
        lines = [f"<{c + 8}>1 2026-12-06T14:00:00.{i:06d}Z host{c} app {i} - - message {c}/{i}" for i in range(each)]
        replies[c] = roundtrip(port, [line.encode() for line in lines])

    with ServerProcess(args) as srv:
        port = srv.port
        threads = [threading.Thread(target=send, args=(c,)) for c in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=100)
        stats = [w["app"] for w in wait_for(lambda: stats_of(srv, clients * each), what="rows in the stats")]
    assert {c: set(r) for c, r in replies.items()} == {c: {b"OK"} for c in range(clients)}
    assert all(len(r) == each for r in replies.values())
    counts = query(dsn, f"SELECT hostname, COUNT(*), COUNT(DISTINCT procid), MIN(severity) FROM `{table}` GROUP BY 1")
    assert sorted(counts) == [(f"host{c}", each, each, c) for c in range(clients)]
    assert sum(s["batches"] for s in stats) < clients * each / 10  # many rows per COMMIT
    row = query(dsn, f"SELECT ts_utc, message FROM `{table}` WHERE hostname = 'host3' AND procid = '4321'")
    assert row == [(datetime.datetime(2026, 12, 6, 14, 0, 0, 4321), "message 3/4321")]


def stats_of(srv: ServerProcess, rows: int) -> list[dict] | None:
    workers = srv.status()["workers"]
    done = len(workers) == 2 and sum(w["app"].get("rows", 0) for w in workers) == rows
    return workers if done else None
