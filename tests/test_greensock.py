"""prefork.protocol.greensock: the gevent socket internals the connection relies on still behave as it assumes.

If a gevent release renames or changes them, the connection still serves (it falls back to its writer
greenlet and plain recv) but slower: these tests are what notices, naming the attribute.
"""

from __future__ import annotations

import socket

import gevent
import gevent.socket
import pytest

from prefork.protocol.greensock import (
    can_wait_readable,
    is_tls,
    raw_socket,
    send_close_notify,
    wait_readable,
    wait_readable_untimed,
)

TIMEOUT = 0.05  # the socket timeout of a wait that must time out (no data is ever sent)
IO_TIMEOUT = 10.0  # a wait that must return, bounded so that a broken one fails instead of hanging


@pytest.fixture
def pair():
    a, b = gevent.socket.socketpair()
    with a, b:
        yield a, b


def test_raw_socket_is_the_non_blocking_os_socket_under_gevents(pair) -> None:
    a, b = pair
    raw = raw_socket(a)
    assert raw is not None, f"gevent {gevent.__version__}: a gevent socket has no _sock any more"
    assert isinstance(raw, socket.SocketType), type(raw)  # the C socket type (_socket.socket)
    assert raw.fileno() == a.fileno()
    assert raw.gettimeout() == 0.0, "gevent no longer keeps the OS socket non-blocking: a send could block"
    assert raw.send(b"hello\n") == 6
    assert b.recv(100) == b"hello\n"
    with pytest.raises(BlockingIOError):  # a full socket: the send says so at once, never waits
        while True:
            raw.send(b"x" * 65536)


def test_wait_readable_waits_for_data_and_times_out_as_recv(pair) -> None:
    a, b = pair
    assert can_wait_readable(b), f"gevent {gevent.__version__}: a gevent socket has no _wait or _read_event"
    b.settimeout(TIMEOUT)
    with pytest.raises(TimeoutError):  # nothing sent: the socket's own timeout, as recv raises it
        wait_readable(b)
    b.settimeout(IO_TIMEOUT)
    gevent.spawn_later(TIMEOUT, a.sendall, b"line\n")
    wait_readable(b)  # returns once the data is there, without reading it
    assert b.recv(100, socket.MSG_PEEK) == b"line\n"
    a.shutdown(socket.SHUT_WR)
    assert b.recv(100) == b"line\n"
    wait_readable(b)  # EOF is readable too
    assert b.recv(100) == b""


def test_wait_readable_untimed_ignores_the_socket_timeout_and_can_be_interrupted(pair) -> None:
    a, b = pair
    assert can_wait_readable(b), f"gevent {gevent.__version__}: a gevent socket has no hub"
    b.settimeout(TIMEOUT)  # not used by this wait: data sent after it still ends the wait
    gevent.spawn_later(TIMEOUT * 4, a.sendall, b"line\n")
    with gevent.Timeout(IO_TIMEOUT):
        wait_readable_untimed(b)
    assert b.recv(100) == b"line\n"
    # What bounds it is a throw from the event loop (the sweeper's): the watcher is stopped, the socket usable.
    reader = gevent.getcurrent()
    timer = gevent.get_hub().loop.timer(TIMEOUT)
    timer.start(lambda: reader.throw(TimeoutError))
    with pytest.raises(TimeoutError):
        wait_readable_untimed(b)
    timer.close()
    a.sendall(b"more\n")
    wait_readable_untimed(b)
    assert b.recv(100) == b"more\n"


def test_a_plain_socket_has_neither() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert raw_socket(a) is None
        assert not can_wait_readable(a)


@pytest.fixture
def tls_pair(pki):
    """A TLS connection over a gevent socket pair, as a worker has one: (server side, client side)."""
    import gevent.ssl

    # This process is not patched: gevent's contexts by hand (a worker's prefork.tls.server_context makes one).
    server_ctx = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(pki.server_chain), str(pki.server_key))
    client_ctx = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cafile=str(pki.ca))
    a, b = gevent.socket.socketpair()
    server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    client = client_ctx.wrap_socket(b, server_hostname="localhost", do_handshake_on_connect=False)
    for sock in (server, client):
        sock.settimeout(IO_TIMEOUT)
    gevent.joinall([gevent.spawn(server.do_handshake), gevent.spawn(client.do_handshake)], raise_error=True)
    with server, client:
        yield server, client


def test_a_tls_socket_takes_the_slow_path(tls_pair) -> None:
    """Its _sock would send plaintext under the TLS stream, and a wait on the OS socket could last forever
    while OpenSSL holds decrypted bytes: both are refused, and the connection sends and reads through TLS."""
    server, client = tls_pair
    assert is_tls(server) and not is_tls(server._sock)
    assert raw_socket(server) is None
    assert not can_wait_readable(server)
    client.sendall(b"one\ntwo\n")
    assert server.recv(4) == b"one\n"
    assert server.pending() == 4  # what the OS socket no longer shows: a wait on it would never return
    assert server.recv(100) == b"two\n"


def test_close_notify_ends_the_clients_stream_and_reading_goes_on(tls_pair) -> None:
    server, client = tls_pair
    send_close_notify(server)
    assert client.recv(100) == b""  # the TLS end of the stream, as EOF
    client.sendall(b"late\n")  # after the server's close_notify, the client may still send: it is read
    assert server.recv(100) == b"late\n"
