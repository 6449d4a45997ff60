"""server.framing and server.ack per listener, against a real server: config errors, the framings of
each listener, replies with ack on and off, rejected frames in /metrics and the log."""

from __future__ import annotations

import re
import select
import socket
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.mariadb import free_port
from prefork.protocol.rejects import LOG_INTERVAL_S
from tests import test_framer_octet_count as octet_model
from tests import test_framer_syslog as syslog_model
from tests.server import ServerProcess, connect, prefork_cmd, read_all, read_lines, wait_for
from tests.syslog_model import cut
from tests.test_cli import one_error_line, run_cli
from tests.test_master import http_get

STALL_S = 2.0  # no room to send for this long: the server stopped reading from the client
BAD_FRAMES = 2000
ECHO_MAX_LINE = 10  # the largest max_line of the framers' models (tests/syslog_model.py max_lines)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--framing", "rfc5424"], "server.framing: invalid value 'rfc5424'"),
        (["--ack", "sometimes"], "server.ack: invalid value 'sometimes'"),
        (["--framing", "lines,syslog"], "server.framing: 2 values for the 1 addresses of server.bind"),
        (
            ["--bind", "127.0.0.1:0,127.0.0.2:0,127.0.0.3:0", "--ack", "on,off"],
            "server.ack: 2 values for the 3 addresses of server.bind",
        ),
    ],
)
def test_bad_framing_settings(args, expected):
    assert expected in one_error_line(run_cli("check", "workers.echo:app", *args))


def _replies(port: int, data: bytes, count: int) -> list[bytes]:
    with connect(port) as sock:
        sock.sendall(data)
        return read_lines(sock, count)


def test_each_listener_frames_and_acks_as_configured():
    """Three listeners of one server: lines (ack auto = on), octet-count with ack on, syslog with ack
    auto (= off). The echo app answers each message with itself: the framing decides what a message is."""
    lines, counted, mixed = free_port(), free_port(), free_port()
    bind = f"127.0.0.1:{lines},127.0.0.1:{counted},127.0.0.1:{mixed}"
    args = ["workers.echo:app", "--workers", "1", "--framing", "lines,octet-count,syslog", "--ack", "auto,on,auto"]
    with ServerProcess(args, bind=bind):
        assert _replies(lines, b"5 a b\n<13>x\0y\n", 2) == [b"5 a b", b"<13>x\x00y"]
        assert _replies(counted, b"4 a b\n7 <13>x\0y", 2) == [b"a b", b"<13>x\x00y"]
        with connect(mixed) as sock:
            sock.sendall(b"<13>one\0<13>two\n")
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b""  # ack auto: a syslog listener sends nothing


def _metrics_port(srv: ServerProcess) -> int:
    match = wait_for(lambda: re.search(r"Metrics at: http://127\.0\.0\.1:(\d+)/metrics", srv.logs()))
    return int(match.group(1))


def _metric(port: int, sample: str) -> int | None:
    """The value of one sample of /metrics (``name{labels}``), None if absent."""
    _, body = http_get(port, "/metrics")
    for line in body.splitlines():
        if line.startswith(sample + " "):
            return int(float(line.rsplit(" ", 1)[1]))
    return None


@pytest.mark.timeout(120)
def test_a_client_that_never_reads_is_logged_once_and_counted():
    """ack on, a client that sends lines and reads no reply: once both socket buffers are full of replies the
    reader stops; the worker says so once (naming server.ack = off), /metrics counts it, and another client
    is still served; client_timeout then closes it, with a log line saying how many lines went unanswered.
    Before, nothing said why the connection stalled, nor that client_timeout cut it."""
    args = ["workers.echo:app", "--workers", "1", "--metrics-bind", "127.0.0.1:0", "--client-timeout", "10"]
    with ServerProcess(args) as srv:
        metrics = _metrics_port(srv)
        stalled = connect(srv.port)
        stalled.setblocking(False)
        chunk = b"y\n" * 32768
        try:
            while True:
                _, writable, _ = select.select([], [stalled], [], STALL_S)
                if not writable:
                    break  # the server stopped reading from this client
                try:
                    stalled.send(chunk)
                except BlockingIOError:
                    pass
            wait_for(
                lambda: "does not read its replies" in srv.logs(), what="the log line of a client that never reads"
            )
            assert _replies(srv.port, b"other\n", 1) == [b"other"]
            sample = 'prefork_clients_not_reading_total{name="prefork"}'
            wait_for(lambda: _metric(metrics, sample) == 1, what="the client counted in /metrics")
            # prefork status counts it too, per worker and in all (--json), and in the table's UNREAD column
            status = wait_for(
                lambda: (s := srv.status())["totals"]["unread_clients"] == 1 and s, what="the count in status"
            )
            assert [w["unread_clients"] for w in status["workers"]] == [1]
            table = subprocess.run(
                prefork_cmd("status", "--pidfile", srv.pidfile()), env=srv.env, capture_output=True, text=True
            ).stdout
            header = next(row.split() for row in table.splitlines() if row.split()[:1] == ["PID"])
            pid = str(status["workers"][0]["pid"])
            row = next(row.split() for row in table.splitlines() if row.split()[:1] == [pid])
            assert row[header.index("UNREAD")] == "1", table
            assert srv.logs().count("does not read its replies") == 1
            assert "set server.ack = off for this listener" in srv.logs()
            closed = wait_for(
                lambda: re.search(
                    r"closed: it took no reply for client_timeout \((\d+) lines unanswered\)", srv.logs()
                ),
                timeout=60,
                what="the close at client_timeout",
            )
            assert int(closed.group(1)) > 0
        finally:
            stalled.close()


@pytest.mark.timeout(120)
def test_refused_frames_with_ack_off_are_counted_and_logged_at_a_bounded_rate():
    """A syslog listener (ack auto = off) fed 2,000 frames too long and 2,000 not UTF-8, each in a read of its
    own, and an octet-count listener given a bad length: all counted by reason in /metrics; the log says
    so at most once per second (LOG_INTERVAL_S) with the count of those it left out, and names the closed
    connection."""
    mixed, counted = free_port(), free_port()
    args = ["workers.echo:app", "--workers", "1", "--max-line", "8", "--metrics-bind", "127.0.0.1:0"]
    args += ["--framing", "syslog,octet-count"]
    with ServerProcess(args, bind=f"127.0.0.1:{mixed},127.0.0.1:{counted}") as srv:
        metrics = _metrics_port(srv)
        with connect(counted) as sock:
            sock.sendall(b"3 abc07 <13>bad")
            assert read_all(sock) == b""  # closed by the server: no reply, ack off
        wait_for(lambda: "bad octet count (server.framing = octet-count)" in srv.logs(), what="the broken stream")
        started = time.monotonic()
        with connect(mixed) as sock:
            for _ in range(BAD_FRAMES):
                sock.sendall(b"<13>much too long\n\xff\xfe\0<13>ok\n")
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b""
        labels = 'name="prefork",result="err",reason="{}"'
        for reason, count in (("too-long", BAD_FRAMES), ("bad-utf8", BAD_FRAMES), ("bad-length", 1)):
            sample = "prefork_replies_total{" + labels.format(reason) + "}"
            wait_for(lambda s=sample, n=count: _metric(metrics, s) == n, what=f"{count} {reason} in /metrics")
        # Every refused frame is named in the log, by one line or by a summary, in at most one line per
        # LOG_INTERVAL_S (and the summary after the last).
        named = wait_for(lambda: _named_in_log(srv.logs()), what="every refused frame named in the log")
        assert named == {"too-long": BAD_FRAMES, "bad-utf8": BAD_FRAMES}
        elapsed = time.monotonic() - started
        logged = srv.logs().count("frames refused, not stored")
        assert logged <= elapsed / LOG_INTERVAL_S + 2, (logged, elapsed)


def _named_in_log(logs: str) -> dict[str, int] | None:
    """The refused frames the log names, by reason, once they are all named (else None)."""
    named: dict[str, int] = {}
    for line in logs.splitlines():
        if "frames refused, not stored" in line:
            for n, reason in re.findall(r"(\d+) ([a-z0-9-]+)(?:,|$)", line.rsplit(": ", 1)[1]):
                named[reason] = named.get(reason, 0) + int(n)
    return named if sum(named.values()) >= 2 * BAD_FRAMES else None


def test_with_ack_on_each_frame_gets_its_reply_and_a_bad_length_the_last():
    """octet-count with ack on: one reply per frame as for lines, refused ones included; after a bad length
    the server answers it and closes (nothing after it can be framed)."""
    args = ["workers.echo:app", "--workers", "1", "--framing", "octet-count", "--ack", "on", "--max-line", "4"]
    with ServerProcess(args) as srv, connect(srv.port) as sock:
        sock.sendall(b"2 ok6 123456\n2 \xff\xfe3 end05 after")
        assert read_all(sock) == b"ok\nERR too-long\nERR bad-utf8\nend\nERR bad-length\n"


# -- the framers' models, end to end through a real server (the echo app, ack on) ---------------------------


@pytest.fixture(scope="module")
def echo_listeners():
    """One server, max_line 10 (the models' largest), an octet-count and a syslog listener, both with ack on."""
    counted, mixed = free_port(), free_port()
    args = ["workers.echo:app", "--workers", "1", "--max-line", "10", "--ack", "on"]
    args += ["--framing", "octet-count,syslog"]
    with ServerProcess(args, bind=f"127.0.0.1:{counted},127.0.0.1:{mixed}"):
        yield {"octet-count": counted, "syslog": mixed}


def _echoed(outcomes: list[str]) -> bytes:
    """What the echo app's replies to these outcomes are on the wire (a reply cannot hold a LF)."""
    replies = []
    for item in outcomes:
        payload = item[3:] if item.startswith("OK:") else None
        if payload is None:
            replies.append(item)
        else:
            replies.append("ERR unavailable" if "\n" in payload else payload)
    return "".join(r + "\n" for r in replies).encode()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_the_models_hold_through_a_real_server(echo_listeners, data):
    """Streams of each framer's model, sent in random chunks to a real server: the replies are the model's.
    (max_line is fixed at 10 here: the models' streams use at most that.)"""
    framing = data.draw(st.sampled_from(["octet-count", "syslog"]))
    module = octet_model if framing == "octet-count" else syslog_model
    case = data.draw(module.streams(ECHO_MAX_LINE))
    _, stream, expected = case[:3]
    points = data.draw(st.lists(st.integers(0, 10_000), max_size=6))
    with connect(echo_listeners[framing]) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk in cut(stream, points):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == _echoed(expected)
