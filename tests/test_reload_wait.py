"""`prefork reload --wait`: exit 0 once the new generation serves, 1 with the reason when the reload is refused
or abandoned, 124 when --timeout runs out; two waits at once, and a HUP queued behind a reload, each get the
outcome of a reload that answered their HUP.

One master for the module (echo app, one worker, its config file rewritten by each test): every test leaves
it serving the echo app. The commands run as real subprocesses, as systemd's ExecReload runs them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefork.exits import EXIT_FAILURE, EXIT_TIMEOUT
from tests.server import ServerProcess, prefork_cmd, roundtrip, test_env, wait_for

ECHO = "workers.echo:app"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reload-wait")


@pytest.fixture(scope="module")
def srv(files: Path) -> Iterator[ServerProcess]:
    write_config(files, ECHO)
    env = {"SLOWIMPORT_WHEN": str(files / "hold"), "SLOWIMPORT_STARTED": str(files / "importing")}
    with ServerProcess(["-c", str(files / "prefork.ini"), "--graceful-timeout", "5"], env=env) as server:
        yield server


def write_config(files: Path, app: str, workers: str = "1") -> None:
    pidfile = files / "prefork.pid"  # locked by the master: `reload --pidfile` signals no other process
    (files / "prefork.ini").write_text(f"[server]\napp = {app}\nworkers = {workers}\npidfile = {pidfile}\n")


def reload_cmd(files: Path, *args: str) -> list[str]:
    return prefork_cmd("reload", "--wait", "--pidfile", str(files / "prefork.pid"), *args)


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=test_env(), capture_output=True, text=True, timeout=60)


def generation(srv: ServerProcess) -> int:
    return srv.status()["master"]["generation"]


def test_wait_returns_once_the_new_generation_serves(srv: ServerProcess, files: Path):
    before = generation(srv)
    out = run(reload_cmd(files))
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"prefork: reloaded: generation {before + 1} serving, the old workers stopping\n"
    assert generation(srv) == before + 1  # already serving when the command returned
    record = srv.status()["master"]["reload"]
    assert record["outcome"] == "serving" and record["answered"] == record["requested"]
    assert roundtrip(srv.port, [b"after"]) == [b"after"]
    table = run(prefork_cmd("status", "--pidfile", str(files / "prefork.pid"))).stdout
    assert f"last reload ({record['finished_at']}): generation {before + 1} serving" in table, table
    # By pid, as the unit's ExecReload gives it ($MAINPID), with no pidfile.
    out = run(prefork_cmd("reload", "--wait", "--pid", str(srv.pid)))
    assert out.returncode == 0 and f"generation {before + 2} serving" in out.stdout, out.stderr


def test_a_refused_reload_exits_1_with_the_reason(srv: ServerProcess, files: Path):
    before = generation(srv)
    write_config(files, ECHO, workers="many")
    try:
        out = run(reload_cmd(files))  # refused at once: before the command's first look at the record
    finally:
        write_config(files, ECHO)
    assert out.returncode == EXIT_FAILURE, out
    assert out.stderr.startswith("prefork: reload refused: ") and "server.workers" in out.stderr, out.stderr
    assert f"(generation {before} keeps serving)" in out.stderr
    assert generation(srv) == before and roundtrip(srv.port, [b"still"]) == [b"still"]


def test_an_abandoned_reload_exits_1_naming_the_dead_worker(srv: ServerProcess, files: Path):
    before = generation(srv)
    write_config(files, "exit_at_import:app")
    try:
        out = run(reload_cmd(files))
    finally:
        write_config(files, ECHO)
    assert out.returncode == EXIT_FAILURE, out
    assert out.stderr.startswith("prefork: reload abandoned: generation "), out.stderr
    assert "died (exit code 3)" in out.stderr and f"(generation {before} keeps serving)" in out.stderr
    assert srv.status()["master"]["reload"]["outcome"] == "abandoned"
    table = run(prefork_cmd("status", "--pidfile", str(files / "prefork.pid"))).stdout
    assert "): abandoned: generation " in table and f"; generation {before} kept" in table, table
    assert roundtrip(srv.port, [b"still"]) == [b"still"]


def test_a_hup_queued_behind_a_reload_waits_for_the_next_one_and_a_timeout_exits_124(srv: ServerProcess, files: Path):
    """A's reload hangs in the new worker's import; B's HUP comes meanwhile and is queued (coalesced with
    any other); C gives up after its --timeout. Once the import goes on, A gets the generation that
    answered its HUP and B the next one, which read the config after B's HUP."""
    hold, importing = files / "hold", files / "importing"
    hold.touch()
    write_config(files, "slowimport:app")
    first = generation(srv)
    procs = []
    try:
        procs.append(subprocess.Popen(reload_cmd(files), env=test_env(), stdout=subprocess.PIPE, text=True))
        wait_for(importing.exists, timeout=30, what="the new worker importing")
        wait_for(lambda: srv.status()["master"]["reload"]["running"] is not None, what="the reload under way")
        write_config(files, ECHO)  # read only by B's reload
        procs.append(subprocess.Popen(reload_cmd(files), env=test_env(), stdout=subprocess.PIPE, text=True))
        timed_out = run(reload_cmd(files, "--timeout", "0.5"))
        assert timed_out.returncode == EXIT_TIMEOUT, timed_out
        assert "is still reloading after 0.5s" in timed_out.stderr
        hold.unlink()
        outs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        hold.unlink(missing_ok=True)
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs
    served = [int(re.fullmatch(r"prefork: reloaded: generation (\d+) serving, .*\n", out)[1]) for out in outs]
    assert first < served[0] < served[1], outs  # B's is the reload after A's: it read the echo config
    record = srv.status()["master"]["reload"]
    assert record["answered"] == record["requested"] and record["running"] is None
    assert generation(srv) == served[1] and roundtrip(srv.port, [b"echo"]) == [b"echo"]
