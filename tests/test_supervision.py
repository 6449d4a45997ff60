"""Supervision under edge cases: boots that fail in any way, signals during boots, reloads and stops,
workers that stop by themselves. Each test here failed before the fix it guards.

The real master runs as a subprocess with test apps from tests/apps; every wait is bounded.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from prefork.state import state_dir_for
from tests.server import (
    ServerProcess,
    connect,
    is_alive,
    prefork_cmd,
    read_lines,
    roundtrip,
    test_env,
    wait_for,
)

ECHO = "workers.echo:app"
STEP_SEEN = 3600  # seconds ahead of this process's clock that show a two-hour step took effect
HOLD = "testapps:hold"


def serving(srv: ServerProcess, n: int) -> list[int]:
    return wait_for(lambda: (p := srv.worker_pids()) and len(p) == n and p, what=f"{n} workers")


def write_conf(path: Path, **server: object) -> Path:
    path.write_text("[server]\n" + "".join(f"{k} = {v}\n" for k, v in server.items()))
    return path


# -- boots that fail in any way -------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "app, env, extra",
    [
        ("exit_at_import:app", {}, []),
        ("segfault_at_import:app", {}, []),
        ("slow_import:app", {"TESTAPP_IMPORT_SECONDS": "60"}, ["--timeout", "1"]),
    ],
    ids=["sys-exit-at-import", "segfault-at-import", "import-hangs-past-timeout"],
)
def test_any_exit_before_ready_is_a_boot_failure(app, env, extra):
    """Not only exit code 3: an app that exits, crashes or hangs at import stops the master with 3 after a
    bounded number of tries instead of being respawned forever."""
    srv = ServerProcess([app, "--workers", "2", *extra], env=env)
    try:
        srv.start(wait=False)
        code = srv.wait(45)
        logs = srv.logs()
        assert code == 3, logs
        assert logs.count("Booting worker") <= 3 * 2 + 2, logs
        if app.startswith("exit_at_import"):
            assert "exit_at_import refuses to start" in logs  # the app's own words
    finally:
        srv.stop()


# -- signals while workers boot ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_usr1_during_a_reload_does_not_kill_the_booting_workers(tmp_path):
    """logrotate's USR1 while a HUP's new generation imports the app: the workers must survive it (the
    default action of USR1 is to terminate) and the reload complete."""
    conf = write_conf(tmp_path / "p.ini", app="slow_import:app", workers=2)
    started = tmp_path / "importing"
    env = {"TESTAPP_IMPORT_SECONDS": "1.5", "TESTAPP_IMPORT_STARTED": str(started)}
    with ServerProcess(["-c", str(conf)], env=env) as srv:
        first = set(srv.worker_pids())
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "(generation 2)" in srv.logs(), what="the new generation to boot")

        def importing() -> bool:  # a worker of generation 2 is in its slow import
            new = set(srv.worker_pids()) - first  # the reload's probe, also an importer, is gone by now
            return started.exists() and bool({int(p) for p in started.read_text().split()} & new)

        wait_for(importing, what="a new worker in its import")
        srv.signal(signal.SIGUSR1)
        wait_for(
            lambda: "Reloaded: generation 2" in srv.logs() or "reload failed" in srv.logs(),
            timeout=30,
            what="the reload to end",
        )
        assert "Reloaded: generation 2" in srv.logs(), srv.logs()
        assert roundtrip(srv.port, [b"x"]) == [b"x"]


@pytest.mark.timeout(60)
def test_term_during_a_reload_with_a_unix_listener_exits_cleanly(tmp_path):
    """TERM while a reload is under way: the listeners the two generations share are closed once (a unix
    socket closed twice was a traceback and exit 1, with the workers never signalled)."""
    path = tmp_path / "p.sock"
    conf = write_conf(tmp_path / "p.ini", app="slow_import:app", workers=1, bind=f"127.0.0.1:0,unix:{path}")
    srv = ServerProcess(["-c", str(conf)], env={"TESTAPP_IMPORT_SECONDS": "1.5"}, bind=None)
    with srv:
        workers = srv.worker_pids()
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "(generation 2)" in srv.logs(), what="the new generation to boot")
        srv.signal(signal.SIGTERM)
        assert srv.wait(30) == 0, srv.logs()
        assert "Traceback" not in srv.logs(), srv.logs()
        assert not any(is_alive(p) for p in workers)
        assert not path.exists()


@pytest.mark.timeout(90)
def test_hup_during_a_reload_is_applied_after_it(tmp_path):
    conf = write_conf(tmp_path / "p.ini", app="slow_import:app", workers=1, name="one")
    with ServerProcess(["-c", str(conf)], env={"TESTAPP_IMPORT_SECONDS": "1"}) as srv:
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "(generation 2)" in srv.logs(), what="the first reload to start")
        write_conf(conf, app="slow_import:app", workers=1, name="two")
        srv.signal(signal.SIGHUP)  # during the reload: queued, not dropped
        wait_for(lambda: "Reloaded: generation 3" in srv.logs(), timeout=40, what="the queued reload")
        wait_for(lambda: srv.status()["master"]["name"] == "two", what="the second config")


@pytest.mark.timeout(90)
def test_new_workers_use_the_new_generations_log_file(tmp_path):
    """A reload that changes server.log_file: the new workers log there from their start (the master
    switches its own only once they serve, and they used to inherit its old handler)."""
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    conf = write_conf(tmp_path / "p.ini", app=ECHO, workers=1, log_file=first)
    srv = ServerProcess(["-c", str(conf)], bind="127.0.0.1:0")
    try:
        srv.start(wait=False)  # it logs to the file, not to the output ServerProcess watches
        wait_for(lambda: first.exists() and "Workers are serving" in first.read_text(), what="the first generation")
        write_conf(conf, app=ECHO, workers=1, log_file=second, max_requests=1)
        srv.signal(signal.SIGHUP)
        # The master logs there too once the new generation serves.
        wait_for(lambda: second.exists() and "Reloaded: generation 2" in second.read_text(), what="the reload")
        port = int(first.read_text().split("Listening at: 127.0.0.1:")[1].split()[0])
        assert roundtrip(port, [b"one line is max_requests"]) == [b"one line is max_requests"]
        wait_for(lambda: "max_requests" in second.read_text(), what="the worker's log line")
        assert "max_requests" not in first.read_text()
    finally:
        srv.stop()


# -- stops ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_worker_stopping_by_itself_gets_its_graceful_timeout(tmp_path):
    """max_requests reached while a line is in flight: the worker keeps heartbeating while it stops, so the
    master gives it graceful_timeout (not `timeout`, which would kill it as hung) and the line is answered."""
    gate = tmp_path / "gate"
    with ServerProcess(
        [HOLD, "--workers", "1", "--max-requests", "1", "--timeout", "2", "--graceful-timeout", "30"]
    ) as srv:
        (pid,) = serving(srv, 1)
        with connect(srv.port) as sock:
            sock.sendall(f"hold {gate}\n".encode())
            wait_for(lambda: "stopping by itself" in srv.logs(), what="the worker to stop by itself")
            time.sleep(4)  # twice `timeout`
            assert is_alive(pid), srv.logs()
            gate.touch()
            assert read_lines(sock, 1) == [f"hold {gate}".encode()]
        wait_for(lambda: not is_alive(pid), what="the worker to exit")
        assert "timed out" not in srv.logs()


@pytest.mark.timeout(90)
def test_old_workers_keep_the_graceful_timeout_they_were_started_with(tmp_path):
    gate = tmp_path / "gate"
    conf = write_conf(tmp_path / "p.ini", app=HOLD, workers=1, graceful_timeout=30)
    with ServerProcess(["-c", str(conf)]) as srv:
        (old,) = serving(srv, 1)
        with connect(srv.port) as sock:
            sock.sendall(f"hold {gate}\n".encode())
            wait_for(lambda: srv.status()["totals"]["lines_in"] == 1, what="the line to be read")
            write_conf(conf, app=HOLD, workers=1, graceful_timeout=1)
            srv.signal(signal.SIGHUP)
            wait_for(lambda: "Reloaded: generation 2" in srv.logs(), timeout=30, what="the reload")
            time.sleep(3)  # past the new generation's graceful_timeout
            assert is_alive(old), srv.logs()
            gate.touch()
            assert read_lines(sock, 1) == [f"hold {gate}".encode()]


@pytest.mark.timeout(60)
def test_int_during_a_graceful_stop_makes_it_quick(tmp_path):
    gate = tmp_path / "gate"
    with ServerProcess([HOLD, "--workers", "1", "--graceful-timeout", "60"]) as srv:
        with connect(srv.port) as sock:
            sock.sendall(f"hold {gate}\n".encode())
            wait_for(lambda: srv.status()["totals"]["lines_in"] == 1, what="the line to be read")
            srv.signal(signal.SIGTERM)
            wait_for(lambda: "Shutting down" in srv.logs(), what="the graceful stop to start")
            srv.signal(signal.SIGINT)
            assert srv.wait(15) == 0, srv.logs()


@pytest.mark.timeout(90)
def test_an_abandoned_reload_drains_the_new_workers_that_serve(tmp_path):
    """The new generation half boots: the reload is abandoned, and its worker that already serves clients
    is stopped gracefully (their lines answered), not SIGKILLed with them, nor counted as a crash."""
    gate, stage = tmp_path / "gate", tmp_path / "stage"
    stage.mkdir()
    conf = write_conf(tmp_path / "p.ini", app="testapps:staged", workers=2, graceful_timeout=30)
    with ServerProcess(["-c", str(conf)], env={"TESTAPP_STAGE_DIR": str(stage)}) as srv:
        old = serving(srv, 2)
        srv.signal(signal.SIGHUP)
        new = wait_for(
            lambda: [w["pid"] for w in srv.status()["workers"] if w["generation"] == 2], what="a new worker serving"
        )
        socks = []
        try:
            # Connections land on any worker that accepts: hold lines on enough of them to reach the new one.
            while not [w for w in srv.status()["workers"] if w["pid"] in new and w["clients"]]:
                sock = connect(srv.port)
                sock.sendall(f"hold {gate}\n".encode())
                socks.append(sock)
                time.sleep(0.2)
                assert len(socks) < 50, "no connection reached the new worker"
            (stage / "fail").touch()
            wait_for(lambda: "reload failed" in srv.logs(), timeout=30, what="the reload to be abandoned")
            gate.touch()
            for sock in socks:
                assert read_lines(sock, 1) == [f"hold {gate}".encode()]
        finally:
            for sock in socks:
                sock.close()
        wait_for(lambda: srv.worker_pids() == old, what="the old workers alone")
        assert "died" not in srv.logs().split("reload failed")[1], srv.logs()


# -- heartbeats and state ------------------------------------------------------------------------------------


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("libfaketime is missing; install it with: sudo apt-get install faketime", pytrace=False)
    return found[0]


@pytest.mark.timeout(60)
def test_a_wall_clock_step_kills_no_worker(tmp_path):
    """The wall clock jumps two hours ahead (NTP, a resumed VM) in the master and its workers: heartbeats
    are on the monotonic clock, so no worker is taken for hung. Simulated with libfaketime."""
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": libfaketime(),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "NO_FAKE_STAT": "1",  # the kernel stamps files with its own clock, as after a real step
    }
    with ServerProcess([ECHO, "--workers", "2", "--timeout", "2"], env=env) as srv:
        workers = serving(srv, 2)
        offset.write_text("+2h\n")
        # The step took effect in the master and in both workers: their own clocks stamp the state they
        # report (the master's file, and the workers' figures it carries) two hours ahead of this one.
        master_file = state_dir_for(srv.pid) / "master.json"

        def stepped() -> bool:
            try:
                state = json.loads(master_file.read_text())
            except (OSError, ValueError):  # being replaced
                return False
            ahead = [w["started_ts"] + w["age_s"] - time.time() for w in state["workers"]]
            return state["written_ts"] - time.time() > STEP_SEEN and len(ahead) == 2 and min(ahead) > STEP_SEEN

        wait_for(stepped, what="the master and the workers to see the clock two hours ahead")
        time.sleep(4)  # twice `timeout`
        assert srv.worker_pids() == workers, srv.logs()
        assert "timed out" not in srv.logs()
        assert roundtrip(srv.port, [b"still here"]) == [b"still here"]


@pytest.mark.timeout(60)
def test_losing_the_state_directory_kills_no_worker(tmp_path):
    """A tmp cleaner (or logind at logout) removes the state directory: workers keep serving, the master
    logs it once and makes the directory again, and `prefork status` works again."""
    env = {"PREFORK_SERVER_RUNTIME_DIR": str(tmp_path)}  # `prefork status` takes it from there too
    with ServerProcess([ECHO, "--workers", "2", "--timeout", "2"], env=env) as srv:
        workers = serving(srv, 2)
        state_dir = tmp_path / f"prefork-{srv.pid}"
        # The master writes its state on its own beat: the workers may be up a moment before it.
        wait_for(lambda: (state_dir / "master.json").exists(), what="the master's state file")
        shutil.rmtree(state_dir)
        time.sleep(4)  # twice `timeout`
        assert srv.worker_pids() == workers, srv.logs()
        assert srv.logs().count("state directory was removed") == 1, srv.logs()
        wait_for(lambda: (state_dir / "master.json").exists(), what="the state directory to be back")
        assert len(srv.status()["workers"]) == 2
        assert roundtrip(srv.port, [b"served"]) == [b"served"]


@pytest.mark.timeout(60)
def test_a_hung_worker_logs_its_stack_before_it_is_killed():
    with ServerProcess(["testapps:blocking", "--workers", "1", "--timeout", "2"]) as srv:
        (pid,) = serving(srv, 1)
        with connect(srv.port) as sock:
            sock.sendall(b"block\n")
            wait_for(lambda: not is_alive(pid), what="the hung worker to be killed")
        logs = srv.logs()
    assert "dumping its stack (SIGABRT)" in logs
    # faulthandler's dump names the frame where the event loop was stuck.
    assert re.search(r'File ".*testapps\.py", line \d+ in handle', logs), logs


@pytest.mark.timeout(60)
def test_the_master_never_writes_through_a_planted_symlink(tmp_path):
    """Someone who can write in the state directory plants `.master.json.tmp` -> a file elsewhere: the
    master replaces the link, never writes through it."""
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    runtime = tmp_path / "run"
    with ServerProcess([ECHO, "--workers", "1", "--runtime-dir", str(runtime)]) as srv:
        state_dir = runtime / f"prefork-{srv.pid}"
        link = state_dir / ".master.json.tmp"
        for _ in range(20):
            try:
                link.symlink_to(victim)
            except FileExistsError:
                pass
            time.sleep(0.1)
        assert victim.read_text() == "untouched\n"
        assert srv.status()["master"]["pid"] == srv.pid


def test_a_state_directory_someone_else_prepared_is_refused(tmp_path):
    from prefork.state import StateDirError, prepare_state_dir

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(StateDirError, match="owned by uid 65534"):
        prepare_state_dir(theirs)
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    os.chmod(open_to_all, 0o777)
    with pytest.raises(StateDirError):
        prepare_state_dir(open_to_all)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)
    with pytest.raises(StateDirError, match="not a directory"):
        prepare_state_dir(tmp_path / "link")
    mine = tmp_path / "mine"
    prepare_state_dir(mine)
    assert stat.S_IMODE(mine.stat().st_mode) == 0o755


@pytest.mark.timeout(60)
def test_status_finds_the_state_through_the_pidfile_whatever_the_callers_environment(tmp_path):
    pidfile = tmp_path / "p.pid"
    runtime = tmp_path / "custom-run"
    args = [ECHO, "--workers", "1", "--pidfile", str(pidfile)]
    with ServerProcess(args, env={"PREFORK_SERVER_RUNTIME_DIR": str(runtime)}) as srv:
        out = subprocess.run(
            prefork_cmd("status", "--json", "--pidfile", str(pidfile)),
            env=test_env(),  # no PREFORK_SERVER_RUNTIME_DIR here
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["master"]["pid"] == srv.pid


# -- systemd --------------------------------------------------------------------------------------------------


class FakeSystemd:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET: collects every message sent to it."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.path = path
        self.messages: list[dict[str, str]] = []

    def collect(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def keys(self) -> list[str]:
        """The first key of each message, in order (STATUS-only messages are left out)."""
        return [next(iter(m)) for m in self.collect() if next(iter(m)) != "STATUS"]

    def close(self) -> None:
        self.sock.close()


@pytest.mark.timeout(60)
def test_systemd_hears_ready_reloading_and_stopping_in_order(tmp_path):
    systemd = FakeSystemd(tmp_path / "notify")
    env = {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "400000"}
    conf = write_conf(tmp_path / "p.ini", app=ECHO, workers=2)
    try:
        with ServerProcess(["-c", str(conf)], env=env) as srv:
            wait_for(lambda: "READY" in systemd.keys(), what="READY=1")
            ready = next(m for m in systemd.messages if "READY" in m)
            assert re.fullmatch(r"2 workers, gen 1, \d+ clients", ready["STATUS"]), ready
            srv.signal(signal.SIGHUP)
            wait_for(lambda: systemd.keys().count("READY") == 2, timeout=30, what="READY=1 after the reload")
            reloading = next(m for m in systemd.messages if "RELOADING" in m)
            assert int(reloading["MONOTONIC_USEC"]) > 0
            srv.signal(signal.SIGTERM)
            assert srv.wait(30) == 0
        keys = [k for k in systemd.keys() if k != "WATCHDOG"]
        assert keys == ["READY", "RELOADING", "READY", "STOPPING"], systemd.messages
        assert any("WATCHDOG" in m for m in systemd.messages)  # every 0.2 s here
        statuses = [m["STATUS"] for m in systemd.messages if "STATUS" in m]
        assert any(s.startswith("2 workers, gen 2,") for s in statuses), statuses
    finally:
        systemd.close()


def test_the_systemd_unit_is_type_notify():
    unit = (Path(__file__).resolve().parent.parent / "etc" / "prefork.service").read_text()
    for line in ("Type=notify", "RuntimeDirectory=prefork", "RestartPreventExitStatus=2 3", "ExecReload="):
        assert f"\n{line}" in unit, line


# -- figures that survive worker restarts ------------------------------------------------------------------


def scrape(port: int) -> tuple[str, dict[str, float]]:
    """GET /metrics: the status line and {series: value}."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    if " 200 " not in head.split("\r\n", 1)[0]:
        return head.split("\r\n", 1)[0], {"body": body}
    series = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            series[key] = float(value)
    return head.split("\r\n", 1)[0], series


def metrics_port(srv: ServerProcess) -> int:
    match = wait_for(lambda: re.search(r"Metrics at: http://127\.0\.0\.1:(\d+)/metrics", srv.logs()))
    return int(match.group(1))


@pytest.mark.timeout(90)
def test_counters_never_go_down_when_workers_restart(tmp_path):
    """Lines and replies keep counting through max_requests restarts, a crash and a reload: the master adds
    every retired worker's last counts; restarts are counted by reason and reloads by outcome."""
    conf = write_conf(tmp_path / "p.ini", app="testapps:crashing", workers=2, max_requests=10, name="m")
    with ServerProcess(["-c", str(conf), "--metrics-bind", "127.0.0.1:0"]) as srv:
        port = metrics_port(srv)
        sent, seen = 0, []
        for round_ in range(6):
            lines = [f"r{round_}-{i}".encode() for i in range(8)] + [b""]
            replies = roundtrip(srv.port, lines)
            assert replies[:-1] == lines[:-1] and replies[-1] == b"ERR empty"
            sent += len(lines)
            # A heartbeat brings this round into the figures.
            total = wait_for(
                lambda: (t := scrape(port)[1]['prefork_lines_total{name="m"}']) >= sent and t,  # noqa: B023
                what="this round in the figures",
            )
            seen.append(total)
        with connect(srv.port) as sock:  # a crash loses nothing already counted
            sock.sendall(b"crash\n")
            read_all_quietly(sock)
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "Reloaded: generation 2" in srv.logs(), timeout=30, what="the reload")

        def settled():
            series = scrape(port)[1]
            return series if series.get('prefork_reloads_total{name="m",outcome="ok"}') == 1 else None

        series = wait_for(settled, what="the reload in the figures")
        seen.append(series['prefork_lines_total{name="m"}'])
    assert seen == sorted(seen), f"lines_total went down: {seen}"
    assert seen[-1] >= sent, (seen, sent)
    assert series['prefork_replies_total{name="m",result="err",reason="empty"}'] >= 6
    assert series['prefork_worker_restarts_total{name="m",reason="max_requests"}'] >= 1, series
    assert series['prefork_worker_restarts_total{name="m",reason="crash"}'] == 1, series
    assert series['prefork_worker_restarts_total{name="m",reason="reload"}'] >= 1, series
    assert any(k.startswith("prefork_build_info{") for k in series)
    assert series['process_start_time_seconds{name="m"}'] > 1e9


def read_all_quietly(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


# What `prefork status --json` shows of the app's stats for each shape (None: nothing reportable).
ODD_STATS_SHOWN = {
    "object": None,
    "nan": None,
    "huge": None,
    "bad-pool": {"pool": {"size": 1, "closed": "not a mapping"}},
    "pool-number": {"pool": 5},
    "pool-none": {"pool": None},
    "pool-strings": {"pool": {"size": "three", "idle": None, "closed": {"idle": "x", "age": 2}}},
    "none": None,
    "number": 5,
    "list": [1, "two", {"three": 3}],
    "extra": {"pool": {"size": 2, "idle": 1}, "queue": {"depth": 7, "name": "q"}, "note": "hi"},
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(ODD_STATS_SHOWN))
def test_odd_app_stats_never_break_status_metrics_or_a_worker(kind):
    """Whatever an app's stats() returns, the worker keeps its heartbeat, `prefork status --json` exits 0
    and shows the app's JSON as it is (under "app"), the pool columns take only numbers, and /metrics
    answers 200 with every series (before: a number or None where a mapping was expected answered 500,
    every series included, and status failed with a TypeError)."""
    args = ["testapps:odd_stats", "--workers", "1", "--timeout", "2", "--metrics-bind", "127.0.0.1:0"]
    with ServerProcess(args, env={"TESTAPP_STATS": kind}) as srv:
        workers = serving(srv, 1)
        port = metrics_port(srv)
        # Three heartbeats past the boot's: a worker whose heartbeat failed would be gone by then (timeout 2).
        first = wait_for(lambda: srv.status()["workers"], what="the worker's state")[0]
        wait_for(lambda: (w := srv.status()["workers"]) and w[0]["age_s"] >= first["age_s"] + 3, what="3 beats")
        assert srv.worker_pids() == workers, srv.logs()
        report = srv.status()
        worker = report["workers"][0]
        assert worker["app"] == ODD_STATS_SHOWN[kind]
        assert all(isinstance(v, (int, float)) for k, v in worker["pool"].items() if k != "closed"), worker
        assert all(isinstance(v, int) for v in worker["pool"]["closed"].values()), worker
        assert isinstance(report["totals"]["pool_size"], (int, float))
        table = subprocess.run(
            prefork_cmd("status", "--pidfile", srv.pidfile()), env=srv.env, capture_output=True, text=True, timeout=30
        )
        assert table.returncode == 0, table.stderr
        if kind == "extra":
            assert f'{workers[0]} app: {{"queue": {{"depth": 7, "name": "q"}}, "note": "hi"}}' in table.stdout
        status, series = scrape(port)
        assert status == "HTTP/1.1 200 OK", series
        assert series['prefork_workers{name="prefork"}'] == 1
        assert sum(1 for k in series if k.startswith("prefork_pool_size{")) == 1
        if kind == "extra":
            labels = 'name="prefork",slot="0",key="queue.depth"'
            assert series["prefork_app_stat{" + labels + "}"] == 7
        assert roundtrip(srv.port, [b"fine"]) == [b"fine"]
        assert srv.logs().count("cannot be reported") <= 1


# -- where the app comes from; listener settings ----------------------------------------------------------


def release(directory: Path, version: str) -> None:
    directory.mkdir(parents=True)
    (directory / "release_app.py").write_text(
        f"class App:\n    def handle(self, line, client):\n        return '{version} ' + line\n\n\napp = App()\n"
    )


@pytest.mark.timeout(60)
def test_a_reload_follows_a_symlinked_release_directory(tmp_path):
    """Started in /srv/current (a symlink to releases/v1, as $PWD names it); the deploy points current at v2
    and sends HUP: the new generation imports v2."""
    release(tmp_path / "releases" / "v1", "v1")
    release(tmp_path / "releases" / "v2", "v2")
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "releases" / "v1")
    with ServerProcess(["release_app:app", "--workers", "1"], cwd=current, env={"PWD": str(current)}) as srv:
        assert roundtrip(srv.port, [b"x"]) == [b"v1 x"]
        tmp_link = tmp_path / "current.new"
        tmp_link.symlink_to(tmp_path / "releases" / "v2")
        os.replace(tmp_link, current)  # ln -sfn releases/v2 current
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "Reloaded: generation 2" in srv.logs(), timeout=30, what="the reload")
        wait_for(lambda: len(srv.worker_pids()) == 1, what="the old worker to leave")
        assert roundtrip(srv.port, [b"x"]) == [b"v2 x"]


@pytest.mark.timeout(60)
def test_chdir_and_pythonpath(tmp_path):
    release(tmp_path / "code", "from-chdir")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "helper_lib.py").write_text("PREFIX = 'lib'\n")
    (tmp_path / "code" / "uses_lib.py").write_text(
        "import helper_lib\n\n\nclass App:\n    def handle(self, line, client):\n"
        "        return helper_lib.PREFIX + ' ' + line\n\n\napp = App()\n"
    )
    args = ["uses_lib:app", "--workers", "1", "--chdir", str(tmp_path / "code"), "--pythonpath", str(tmp_path / "lib")]
    with ServerProcess(args) as srv:
        assert roundtrip(srv.port, [b"y"]) == [b"lib y"]
    srv = ServerProcess(["release_app:app", "--workers", "1", "--chdir", str(tmp_path / "missing")])
    try:
        srv.start(wait=False)
        assert srv.wait(30) == 3
        assert "server.chdir: cannot enter" in srv.logs()
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_backlog_reuse_port_and_unix_mode(tmp_path):
    path = tmp_path / "p.sock"
    args = [ECHO, "--workers", "1", "--backlog", "77", "--reuse-port", "on", "--unix-mode", "0660"]
    with ServerProcess([*args, "--bind", f"127.0.0.1:0,unix:{path}"], bind=None) as srv:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{srv.port}"], capture_output=True, text=True).stdout
        assert out.split()[2] == "77", out  # Send-Q of a listener is its backlog
        other = socket.socket()
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", srv.port))  # allowed only because the listener has SO_REUSEPORT too
        other.close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
