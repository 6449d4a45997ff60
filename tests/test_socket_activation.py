"""systemd socket activation: the master serves the listening sockets it is passed (LISTEN_FDS), each with
the options of the server.bind entry it matches (by FileDescriptorName= through server.fd_name, or by its
address), binds the entries no socket matches, ignores sockets meant for another process (LISTEN_PID) and
refuses, with exit 2 and one line, a descriptor it cannot serve.

Started by Debian's `systemd-socket-activate` (it listens, and execs the command on the first connection,
with LISTEN_FDS set as systemd does), and by a shell that sets the variables itself for the cases the tool
cannot make (another LISTEN_PID, a socket that does not listen)."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefork import activation
from prefork.config.address import parse_address
from prefork.exits import EXIT_USAGE
from tests.server import APPS, ROOT, ServerProcess, read_lines, roundtrip, wait_for

ECHO = ["workers.echo:app", "--workers", "1"]


def socket_activate() -> str:
    for path in ("/usr/bin/systemd-socket-activate", "/lib/systemd/systemd-socket-activate"):
        if os.access(path, os.X_OK):
            return path
    pytest.fail("systemd-socket-activate is not installed: apt-get install systemd", pytrace=False)


@pytest.fixture
def tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="prefork-activation-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def script(path: Path, text: str) -> str:
    path.write_text(f"#!/bin/sh\n{text}\n")
    path.chmod(0o755)
    return str(path)


def listener(address: str | tuple[str, int]) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(address)
    sock.listen()
    return sock


def passing(tmp: Path, socks: list[socket.socket], names: str, pid: int | None = None) -> tuple[str, list[int]]:
    """An interpreter that starts prefork as systemd would, with `socks` as fds 3, 4, ... and LISTEN_PID its
    own pid (or `pid`), and the descriptors to give it: copies above 100, so that moving them to 3, 4, ...
    overwrites none."""
    high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 100 + i) for i, s in enumerate(socks)]
    wrapper = tmp / "as-systemd"
    variables = {"LISTEN_FDS": str(len(socks)), "LISTEN_FDNAMES": names}
    wrapper.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        f"for i, fd in enumerate({high}):\n    os.dup2(fd, 3 + i)\n    os.close(fd)\n"
        f"os.environ.update({variables!r}, LISTEN_PID=str({pid} or os.getpid()))\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    )
    wrapper.chmod(0o755)
    return str(wrapper), high


# -- with systemd-socket-activate ---------------------------------------------------------------------


def test_connections_made_before_prefork_is_up_are_served_each_with_its_listeners_options(tmp: Path):
    """Two sockets named `lines` and `octets` (FileDescriptorName=), matched by name to server.bind entries
    at other paths (never bound), one with lines, the other with octet-count framing. Every client connects
    and sends before prefork has started: the command waits for a file the test creates after that.
    (Unix sockets: systemd-socket-activate takes no port 0, and a port picked beforehand could be taken.)"""
    go, lines_path, octets_path = tmp / "go", str(tmp / "lines.sock"), str(tmp / "octets.sock")
    activate = f"{socket_activate()} -l {lines_path} -l {octets_path} --fdname=lines:octets"
    activate += f" -E PYTHONPATH={APPS}:{ROOT}"
    waiting = f'while [ ! -e {go} ]; do sleep 0.05; done; exec {sys.executable} "$@"'
    python = script(tmp / "activated", f"exec {activate} sh -c '{waiting}' sh \"$@\"")
    args = [*ECHO, "--framing", "lines,octet-count", "--ack", "on", "-s", "server.fd_name=lines,octets"]
    srv = ServerProcess(args, bind=f"unix:{tmp / 'a.sock'},unix:{tmp / 'b.sock'}", python=python)
    clients: list[socket.socket] = []
    try:
        srv.start(wait=False)
        wait_for(lambda: srv.logs().count("Listening on") == 2, what="systemd-socket-activate to listen")
        for i in range(6):
            clients.append(unix_client(lines_path if i % 2 == 0 else octets_path))
            clients[-1].sendall(f"{i} hello\n".encode() if i % 2 == 0 else f"7 {i} hello".encode())
        assert "Starting prefork master" not in srv.logs()  # the command waits for `go`: nothing served yet
        go.touch()
        for i, sock in enumerate(clients):
            assert read_lines(sock, 1) == [f"{i} hello".encode()], (i, srv.logs())
        for path, reply in ((lines_path, b"5 hello"), (octets_path, b"hello")):  # a line, an octet-counted frame
            with unix_client(path) as sock:
                sock.sendall(b"5 hello" + (b"\n" if path == lines_path else b""))
                assert read_lines(sock, 1) == [reply]
        logs = srv.logs()
        assert f"Listening at: unix:{lines_path} (from systemd)" in logs, logs
        assert f"Listening at: unix:{octets_path} (from systemd)" in logs, logs
        assert len(srv.listening()) == 2 and "binding it" not in logs, logs  # a.sock and b.sock: never bound
        assert not (tmp / "a.sock").exists() and not (tmp / "b.sock").exists()
        for sock in clients:
            sock.close()  # a graceful stop would wait for them
        srv.signal(signal.SIGTERM)
        assert srv.wait(30) == 0, srv.logs()
        assert os.path.exists(lines_path)  # systemd's socket: not unlinked
    finally:
        for sock in clients:
            sock.close()
        srv.stop()


def unix_client(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    sock.connect(path)
    return sock


# -- with LISTEN_FDS set by the test --------------------------------------------------------------------


def test_sockets_match_by_address_and_by_name_stay_through_a_reload_and_are_left_to_systemd(tmp: Path):
    """fd 3 (TCP, a name no entry has) matches its server.bind entry by address; fd 4 (unix, named `ux`)
    the entry whose server.fd_name is `ux`, at another path; the third entry is bound. A reload keeps
    them; a stop leaves the unix socket file, which is systemd's."""
    tcp = listener(("127.0.0.1", 0))
    path = str(tmp / "systemd.sock")
    unix = listener(path)
    port = tcp.getsockname()[1]
    python, high = passing(tmp, [tcp, unix], "unknown:ux")
    bind = f"127.0.0.1:{port},unix:{tmp / 'configured.sock'},127.0.0.1:0"
    srv = ServerProcess([*ECHO, "-s", "server.fd_name=,ux,"], bind=bind, python=python)
    try:
        srv.start(pass_fds=high)
        tcp.close()  # the master's copies serve
        unix.close()
        logs = srv.logs()
        assert f"Listening at: 127.0.0.1:{port} (from systemd)" in logs, logs
        assert f"Listening at: unix:{path} (from systemd)" in logs, logs
        assert "server.bind=127.0.0.1:0: no socket from systemd matches it, binding it" in logs, logs
        assert not (tmp / "configured.sock").exists()
        bound = int(srv.listening()[2].rsplit(":", 1)[1])
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "Reloaded: generation 2 serving" in srv.logs(), what="the reload")
        assert len(srv.listening()) == 3, srv.logs()  # nothing bound again
        assert roundtrip(port, [b"a", b"b"]) == [b"a", b"b"]
        assert roundtrip(bound, [b"c"]) == [b"c"]
        with unix_client(path) as client:
            client.sendall(b"d\n")
            assert read_lines(client, 1) == [b"d"]
        srv.signal(signal.SIGTERM)
        assert srv.wait(30) == 0, srv.logs()
        assert os.path.exists(path)  # systemd's socket: not unlinked
    finally:
        for fd in high:
            os.close(fd)
        srv.stop()


def test_sockets_meant_for_another_process_are_ignored(tmp: Path):
    other = listener(("127.0.0.1", 0))
    python, high = passing(tmp, [other], "x", pid=1)
    srv = ServerProcess(ECHO, python=python)
    try:
        srv.start(pass_fds=high)
        logs = srv.logs()
        assert "LISTEN_FDS=1 ignored: LISTEN_PID=1 is not this process" in logs, logs
        assert "(from systemd)" not in logs and srv.port != other.getsockname()[1], logs
        assert roundtrip(srv.port, [b"a"]) == [b"a"]
    finally:
        other.close()
        for fd in high:
            os.close(fd)
        srv.stop()


@pytest.mark.parametrize("kind", ["not listening", "unmatched"])
def test_a_socket_that_cannot_be_served_exits_2_with_one_line(tmp: Path, kind: str):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    if kind == "unmatched":
        sock.listen()
    port = sock.getsockname()[1]
    python, high = passing(tmp, [sock], "web")
    srv = ServerProcess(ECHO, python=python)  # binds 127.0.0.1:0: no match by address, none by name
    try:
        srv.start(wait=False, pass_fds=high)
        assert srv.wait(30) == EXIT_USAGE, srv.logs()
        lines = [line for line in srv.logs().splitlines() if line.strip()]
    finally:
        sock.close()
        for fd in high:
            os.close(fd)
        srv.stop()
    expected = {
        "not listening": f"prefork: error: LISTEN_FDS: fd 3 named 'web' (127.0.0.1:{port}) is not listening",
        "unmatched": f"prefork: error: the socket systemd passed as fd 3 named 'web' (127.0.0.1:{port}) matches no "
        "server.bind address, by its address or by server.fd_name (its FileDescriptorName=)",
    }
    assert lines == [expected[kind]], lines


# -- matching and the environment, without a master -----------------------------------------------------


def test_the_variables_are_removed_and_another_pids_ignored():
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "PATH": "/bin"}
    assert activation.take(env) == ([], f"LISTEN_FDS=2 ignored: LISTEN_PID=1 is not this process ({os.getpid()})")
    assert env == {"PATH": "/bin"}
    assert activation.take({}) == ([], None)


def test_match_by_name_then_by_address(tmp: Path):
    a, b = listener(("127.0.0.1", 0)), listener(str(tmp / "b.sock"))
    try:
        at_a = parse_address(f"127.0.0.1:{a.getsockname()[1]}")
        at_b, other = parse_address(f"unix:{tmp / 'b.sock'}"), parse_address("127.0.0.1:0")
        passed = [activation.Inherited(a, "web"), activation.Inherited(b, "")]
        # a by address (its name is no entry's), b by address
        assert activation.match(passed, [other, at_b, at_a], [""]) == {str(at_a): passed[0], str(at_b): passed[1]}
        # a by name, at an entry whose address differs
        assert activation.match(passed[:1], [other, at_a], ["web", ""]) == {str(other): passed[0]}
        # one name for all: the address decides among the entries that have it
        assert activation.match(passed[:1], [other, at_a], ["web"]) == {str(at_a): passed[0]}
        with pytest.raises(activation.ActivationError, match="matches no server.bind address"):
            activation.match(passed[1:], [other], [""])
        with pytest.raises(activation.ActivationError, match=f"server.bind={other}: both fd"):
            activation.match([activation.Inherited(a, "x"), activation.Inherited(b, "x")], [other], ["x"])
    finally:
        a.close()
        b.close()
