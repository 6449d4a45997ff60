"""server.user / server.group with a real unprivileged account (tests/unprivileged.py): workers boot,
serve, heartbeat, reload and stop as that user, with exactly its ids and groups, and can write nothing of
the master's; the app probe runs as that user too and holds no descriptor but its report pipe.

Only root can switch users: as anyone else the tests that need the account are skipped
(tests/test_master.py checks that a non-root master refuses --user with one clear line)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefork import logs
from tests.helpers import query
from tests.server import ServerProcess, roundtrip, wait_for
from tests.unprivileged import Account, Python, account, python_for

HEARTBEAT_TIMEOUT = 2  # server.timeout here: a worker whose heartbeat failed would be killed after it
SILENCE_FACTOR = 3  # the workers must live this many timeouts without being taken for hung


@pytest.fixture(scope="module")
def user() -> Account:
    if os.geteuid() != 0:
        pytest.skip("only root can run workers as another user")
    return account()


@pytest.fixture(scope="module")
def python(user: Account) -> Iterator[Python]:
    found = python_for(user)
    yield found
    if found.tmp:
        shutil.rmtree(found.tmp, ignore_errors=True)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A root-owned directory others may read but not write (tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="prefork-priv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def server(python: Python, args: list[str], env: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess(
        args, env={"PYTHONPATH": python.pythonpath, **(env or {})}, cwd=python.cwd, python=python.executable
    )


def ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid (real, effective, saved, file system) and Groups of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        key: [int(x) for x in re.search(rf"^{key}:(.*)$", status, re.M).group(1).split()]
        for key in ("Uid", "Gid", "Groups")
    }


def assert_runs_as(pid: int, user: Account) -> None:
    found = ids(pid)
    assert found["Uid"] == [user.uid] * 4, found
    assert found["Gid"] == [user.gid] * 4, found
    assert set(found["Groups"]) == user.groups, found  # root's groups gone, the user's own kept


def descriptors(pid: int) -> dict[int, str]:
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    return found


def workers_of(srv: ServerProcess, generation: int) -> list[int]:
    """The live workers of one generation, from the master's log."""
    booted = re.findall(rf"Booting worker (\d+) \(generation {generation}\)", srv.logs())
    return [int(pid) for pid in booted if int(pid) in srv.worker_pids()]


def master_state(state_dir: Path) -> dict:
    return json.loads((state_dir / "master.json").read_text())


def test_workers_run_as_the_user_and_serve_heartbeat_reload_stop(user: Account, python: Python, shared: Path):
    """Before: every worker died in its first heartbeat (os.utime on the master's memfd: PermissionError)
    and the master exited 3."""
    pidfile = shared / "prefork.pid"
    args = ["workers.echo:app", "--workers", "2", "--user", user.name, "--timeout", str(HEARTBEAT_TIMEOUT)]
    args += ["--pidfile", str(pidfile), "--runtime-dir", str(shared)]
    with server(python, args) as srv:
        first = wait_for(lambda: len(workers_of(srv, 1)) == 2 and workers_of(srv, 1), what="two workers")
        for pid in first:
            assert_runs_as(pid, user)
        assert roundtrip(srv.port, [b"a", b"b"]) == [b"a", b"b"]

        # Heartbeats: the workers live several server.timeouts (by their own clocks) and none is killed.
        state_dir = shared / f"prefork-{srv.pid}"
        deadline = SILENCE_FACTOR * HEARTBEAT_TIMEOUT
        wait_for(
            lambda: all(w["age_s"] > deadline for w in master_state(state_dir)["workers"]),
            timeout=deadline * 10,
            what=f"workers {SILENCE_FACTOR} timeouts old",
        )
        assert sorted(w["pid"] for w in master_state(state_dir)["workers"]) == sorted(first)
        assert "timed out" not in srv.logs() and "Traceback" not in srv.logs(), srv.logs()

        # Nothing of the master's is writable by the workers: not through a path (their ids are the
        # account's, checked above, and the account may not write these) nor through a descriptor.
        masters = [pidfile, shared, state_dir, state_dir / "master.json", srv.log_path, srv.log_path.parent]
        for path in masters:
            assert path.exists(), path
            assert not user.can("-w", path), f"{user.name} may write {path}"
        for pid in first:
            held = descriptors(pid)
            assert not set(held.values()) & {str(p) for p in masters[:4]}, held
            assert sum(target.startswith("/memfd:") for target in held.values()) == 1, held  # its own heartbeat

        srv.signal(signal.SIGHUP)
        wait_for(lambda: "Reloaded: generation 2" in srv.logs(), what="the reload")
        second = wait_for(lambda: len(workers_of(srv, 2)) == 2 and workers_of(srv, 2), what="generation 2")
        for pid in second:
            assert_runs_as(pid, user)
            assert sum(target.startswith("/memfd:") for target in descriptors(pid).values()) == 1
        assert roundtrip(srv.port, [b"c"]) == [b"c"]

        srv.signal(signal.SIGTERM)
        assert srv.wait(30) == 0, srv.logs()
    logs = srv.logs()
    assert "Traceback" not in logs and "PermissionError" not in logs and "timed out" not in logs, logs


def test_ingest_as_the_user_stores_over_tcp(user: Account, python: Python, dsn: str):
    table = "t_unprivileged"
    args = ["workers.ingest:app", "--dsn", dsn, "--table", table, "--workers", "1", "--user", user.name]
    with server(python, args) as srv:
        (worker,) = wait_for(lambda: workers_of(srv, 1), what="the worker")
        assert_runs_as(worker, user)
        lines = [f"unprivileged {i}".encode() for i in range(20)]
        assert roundtrip(srv.port, lines) == [b"OK"] * len(lines)
    stored = [r[0] for r in query(dsn, f"SELECT payload FROM `{table}` ORDER BY id")]
    assert stored == [line.decode() for line in lines]


def test_the_app_probe_runs_as_the_user_and_holds_only_its_pipe(user: Account, python: Python, shared: Path):
    """Before: the probe imported the app as root, holding the pidfile's lock, the metrics listener, the
    master's self-pipe and every worker's heartbeat file."""
    log = shared / "whoami.log"
    log.touch(mode=0o666)
    log.chmod(0o666)  # whatever the umask: the workers and the probe append to it as the account
    args = ["whoami:app", "-s", "who.tag=x", "--workers", "2", "--user", user.name]
    args += ["--pidfile", str(shared / "prefork.pid"), "--metrics-bind", "127.0.0.1:0"]
    with server(python, args, env={"WHOAMI_LOG": str(log)}) as srv:
        srv.signal(signal.SIGHUP)  # a reload's probe: the master then holds all of the above
        wait_for(lambda: "Reloaded: generation 2" in srv.logs(), what="the reload")
        workers = {int(pid) for pid in re.findall(r"Booting worker (\d+)", srv.logs())}
    records = [json.loads(line) for line in log.read_text().splitlines()]
    probes = [r for r in records if r["pid"] not in workers]
    assert len(probes) == 2, records  # the start's and the reload's
    for found in records:
        assert found["uid"] == [user.uid] * 4 and found["gid"] == [user.gid] * 4, found
        assert set(found["groups"]) == user.groups, found
    for found in probes:
        fds = {int(fd): target for fd, target in found["fds"].items()}
        others = {fd: target for fd, target in fds.items() if fd > 2}
        assert len(others) == 1 and next(iter(others.values())).startswith("pipe:"), fds


def test_a_worker_reopens_its_log_file_after_logrotate(user: Account, python: Python, shared: Path):
    """logrotate moves the log file; USR1 makes the master, then each worker, open a new one. Before: the
    master created it as root, the worker (as the account) could not open it, and the exception in its
    USR1 handler killed it (every rotation restarted every worker, dropping their clients). Now the file
    is given to server.user and the worker logs on into the new file."""
    log_dir = shared / "log"
    log_dir.mkdir(mode=0o755)
    log_file = log_dir / "prefork.log"
    args = ["workers.echo:app", "--workers", "1", "--user", user.name, "--log-file", str(log_file)]
    args += ["--pidfile", str(shared / "prefork.pid"), "--max-requests", "5", "--max-requests-jitter", "0"]
    srv = server(python, args)
    try:
        srv.start(wait=False)
        wait_for(lambda: log_file.exists() and "Workers are serving" in log_file.read_text(), what="workers")
        (worker,) = (int(pid) for pid in re.findall(r"Booting worker (\d+)", log_file.read_text()))
        port = int(re.search(r"Listening at: 127\.0\.0\.1:(\d+)", log_file.read_text()).group(1))
        log_file.rename(log_dir / "prefork.log.1")
        srv.signal(signal.SIGUSR1)
        wait_for(log_file.exists, what="the master to open a new log file")
        lines = [b"x"] * 5  # max_requests: the worker then logs that it restarts, and exits
        assert roundtrip(port, lines) == lines
        wait_for(
            lambda: f"[{worker}] [INFO] prefork.worker: worker reached max_requests" in log_file.read_text(),
            what="the worker's line in the new log file",
        )
        assert (log_file.stat().st_uid, log_file.stat().st_gid) == (user.uid, user.gid)
        rotated = (log_dir / "prefork.log.1").read_text() + log_file.read_text()
        assert "died" not in rotated and "Traceback" not in rotated, rotated
        assert not user.can("-w", log_dir)  # the directory stays the master's
    finally:
        srv.stop()


def test_a_log_file_that_cannot_be_reopened_is_written_on(tmp_path):
    """Whatever stops a reopen (here a directory where the new file should be), logging goes on into the
    old file, with one line saying so, and nothing is raised into the caller (a worker's USR1 handler)."""
    path = tmp_path / "p.log"
    logs.setup("info", str(path))
    try:
        logging.getLogger("t").info("before")
        path.rename(tmp_path / "p.log.1")
        path.mkdir()
        logs.reopen()
        logging.getLogger("t").info("after")
        logs.reopen()  # tried again only when the path changes again: no second note
        logging.getLogger("t").info("again")
        logs.flush()
        old = (tmp_path / "p.log.1").read_text()
        assert "before" in old and "after" in old and "again" in old
        assert old.count("cannot reopen the log file") == 1, old
    finally:
        logs.setup("info", "-")


def test_a_root_only_tls_key_is_loaded_before_dropping_privileges(user: Account, python: Python, pki):
    """The key is root's, mode 0600, in a directory only root may enter: the workers read it before they
    become server.user (as nginx does), at start and again at a reload."""
    import socket
    import ssl

    assert not user.can("-r", pki.server_key), "the test needs a key the user cannot read"
    args = ["workers.echo:app", "--workers", "1", "--user", user.name]
    args += ["--tls-cert", str(pki.server_chain), "--tls-key", str(pki.server_key)]
    ctx = ssl.create_default_context(cafile=str(pki.ca))

    def served() -> bool:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(b"secret\n")
                return sock.recv(100) == b"secret\n"

    with server(python, args) as srv:
        assert_runs_as(workers_of(srv, 1)[0], user)
        assert served()
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "Reloaded: generation 2" in srv.logs(), what="the reload")
        assert_runs_as(workers_of(srv, 2)[0], user)
        assert served()
