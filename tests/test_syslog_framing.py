"""server.framing and server.ack per listener, against a real server: config errors, the framings of
each listener, replies with ack on and off, rejected frames in /metrics and the log."""

from __future__ import annotations

import socket

import pytest

from devtools.mariadb import free_port
from tests.server import ServerProcess, connect, read_all, read_lines
from tests.test_cli import one_error_line, run_cli


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
