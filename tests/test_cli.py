"""The `prefork` command line end to end: config precedence, error exits, daemon mode, status/reload/stop.

Every command runs as a real subprocess (`python -m prefork.cli ...`); every daemon started here is killed at
teardown, whatever happened in the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from devtools.mariadb import free_port
from prefork.config.framework import SETTINGS
from tests.server import (
    ServerProcess,
    cmdline,
    connect,
    is_alive,
    prefork_cmd,
    read_lines,
    roundtrip,
    test_env,
    wait_for,
)
from workers.ingest import IngestSettings

ECHO = "workers.echo:app"


# -- helpers ----------------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run `prefork ARGS` to completion (in its own session: a command that hangs is killed with its group)."""
    proc = subprocess.Popen(
        prefork_cmd(*args),
        env=test_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:  # a daemon (another session) may still hold the pipes: do not wait for their EOF
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.stdout.close()
            proc.stderr.close()
            proc.wait()
            out = err = "(output still held open by another process)"
        raise AssertionError(f"prefork {' '.join(args)} did not return within {timeout}s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _children(pid: int) -> list[int]:
    pids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return pids
    for task in tasks:
        try:
            pids += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return pids


def _kill_tree(pid: int) -> None:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    for p in seen:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Daemons:
    """Remembers every daemon a test starts (by pidfile and pid) and kills them all at teardown."""

    def __init__(self) -> None:
        self.pidfiles: list[Path] = []
        self.pids: list[int] = []

    def watch(self, pidfile: Path) -> None:
        self.pidfiles.append(pidfile)

    def pid_of(self, pidfile: Path) -> int:
        pid = int(pidfile.read_text().strip())
        self.pids.append(pid)
        return pid

    def kill_all(self) -> None:
        pids = list(self.pids)
        for pidfile in self.pidfiles:
            try:
                pids.append(int(pidfile.read_text().strip()))
            except (OSError, ValueError):
                pass
        for pid in set(pids):
            if cmdline(pid).startswith("prefork: "):  # never a recycled pid of something else
                _kill_tree(pid)


@pytest.fixture
def daemons():
    d = Daemons()
    try:
        yield d
    finally:
        d.kill_all()


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """Exit status 2 and exactly one line on stderr; return that line."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def status_json(*args: str) -> dict:
    out = run_cli("status", "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# -- config precedence ------------------------------------------------------------------------------


def test_config_precedence_file_env_set_flag(tmp_path):
    conf = tmp_path / "prefork.ini"
    conf.write_text(f"[server]\napp = {ECHO}\nworkers = 1\nname = from-file\n")
    cases = [
        ([], {}, "from-file"),
        ([], {"PREFORK_SERVER_NAME": "from-env"}, "from-env"),
        (["-s", "server.name=from-set"], {"PREFORK_SERVER_NAME": "from-env"}, "from-set"),
        (["-s", "server.name=from-set", "--name", "from-flag"], {"PREFORK_SERVER_NAME": "from-env"}, "from-flag"),
        (["--name", "from-flag", "-s", "server.name=from-set"], {"PREFORK_SERVER_NAME": "from-env"}, "from-flag"),
    ]
    for args, env, expected in cases:
        with ServerProcess(["-c", str(conf), *args], env=env) as srv:
            titles = wait_for(lambda: (t := srv.titles()) and len(t) == 2 and t, what="master and one worker")
            assert titles[srv.pid] == f"prefork: master [{expected}]", (args, env)
            assert sorted(titles.values())[1] == f"prefork: worker [{expected}] gen 1", (args, env)
            assert srv.status()["master"]["name"] == expected
            assert roundtrip(srv.port, [b"ping"]) == [b"ping"]


def test_reload_rereads_the_file_but_keeps_env_and_flags(tmp_path):
    conf = tmp_path / "prefork.ini"
    conf.write_text(f"[server]\napp = {ECHO}\nworkers = 1\nname = file-one\nmax_line = 100\n")
    env = {"PREFORK_SERVER_NAME": "from-env"}
    with ServerProcess(["-c", str(conf), "--graceful-timeout", "5"], env=env) as srv:
        assert srv.status()["master"]["name"] == "from-env"
        conf.write_text(f"[server]\napp = {ECHO}\nworkers = 2\nname = file-two\nmax_line = 100\n")
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "Reloaded: generation 2" in srv.logs(), timeout=30, what="the reload")
        status = wait_for(lambda: (s := srv.status()) and s["totals"]["workers"] == 2 and s, what="two workers")
        assert status["master"]["workers_target"] == 2  # from the file, re-read
        assert status["master"]["name"] == "from-env"  # the environment stays as given
        assert status["master"]["listeners"] == [f"127.0.0.1:{srv.port}"]  # the --bind flag stays as given
        assert srv.titles()[srv.pid] == "prefork: master [from-env]"


# -- errors: exit 2, one line naming the key and the value ------------------------------------------


def test_unknown_key_in_file(tmp_path):
    conf = tmp_path / "bad.ini"
    conf.write_text("[server]\nwokers = 2\n")
    line = one_error_line(run_cli("run", ECHO, "-c", str(conf)))
    assert "wokers" in line and str(conf) in line, line


def test_bad_value_in_file(tmp_path):
    conf = tmp_path / "bad.ini"
    conf.write_text("[server]\nworkers = abc\n")
    line = one_error_line(run_cli("run", ECHO, "-c", str(conf)))
    assert "server.workers" in line and "abc" in line, line


def test_bad_flag_value():
    line = one_error_line(run_cli("run", ECHO, "--workers", "0", "--bind", "127.0.0.1:0"))
    assert "workers" in line and "'0'" in line, line


def test_bad_env_value():
    line = one_error_line(run_cli("run", ECHO, "--bind", "127.0.0.1:0", env={"PREFORK_SERVER_WORKERS": "many"}))
    assert "PREFORK_SERVER_WORKERS" in line and "many" in line, line


def test_unknown_env_key():
    line = one_error_line(run_cli("run", ECHO, "--bind", "127.0.0.1:0", env={"PREFORK_SERVER_WOKERS": "2"}))
    assert "PREFORK_SERVER_WOKERS" in line, line


def test_unknown_set_key():
    line = one_error_line(run_cli("run", ECHO, "--bind", "127.0.0.1:0", "-s", "server.nope=1"))
    assert "server.nope" in line, line


def test_bad_set_value():
    line = one_error_line(run_cli("run", ECHO, "--bind", "127.0.0.1:0", "-s", "server.timeout=soon"))
    assert "server.timeout" in line and "soon" in line, line


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nowhere.ini"
    line = one_error_line(run_cli("run", ECHO, "-c", str(missing)))
    assert str(missing) in line, line


def test_port_already_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_error_line(
            run_cli("run", ECHO, "--workers", "1", "--bind", f"127.0.0.1:{port}", "-s", "server.bind_attempts=1")
        )
    assert "cannot bind" in line and f"127.0.0.1:{port}" in line, line


def test_one_of_two_listeners_in_use_closes_the_other(tmp_path):
    path = tmp_path / "first.sock"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_error_line(
            run_cli(
                "run", ECHO, "--workers", "1", "--bind", f"unix:{path},127.0.0.1:{port}", "-s", "server.bind_attempts=1"
            )
        )
    assert "cannot bind" in line and f"127.0.0.1:{port}" in line, line


BAD_DSN = "mysql://appuser:s3cr3t-Pw@127.0.0.1:notaport/db"


@pytest.mark.parametrize("where", ["flag", "set", "env", "file"])
def test_bad_dsn_never_shows_the_password(tmp_path, where):
    args = ["run", ECHO, "--bind", "127.0.0.1:0"]
    env = {}
    if where == "flag":
        args += ["--dsn", BAD_DSN]
    elif where == "set":
        args += ["-s", f"pool.dsn={BAD_DSN}"]
    elif where == "env":
        env["PREFORK_POOL_DSN"] = BAD_DSN
    else:
        conf = tmp_path / "dsn.ini"
        conf.write_text(f"[pool]\ndsn = {BAD_DSN}\n")
        args += ["-c", str(conf)]
    result = run_cli(*args, env=env)
    line = one_error_line(result)
    assert "pool.dsn" in line or "PREFORK_POOL_DSN" in line, line
    assert "s3cr3t" not in result.stderr + result.stdout
    assert "appuser" in line  # the DSN is named, redacted


def test_bad_dsn_for_check_never_shows_the_password():
    result = run_cli("check", "--dsn", BAD_DSN)
    line = one_error_line(result)
    assert "pool.dsn" in line and "s3cr3t" not in result.stderr + result.stdout


# -- commands without a running master --------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("command", ["status", "reload", "stop"])
def test_commands_with_no_master_running(tmp_path, command):
    missing = tmp_path / "none.pid"
    result = run_cli(command, "--pidfile", str(missing))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no master running" in lines[0] and str(missing) in lines[0], result.stderr

    stale = tmp_path / "stale.pid"
    stale.write_text(f"{_dead_pid()}\n")
    result = run_cli(command, "--pidfile", str(stale))
    assert result.returncode != 0
    assert "no master running" in result.stderr and str(stale) in result.stderr, result.stderr


def test_status_with_a_config_without_pidfile(tmp_path):
    conf = tmp_path / "nopid.ini"
    conf.write_text("[server]\nworkers = 1\n")
    result = run_cli("status", "-c", str(conf))
    assert result.returncode != 0
    assert "pidfile" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- daemon mode ------------------------------------------------------------------------------------


def test_daemon_start_status_reload_stop(tmp_path, daemons):
    pidfile = tmp_path / "daemon.pid"
    daemons.watch(pidfile)
    port = free_port()
    result = run_cli(
        "run",
        ECHO,
        "--daemon",
        "--pidfile",
        str(pidfile),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--name",
        "demon",
        "--graceful-timeout",
        "5",
    )
    assert result.returncode == 0, result.stderr
    pid = daemons.pid_of(pidfile)
    # Serving as soon as the command returned: no wait, no retry.
    assert roundtrip(port, [b"first", b"second"]) == [b"first", b"second"]
    assert cmdline(pid) == "prefork: master [demon]"
    assert os.getsid(pid) != os.getsid(0)  # detached into its own session

    status = status_json("--pidfile", str(pidfile))
    assert status["master"]["pid"] == pid and status["master"]["name"] == "demon"
    assert status["master"]["listeners"] == [f"127.0.0.1:{port}"]
    table = run_cli("status", "--pidfile", str(pidfile))
    assert table.returncode == 0 and str(pid) in table.stdout, table.stderr
    old = sorted(w["pid"] for w in status["workers"])

    assert run_cli("reload", "--pidfile", str(pidfile)).returncode == 0
    status = wait_for(
        lambda: (
            (s := status_json("--pidfile", str(pidfile)))["master"]["generation"] == 2
            and s["totals"]["workers"] == 2
            and all(w["generation"] == 2 for w in s["workers"])
            and s
        ),
        timeout=30,
        what="generation 2 alone",
    )
    assert not set(old) & {w["pid"] for w in status["workers"]}
    assert roundtrip(port, [b"after reload"]) == [b"after reload"]

    workers = _children(pid)
    result = run_cli("stop", "--pidfile", str(pidfile))
    assert result.returncode == 0, result.stderr
    assert not is_alive(pid)
    assert not pidfile.exists()
    wait_for(lambda: not any(is_alive(w) for w in workers), what="the workers to exit")


def test_daemon_found_through_the_config_file(tmp_path, daemons):
    pidfile = tmp_path / "conf.pid"
    daemons.watch(pidfile)
    port = free_port()
    conf = tmp_path / "prefork.ini"
    conf.write_text(
        f"[server]\napp = {ECHO}\nworkers = 1\nbind = 127.0.0.1:{port}\npidfile = {pidfile}\n"
        "daemon = on\nname = viaconf\n"
    )
    result = run_cli("run", "-c", str(conf))
    assert result.returncode == 0, result.stderr
    pid = daemons.pid_of(pidfile)
    assert roundtrip(port, [b"x"]) == [b"x"]
    assert status_json("-c", str(conf))["master"]["name"] == "viaconf"
    assert run_cli("reload", "-c", str(conf)).returncode == 0
    wait_for(lambda: status_json("-c", str(conf))["master"]["generation"] == 2, timeout=30, what="the reload")
    assert run_cli("stop", "-c", str(conf)).returncode == 0
    assert not is_alive(pid) and not pidfile.exists()


@pytest.mark.parametrize("app", ["testapps:failing_setup", "nonexistent_module:app"])
def test_daemon_with_an_app_that_cannot_boot_returns_3(tmp_path, daemons, app):
    pidfile = tmp_path / "fail.pid"
    daemons.watch(pidfile)
    result = run_cli("run", app, "--daemon", "--pidfile", str(pidfile), "--bind", "127.0.0.1:0", "--workers", "2")
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "failed to boot" in result.stderr
    wait_for(lambda: not pidfile.exists(), what="the pidfile to be removed")


def test_daemon_with_a_busy_port_returns_2(tmp_path, daemons):
    pidfile = tmp_path / "busy.pid"
    daemons.watch(pidfile)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "run",
            ECHO,
            "--daemon",
            "--pidfile",
            str(pidfile),
            "--bind",
            f"127.0.0.1:{port}",
            "-s",
            "server.bind_attempts=1",
        )
    line = one_error_line(result)
    assert "cannot bind" in line
    assert not pidfile.exists()


# -- pidfile: atomic, locked, never acted on when stale ----------------------------------------------------


def test_a_second_master_with_the_same_pidfile_exits_2_naming_the_live_one(tmp_path):
    pidfile = tmp_path / "p.pid"
    with ServerProcess([ECHO, "--workers", "1", "--pidfile", str(pidfile)]) as srv:
        result = run_cli("run", ECHO, "--workers", "1", "--bind", "127.0.0.1:0", "--pidfile", str(pidfile))
        line = one_error_line(result)
        assert str(pidfile) in line and str(srv.pid) in line, line
        assert pidfile.read_text().strip() == str(srv.pid)  # untouched
        assert roundtrip(srv.port, [b"x"]) == [b"x"]


def test_a_pidfile_in_a_missing_directory_is_exit_2(tmp_path):
    pidfile = tmp_path / "no" / "such" / "dir" / "p.pid"
    line = one_error_line(run_cli("run", ECHO, "--bind", "127.0.0.1:0", "--pidfile", str(pidfile)))
    assert "server.pidfile" in line and "does not exist" in line


def test_reload_and_stop_never_signal_a_recycled_pid(tmp_path):
    """The pidfile names a pid that now belongs to another process (the master died, the pid was reused):
    not locked by a master, so nothing is signalled."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        pidfile = tmp_path / "stale.pid"
        pidfile.write_text(f"{other.pid}\n")
        for command in ("reload", "stop"):
            result = run_cli(command, "--pidfile", str(pidfile))
            assert result.returncode == 1 and "not held by a running master" in result.stderr, result.stderr
        assert other.poll() is None  # still alive: never signalled
    finally:
        other.kill()
        other.wait()


def test_stop_timeout_says_what_happened(tmp_path):
    pidfile, gate = tmp_path / "p.pid", tmp_path / "gate"
    args = ["testapps:hold", "--workers", "1", "--pidfile", str(pidfile), "--graceful-timeout", "30"]
    with ServerProcess(args) as srv:
        with connect(srv.port) as sock:
            sock.sendall(f"hold {gate}\n".encode())
            wait_for(lambda: srv.status()["totals"]["lines_in"] == 1, what="the line to be read")
            result = run_cli("stop", "--pidfile", str(pidfile), "--timeout", "1")
            assert result.returncode == 1 and "still stopping after 1s" in result.stderr, result.stderr
            gate.touch()
            assert read_lines(sock, 1) == [f"hold {gate}".encode()]
        assert srv.wait(30) == 0
        result = run_cli("stop", "--pidfile", str(pidfile))
        assert result.returncode == 1 and "no master running" in result.stderr


def test_a_killed_masters_pidfile_is_free_for_the_next_one(tmp_path):
    """Workers do not keep the pidfile's lock: after a SIGKILLed master, a new one can start at once."""
    pidfile = tmp_path / "p.pid"
    first = ServerProcess([ECHO, "--workers", "2", "--pidfile", str(pidfile)])
    with first:
        workers = first.worker_pids()
        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(10)
        assert any(is_alive(p) for p in workers)  # orphans still finishing
        with ServerProcess([ECHO, "--workers", "1", "--pidfile", str(pidfile)]) as second:
            assert pidfile.read_text().strip() == str(second.pid)


# -- check and initdb run the app's hooks ------------------------------------------------------------


def test_check_and_initdb_of_an_app_without_hooks_open_no_database_connection():
    """The echo app has no check or initdb hook: nothing connects (the DSN points at nothing), exit 0."""
    dead = "mysql://root@127.0.0.1:1/test"
    result = run_cli("check", "--dsn", dead, "-s", f"server.app={ECHO}")
    assert result.returncode == 0, result.stderr
    assert "no check hook" in result.stdout
    result = run_cli("initdb", "--dsn", dead, "-s", f"server.app={ECHO}")
    assert result.returncode == 0, result.stderr
    assert "nothing to create" in result.stdout


def test_check_and_initdb_run_the_apps_hooks():
    result = run_cli("check", "-s", "server.app=testapps:hooked")
    assert result.returncode == 0, result.stderr
    assert "checked generation 0, greeting 'hello' x1" in result.stdout
    result = run_cli("initdb", "-s", "server.app=testapps:hooked")
    assert result.returncode == 0 and "created what this app needs" in result.stdout, result.stderr
    line = one_error_line(run_cli("check", "-s", "server.app=testapps:hooked", env={"TESTAPP_HOOK": "fail"}))
    assert "testapps:hooked" in line and "the check hook found something wrong" in line


def test_config_prints_every_key_with_its_value_and_source(tmp_path):
    conf = tmp_path / "prefork.ini"
    conf.write_text("[pool]\ndsn = mysql://app:sekret@127.0.0.1:3306/test\nmax_size = 7\n[server]\nreuse_port = on\n")
    args = ("config", "-c", str(conf), "-s", "ingest.batch_size=500")
    result = run_cli(*args, env={"PREFORK_SERVER_WORKERS": "3"})
    assert result.returncode == 0, result.stderr
    lines = {line.split(" = ")[0]: line for line in result.stdout.splitlines()}
    assert len(lines) == len(SETTINGS) + len(IngestSettings.settings())  # the default app's section too
    assert lines["server.workers"].endswith("# env PREFORK_SERVER_WORKERS") and " = 3 " in lines["server.workers"]
    assert lines["pool.max_size"].endswith(f"# file {conf}")
    assert lines["server.reuse_port"].split("#")[0].strip().endswith("= on")
    assert lines["ingest.batch_size"].endswith("# command line")
    assert lines["server.backlog"].endswith("# default")
    assert "mysql://app:***@127.0.0.1:3306/test" in lines["pool.dsn"] and "sekret" not in result.stdout
    as_json = json.loads(run_cli(*args, "--json", env={"PREFORK_SERVER_WORKERS": "3"}).stdout)
    assert as_json["server.workers"] == {"value": 3, "source": "env PREFORK_SERVER_WORKERS"}
    assert as_json["pool.dsn"]["value"] == "mysql://app:***@127.0.0.1:3306/test"
