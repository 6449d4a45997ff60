"""A graceful stop throws nothing away: what a client sends after the stop began is handled like any other
line until the client closes or goes quiet, and connections waiting in the listen backlog are served
instead of reset. Real master, real sockets, real signals."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.server import ServerProcess, connect, read_all, read_lines, wait_for

ECHO = "workers.echo:app"
PACE_S = 0.05  # between two lines of a client that keeps sending: far below the stop's quiet time (0.5 s)
SEND_FOR_S = 3.0  # longer than the old stop's grace (0.5 s) and linger (2 s) together


def clients(srv: ServerProcess) -> int:
    return srv.status()["totals"]["clients"]


@pytest.mark.timeout(60)
def test_a_client_sending_through_a_graceful_stop_has_every_line_answered():
    """TERM while a client keeps sending, one line every 50 ms for 3 s: every line is read and answered,
    then a clean EOF once it half-closes. Before, the server stopped reading 0.5 s into the stop, then
    read and threw away what came for 2 s: the lines of the last 2.5 s got no reply and were lost."""
    with ServerProcess([ECHO, "--workers", "1", "--graceful-timeout", "60"]) as srv:
        sock = connect(srv.port)
        sock.sendall(b"first\n")
        assert read_lines(sock, 1) == [b"first"]
        srv.signal(signal.SIGTERM)
        wait_for(lambda: "Shutting down" in srv.logs(), what="the stop to begin")
        sent = []
        end = time.monotonic() + SEND_FOR_S
        while time.monotonic() < end:
            line = b"after-%d" % len(sent)
            sock.sendall(line + b"\n")
            sent.append(line)
            time.sleep(PACE_S)
        sock.shutdown(socket.SHUT_WR)
        replies = read_all(sock).split(b"\n")[:-1]  # a reset (RST) fails the test too
        sock.close()
        assert replies == sent
        assert srv.wait(30) == 0


@pytest.mark.timeout(60)
def test_a_quiet_client_is_closed_at_a_stop_without_waiting_for_graceful_timeout():
    """An idle connection does not hold a stopping worker for graceful_timeout (60 s here): it is closed
    (a clean EOF) once quiet with nothing owed, and the master exits 0 long before the timeout."""
    with ServerProcess([ECHO, "--workers", "1", "--graceful-timeout", "60"]) as srv:
        sock = connect(srv.port)
        sock.sendall(b"hello\n")
        assert read_lines(sock, 1) == [b"hello"]
        srv.signal(signal.SIGTERM)
        assert read_all(sock) == b""
        sock.close()
        assert srv.wait(30) == 0
        assert "did not stop within graceful_timeout" not in srv.logs()


@pytest.mark.timeout(60)
def test_connections_waiting_in_the_backlog_at_a_stop_are_served_not_reset():
    """worker_connections 2, held by two idle clients: five more clients connect (the kernel completes them
    into the listen backlog), send a line and half-close. At TERM the worker closes its idle clients, then
    accepts the five and answers them. Before, it closed its listener at once: the last close of a listener
    resets what its backlog holds, and the five got a reset and no reply."""
    args = [ECHO, "--workers", "1", "--worker-connections", "2", "--graceful-timeout", "60"]
    with ServerProcess(args) as srv:
        held = [connect(srv.port) for _ in range(2)]
        for i, sock in enumerate(held):
            sock.sendall(b"held-%d\n" % i)
            assert read_lines(sock, 1) == [b"held-%d" % i]
        waiting = [connect(srv.port) for _ in range(5)]
        for i, sock in enumerate(waiting):
            sock.sendall(b"waiting-%d\n" % i)
            sock.shutdown(socket.SHUT_WR)
        wait_for(lambda: clients(srv) == 2, what="the two held clients in the status")  # the five wait
        srv.signal(signal.SIGTERM)
        got = []
        for sock in waiting:
            try:
                got.append(read_all(sock))
            except ConnectionResetError:
                got.append(b"reset")
            sock.close()
        for sock in held:
            sock.close()
        assert got == [b"waiting-%d\n" % i for i in range(5)]
        assert srv.wait(30) == 0
