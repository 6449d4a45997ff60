"""prefork.client and `prefork send` against a real master (echo, and ingest on the private MariaDB): replies in
order, resends, `prefork send`'s report, and the promise that nothing is answered OK and stored other than
as given (payloads that begin with @, CRs, NUL; the id prefix outside max_line; a server with ack off)."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from prefork.client import DEFAULT_PORT, Client, ClientError
from prefork.config.address import parse_peer
from tests.helpers import query
from tests.server import ServerProcess, prefork_cmd, test_env, wait_for


def test_parse_address():
    assert parse_peer("db1:4000", DEFAULT_PORT) == ("db1", 4000)
    assert parse_peer("example", DEFAULT_PORT) == ("example", 32777)
    assert parse_peer("[::1]:5000", DEFAULT_PORT) == ("::1", 5000)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_peer("host:port", DEFAULT_PORT)
    assert parse_peer("[::1]", DEFAULT_PORT) == ("::1", 32777)
    # The grammar of server.bind: a host it would not listen on is refused before any connection attempt.
    for bad in ("unix:/run/prefork.sock", "127.0.0.1:0", "::1:5000", "300.1.1.1:5", ":5000", "bad host:1"):
        with pytest.raises(ValueError, match="bad address"):
            parse_peer(bad, DEFAULT_PORT)


@pytest.mark.timeout(60)
def test_pipelined_replies_come_back_in_order():
    lines = [f"line {i} é" for i in range(20_000)]
    with ServerProcess(["workers.echo:app", "--workers", "2"]) as srv:
        with Client(f"127.0.0.1:{srv.port}", window=500) as client:
            assert client.send_all(lines) == lines
            assert client.send_all(["", "again"]) == ["ERR empty", "again"]  # the connection is reused
            assert (client.acked, client.errors, client.reconnects) == (20_002, 1, 0)


@pytest.mark.timeout(180)
def test_lines_without_a_reply_are_resent_after_the_workers_die(dsn):
    """Every worker is SIGKILLed while 30,000 lines are in flight: the client reconnects (to the respawned
    workers), resends every line that had no reply, and ends with an OK for each; every line is stored,
    and only a resent line may be stored twice."""
    table = "t_client_resend"
    lines = [f"resend-{i}" for i in range(30_000)]
    with ServerProcess(["--dsn", dsn, "--table", table, "--workers", "2"]) as srv:
        replies = []
        with Client(f"127.0.0.1:{srv.port}", window=2000, backoff=(0.05, 0.5)) as client:
            for i, (line, reply) in enumerate(client.stream(lines)):
                replies.append((line, reply))
                if i == 5_000:
                    for pid in srv.worker_pids():
                        os.kill(pid, signal.SIGKILL)
        assert client.reconnects >= 1 and client.resent >= 1
    assert [line.decode() for line, _ in replies] == lines
    assert {reply for _, reply in replies} == {"OK"}
    stored = [r[0] for r in query(dsn, f"SELECT payload FROM `{table}`")]
    assert set(stored) == set(lines)
    assert len(stored) - len(set(stored)) <= client.resent


@pytest.mark.timeout(120)
def test_prefork_send_streams_a_file_and_reports_errors(dsn, tmp_path):
    table = "t_send"
    source = tmp_path / "lines.txt"
    source.write_bytes(b"".join(b"send-%d\n" % i for i in range(5000)) + b"\nlast\n")
    errors = tmp_path / "errors.txt"
    with ServerProcess(["--dsn", dsn, "--table", table, "--workers", "1"]) as srv:
        to = f"127.0.0.1:{srv.port}"
        out = subprocess.run(
            prefork_cmd("send", "--to", to, "--errors", str(errors), str(source)),
            env=test_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1, out.stderr  # one line (the empty one) did not get OK
        assert "5,002 lines, 5,001 OK, 1 ERR" in out.stdout, out.stdout
        assert errors.read_bytes() == b"empty\t\n"
        wait_for(lambda: query(dsn, f"SELECT COUNT(*) FROM `{table}`")[0][0] == 5001, 10, what="rows")
        source.write_bytes(b"only\ngood\nlines\n")
        ok = subprocess.run(
            prefork_cmd("send", "--to", to, "-"),
            env=test_env(),
            input=source.read_text(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ok.returncode == 0 and "3 lines, 3 OK, 0 ERR" in ok.stdout, ok.stdout + ok.stderr


def test_prefork_send_draws_a_progress_bar_on_a_terminal(tmp_path):
    """stderr on a terminal (a pty here): the progress line is redrawn with a bar, the share of the file,
    acked lines, lines/s and an ETA; then cleared for the summary. Not on a pipe (the test above)."""
    source = tmp_path / "lines.txt"
    source.write_bytes(b"".join(b"line-%d\n" % i for i in range(3000)))
    with ServerProcess(["testapps:slow_ok", "--workers", "1"]) as srv:
        master, slave = os.openpty()
        try:
            out = subprocess.run(
                prefork_cmd("send", "--to", f"127.0.0.1:{srv.port}", str(source)),
                env=test_env(),
                stdout=subprocess.PIPE,
                stderr=slave,
                text=True,
                timeout=60,
            )
            os.close(slave)
            drawn = b""
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's other side is closed and drained
                    break
                if not chunk:
                    break
                drawn += chunk
        finally:
            os.close(master)
    assert out.returncode == 0 and "3,000 lines, 3,000 OK" in out.stdout, out.stdout
    frames = [f for f in drawn.decode().split("\r\x1b[K") if f]
    assert len(frames) >= 2, drawn  # redrawn while it ran
    assert re.fullmatch(r"\[[#-]{24}\] +\d+%  [\d,]+ acked, 0 errors, [\d,]+ lines/s, ETA \d+:\d\d", frames[0]), frames


# Payloads a server with line ids on would misread if sent as they are, and others whose bytes must survive.
AT_PAYLOADS = ["@alice logged out", "@", "@ x", "@@", "@id x", "@\t@", "plain", "a\x00b", " leading", "tab\tin"]
CR_PAYLOADS = ["ends with CR\r", "\r", "two CRs\r\r", "mid\rdle"]  # through Client only: a file's CR LF ends a line


def new_rows(dsn: str, table: str, after: int) -> tuple[list[str], int]:
    """The payloads stored after row id ``after``, in order, and the last row id."""
    rows = query(dsn, f"SELECT id, payload FROM `{table}` WHERE id > %s ORDER BY id", (after,))
    return [payload for _, payload in rows], (rows[-1][0] if rows else after)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("line_ids", ["on", "off"])
def test_every_line_is_stored_exactly_as_given_with_and_without_ids(dsn, tmp_path, line_ids):
    """Payloads that begin with @ (and CRs, NUL, tabs) through prefork.client (ids offered, and ids=False)
    and `prefork send` (with ids, and --no-ids), against ingest with line ids on and off: each is answered
    OK and stored exactly as given, once. Before, a client without ids sent `@alice logged out` as it is and
    a server with ids on stored `logged out` under the id `alice`."""
    table = f"t_client_as_given_{line_ids}"
    with ServerProcess(["--dsn", dsn, "--table", table, "--workers", "1", "--line-ids", line_ids]) as srv:
        to = f"127.0.0.1:{srv.port}"
        last = 0
        for ids in (None, False):
            payloads = AT_PAYLOADS + CR_PAYLOADS
            with Client(to, ids=ids) as client:
                assert client.send_all(payloads) == ["OK"] * len(payloads)
                assert client.server_ids is (line_ids == "on")
                assert client.using_ids is (line_ids == "on" and ids is None)
            stored, last = new_rows(dsn, table, last)
            assert stored == payloads, (ids, stored)
        for k, flags in enumerate([[], ["--no-ids"]]):
            source = tmp_path / f"payloads-{k}.txt"
            source.write_bytes("".join(p + "\n" for p in AT_PAYLOADS).encode())
            out = subprocess.run(
                prefork_cmd("send", "--to", to, *flags, str(source)),
                env=test_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stdout + out.stderr
            assert f"{len(AT_PAYLOADS)} lines, {len(AT_PAYLOADS)} OK, 0 ERR" in out.stdout, out.stdout
            stored, last = new_rows(dsn, table, last)
            assert stored == AT_PAYLOADS, (flags, stored)


@pytest.mark.timeout(120)
def test_the_id_prefix_does_not_count_toward_max_line_and_an_empty_line_is_empty(dsn, tmp_path):
    """`prefork send` with ids against a small --max-line: a line of exactly max_line bytes is stored (its
    id prefix comes on top), one byte more is ERR too-long, an empty line is ERR empty (it was bad-id)."""
    table = "t_send_max_line"
    max_line = 40
    exact = "x" * max_line
    source = tmp_path / "lines.txt"
    source.write_bytes(f"{exact}\n{exact}y\n\n@{exact[1:]}\nlast\n".encode())
    errors = tmp_path / "errors.txt"
    args = ["--dsn", dsn, "--table", table, "--workers", "1", "--line-ids", "on", "--max-line", str(max_line)]
    with ServerProcess(args) as srv:
        to = f"127.0.0.1:{srv.port}"
        out = subprocess.run(
            prefork_cmd("send", "--to", to, "--errors", str(errors), str(source)),
            env=test_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1, out.stdout + out.stderr
        assert "5 lines, 3 OK, 2 ERR" in out.stdout and "line ids: yes" in out.stdout, out.stdout
        assert errors.read_bytes() == f"too-long\t{exact}y\nempty\t\n".encode()
        with Client(to) as client:
            assert client.send_all([exact, exact + "y", "", ("mine", exact)]) == [
                "OK",
                "ERR too-long",
                "ERR empty",
                "OK",
            ]
            assert client.using_ids
    assert [r[0] for r in query(dsn, f"SELECT payload FROM `{table}` ORDER BY id")] == [
        exact,
        "@" + exact[1:],
        "last",
        exact,
        exact,
    ]


@pytest.mark.timeout(60)
def test_a_server_with_ack_off_gets_a_client_error_and_nothing(dsn):
    """ack off: the probe gets no reply, so the client says why after give_up_after and sends no line (before,
    with ids=False, it sent them, waited reply_timeout for replies that never come, and sent them again, each
    time stored again)."""
    table = "t_client_ack_off"
    with ServerProcess(["--dsn", dsn, "--table", table, "--workers", "1", "--ack", "off"]) as srv:
        for ids in (None, False):
            client = Client(f"127.0.0.1:{srv.port}", ids=ids, connect_timeout=0.5, reply_timeout=0.5, give_up_after=2.0)
            with pytest.raises(ClientError, match="no reply to the line-ids probe .*server.ack = off"):
                client.send_all(["one", "two"])
            client.close()
        wait_for(lambda: _table_exists(dsn, table), 30, what="the ingest table")
    assert query(dsn, f"SELECT COUNT(*) FROM `{table}`") == [(0,)]


def _table_exists(dsn: str, table: str) -> bool:
    sql = "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s"
    return query(dsn, sql, (table,))[0][0] == 1
