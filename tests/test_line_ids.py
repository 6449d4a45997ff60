"""Line ids (server.line_ids): the syntax, the probe, the app's opt-in, exactly-once storage by the ingest
app (resends, the same id twice, the same id from two connections at once, for method=load and insert),
prefork.client's ids through a worker kill, and `prefork send` killed midway and run again.

The two kill tests hold back the reply of a COMMIT the server has carried out (tests.mysql_proxy,
"reply-held") and kill while it is held: those lines are stored but never answered, so they are resent,
and without ids they would be stored twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest

from prefork.client import Client, ClientError
from tests.helpers import INNODB_TRX_POLL_S, query
from tests.helpers import connect as db_connect
from tests.mysql_proxy import FaultProxy
from tests.server import ROOT, ServerProcess, connect, prefork_cmd, read_lines, roundtrip, test_env, wait_for

ID_ECHO = "testapps:id_echo"
ID_64 = "i" * 64


def ingest(dsn: str, table: str, *extra: str, workers: int = 1, method: str = "auto") -> ServerProcess:
    return ServerProcess(
        ["--dsn", dsn, "--table", table, "--workers", str(workers), "--line-ids", "on"]
        + ["-s", f"ingest.method={method}", *extra]
    )


def rows_of(dsn: str, table: str) -> list[tuple[str, str | None]]:
    return [(r[0], r[1]) for r in query(dsn, f"SELECT payload, line_id FROM `{table}` ORDER BY id")]


def columns_of(dsn: str, table: str) -> list[str]:
    sql = "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s"
    return sorted(r[0] for r in query(dsn, sql, (table,)))


# ---- syntax and probe ----


def test_ids_are_split_off_and_bad_ones_get_err_bad_id():
    with ServerProcess([ID_ECHO, "--workers", "1", "--line-ids", "on"]) as srv:
        # Only good lines in one write: the fast path.
        good = [
            b"@a x",
            b"plain",
            b"@A.b_c:d-9 payload with  spaces ",
            b"@id @begins with @",
            b"@%s y" % ID_64.encode(),
        ]
        assert roundtrip(srv.port, good) == [
            b"a x",
            b"- plain",
            b"A.b_c:d-9 payload with  spaces ",
            b"id @begins with @",
            b"%s y" % ID_64.encode(),
        ]
        # Bad ids among good lines: each bad one answered alone, the others reach the app with their ids.
        lines = [
            b"@first one",
            b"@" + b"i" * 65 + b" too long an id",
            b"@a/b bad character",
            "@é bad character".encode(),
            b"@nospace",
            b"@",
            b"@@",
            b"@\xff",  # the probe
            b"@crlf line\r",
            b"no id",
            b"@last one",
        ]
        assert roundtrip(srv.port, lines) == [
            b"first one",
            b"ERR bad-id",
            b"ERR bad-id",
            b"ERR bad-id",
            b"ERR bad-id",
            b"ERR bad-id",
            b"ERR bad-id",
            b"OK ids",
            b"crlf line",
            b"- no id",
            b"last one",
        ]
        # The probe alone, as a client sends it first on a connection.
        assert roundtrip(srv.port, [b"@\xff", b"@p q"]) == [b"OK ids", b"p q"]


def test_the_escape_for_a_payload_that_begins_with_at_and_empty_payloads():
    """`@ PAYLOAD` is a line without an id whose payload is everything after the first space; `@ID ` and `@ `
    (an empty payload) get ERR empty; on the fast path (a read of good lines only) and the slow one."""
    escaped = [b"@ @alice logged out", b"@ x", b"@  two spaces", b"@ @", b"@ @@", b"@ @id x", b"@ \xc3\xa9"]
    stored = [b"- @alice logged out", b"- x", b"-  two spaces", b"- @", b"- @@", b"- @id x", "- é".encode()]
    with ServerProcess([ID_ECHO, "--workers", "1", "--line-ids", "on"]) as srv:
        assert roundtrip(srv.port, escaped) == stored  # one read of good lines: the fast path
        lines = [b"@ ", b"@id ", b"@ \r", b"@id \r", *escaped, b"@\xff", b"@id@ x", b"@ \xff", b"@id \xff"]
        assert roundtrip(srv.port, lines) == [
            b"ERR empty",
            b"ERR empty",
            b"ERR empty",
            b"ERR empty",
            *stored,
            b"OK ids",
            b"ERR bad-id",
            b"ERR bad-utf8",
            b"ERR bad-utf8",
        ]


def test_max_line_limits_the_payload_not_the_id_prefix():
    """With ids on a line is too long only when its payload is: an id prefix of up to 66 bytes comes on top
    of server.max_line, also when the line arrives in pieces; a line that begins with @ without a valid
    prefix is measured whole."""
    max_line = 16
    payload = b"p" * max_line
    with ServerProcess([ID_ECHO, "--workers", "1", "--line-ids", "on", "--max-line", str(max_line)]) as srv:
        lines = [
            b"@%s %s" % (ID_64.encode(), payload),
            b"@%s %s\r" % (ID_64.encode(), payload),
            b"@ " + payload,
            payload,
            b"@%s %sx" % (ID_64.encode(), payload),
            b"@ " + payload + b"x",
            payload + b"x",
            b"@%s/ %s" % (ID_64.encode(), payload),  # no valid prefix: measured whole
            b"@bad/ x",
        ]
        expected = [
            b"%s %s" % (ID_64.encode(), payload),
            b"%s %s" % (ID_64.encode(), payload),
            b"- " + payload,
            b"- " + payload,
            b"ERR too-long",
            b"ERR too-long",
            b"ERR too-long",
            b"ERR too-long",
            b"ERR bad-id",
        ]
        assert roundtrip(srv.port, lines) == expected
        # Alone in their reads (the fast path), and a byte at a time (the partial line held between reads).
        for line, reply in zip(lines, expected, strict=True):
            assert roundtrip(srv.port, [line]) == [reply]
            with connect(srv.port) as sock:
                for i in range(len(line)):
                    sock.sendall(line[i : i + 1])
                sock.sendall(b"\n")
                assert read_lines(sock, 1) == [reply]


def test_with_line_ids_off_nothing_changes(dsn):
    """An app that accepts ids is called without them; `@x y` is a payload like any other, the probe
    gets ERR bad-utf8, and the ingest table has no line_id column."""
    with ServerProcess([ID_ECHO, "--workers", "1"]) as srv:
        assert roundtrip(srv.port, [b"@x y", b"@\xff", b"@"]) == [b"noids @x y", b"ERR bad-utf8", b"noids @"]
    table = "t_ids_off"
    with ServerProcess(["--dsn", dsn, "--table", table, "--workers", "1"]) as srv:
        assert roundtrip(srv.port, [b"@x y", b"@\xff", b"@x y"]) == [b"OK", b"ERR bad-utf8", b"OK"]
    assert [r[0] for r in query(dsn, f"SELECT payload FROM `{table}` ORDER BY id")] == ["@x y", "@x y"]
    assert columns_of(dsn, table) == ["client_addr", "id", "payload", "received_at", "worker_pid"]


def test_an_app_that_does_not_accept_ids_does_not_boot():
    out = subprocess.run(
        prefork_cmd("run", "workers.echo:app", "--line-ids", "on", "--bind", "127.0.0.1:0", "--workers", "1"),
        env=test_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 3, out.stderr
    line = "server.line_ids is on, but the app workers.echo:app does not accept line ids"
    assert line in out.stderr, out.stderr
    check = subprocess.run(
        prefork_cmd("check", "workers.echo:app", "--line-ids", "on"),
        env=test_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 2 and line in check.stderr, check.stderr


# ---- the ingest app ----


@pytest.mark.parametrize("method", ["load", "insert"])
def test_the_same_id_twice_is_stored_once(dsn, method):
    table = f"t_ids_twice_{method}"
    with ingest(dsn, table, method=method) as srv:
        # Twice in one batch, and lines without an id beside them (each stored, line_id NULL).
        replies = roundtrip(srv.port, [b"@dup-1 first", b"no id", b"@dup-1 second", b"no id", b"@solo alone"])
        assert replies == [b"OK"] * 5
        # Again later, on other connections: already stored.
        assert roundtrip(srv.port, [b"@dup-1 third", b"@solo again", b"@new-1 new"]) == [b"OK"] * 3
        assert roundtrip(srv.port, [b"@dup-1 fourth"]) == [b"OK"]
        logs = srv.logs()
    assert rows_of(dsn, table) == [
        ("first", "dup-1"),
        ("no id", None),
        ("no id", None),
        ("alone", "solo"),
        ("new", "new-1"),
    ]
    assert "sent again with INSERT" not in logs  # ids already stored never reach the LOAD
    assert "line_id" in columns_of(dsn, table)


@pytest.mark.parametrize("other", ["commit", "rollback"])
@pytest.mark.parametrize("method", ["load", "insert"])
def test_an_id_committed_meanwhile_by_another_transaction(dsn, method, other):
    """Another transaction (this test's, standing for another worker) holds the same id uncommitted: the
    batch waits for it; once it commits, the batch is tried again and answers OK without a second row
    (with load, LOCAL skips the row with a warning and INSERT then hits the duplicate key); once it rolls
    back, the batch stores the line."""
    table = f"t_ids_race_{method}_{other}"
    with ingest(dsn, table, "--log-level", "debug", method=method) as srv:
        assert roundtrip(srv.port, [b"@warm-up the table exists"]) == [b"OK"]
        holder = db_connect(dsn, autocommit=False)
        try:
            holder.cursor().execute(
                f"INSERT INTO `{table}` (received_at, client_addr, worker_pid, payload, line_id) "
                "VALUES (UTC_TIMESTAMP(6), 'test', 0, 'from the test', 'race-1')"
            )
            with connect(srv.port) as sock:
                sock.sendall(b"@race-1 from prefork\n@race-2 beside it\n")
                wait_for(
                    lambda: query(
                        dsn, "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'"
                    )[0][0],
                    30,
                    INNODB_TRX_POLL_S,
                    what="the batch to wait for the test's transaction",
                )
                holder.commit() if other == "commit" else holder.rollback()
                assert read_lines(sock, 2) == [b"OK", b"OK"]
        finally:
            holder.close()
        logs = srv.logs()
    stored = rows_of(dsn, table)
    winner = "from the test" if other == "commit" else "from prefork"
    assert [r for r in stored if r[1] == "race-1"] == [(winner, "race-1")]
    assert [r for r in stored if r[1] == "race-2"] == [("beside it", "race-2")]
    assert "Traceback" not in logs and "rejected" not in logs, logs[-3000:]
    if other == "commit":  # the batch was tried again: after the INSERT's duplicate key, and for load after
        assert "was committed meanwhile (" in logs, logs[-3000:]
        assert ("sent again with INSERT" in logs) == (method == "load"), logs[-3000:]  # a LOAD with a warning


@pytest.mark.parametrize("method", ["load", "insert"])
def test_the_same_ids_from_two_connections_at_once_are_stored_once(dsn, method):
    table = f"t_ids_two_{method}"
    count = 3000
    with ingest(dsn, table, workers=2, method=method) as srv:
        assert roundtrip(srv.port, [b"@warm-up x"]) == [b"OK"]
        socks = [connect(srv.port), connect(srv.port)]
        start = threading.Barrier(2)
        replies: list[list[bytes]] = [[], []]

        def send(k: int) -> None:
            data = b"".join(b"@same-%d from %d\n" % (i, k) for i in range(count))
            start.wait()
            socks[k].sendall(data)
            replies[k] = read_lines(socks[k], count)

        threads = [threading.Thread(target=send, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for sock in socks:
            sock.close()
    assert replies == [[b"OK"] * count, [b"OK"] * count]
    stored = rows_of(dsn, table)
    ids = [line_id for _, line_id in stored if line_id != "warm-up"]
    assert sorted(ids) == sorted(f"same-{i}" for i in range(count))  # each once
    print(f"{count} ids sent by 2 connections at once ({method}): {len(ids)} rows")


# ---- prefork.client ----


def test_client_sends_ids_when_the_server_offers_them():
    with ServerProcess([ID_ECHO, "--workers", "1", "--line-ids", "on"]) as srv:
        with Client(f"127.0.0.1:{srv.port}", id_prefix="run7:") as client:
            assert client.send_all(["a", "@b", ("mine", "c"), b"d\n"]) == [
                "run7:1 a",
                "run7:2 @b",
                "mine c",
                "run7:3 d",
            ]
            assert client.using_ids is True
        with Client(f"127.0.0.1:{srv.port}") as client:
            (reply,) = client.send_all(["x"])
            prefix = client.id_prefix
            assert reply == f"{prefix}1 x" and len(prefix) == 13 and prefix.endswith(":")
        with Client(f"127.0.0.1:{srv.port}", ids=False) as client:
            # Without ids, but the server reads them: a line that begins with @ goes escaped, stored as given.
            assert client.send_all(["plain", "@own z"]) == ["- plain", "- @own z"]
            assert client.using_ids is False and client.server_ids is True
    with ServerProcess([ID_ECHO, "--workers", "1"]) as srv:
        with Client(f"127.0.0.1:{srv.port}") as client:
            assert client.send_all(["a", "@b", ("mine", "c")]) == ["noids a", "noids @b", "noids c"]
            assert client.using_ids is False and client.errors == 0  # the probe's ERR is not counted
        with pytest.raises(ClientError, match="does not take line ids"):
            Client(f"127.0.0.1:{srv.port}", ids=True).send_all(["a"])
    with pytest.raises(ValueError, match="bad line id"):
        Client("127.0.0.1:1").send_all([("bad id", "x")])
    with pytest.raises(ValueError, match="bad id prefix"):
        Client("127.0.0.1:1", id_prefix="x" * 41)


@pytest.mark.parametrize("prefix", ["", "x" * 41, "bad prefix"])
def test_the_client_and_send_refuse_the_same_id_prefixes(prefix, capsys):
    """One rule for the prefix of ids made by the sending library: 1-40 characters of the id set. Empty
    is refused by both (an unset variable would give every run the same ids)."""
    from prefork.sender import send_files

    with pytest.raises(ValueError, match="bad id prefix"):
        Client("127.0.0.1:1", id_prefix=prefix)
    assert send_files(["-"], "127.0.0.1:1", id_prefix=prefix) == 2
    assert "--id-prefix: bad id prefix" in capsys.readouterr().err
    assert Client("127.0.0.1:1", id_prefix="x" * 40).id_prefix == "x" * 40


def hold_a_commit(db, number: int) -> FaultProxy:
    """A proxy to the private server that holds back the reply of its `number`-th COMMIT (the setup of the
    workers commits a few times first: later ones are batches)."""
    return FaultProxy(("127.0.0.1", db.port), lambda n: "reply-held" if n == number else None)


def test_client_resent_lines_are_stored_once_after_the_workers_die(db):
    """A batch is committed but its reply held back; every worker is SIGKILLed meanwhile. The client
    reconnects and resends every line without a reply (the held batch and those behind it) with the same
    ids: each line is stored exactly once."""
    table = "t_ids_client_kill"
    lines = [f"kill-{i}" for i in range(30_000)]
    with hold_a_commit(db, 12) as proxy, ingest(proxy.dsn, table, workers=2) as srv:
        failures: list[BaseException] = []

        def kill_when_held() -> None:
            try:
                wait_for(lambda: proxy.held, 60, what="a COMMIT reply held back")
                for pid in srv.worker_pids():
                    os.kill(pid, signal.SIGKILL)
            except BaseException as exc:
                failures.append(exc)

        killer = threading.Thread(target=kill_when_held)
        killer.start()
        with Client(f"127.0.0.1:{srv.port}", window=2000, backoff=(0.05, 0.5)) as client:
            replies = list(client.stream(lines))
        killer.join()
        assert not failures, failures
    assert client.using_ids and client.reconnects >= 1 and client.resent >= 1
    assert [line.decode() for line, _ in replies] == lines
    assert {reply for _, reply in replies} == {"OK"}
    stored = [payload for payload, _ in rows_of(db.dsn, table)]
    duplicates = len(stored) - len(set(stored))
    print(f"{client.resent} lines resent after {client.reconnects} reconnects; {len(stored)} rows, {duplicates} twice")
    assert sorted(stored) == sorted(lines)


def test_prefork_send_killed_midway_and_run_again_stores_every_line_once(db, tmp_path):
    """`prefork send` is SIGKILLed while a reply is held back (lines stored, lines in flight, lines not
    sent yet), then run again on the same file: every line is stored exactly once."""
    table = "t_ids_send_kill"
    source = tmp_path / "lines.txt"
    count = 50_000
    source.write_bytes(b"".join(b"send-%d\n" % i for i in range(count)))
    with hold_a_commit(db, 12) as proxy, ingest(proxy.dsn, table) as srv:
        to = f"127.0.0.1:{srv.port}"
        first = subprocess.Popen(
            prefork_cmd("send", "--to", to, str(source)),
            env=test_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: proxy.held or first.poll() is not None, 60, what="a COMMIT reply held back")
            assert first.poll() is None, first.communicate()[0]
            first.kill()
        finally:
            first.wait(30)
        before = query(db.dsn, f"SELECT COUNT(*) FROM `{table}`")[0][0]
        assert 0 < before < count
        again = subprocess.run(
            prefork_cmd("send", "--to", to, str(source)), env=test_env(), capture_output=True, text=True, timeout=90
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"{count:,} lines, {count:,} OK, 0 ERR" in again.stdout and "line ids: yes" in again.stdout, again.stdout
    stored = [payload for payload, _ in rows_of(db.dsn, table)]
    duplicates = len(stored) - len(set(stored))
    print(f"{before:,} rows stored before the kill; after the re-run {len(stored):,} rows, {duplicates} twice")
    assert sorted(stored) == sorted(f"send-{i}" for i in range(count))


def send_files(to: str, *paths: object) -> str:
    """`prefork send` of the files; its summary, after checking that every line got OK with line ids."""
    out = subprocess.run(
        prefork_cmd("send", "--to", to, *map(str, paths)), env=test_env(), capture_output=True, text=True, timeout=90
    )
    assert out.returncode == 0 and "line ids: yes" in out.stdout, out.stdout + out.stderr
    return out.stdout


def payloads_of(dsn: str, table: str) -> list[str]:
    return sorted(r[0] for r in query(dsn, f"SELECT payload FROM `{table}`"))


def numbered(name: str, count: int) -> bytes:
    return b"".join(b"%s-%d\n" % (name.encode(), i) for i in range(count))


def test_prefork_send_of_a_rotated_log_at_the_same_path_sends_it_in_full(dsn, tmp_path):
    """Ids come from the file (device, inode, first line), not its path: a new log at the same path after a
    rotation (rename, copytruncate, delete and create) is stored in full, and a re-run of any of them,
    under any of its names, stores nothing twice. Before, 3,000 of the new file's lines were taken for the
    old one's: answered OK, not stored, exit 0."""
    table = "t_ids_send_rotated"
    log = tmp_path / "app.log"
    expected: list[bytes] = []

    def write(name: str, count: int) -> None:
        data = numbered(name, count)
        log.write_bytes(data)  # truncates in place when the file exists (copytruncate keeps the inode)
        expected.extend(data.splitlines())

    with ingest(dsn, table) as srv:
        to = f"127.0.0.1:{srv.port}"
        write("first", 3000)
        assert "3,000 lines, 3,000 OK" in send_files(to, log)
        log.rename(tmp_path / "app.log.1")  # rotation by rename: a new file at the same path
        write("second", 5000)
        assert "5,000 lines, 5,000 OK" in send_files(to, log)
        assert payloads_of(dsn, table) == sorted(p.decode() for p in expected)
        # copytruncate: the same inode, other content.
        first_inode = log.stat().st_ino
        write("third", 4000)
        assert log.stat().st_ino == first_inode
        send_files(to, log)
        # Deleted and created again (the file system may give it the deleted file's inode).
        (tmp_path / "app.log.1").unlink()
        log.unlink()
        write("fourth", 2000)
        send_files(to, log)
        assert payloads_of(dsn, table) == sorted(p.decode() for p in expected)
        send_files(to, log)  # a re-run: nothing again
    assert payloads_of(dsn, table) == sorted(p.decode() for p in expected)


def test_prefork_send_of_one_file_under_several_names_stores_each_line_once(dsn, tmp_path):
    """The same file named twice in one run, a hard link and a symlink to it: the same ids, each line once."""
    table = "t_ids_send_names"
    source = tmp_path / "lines.txt"
    source.write_bytes(numbered("named", 2000))
    os.link(source, tmp_path / "hard-link.txt")
    (tmp_path / "symlink.txt").symlink_to(source)
    with ingest(dsn, table) as srv:
        to = f"127.0.0.1:{srv.port}"
        out = send_files(to, source, source, tmp_path / "hard-link.txt")
        assert "6,000 lines, 6,000 OK" in out, out
        send_files(to, tmp_path / "symlink.txt")
        send_files(to, tmp_path / "hard-link.txt")
    assert payloads_of(dsn, table) == sorted(f"named-{i}" for i in range(2000))


def test_prefork_send_of_a_growing_file_stores_each_line_once_and_a_completed_last_line(dsn, tmp_path):
    """A short file (under 1 KiB) that grows between runs keeps its ids, and its last line sent without a LF
    is stored again once completed (it is another line: before, it was answered OK and not stored)."""
    table = "t_ids_send_growing"
    source = tmp_path / "growing.log"
    source.write_bytes(b"first\nsecond\npart")
    with ingest(dsn, table) as srv:
        to = f"127.0.0.1:{srv.port}"
        send_files(to, source)
        with source.open("ab") as f:
            f.write(b"ial\nthird\n")
        assert "4 lines, 4 OK" in send_files(to, source)
        send_files(to, source)
        with source.open("ab") as f:
            f.write(numbered("more", 100))
        send_files(to, source)
    assert payloads_of(dsn, table) == sorted(
        ["first", "second", "part", "partial", "third", *(f"more-{i}" for i in range(100))]
    )


def test_prefork_send_stdin_ids_with_a_prefix_and_without_ids(dsn):
    table = "t_ids_send_stdin"
    text = "".join(f"stdin-{i}\n" for i in range(100))
    with ingest(dsn, table) as srv:
        to = f"127.0.0.1:{srv.port}"

        def send(*args: str) -> subprocess.CompletedProcess:
            out = subprocess.run(
                prefork_cmd("send", "--to", to, *args),
                env=test_env(),
                input=text,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stdout + out.stderr
            return out

        assert "line ids: yes" in send("--id-prefix", "batch-7").stdout
        send("--id-prefix", "batch-7", "-")  # the same ids: nothing stored again
        assert query(dsn, f"SELECT COUNT(*), COUNT(DISTINCT line_id) FROM `{table}`")[0] == (100, 100)
        assert query(dsn, f"SELECT line_id FROM `{table}` WHERE payload = 'stdin-41'") == [("batch-7:42",)]
        assert "line ids: no (--no-ids)" in send("--no-ids").stdout
        assert query(dsn, f"SELECT COUNT(*), COUNT(line_id) FROM `{table}`")[0] == (200, 100)
        usage = subprocess.run(
            prefork_cmd("send", "--to", to, "--id-prefix", "x", "some-file"),
            env=test_env(),
            capture_output=True,
            timeout=60,
        )
        assert usage.returncode == 2 and b"--id-prefix" in usage.stderr


def test_initdb_adds_the_line_id_column_only_with_line_ids_on(dsn):
    from workers.schema import add_line_id_sql

    table = "t_ids_initdb"
    query(dsn, f"DROP TABLE IF EXISTS `{table}`")

    def prefork(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            prefork_cmd(*args, "--dsn", dsn, "--table", table),
            env=test_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert prefork("initdb").returncode == 0
    assert "line_id" not in columns_of(dsn, table)
    check = prefork("check", "--line-ids", "on")
    assert check.returncode == 0 and "without its unique line_id column" in check.stdout, check.stdout
    for _ in range(2):  # and again: nothing to add
        out = prefork("initdb", "--line-ids", "on")
        assert out.returncode == 0, out.stderr
    unique = "SELECT NON_UNIQUE FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
    assert query(dsn, unique + "AND COLUMN_NAME = 'line_id'", (table,)) == [(0,)]
    check = prefork("check", "--line-ids", "on")
    assert check.returncode == 0 and "without" not in check.stdout, check.stdout
    assert "-- " + add_line_id_sql("received_lines") + ";" in (ROOT / "etc" / "schema.sql").read_text()
