"""prefork.client and `prefork send` against a real master (echo, and ingest on the private MariaDB)."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from prefork.client import Client, parse_address
from tests.helpers import query
from tests.server import ServerProcess, prefork_cmd, test_env, wait_for


def test_parse_address():
    assert parse_address("db1:4000") == ("db1", 4000)
    assert parse_address("example") == ("example", 32777)
    assert parse_address("[::1]:5000") == ("::1", 5000)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address("host:port")


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
