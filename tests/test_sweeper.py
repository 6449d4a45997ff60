"""client_timeout through the event loop's sweeper (``prefork.protocol.sweeper``): reads wait with no timer
of their own, and a client that sends no complete line for client_timeout is still closed, neither before
that nor much after; one that keeps sending lines is not; the sweeper forgets closed connections and stops
its timer with the last one. In-process: ``LineConnection`` served in greenlets over real sockets."""

from __future__ import annotations

import socket
import time
from typing import Any

import gevent
import gevent.socket
import pytest

from prefork.protocol.connection import LineConnection, ProtocolSettings
from prefork.protocol.counters import Counters
from prefork.protocol.sweeper import SWEEPS_PER_TIMEOUT, sweeper
from workers.echo import EchoApp

CLIENT_TIMEOUT = 0.3
IO_TIMEOUT = 10.0


@pytest.fixture
def server():
    """A listener whose accepted connections are each served by a LineConnection (client_timeout 0.3 s)."""
    listener = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    proto = ProtocolSettings(client_timeout=CLIENT_TIMEOUT)
    served: list[gevent.Greenlet] = []

    def accept() -> None:
        while True:
            conn, addr = listener.accept()
            served.append(gevent.spawn(LineConnection(conn, addr, EchoApp(), proto, Counters()).serve))

    acceptor = gevent.spawn(accept)
    try:
        yield listener.getsockname(), served
    finally:
        acceptor.kill()
        gevent.killall(served, timeout=IO_TIMEOUT)
        listener.close()


def closed_after(sock: Any, started: float | None = None) -> float:
    """Read until the server closes; the seconds since ``started`` (by default now)."""
    if started is None:
        started = time.monotonic()
    with gevent.Timeout(IO_TIMEOUT):
        while sock.recv(65536):
            pass
    return time.monotonic() - started


@pytest.mark.timeout(30)
def test_idle_clients_are_closed_at_client_timeout_and_not_before(server):
    address, served = server
    # Timed from before each connect: the server's clock for a client starts at its accept, later.
    clients = [(time.monotonic(), gevent.socket.create_connection(address)) for _ in range(20)]
    try:
        waits = gevent.joinall([gevent.spawn(closed_after, c, t) for t, c in clients], raise_error=True)
        for wait in waits:
            # Not before client_timeout; after it, within the sweep interval (a tenth of it) and this
            # process's scheduling.
            assert CLIENT_TIMEOUT * 0.95 <= wait.value < CLIENT_TIMEOUT + 2.0, wait.value
    finally:
        for _, c in clients:
            c.close()
    gevent.joinall(served, timeout=IO_TIMEOUT)
    assert all(g.dead for g in served)
    assert not sweeper()._watched, "closed connections are still watched"
    assert sweeper()._timer is None, "the sweeper's timer runs on with nothing to watch"


@pytest.mark.timeout(30)
def test_a_client_sending_lines_stays_open_past_client_timeout(server):
    address, _ = server
    with gevent.socket.create_connection(address) as sock:
        sock.settimeout(IO_TIMEOUT)
        started = time.monotonic()
        n = 0
        while True:
            n += 1
            sock.sendall(f"line {n}\n".encode())
            assert sock.recv(100) == f"line {n}\n".encode()
            answered = time.monotonic()
            if answered - started >= CLIENT_TIMEOUT * 4:
                break
            gevent.sleep(CLIENT_TIMEOUT / 3)
        # Each complete line moved its deadline on: open until it has been silent for client_timeout.
        closed_after(sock)
        assert time.monotonic() - answered >= CLIENT_TIMEOUT * 0.95


@pytest.mark.timeout(30)
def test_a_partial_line_does_not_move_the_deadline(server):
    address, _ = server
    started = time.monotonic()  # before the connect: the server's clock starts at its accept, later
    with gevent.socket.create_connection(address) as sock:
        sock.settimeout(IO_TIMEOUT)

        def trickle() -> None:
            try:
                while True:
                    sock.sendall(b"p")
                    gevent.sleep(CLIENT_TIMEOUT / SWEEPS_PER_TIMEOUT)
            except OSError:
                pass

        sender = gevent.spawn(trickle)
        try:
            closed_after(sock)
        finally:
            sender.kill()
        assert CLIENT_TIMEOUT * 0.95 <= time.monotonic() - started < CLIENT_TIMEOUT + 2.0
