"""A busy port at start is tried again (server.bind_attempts times in all, 1 s apart) before exit 2: a
restart racing the old process's exit serves once the port is free, and a port that stays held ends in one
error line naming the address."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from prefork.exits import EXIT_USAGE
from tests.server import ServerProcess, roundtrip, wait_for

RETRY_LINE = "address in use, trying again in"


@pytest.fixture
def held() -> Iterator[socket.socket]:
    """A port held by a plain listening socket (as by an old master that has not exited yet)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def test_a_port_freed_during_the_retries_is_served(held: socket.socket):
    port = held.getsockname()[1]
    srv = ServerProcess(["workers.echo:app", "--workers", "1"], bind=f"127.0.0.1:{port}")
    try:
        srv.start(wait=False)
        wait_for(lambda: RETRY_LINE in srv.logs(), what="the first retry")
        held.close()  # the old process exits
        wait_for(lambda: "Workers are serving" in srv.logs() or srv.proc.poll() is not None, what="serving")
        assert srv.proc.poll() is None, srv.logs()
        assert roundtrip(port, [b"hello"]) == [b"hello"]
        retries = [line for line in srv.logs().splitlines() if RETRY_LINE in line]
        assert retries and f"server.bind=127.0.0.1:{port}: address in use" in retries[0], srv.logs()
    finally:
        srv.stop()


def test_a_port_held_throughout_exits_2_with_one_error_line(held: socket.socket):
    port = held.getsockname()[1]
    args = ["workers.echo:app", "--workers", "1", "-s", "server.bind_attempts=3"]  # 2 s of retries, not 4
    srv = ServerProcess(args, bind=f"127.0.0.1:{port}")
    try:
        srv.start(wait=False)
        assert srv.wait(60) == EXIT_USAGE, srv.logs()
        lines = srv.logs().splitlines()
    finally:
        srv.stop()
    assert len([line for line in lines if RETRY_LINE in line]) == 2, lines  # each retry logged once
    errors = [line for line in lines if line.startswith("prefork: error:")]
    assert errors == [
        f"prefork: error: cannot bind server.bind=127.0.0.1:{port}: Address already in use (tried 3 times, 1s apart)"
    ], lines
    assert "Workers are serving" not in srv.logs()
