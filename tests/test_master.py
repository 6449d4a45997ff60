"""The master from outside: a real `prefork run` subprocess, real sockets, real signals (README: "Command
line", "Configuration", "Signals (to the master)", "Operations").

No test asserts on timings: every wait is a bounded poll (wait_for) for an observable state.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.server import (
    ServerProcess,
    client_loop,
    connect,
    is_alive,
    prefork_cmd,
    read_all,
    read_lines,
    roundtrip,
    test_env,
    wait_for,
)

ECHO = "workers.echo:app"


# -- helpers ----------------------------------------------------------------------------------------


def echo_ok(port: int, tag: str = "x") -> bool:
    lines = [f"{tag}-{i}".encode() for i in range(3)]
    return roundtrip(port, lines) == lines


def workers_of(srv: ServerProcess, title: str) -> list[int]:
    """Live workers whose process title is exactly `title`."""
    return sorted(pid for pid, t in srv.titles().items() if pid != srv.pid and t == title)


def n_workers(srv: ServerProcess, n: int):
    """A predicate: exactly n live workers; returns their pids."""

    def check():
        pids = srv.worker_pids()
        return pids if len(pids) == n else None

    return check


def log_count(srv: ServerProcess, text: str) -> int:
    return srv.logs().count(text)


def unix_roundtrip(path: str, lines: list[bytes]) -> list[bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(path)
        sock.sendall(b"".join(line + b"\n" for line in lines))
        sock.shutdown(socket.SHUT_WR)
        data = read_all(sock)
    return data.split(b"\n")[:-1]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


# -- supervision ------------------------------------------------------------------------------------


def test_killed_worker_is_replaced_and_served_again():
    with ServerProcess([ECHO, "--workers", "2"]) as srv:
        before = wait_for(n_workers(srv, 2), what="two workers")
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        after = wait_for(
            lambda: (p := srv.worker_pids()) and len(p) == 2 and victim not in p and p,
            timeout=10,
            what="the killed worker to be replaced",
        )
        assert before[1] in after
        new = (set(after) - set(before)).pop()
        wait_for(lambda: srv.titles().get(new) == "prefork: worker [prefork] gen 1", what="new worker title")
        for i in range(6):
            assert echo_ok(srv.port, f"after-{i}")
        assert srv.proc.poll() is None


def test_a_worker_that_keeps_crashing_is_replaced_with_backoff_not_given_up():
    with ServerProcess(["testapps:crashing", "--workers", "1"]) as srv:
        for _ in range(5):
            worker = wait_for(n_workers(srv, 1), what="a worker")[0]
            with connect(srv.port) as sock:
                sock.sendall(b"crash\n")
                assert read_all(sock) == b""  # the worker died without a reply
            wait_for(lambda w=worker: not is_alive(w), what="the crashed worker to be gone")
        wait_for(lambda: echo_ok(srv.port), timeout=30, what="a replacement to serve")
        assert srv.proc.poll() is None  # crashes after boot never stop the master
        assert srv.logs().count("died (exit code 1)") == 5


def test_blocked_worker_is_killed_after_timeout_and_replaced():
    with ServerProcess(["testapps:blocking", "--workers", "1", "--timeout", "2"]) as srv:
        (pid,) = wait_for(n_workers(srv, 1), what="one worker")
        assert roundtrip(srv.port, [b"hello"]) == [b"hello"]
        with connect(srv.port) as sock:
            sock.sendall(b"block\n")
            # The worker is frozen: no reply, then it is killed (its connection closes without a reply).
            try:
                assert read_all(sock) == b""
            except ConnectionResetError:
                pass
        wait_for(lambda: not is_alive(pid), timeout=15, what="the blocked worker to be killed")
        new = wait_for(lambda: (p := srv.worker_pids()) and pid not in p and p, timeout=15, what="a replacement")
        assert len(new) == 1
        assert re.search(rf"worker {pid} timed out", srv.logs()), srv.logs()
        assert roundtrip(srv.port, [b"again", b"and again"]) == [b"again", b"and again"]


def test_ttin_ttou_change_the_number_of_workers_never_below_one():
    with ServerProcess([ECHO, "--workers", "2", "--graceful-timeout", "5"]) as srv:
        wait_for(n_workers(srv, 2), what="two workers")
        srv.signal(signal.SIGTTIN)
        wait_for(n_workers(srv, 3), what="three workers after TTIN")
        wait_for(
            lambda: set(srv.titles().values()) == {"prefork: master [prefork]", "prefork: worker [prefork] gen 1"},
            what="the new worker's title: same generation",
        )
        assert srv.status()["master"]["workers_target"] == 3
        srv.signal(signal.SIGTTOU)
        wait_for(n_workers(srv, 2), what="two workers after TTOU")
        srv.signal(signal.SIGTTOU)
        (last,) = wait_for(n_workers(srv, 1), what="one worker after a second TTOU")
        # Below one: refused. Two more TTOU, each acknowledged in the log, leave the one worker alone.
        srv.signal(signal.SIGTTOU)
        wait_for(lambda: log_count(srv, "TTOU: 1 workers") >= 2, what="the third TTOU handled")
        srv.signal(signal.SIGTTOU)
        wait_for(lambda: log_count(srv, "TTOU: 1 workers") >= 3, what="the fourth TTOU handled")
        srv.signal(signal.SIGTTIN)  # a marker: handled after both TTOU, so the loop has managed workers since
        wait_for(n_workers(srv, 2), what="two workers after TTIN")
        assert last in srv.worker_pids()
        assert srv.status()["master"]["workers_target"] == 2
        assert echo_ok(srv.port)


# -- reload (HUP) -----------------------------------------------------------------------------------


def test_hup_under_load_replaces_the_generation_without_losing_a_client(tmp_path):
    conf = tmp_path / "prefork.ini"
    conf.write_text(f"[server]\napp = {ECHO}\nworkers = 2\nname = one\ngraceful_timeout = 10\n")
    with ServerProcess(["-c", str(conf)]) as srv:
        old = wait_for(n_workers(srv, 2), what="two workers")
        # A child just forked still carries the master's title until the worker sets its own.
        titled = "prefork: worker [one] gen 1"
        wait_for(lambda: all(srv.titles().get(p) == titled for p in old), what=f"the workers' titles {titled!r}")
        stop = threading.Event()
        errors: list[str] = []
        counts = [0] * 6
        threads = [
            threading.Thread(target=client_loop, args=(srv.port, i, stop, errors, counts), daemon=True)
            for i in range(len(counts))
        ]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: min(counts) >= 20, what="clients to make progress")
            conf.write_text(f"[server]\napp = {ECHO}\nworkers = 3\nname = two\ngraceful_timeout = 10\n")
            srv.signal(signal.SIGHUP)
            new = wait_for(
                lambda: (
                    len(p := workers_of(srv, "prefork: worker [two] gen 2")) == 3 and len(srv.worker_pids()) == 3 and p
                ),
                timeout=30,
                what="three generation-2 workers and no other",
            )
            assert not set(new) & set(old)
            wait_for(lambda: not any(is_alive(p) for p in old), what="the old workers to exit")
            at_reload = list(counts)
            wait_for(
                lambda: all(c >= a + 20 for c, a in zip(counts, at_reload, strict=True)),
                what="clients served after reload",
            )
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert errors == [], errors[:10]
        assert srv.titles()[srv.pid] == "prefork: master [two]"
        status = srv.status()
        assert status["master"]["generation"] == 2
        assert status["master"]["name"] == "two"
        assert status["master"]["workers_target"] == 3
        assert sorted(w["pid"] for w in status["workers"]) == new
        assert {w["generation"] for w in status["workers"]} == {2}
        assert "reload failed" not in srv.logs()


def test_hup_picks_up_new_application_code(tmp_path):
    appdir = tmp_path / "apps"
    appdir.mkdir()
    module = appdir / "hupcode_app.py"
    module.write_text("class App:\n    def handle(self, line, client):\n        return 'v1 ' + line\n\n\napp = App()\n")
    env = {
        "PYTHONPATH": os.pathsep.join([str(appdir), test_env()["PYTHONPATH"]]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    with ServerProcess(["hupcode_app:app", "--workers", "2", "--graceful-timeout", "5"], env=env) as srv:
        old = wait_for(n_workers(srv, 2), what="two workers")
        assert roundtrip(srv.port, [b"a", b"b"]) == [b"v1 a", b"v1 b"]
        module.write_text(
            "class App:\n    def handle(self, line, client):\n        return 'version two ' + line\n\n\napp = App()\n"
        )
        srv.signal(signal.SIGHUP)
        wait_for(
            lambda: not any(is_alive(p) for p in old) and len(srv.worker_pids()) == 2,
            timeout=30,
            what="the new generation alone",
        )
        assert roundtrip(srv.port, [b"a", b"b"]) == [b"version two a", b"version two b"]
        assert srv.status()["master"]["generation"] == 2


def test_hup_with_a_broken_config_keeps_the_old_workers(tmp_path):
    conf = tmp_path / "prefork.ini"
    conf.write_text(f"[server]\napp = {ECHO}\nworkers = 2\n")
    with ServerProcess(["-c", str(conf)]) as srv:
        old = wait_for(n_workers(srv, 2), what="two workers")
        conf.write_text(f"[server]\napp = {ECHO}\nworkers = abc\n")
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in srv.logs(), what="the reload failure to be logged")
        line = next(x for x in srv.logs().splitlines() if "reload failed" in x)
        assert "server.workers" in line and "abc" in line, line
        assert srv.worker_pids() == old
        for i in range(4):
            assert echo_ok(srv.port, f"r{i}")
        assert srv.worker_pids() == old
        assert srv.status()["master"]["generation"] == 1
        assert srv.proc.poll() is None


def test_hup_opens_added_listeners_and_closes_removed_ones(tmp_path):
    from devtools.mariadb import free_port

    first, second = free_port(), free_port()
    conf = tmp_path / "prefork.ini"
    conf.write_text(f"[server]\napp = {ECHO}\nworkers = 1\nbind = 127.0.0.1:{first}\n")
    with ServerProcess(["-c", str(conf)], bind=None) as srv:
        assert echo_ok(first)
        conf.write_text(f"[server]\napp = {ECHO}\nworkers = 1\nbind = 127.0.0.1:{first},127.0.0.1:{second}\n")
        srv.signal(signal.SIGHUP)
        wait_for(lambda: srv.status()["master"]["generation"] == 2, what="generation 2")
        assert echo_ok(first) and echo_ok(second)
        conf.write_text(f"[server]\napp = {ECHO}\nworkers = 1\nbind = 127.0.0.1:{second}\n")
        srv.signal(signal.SIGHUP)
        wait_for(lambda: srv.status()["master"]["generation"] == 3, what="generation 3")
        wait_for(lambda: len(srv.worker_pids()) == 1, what="the old worker to exit")
        assert echo_ok(second)
        wait_for(lambda: refused(first), what="the removed listener to close")
        assert srv.status()["master"]["listeners"] == [f"127.0.0.1:{second}"]


def test_hup_with_an_app_that_fails_to_boot_keeps_the_old_workers(tmp_path):
    conf = tmp_path / "prefork.ini"
    conf.write_text(f"[server]\napp = {ECHO}\nworkers = 2\n")
    with ServerProcess(["-c", str(conf)]) as srv:
        old = wait_for(n_workers(srv, 2), what="two workers")
        conf.write_text("[server]\napp = no_such_module_for_prefork:app\nworkers = 2\n")
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in srv.logs(), timeout=30, what="the reload failure to be logged")
        wait_for(lambda: srv.worker_pids() == old, what="only the old workers")
        for i in range(4):
            assert echo_ok(srv.port, f"r{i}")
        assert srv.worker_pids() == old
        status = srv.status()
        assert status["master"]["generation"] == 1
        assert sorted(w["pid"] for w in status["workers"]) == old
        # Fixed again: the next HUP works.
        conf.write_text(f"[server]\napp = {ECHO}\nworkers = 2\nname = fixed\n")
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "Reloaded: generation" in srv.logs(), timeout=30, what="the second reload")
        generation = srv.status()["master"]["generation"]
        assert generation > 1
        title = f"prefork: worker [fixed] gen {generation}"
        wait_for(
            lambda: len(workers_of(srv, title)) == 2 and len(srv.worker_pids()) == 2,
            timeout=30,
            what="the fixed generation alone",
        )
        assert echo_ok(srv.port)


# -- boot failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("app", ["nonexistent_module:app", "testapps:failing_setup"])
def test_workers_that_cannot_boot_stop_the_master_with_3(app):
    workers = 2
    srv = ServerProcess([app, "--workers", str(workers)])
    try:
        srv.start(wait=False)
        code = srv.wait(60)
        logs = srv.logs()
        assert code == 3, logs
        booted = logs.count("Booting worker")
        assert 1 <= booted <= 3 * workers + 2, logs
        assert "Workers are serving" not in logs
        assert not srv.worker_pids()
    finally:
        srv.stop()


# -- stopping ---------------------------------------------------------------------------------------


def test_term_stops_gracefully_and_answers_lines_in_flight(tmp_path):
    release = tmp_path / "release"
    with ServerProcess(["testapps:hold", "--workers", "1", "--graceful-timeout", "60"]) as srv:
        (worker,) = wait_for(n_workers(srv, 1), what="one worker")
        port = srv.port
        lines = [f"hold {release}".encode()] * 3 + [b"plain"]
        with connect(port) as sock:
            sock.sendall(b"".join(line + b"\n" for line in lines))
            # Every line is read by the worker (its counters say so), none answered: the first is held.
            wait_for(lambda: srv.status()["totals"]["lines_in"] >= len(lines), what="the lines to be read")
            srv.signal(signal.SIGTERM)
            # The worker stopped accepting (listeners closed everywhere) while its lines are still held.
            wait_for(lambda: refused(port), what="the listeners to close")
            assert srv.proc.poll() is None and is_alive(worker)
            release.touch()
            sock.settimeout(30)
            assert read_lines(sock, len(lines)) == lines
            assert read_all(sock) == b""
        assert srv.wait(60) == 0
        wait_for(lambda: not is_alive(worker), what="the worker to be gone")
        assert not srv.worker_pids()
        assert "outlived" not in srv.logs() and "killed" not in srv.logs()


def test_term_kills_workers_that_outlive_graceful_timeout(tmp_path):
    never = tmp_path / "never"
    with ServerProcess(["testapps:hold", "--workers", "1", "--graceful-timeout", "1"]) as srv:
        (worker,) = wait_for(n_workers(srv, 1), what="one worker")
        with connect(srv.port) as sock:
            sock.sendall(f"hold {never}\nplain\n".encode())
            wait_for(lambda: srv.status()["totals"]["lines_in"] >= 2, what="the lines to be read")
            srv.signal(signal.SIGTERM)
            assert srv.wait(60) == 0
            # The held line never got its reply; the one behind it neither (replies are in order).
            try:
                assert read_all(sock) == b""
            except ConnectionResetError:
                pass
        assert not is_alive(worker)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT])
def test_int_and_quit_stop_quickly_with_status_0(tmp_path, signum):
    release = tmp_path / "never"
    with ServerProcess(["testapps:hold", "--workers", "2", "--graceful-timeout", "600"]) as srv:
        workers = wait_for(n_workers(srv, 2), what="two workers")
        with connect(srv.port) as sock:
            sock.sendall(f"hold {release}\n".encode())  # a reply that never comes: no graceful wait for it
            wait_for(lambda: srv.status()["totals"]["lines_in"] >= 1, what="the line to be read")
            srv.signal(signum)
            # Far below graceful_timeout (600 s): the quick stop does not wait for clients.
            assert srv.wait(60) == 0
        assert not any(is_alive(p) for p in workers)


# -- identity ---------------------------------------------------------------------------------------


def test_process_titles():
    with ServerProcess([ECHO, "--workers", "2", "--name", "titled"]) as srv:
        workers = wait_for(n_workers(srv, 2), what="two workers")
        titles = srv.titles()
        assert titles[srv.pid] == "prefork: master [titled]"
        for pid in workers:
            assert titles[pid] == "prefork: worker [titled] gen 1"


def test_master_never_loads_gevent_workers_do():
    with ServerProcess([ECHO, "--workers", "1"]) as srv:
        (worker,) = wait_for(n_workers(srv, 1), what="one worker")
        assert echo_ok(srv.port)
        srv.signal(signal.SIGHUP)  # a reload must not make the master import anything either
        wait_for(lambda: "Reloaded: generation 2" in srv.logs(), what="the reload")
        wait_for(lambda: not is_alive(worker), what="the old worker to exit")
        master_maps = Path(f"/proc/{srv.pid}/maps").read_text()
        assert "gevent" not in master_maps
        assert "greenlet" not in master_maps
        (new,) = wait_for(n_workers(srv, 1), what="one worker")
        assert "gevent" in Path(f"/proc/{new}/maps").read_text()


# -- listeners --------------------------------------------------------------------------------------


def test_unix_socket_listener(tmp_path):
    path = str(tmp_path / "s.sock")
    with ServerProcess([ECHO, "--workers", "2"], bind=f"unix:{path}") as srv:
        assert srv.listening() == [f"unix:{path}"]
        assert unix_roundtrip(path, [b"a", b"b"]) == [b"a", b"b"]
        assert srv.status()["master"]["listeners"] == [f"unix:{path}"]
        srv.signal(signal.SIGTERM)
        assert srv.wait(60) == 0
    assert not os.path.exists(path)


def test_two_listeners_tcp_port_0_and_unix(tmp_path):
    path = str(tmp_path / "two.sock")
    with ServerProcess([ECHO, "--workers", "2", "--bind", f"127.0.0.1:0,unix:{path}"], bind=None) as srv:
        listening = srv.listening()
        assert len(listening) == 2, srv.logs()
        assert f"unix:{path}" in listening
        tcp = [a for a in listening if not a.startswith("unix:")]
        assert len(tcp) == 1 and tcp[0].startswith("127.0.0.1:")
        assert srv.port != 0
        assert roundtrip(srv.port, [b"tcp"]) == [b"tcp"]
        assert unix_roundtrip(path, [b"unix"]) == [b"unix"]
        assert sorted(srv.status()["master"]["listeners"]) == sorted(listening)


# -- max_requests -----------------------------------------------------------------------------------


def test_max_requests_restarts_the_worker():
    with ServerProcess(["testapps:pid", "--workers", "1", "--max-requests", "50", "--graceful-timeout", "5"]) as srv:
        (first,) = wait_for(n_workers(srv, 1), what="one worker")
        lines = [f"l{i}".encode() for i in range(60)]
        replies = roundtrip(srv.port, lines)
        assert len(replies) == 60
        assert all(r.startswith(f"{first} ".encode()) for r in replies)
        wait_for(lambda: not is_alive(first), timeout=20, what="the worker to restart")
        (second,) = wait_for(n_workers(srv, 1), what="a new worker")
        assert second != first
        assert "max_requests" in srv.logs()
        replies = wait_for(lambda: roundtrip(srv.port, [b"next"]), what="a reply")
        assert replies == [f"{second}  next".encode()]


# -- status -----------------------------------------------------------------------------------------

MASTER_KEYS = {
    "pid",
    "name",
    "generation",
    "started_at",
    "uptime_s",
    "workers_target",
    "listeners",
    "reload",
    "upgrade",  # the last USR2's outcome (prefork.upgrade)
    "not_ready",  # why /readyz would answer 503, null when ready
}
WORKER_KEYS = {
    "pid",
    "slot",  # its place in the accept table: what /metrics labels its series by
    "generation",
    "started_at",
    "age_s",
    "clients",
    "lines_in",
    "ok",
    "err",
    "unread_clients",  # connections stopped because the client read no reply (tests/test_syslog_framing.py)
    "rss_bytes",
    "loop_lag_ms",
    "refused",  # connections closed as they came, by reason: {"allow_from": n}
    "pool",
    "app",  # the app's stats() as it reported them (echo has none: null)
}
POOL_KEYS = {
    "size",
    "idle",
    "in_use",
    "waiting",
    "max_size",
    "created",
    "closed",
    "acquires",
    "timeouts",
    "wait_total_s",
    "wait_max_s",
}
TOTAL_KEYS = {
    "workers",
    "clients",
    "lines_in",
    "ok",
    "err",
    "unread_clients",
    "pool_size",
    "pool_in_use",
    "pool_waiting",
}
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)")


def test_status_json_and_table():
    with ServerProcess([ECHO, "--workers", "2", "--name", "stat"]) as srv:
        workers = wait_for(n_workers(srv, 2), what="two workers")
        assert roundtrip(srv.port, [b"a", b"b", b"c"]) == [b"a", b"b", b"c"]
        status = wait_for(lambda: (s := srv.status()) and s["totals"]["lines_in"] >= 3 and s, what="counted lines")
        assert set(status) == {"master", "workers", "totals", "handoffs", "tls"}
        assert status["handoffs"] == {"out": 0, "fallback": 0, "in": 0}
        m = status["master"]
        assert set(m) == MASTER_KEYS
        assert m["pid"] == srv.pid and m["name"] == "stat" and m["generation"] == 1
        assert m["workers_target"] == 2 and m["not_ready"] is None
        assert m["listeners"] == [f"127.0.0.1:{srv.port}"]
        assert m["reload"] == {  # no HUP yet (tests/test_reload_wait.py: the record after reloads)
            "requested": 0,
            "answered": 0,
            "running": None,
            "outcome": None,
            "reason": None,
            "generation": None,
            "finished_at": None,
        }
        assert ISO.fullmatch(m["started_at"]) and isinstance(m["uptime_s"], (int, float))
        assert sorted(w["pid"] for w in status["workers"]) == workers
        assert sorted(w["slot"] for w in status["workers"]) == [0, 1]
        for w in status["workers"]:
            assert set(w) == WORKER_KEYS
            assert set(w["pool"]) == POOL_KEYS
            assert isinstance(w["pool"]["closed"], dict)
            assert w["generation"] == 1 and ISO.fullmatch(w["started_at"])
            for key in ("clients", "lines_in", "ok", "err", "unread_clients", "rss_bytes"):
                assert isinstance(w[key], int) and w[key] >= 0, (key, w)
            assert w["rss_bytes"] > 0
        t = status["totals"]
        assert set(t) == TOTAL_KEYS
        assert t["workers"] == 2
        assert t["lines_in"] == sum(w["lines_in"] for w in status["workers"]) == 3
        assert t["ok"] == sum(w["ok"] for w in status["workers"])
        assert t["unread_clients"] == 0  # these clients read their replies

        out = subprocess.run(
            prefork_cmd("status", "--pidfile", srv.pidfile()), env=srv.env, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        assert "stat" in out.stdout and str(srv.pid) in out.stdout
        rows = out.stdout.splitlines()
        assert "UNREAD" in out.stdout.split()
        for pid in workers:
            assert any(row.split()[:2] == [str(pid), "1"] for row in rows), out.stdout
        assert any(row.split()[:1] == ["total"] for row in rows), out.stdout


# -- logs -------------------------------------------------------------------------------------------


def test_usr1_reopens_the_log_file(tmp_path):
    log_file = tmp_path / "prefork.log"
    moved = tmp_path / "prefork.log.1"
    srv = ServerProcess(["testapps:pid", "--workers", "1", "--max-requests", "5", "--log-file", str(log_file)])
    try:
        srv.start(wait=False)
        wait_for(lambda: log_file.exists() and "Workers are serving" in log_file.read_text(), what="serving")
        (worker,) = wait_for(n_workers(srv, 1), what="one worker")
        port = int(re.search(r"Listening at: 127\.0\.0\.1:(\d+)", log_file.read_text())[1])
        log_file.rename(moved)
        srv.signal(signal.SIGUSR1)
        wait_for(log_file.exists, what="a new log file at the original path")
        # The worker that was running at USR1 logs into the new file (it reaches max_requests)...
        replies = roundtrip(port, [f"l{i}".encode() for i in range(10)])
        assert len(replies) == 10
        wait_for(
            lambda: "reached max_requests" in log_file.read_text(),
            timeout=20,
            what="the old worker's line in the new file",
        )
        # ... and so does the master (it replaces that worker).
        wait_for(
            lambda: f"Worker {worker} exited" in log_file.read_text(),
            timeout=20,
            what="the master's line in the new file",
        )
        old_text = moved.read_text()
        assert "Workers are serving" in old_text
        assert "max_requests" not in old_text and f"Worker {worker} exited" not in old_text
        assert srv.logs() == ""  # nothing on stderr
    finally:
        srv.stop()


# -- operations: metrics, open files, user ------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = read_all(sock).decode()
    head, _, body = data.partition("\r\n\r\n")
    return head.split("\r\n", 1)[0], body


# /metrics, /healthz and /readyz: tests/test_health.py (the exposition's rules: tests/test_metrics.py).


def test_master_raises_the_open_files_limit_for_workers():
    def low_limit():
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    srv = ServerProcess([ECHO, "--workers", "1", "--worker-connections", "1000"])
    try:
        srv.start(preexec_fn=low_limit)
        limits = Path(f"/proc/{srv.worker_pids()[0]}/limits").read_text()
        soft = int(re.search(r"Max open files\s+(\d+)", limits).group(1))
        assert soft >= 1000 + 128
    finally:
        srv.stop()


def test_workers_switch_to_server_group(tmp_path):
    """Workers drop to server.user/server.group after the fork (the group here: the interpreter of this
    machine may live where an unprivileged user cannot read it)."""
    import grp

    group = grp.getgrgid(65534).gr_name  # nogroup on Debian
    args = [ECHO, "--workers", "1", "--user", "root", "--group", group]
    if os.geteuid() != 0:  # only root may switch: a clear error, exit 2
        out = subprocess.run(
            prefork_cmd("run", *args, "--bind", "127.0.0.1:0"),
            env=test_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 2 and "only root" in out.stderr
        return
    with ServerProcess(args) as srv:
        worker = srv.worker_pids()[0]
        status = Path(f"/proc/{worker}/status").read_text().splitlines()
        gid_line = next(line for line in status if line.startswith("Gid:"))
        assert int(gid_line.split()[1]) == 65534
        assert echo_ok(srv.port)
        assert srv.status()["workers"][0]["pid"] == worker  # its heartbeat file is written


def test_unknown_user_is_a_config_error():
    out = subprocess.run(
        prefork_cmd("run", ECHO, "--user", "no-such-user-x", "--bind", "127.0.0.1:0"),
        env=test_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "server.user" in out.stderr and "no-such-user-x" in out.stderr
