"""`prefork upgrade` (USR2): a new master from the installed code takes over the listening sockets, under load.

One master for the module (the versioned ingest app, tests/apps/versioned.py, copied to a directory of
the test's own whose copy the test rewrites): first an upgrade whose new code does not import (the old
master serves on), then one to version 2. Meanwhile a loader sends batches of lines with ids, each batch
pipelined on a new connection (prefork.client.Client), and a connector thread counts refused connections.
Rows are read back from MariaDB: each line stored once, none lost, each row carrying the version that
stored it. A fake NOTIFY_SOCKET checks what systemd hears. Last, a master of its own whose new master's
workers cannot boot (the new master itself runs, then exits 3).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefork.client import Client
from prefork.exits import EXIT_FAILURE, EXIT_TIMEOUT
from prefork.pidfile import read_pid
from prefork.state import state_dir_for
from prefork.upgrade import running
from tests.helpers import query
from tests.server import APPS, ROOT, ServerProcess, prefork_cmd, roundtrip, test_env, wait_for
from tests.test_supervision import FakeSystemd

TABLE = "upgrade_rows"
BATCH = 20  # lines per connection


class Load:
    """Batches of lines with ids, each on a new connection, and a thread that only connects: what was
    sent, the replies that were not OK, and the connections refused."""

    def __init__(self, port: int) -> None:
        self.address = f"127.0.0.1:{port}"
        self.port = port
        self.sent: list[str] = []
        self.not_ok: list[str] = []
        self.refused = 0
        self.connects = 0
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=t, daemon=True) for t in (self._send, self._connect)]
        for t in self._threads:
            t.start()

    def batch(self) -> list[str]:
        """One batch on a new connection; its lines."""
        with self._lock:  # the loader's thread, and the test's own batch after the upgrade
            first, self._next = self._next, self._next + BATCH
        lines = [f"line-{first + i}" for i in range(BATCH)]
        with Client(self.address, ids=True, id_prefix=f"b{first}-") as client:
            replies = client.send_all(lines)
        with self._lock:
            self.sent += lines
        self.not_ok += [f"{line}: {reply}" for line, reply in zip(lines, replies, strict=True) if reply != "OK"]
        return lines

    def _send(self) -> None:
        while not self._stop.is_set():
            self.batch()
            time.sleep(0.01)

    def _connect(self) -> None:
        while not self._stop.is_set():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=10).close()
                self.connects += 1
            except ConnectionRefusedError:
                self.refused += 1
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("upgrade")
    shutil.copy(APPS / "versioned.py", path / "versioned.py")
    return path


@pytest.fixture(scope="module")
def systemd(files: Path) -> Iterator[FakeSystemd]:
    notify = FakeSystemd(files / "notify")
    yield notify
    notify.close()


@pytest.fixture(scope="module")
def srv(files: Path, mariadb, systemd: FakeSystemd) -> Iterator[ServerProcess]:
    query(mariadb.dsn, f"DROP TABLE IF EXISTS `{TABLE}`")
    args = ["versioned:app", "--dsn", mariadb.dsn, "--table", TABLE, "--workers", "2", "--graceful-timeout", "10"]
    args += ["-s", "server.line_ids=on", "-s", f"server.pidfile={files / 'prefork.pid'}"]
    env = {"PYTHONPATH": os.pathsep.join(map(str, (files, APPS, ROOT))), "VERSIONED_HOLD": str(files / "hold")}
    env["NOTIFY_SOCKET"] = str(systemd.path)
    server = ServerProcess(args, env=env)
    try:
        yield server.start()
    finally:
        new = read_pid(files / "prefork.pid")
        server.stop()  # the whole session: the new master and its workers are in it too
        if new:
            shutil.rmtree(state_dir_for(new), ignore_errors=True)


def set_version(files: Path, value: str) -> None:
    """Rewrite the copy's ``VERSION = ...`` line (the next master imports the file afresh)."""
    path = files / "versioned.py"
    path.write_text(re.sub(r"^VERSION = .*$", f"VERSION = {value}", path.read_text(), count=1, flags=re.M))


def upgrade(files: Path, timeout: str = "60") -> subprocess.Popen:
    cmd = prefork_cmd("upgrade", "--pidfile", str(files / "prefork.pid"), "--timeout", timeout)
    return subprocess.Popen(cmd, env=test_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outcome(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=90)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def rows(dsn: str) -> list[str]:
    return [payload for (payload,) in query(dsn, f"SELECT payload FROM `{TABLE}`")]


def check_rows(dsn: str, load: Load) -> list[str]:
    """Every line sent stored once; the payloads."""
    stored = rows(dsn)
    lines = [p.split(" ", 1)[1] for p in stored]
    assert len(lines) == len(set(lines)), "a line stored twice"
    assert sorted(lines) == sorted(load.sent), "lines lost"
    return stored


@pytest.mark.timeout(60)
def test_a_new_master_that_cannot_import_the_app_leaves_the_old_one_serving(
    srv: ServerProcess, files: Path, mariadb, systemd: FakeSystemd
):
    load = Load(srv.port)
    try:
        wait_for(lambda: len(load.sent) >= 5 * BATCH, what="lines served")
        set_version(files, "(")  # a syntax error: the new master's workers cannot import it
        out = outcome(upgrade(files))
        wait_for(lambda: len(load.sent) >= 10 * BATCH, what="lines served after the upgrade")
    finally:
        load.stop()
        set_version(files, '"v1"')
    assert out.returncode == EXIT_FAILURE, out
    assert out.stderr.startswith("prefork: upgrade failed: new master "), out.stderr
    assert (
        "(exit code 3): its workers could not boot" in out.stderr and f"(master {srv.pid} keeps serving)" in out.stderr
    )
    assert load.refused == 0 and load.not_ok == [] and load.connects > 0
    assert srv.proc.poll() is None and read_pid(files / "prefork.pid") == srv.pid
    assert not (files / "prefork.pid.oldbin").exists()
    assert srv.logs().count("upgrade failed: ") == 1
    status = subprocess.run(
        prefork_cmd("status", "--pidfile", str(files / "prefork.pid")), env=test_env(), capture_output=True, text=True
    )
    assert "): failed: new master " in status.stdout and "its workers could not boot" in status.stdout, status
    assert {p.split(" ", 1)[0] for p in check_rows(mariadb.dsn, load)} == {"v1"}
    assert systemd.keys() == ["READY"]  # the old master's: nothing from the failed one


@pytest.mark.timeout(60)
def test_upgrade_under_load_serves_the_new_version_with_nothing_refused_lost_or_stored_twice(
    srv: ServerProcess, files: Path, mariadb, systemd: FakeSystemd
):
    query(mariadb.dsn, f"DELETE FROM `{TABLE}`")
    old = srv.pid
    load = Load(srv.port)
    try:
        wait_for(lambda: len(load.sent) >= 5 * BATCH, what="lines served")
        set_version(files, '"v2"')
        before = len(load.sent)
        (files / "hold").touch()  # the new master's import waits: a second USR2 comes meanwhile
        proc = upgrade(files)
        wait_for(lambda: "New master " in srv.logs().split("upgrade failed: ")[-1], what="the new master starting")
        # A second command meanwhile: its USR2 is ignored, it would get this upgrade's outcome, but gives up.
        second = outcome(upgrade(files, "0.5"))
        assert second.returncode == EXIT_TIMEOUT, second
        assert re.fullmatch(r"prefork: upgrade not over after 0.5s \(new master \d+ booting\)\n", second.stderr)
        assert "USR2: an upgrade is under way (new master " in srv.logs()
        (files / "hold").unlink()
        out = outcome(proc)
        during = len(load.sent) - before  # lines sent, and answered OK, while the command waited
        after = load.batch()  # a new connection once the command returned: the new version serves it
    finally:
        (files / "hold").unlink(missing_ok=True)
        load.stop()
    assert out.returncode == 0, (out, srv.logs())
    new = read_pid(files / "prefork.pid")
    assert out.stdout == f"prefork: upgraded: master {new} serving, the old master {old} gone\n"
    assert new != old and running(new) and srv.wait(10) == 0  # the old master exited 0
    assert not (files / "prefork.pid.oldbin").exists()
    assert load.refused == 0 and load.not_ok == [] and load.connects > 0
    stored = check_rows(mariadb.dsn, load)
    assert {p.split(" ", 1)[0] for p in stored} == {"v1", "v2"}
    assert {f"v2 {line}" for line in after} <= set(stored)
    assert during > 0
    # systemd follows the new master: its pid with its READY=1, and no STOPPING=1 from the old one.
    assert systemd.keys() == ["READY", "MAINPID"]
    took_over = next(m for m in systemd.messages if "MAINPID" in m)
    assert took_over["MAINPID"] == str(new) and took_over["READY"] == "1"
    print(f"\n{len(load.sent)} lines ({during} during the upgrade), {load.connects} connects: 0 refused")
    # The new master answers the usual commands, and stops as any master does.
    stop = subprocess.run(prefork_cmd("stop", "--pidfile", str(files / "prefork.pid")), env=test_env(), timeout=30)
    assert stop.returncode == 0 and not running(new)


@pytest.mark.timeout(60)
def test_a_new_master_whose_workers_cannot_boot_exits_and_tells_systemd_nothing(tmp_path: Path):
    """No app settings, so no probe: the new master itself starts, its workers fail to import the app three
    times, it exits 3. The old master serves on; systemd hears nothing from the new one (no STOPPING=1)."""
    (tmp_path / "plain.py").write_text("from workers.echo import app\n")
    systemd = FakeSystemd(tmp_path / "notify")
    pidfile = tmp_path / "prefork.pid"
    env = {"PYTHONPATH": os.pathsep.join(map(str, (tmp_path, APPS, ROOT))), "NOTIFY_SOCKET": str(systemd.path)}
    try:
        with ServerProcess(["plain:app", "--workers", "1", "-s", f"server.pidfile={pidfile}"], env=env) as srv:
            (tmp_path / "plain.py").write_text("raise ImportError('plain v2 is broken')\n")
            cmd = prefork_cmd("upgrade", "--pidfile", str(pidfile), "--timeout", "60")
            out = subprocess.run(cmd, env=test_env(), capture_output=True, text=True, timeout=90)
            assert out.returncode == EXIT_FAILURE, out
            assert "(exit code 3): its workers could not boot" in out.stderr, out.stderr
            assert "ImportError('plain v2 is broken')" in srv.logs()
            assert read_pid(pidfile) == srv.pid and roundtrip(srv.port, [b"still"]) == [b"still"]
            assert systemd.keys() == ["READY"]
    finally:
        systemd.close()


@pytest.mark.timeout(60)
def test_usr2_during_a_reload_is_refused_and_the_reload_goes_on(tmp_path: Path):
    """While a reload's new generation boots (its import held here), the listeners are not settled: USR2 is
    refused at once with the reason, `prefork upgrade` says so (exit 1), and the reload then completes."""
    hold = tmp_path / "hold"
    (tmp_path / "held.py").write_text(
        f"import os, time\nwhile os.path.exists({str(hold)!r}):\n    time.sleep(0.05)\nfrom workers.echo import app\n"
    )
    pidfile = tmp_path / "prefork.pid"
    env = {"PYTHONPATH": os.pathsep.join(map(str, (tmp_path, APPS, ROOT)))}
    with ServerProcess(["held:app", "--workers", "1", "-s", f"server.pidfile={pidfile}"], env=env) as srv:
        (old,) = srv.worker_pids()
        hold.touch()
        srv.signal(signal.SIGHUP)
        wait_for(lambda: len(srv.worker_pids()) == 2, what="the reload's new worker booting")
        cmd = prefork_cmd("upgrade", "--pidfile", str(pidfile), "--timeout", "30")
        out = subprocess.run(cmd, env=test_env(), capture_output=True, text=True, timeout=60)
        hold.unlink()
        assert out.returncode == EXIT_FAILURE, out
        assert "a reload is under way" in out.stderr, out.stderr
        wait_for(lambda: old not in srv.worker_pids(), 30, what="the reload to finish")
        assert read_pid(pidfile) == srv.pid and roundtrip(srv.port, [b"after"]) == [b"after"]


@pytest.mark.timeout(60)
def test_a_new_master_that_cannot_be_started_leaves_the_old_one_serving(tmp_path: Path):
    """The directory prefork was started in is gone (a release directory removed): the child cannot enter it
    to exec the new master, says why on the pipe and exits 127; `prefork upgrade` exits 1 with that reason
    and the old master serves on, its pidfile back in place."""
    release = tmp_path / "release"
    release.mkdir()
    pidfile = tmp_path / "prefork.pid"
    args = ["workers.echo:app", "--workers", "1", "-s", f"server.pidfile={pidfile}"]
    with ServerProcess(args, cwd=release) as srv:
        release.rmdir()
        cmd = prefork_cmd("upgrade", "--pidfile", str(pidfile), "--timeout", "30")
        out = subprocess.run(cmd, env=test_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == EXIT_FAILURE, out
        assert "(exit code 127): cannot start " in out.stderr and "No such file or directory" in out.stderr, out
        assert read_pid(pidfile) == srv.pid and not (tmp_path / "prefork.pid.oldbin").exists()
        assert roundtrip(srv.port, [b"still here"]) == [b"still here"]
