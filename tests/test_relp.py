"""RELP over a real loopback connection: the real `LineConnection` with a RELP session, in a greenlet of this
process, and a client speaking librelp's frames on a real socket.

The app answers each message with a future resolved later, in random order (as the ingest app's group
commits do): the rsp frames still come in command order, one per command, numbered as the commands were. A
message ``!REASON`` gets ``ERR REASON``. What ends a session is checked on the wire: after ``close``'s rsp, a
malformed frame or an ``ERR unavailable``, the server says ``serverclose`` and closes, having sent every reply
owed before (and none after an ``ERR unavailable``: the client resends those frames).
"""

from __future__ import annotations

import logging
import random
import socket
from typing import Any

import gevent
import gevent.socket
import pytest
from gevent.event import AsyncResult

from prefork.protocol.connection import LineConnection, ProtocolSettings
from prefork.protocol.counters import Counters
from prefork.protocol.rejects import REJECTS
from prefork.protocol.relp import SERVERCLOSE
from tests.test_framer_relp import OPEN_OFFERS, rsp, wire

IO_TIMEOUT = 20.0


@pytest.fixture(autouse=True)
def _log_lines_not_held_back() -> None:
    """Each test sees its own log line: the worker-wide rate limit starts afresh."""
    REJECTS._next = 0.0


OPEN_RSP = rsp(1, "200 OK\nrelp_version=0\nrelp_software=prefork\ncommands=syslog")


class LateApp:
    """Replies ``OK`` (``ERR REASON`` to ``!REASON``) through futures resolved later, in random order."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.held: list[tuple[AsyncResult, str]] = []
        self.messages: list[str] = []
        self.resolver = gevent.spawn(self._resolve)

    def handle(self, line: str, client: Any) -> Any:
        return self.handle_lines([line], client)[0]

    def handle_lines(self, lines: list[str], client: Any) -> list[Any]:
        replies = []
        for line in lines:
            self.messages.append(line)
            future: AsyncResult = AsyncResult()
            self.held.append((future, "ERR " + line[1:] if line.startswith("!") else "OK"))
            replies.append(future)
        return replies

    def _resolve(self) -> None:
        while True:
            gevent.sleep(0.001)
            self.rng.shuffle(self.held)
            count = self.rng.randint(0, len(self.held))
            for future, reply in self.held[:count]:
                future.set(reply)
            del self.held[:count]


def serve_one(send: bytes, app: LateApp, stop_after: float | None = None) -> bytes:
    """Serve one RELP connection; send ``send`` (reading meanwhile), then read until the server closes."""
    listener = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    proto = ProtocolSettings(max_line=64, client_timeout=IO_TIMEOUT, ack=False, framing="relp")
    connections: list[LineConnection] = []

    def serve() -> None:
        conn, addr = listener.accept()
        connection = LineConnection(conn, addr, app, proto, Counters())
        connections.append(connection)
        connection.serve()

    server = gevent.spawn(serve)
    client = gevent.socket.create_connection(listener.getsockname(), timeout=IO_TIMEOUT)
    try:
        reader = gevent.spawn(_read_until_eof, client)
        client.sendall(send)
        if stop_after is not None:
            gevent.sleep(stop_after)
            connections[0].stop(gevent.get_hub().loop.now() + IO_TIMEOUT)  # read on until the client is quiet
        received = reader.get(timeout=IO_TIMEOUT)
        server.get(timeout=IO_TIMEOUT)
        return received
    finally:
        client.close()
        listener.close()
        app.resolver.kill()
        gevent.killall([server])


def _read_until_eof(sock: gevent.socket.socket) -> bytes:
    received = bytearray()
    try:
        while data := sock.recv(65536):
            received += data
    except ConnectionResetError:
        pass
    return bytes(received)


def session(messages: list[bytes], close: bool = True) -> bytes:
    frames = [wire("open", 1, OPEN_OFFERS)]
    frames += [wire("syslog", txnr, message) for txnr, message in enumerate(messages, 2)]
    if close:
        frames.append(wire("close", len(messages) + 2))
    return b"".join(frames)


@pytest.mark.timeout(60)
def test_a_window_of_messages_is_acked_in_order_then_close_is_answered_and_the_server_closes() -> None:
    messages = [b"message %d" % i for i in range(3000)] + [b"!rejected"]
    app = LateApp()
    received = serve_one(session(messages), app)
    expected = OPEN_RSP + b"".join(rsp(txnr, "200 OK") for txnr in range(2, 3002))
    expected += rsp(3002, "500 rejected") + rsp(3003, "200 OK") + SERVERCLOSE
    assert received == expected
    assert app.messages == [m.decode() for m in messages]


@pytest.mark.timeout(60)
def test_err_unavailable_ends_the_session_with_the_replies_before_it(caplog: pytest.LogCaptureFixture) -> None:
    app = LateApp()
    with caplog.at_level(logging.WARNING, logger="prefork.protocol"):
        received = serve_one(session([b"a", b"b", b"!unavailable", b"c"], close=False), app)
    assert received == OPEN_RSP + rsp(2, "200 OK") + rsp(3, "200 OK") + SERVERCLOSE
    assert [r.getMessage() for r in caplog.records] == [
        "client 1 (127.0.0.1): RELP session closed: a reply was ERR unavailable: the client resends what was not acked"
    ]


@pytest.mark.timeout(60)
def test_a_wrong_transaction_number_closes_the_session_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    app = LateApp()
    send = session([b"a"], close=False) + wire("syslog", 7, b"b") + wire("syslog", 4, b"c")
    with caplog.at_level(logging.WARNING, logger="prefork.protocol"):
        received = serve_one(send, app)
    assert received == OPEN_RSP + rsp(2, "200 OK") + SERVERCLOSE
    assert app.messages == ["a"]
    assert [r.getMessage() for r in caplog.records] == [
        "client 1 (127.0.0.1): RELP session closed: transaction number 7, expected 3"
    ]


@pytest.mark.timeout(60)
def test_a_graceful_stop_answers_what_was_read_then_says_serverclose() -> None:
    app = LateApp()
    received = serve_one(session([b"a", b"b"], close=False), app, stop_after=0.2)
    assert received == OPEN_RSP + rsp(2, "200 OK") + rsp(3, "200 OK") + SERVERCLOSE
