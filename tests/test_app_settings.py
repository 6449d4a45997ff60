"""An application's own settings section: declared by the app, validated as strictly as [server] and
[pool] from file, environment, -s and the app's flags, checked before anything starts, re-checked on
reload, all without the master ever importing the app (tests/apps/testapps.py: Hooked, [hooked])."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from prefork.config.appsections import settle
from prefork.config.errors import ConfigError
from prefork.config.flags import resolve_flags
from prefork.config.loader import Config, load_config
from prefork.settings import Section, choice, option, positive_int, sections_of
from tests.server import APPS, ServerProcess, cmdline, is_alive, prefork_cmd, roundtrip, test_env, wait_for
from tests.test_cli import one_error_line, run_cli
from tests.test_supervision import metrics_port, scrape

HOOKED = "testapps:hooked"

sys.path.insert(0, str(APPS))
from testapps import HookedSettings  # noqa: E402


class Sample(Section, name="sample"):
    colour: str = option("red", choice("red", "green"), "a colour", flag="--colour")
    size: int = option("3", positive_int, "a size")


def checked(cfg: Config) -> Config:
    cfg.check_sections([Sample], "tests:sample")
    return cfg


# ---- declaring a section ----


def test_a_section_is_a_frozen_typed_dataclass_with_its_keys_in_order():
    values = Sample()
    assert (values.colour, values.size) == ("red", 3)
    with pytest.raises(AttributeError):
        values.size = 4  # type: ignore[misc]
    assert [(s.name, s.default, s.flag) for s in Sample.settings()] == [
        ("sample.colour", "red", "--colour"),
        ("sample.size", "3", None),
    ]
    assert sections_of(Sample) == (Sample,) and sections_of([Sample, HookedSettings]) == (Sample, HookedSettings)
    assert sections_of(None) == ()


def test_bad_declarations_fail_at_import():
    with pytest.raises(ValueError, match="section name"):

        class BadName(Section, name="my_section"):  # an underscore would make PREFORK_MY_SECTION_X ambiguous
            x: int = option("1", positive_int, "x")

    with pytest.raises(TypeError, match="option"):

        class NoOption(Section, name="nooption"):
            x: int = 1

    with pytest.raises(ValueError, match="positive integer"):

        class BadDefault(Section, name="baddefault"):
            x: int = option("0", positive_int, "x")

    with pytest.raises(TypeError, match="Section classes"):
        sections_of([dict])


# ---- values from every source ----


def test_values_from_file_env_and_command_line_in_order(tmp_path):
    path = tmp_path / "p.ini"
    path.write_text("[sample]\ncolour = green\nsize = 5\n")
    cfg = checked(load_config(str(path), env={"PREFORK_SAMPLE_SIZE": "6"}))
    assert cfg.section(Sample) == Sample(colour="green", size=6)
    cfg = checked(load_config(str(path), env={"PREFORK_SAMPLE_SIZE": "6"}, overrides={"sample.size": "7"}))
    assert cfg.section(Sample).size == 7
    assert cfg.sources([Sample])["sample.size"] == "command line"
    assert cfg.sources([Sample])["sample.colour"] == f"file {path}"
    assert cfg.as_dict([Sample])["sample"] == {"colour": "green", "size": 7}


@pytest.mark.parametrize(
    "where, expected",
    [
        ("file", r"p\.ini: sample\.size: invalid value '0' \(expected a positive integer\)"),
        ("env", r"^PREFORK_SAMPLE_SIZE: sample\.size: invalid value '0'"),
        ("cli", r"^sample\.size: invalid value '0'"),
    ],
)
def test_a_bad_value_names_its_source_key_and_value(tmp_path, where, expected):
    path = tmp_path / "p.ini"
    path.write_text("[sample]\nsize = 0\n" if where == "file" else "")
    env = {"PREFORK_SAMPLE_SIZE": "0"} if where == "env" else {}
    overrides = {"sample.size": "0"} if where == "cli" else {}
    cfg = load_config(str(path), env=env, overrides=overrides)  # kept raw until the app's section is known
    with pytest.raises(ConfigError, match=expected) as info:
        checked(cfg)
    assert info.value.key == "sample.size"


def test_a_bad_value_replaced_by_a_later_source_is_still_an_error(tmp_path):
    path = tmp_path / "p.ini"
    path.write_text("[sample]\nsize = many\n")
    with pytest.raises(ConfigError, match="many"):
        checked(load_config(str(path), env={}, overrides={"sample.size": "2"}))


def test_unknown_sections_and_keys(tmp_path):
    path = tmp_path / "p.ini"
    path.write_text("[sampel]\nsize = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[sampel\] \(did you mean 'sample'\?\)"):
        checked(load_config(str(path), env={}))
    path.write_text("[sample]\nsise = 1\n")
    with pytest.raises(ConfigError, match=r"p\.ini: unknown key 'sise' in \[sample\] \(did you mean 'size'\?\)"):
        checked(load_config(str(path), env={}))
    path.write_text("[nothing]\n")  # an empty unknown section is still unknown
    with pytest.raises(ConfigError, match=r"unknown section \[nothing\]"):
        checked(load_config(str(path), env={}))
    with pytest.raises(ConfigError, match=r"unknown setting 'other\.size'"):
        checked(load_config(env={}, overrides={"other.size": "1"}))
    with pytest.raises(ConfigError, match=r"PREFORK_SAMPLE_SISE.*unknown key 'sise' in \[sample\]"):
        checked(load_config(env={"PREFORK_SAMPLE_SISE": "1"}))
    # A variable of a section nobody declares is ignored, like any other PREFORK_* variable.
    assert checked(load_config(env={"PREFORK_OTHER_SIZE": "x", "PREFORK_LISTEN_FDS": "3"})).section(Sample).size == 3


def test_an_app_may_not_declare_a_framework_section():
    class Pool(Section, name="pool"):
        x: int = option("1", positive_int, "x")

    with pytest.raises(ConfigError, match=r"declares the section \[pool\]"):
        load_config(env={}).check_sections([Pool], "tests:pool")


def test_flags_of_the_app():
    assert resolve_flags(["--colour", "green"], [Sample]) == {"sample.colour": "green"}
    assert resolve_flags(["--colour=green"], [Sample]) == {"sample.colour": "green"}
    with pytest.raises(ConfigError, match=r"unrecognized argument '--color' \(the app's flags: --colour\)"):
        resolve_flags(["--color", "green"], [Sample])
    with pytest.raises(ConfigError, match=r"--colour: expected a value"):
        resolve_flags(["--colour"], [Sample])

    class App:
        settings = Sample

    cfg = settle(load_config(env={}), App(), ["--colour", "green"])
    assert cfg.section(Sample).colour == "green" and cfg.overrides == {"sample.colour": "green"}
    assert cfg.reload().section(Sample).colour == "green"  # a flag stays as given across a reload
    with pytest.raises(ConfigError, match=r"sample\.colour: invalid value 'blue'"):
        settle(load_config(env={}), App(), ["--colour", "blue"])


# ---- through the command line: check, initdb, config ----


def test_check_initdb_and_config_see_the_apps_section(tmp_path):
    result = run_cli("check", "-s", f"server.app={HOOKED}", "--greeting", "hi", env={"PREFORK_HOOKED_REPEAT": "2"})
    assert result.returncode == 0, result.stderr
    assert "greeting 'hi' x2" in result.stdout
    assert run_cli("initdb", "-s", f"server.app={HOOKED}", "-s", "hooked.repeat=3").returncode == 0
    result = run_cli("config", "-s", f"server.app={HOOKED}", "--greeting=hey")
    lines = {line.split(" = ")[0]: line for line in result.stdout.splitlines()}
    assert lines["hooked.greeting"].startswith("hooked.greeting = hey") and lines["hooked.greeting"].endswith(
        "# command line"
    )
    assert lines["hooked.repeat"].endswith("# default") and "ingest.table" not in lines


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["-s", "hooked.repeat=0"], {}, "hooked.repeat: invalid value '0' (expected a positive integer)"),
        ([], {"PREFORK_HOOKED_REPEAT": "x"}, "PREFORK_HOOKED_REPEAT: hooked.repeat: invalid value 'x'"),
        (["--greetings", "x"], {}, "unrecognized argument '--greetings' (the app's flags: --greeting)"),
        (["-s", "hooked.colour=x"], {}, "unknown key 'colour' in [hooked]"),
    ],
)
def test_bad_app_settings_are_exit_2_with_one_line(args, env, expected):
    for command in ("check", "initdb", "config"):
        line = one_error_line(run_cli(command, "-s", f"server.app={HOOKED}", *args, env=env))
        assert expected in line, line


def test_an_app_declaring_its_sections_wrongly_is_named_in_one_line():
    """Before: check and initdb died with a traceback (exit 1) on a bad ``settings`` attribute."""
    expected = "BadSettings.settings: settings must be Section classes, not 'not a section'"
    for command in ("check", "initdb"):
        line = one_error_line(run_cli(command, "-s", "server.app=testapps:BadSettings"))
        assert expected in line, line
    result = run_cli("config", "-s", "server.app=testapps:BadSettings")  # no value for it: a warning
    assert result.returncode == 0 and f"the app's own settings are not shown: {expected}" in result.stderr, result
    assert "pool.max_size = 10" in result.stdout
    line = one_error_line(run_cli("config", "-s", "server.app=testapps:BadSettings", "-s", "bad.key=1"))
    assert f"cannot check the app's settings: {expected}" in line, line


def test_an_app_flag_before_app_takes_its_value_and_leaves_app_alone():
    # "--greeting hi" is not prefork's: its value must not be taken for the positional APP.
    result = run_cli("check", "--greeting", "hi", HOOKED, "--dsn", "mysql://root@127.0.0.1:1/test")
    assert result.returncode == 0 and "greeting 'hi'" in result.stdout, result.stderr
    assert "unrecognized argument '--work'" in one_error_line(run_cli("check", HOOKED, "--work", "2"))


def test_a_flag_of_another_app_is_refused():
    line = one_error_line(run_cli("check", "-s", "server.app=workers.echo:app", "--table", "x"))
    assert "unrecognized argument '--table'" in line


# ---- prefork run and reload: checked in a probe, never imported by the master ----


def test_run_refuses_a_bad_app_value_before_binding_anything():
    result = run_cli("run", HOOKED, "--bind", "127.0.0.1:0", "-s", "hooked.repeat=-1")
    assert "hooked.repeat: invalid value '-1'" in one_error_line(result)
    result = run_cli("run", "nosuchmodule:app", "--bind", "127.0.0.1:0", "--greeting", "x")
    assert result.returncode == 3 and "nosuchmodule" in result.stderr, result.stderr


def test_run_and_reload_use_the_apps_section_and_the_master_never_imports_it(tmp_path):
    conf = tmp_path / "prefork.ini"
    conf.write_text("[hooked]\ngreeting = hello\n")
    imports = tmp_path / "imports.log"
    env = {"TESTAPP_IMPORT_LOG": str(imports)}
    args = [HOOKED, "-c", str(conf), "--workers", "1", "--greeting", "hi"]
    with ServerProcess(args, env=env) as srv:
        # The flag beats the file and stays across reloads; the file's repeat is read again on HUP.
        assert roundtrip(srv.port, [b"a"]) == [b"hi a"]
        conf.write_text("[hooked]\ngreeting = hello\nrepeat = 2\n")
        old = srv.worker_pids()
        srv.signal(signal.SIGHUP)
        wait_for(lambda: srv.worker_pids() and not set(srv.worker_pids()) & set(old), what="the new generation")
        assert roundtrip(srv.port, [b"b"]) == [b"hi b hi b"]

        conf.write_text("[hooked]\nrepeat = none\n")  # a bad value: logged, the old config kept
        old = srv.worker_pids()
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "hooked.repeat: invalid value 'none'" in srv.logs(), what="the reload error")
        assert "reload failed, keeping the old config" in srv.logs()
        assert srv.worker_pids() == old and roundtrip(srv.port, [b"c"]) == [b"hi c hi c"]
        master = srv.pid
    importers = {int(pid) for pid in Path(imports).read_text().split()}
    assert importers and master not in importers


def hanging_probe(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """The marker that makes slowimport's import wait (while it exists), the file where each import that
    waits writes its pid, and the environment for the server."""
    marker, started = tmp_path / "hang", tmp_path / "started"
    return marker, started, {"SLOWIMPORT_WHEN": str(marker), "SLOWIMPORT_STARTED": str(started)}


def probe_in_its_import(started: Path, count: int = 1) -> int:
    """Wait until `count` imports are waiting in slowimport; the pid of the last one."""
    pids = wait_for(
        lambda: started.exists() and len(started.read_text().split()) >= count and started.read_text().split(),
        what="the probe to wait in its import",
    )
    return int(pids[count - 1])


def workers_of(srv: ServerProcess, generation: int) -> list[int]:
    """The live workers of one generation, from the master's log (the probe is a child of the master too)."""
    booted = re.findall(rf"Booting worker (\d+) \(generation {generation}\)", srv.logs())
    return [int(pid) for pid in booted if is_alive(int(pid))]


def descriptors(pid: int) -> dict[int, str]:
    """A process's open descriptors and what each points to."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            found[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return found


def test_a_stop_during_a_hanging_reload_probe_is_not_held_up(tmp_path):
    """SIGHUP starts the probe, whose import hangs; SIGTERM then stops the master at once (the probe is
    killed), instead of after the probe's deadline (server.timeout, 60 s here)."""
    marker, started, env = hanging_probe(tmp_path)
    env["SLOWIMPORT_SECONDS"] = "120"
    with ServerProcess(["slowimport:app", "-s", "slow.word=y", "--workers", "1", "--timeout", "60"], env=env) as srv:
        marker.touch()
        srv.signal(signal.SIGHUP)
        probe = probe_in_its_import(started)
        srv.signal(signal.SIGTERM)
        assert srv.wait(timeout=20) == 0, srv.logs()
        assert "reload abandoned: stopped while importing slowimport:app" in srv.logs(), srv.logs()
        wait_for(lambda: not is_alive(probe), what="the probe to be gone")


def test_a_start_whose_probe_hangs_is_exit_3_after_the_timeout(tmp_path):
    marker = tmp_path / "hang"
    marker.touch()
    env = {"SLOWIMPORT_WHEN": str(marker), "SLOWIMPORT_SECONDS": "120"}
    result = run_cli("run", "slowimport:app", "-s", "slow.word=y", "--timeout", "1", "--bind", "127.0.0.1:0", env=env)
    assert result.returncode == 3, result.stderr
    assert "took longer than 1s" in result.stderr


def test_the_master_supervises_while_a_reload_probe_runs(tmp_path):
    """Before: the master waited in the reload's probe. A worker killed meanwhile stayed dead and /metrics
    did not answer until the import was over (a 12 s import: a one-worker service down 11.7 s). Now a
    worker killed while the probe waits in its import is replaced while it still waits, /metrics answers,
    a second HUP is queued and applied after the first reload."""
    marker, started, env = hanging_probe(tmp_path)
    args = [
        "slowimport:app",
        "-s",
        "slow.word=y",
        "--workers",
        "2",
        "--timeout",
        "120",
        "--metrics-bind",
        "127.0.0.1:0",
    ]
    with ServerProcess(args, env=env) as srv:
        metrics = metrics_port(srv)
        marker.touch()
        srv.signal(signal.SIGHUP)
        probe = probe_in_its_import(started)
        old = workers_of(srv, 1)
        victim = old[0]
        os.kill(victim, signal.SIGKILL)
        (new,) = wait_for(
            lambda: len(set(workers_of(srv, 1)) - {victim}) == 2 and set(workers_of(srv, 1)) - set(old),
            what="the killed worker's replacement",
        )
        wait_for(lambda: cmdline(new).startswith("prefork: worker"), what="the new worker to have set itself up")
        assert is_alive(probe), "the probe must still be in its import"
        (report_pipe,) = [target for fd, target in descriptors(probe).items() if fd > 2]
        assert report_pipe not in descriptors(new).values()  # forked during the probe: not holding its pipe
        assert scrape(metrics)[0].endswith("200 OK") and is_alive(probe)

        srv.signal(signal.SIGHUP)  # during the probe: queued, applied once this reload is over
        wait_for(lambda: "reloading again after it" in srv.logs(), what="the second HUP to be queued")
        assert is_alive(probe) and "Reloaded" not in srv.logs()
        marker.unlink()  # the probe's import ends
        wait_for(lambda: "Reloaded: generation 2" in srv.logs(), what="the first reload")
        wait_for(lambda: "Reloaded: generation 3" in srv.logs(), what="the queued reload")
        assert roundtrip(srv.port, [b"a"]) == [b"a"]
        assert "reload failed" not in srv.logs(), srv.logs()


def test_a_reload_probe_past_the_timeout_is_killed_and_the_reload_refused(tmp_path):
    marker, started, env = hanging_probe(tmp_path)
    env["SLOWIMPORT_SECONDS"] = "120"
    with ServerProcess(["slowimport:app", "-s", "slow.word=y", "--workers", "1", "--timeout", "2"], env=env) as srv:
        (worker,) = workers_of(srv, 1)
        marker.touch()
        srv.signal(signal.SIGHUP)
        probe = probe_in_its_import(started)
        wait_for(lambda: "reload failed" in srv.logs(), what="the reload to be refused")
        wait_for(lambda: not is_alive(probe), what="the probe to be killed")
        failed = [line for line in srv.logs().splitlines() if "reload failed" in line]
        assert len(failed) == 1 and "slowimport:app to check its settings took longer than 2s" in failed[0], failed
        assert workers_of(srv, 1) == [worker] and roundtrip(srv.port, [b"a"]) == [b"a"]


def test_a_probe_dies_with_its_master_and_holds_neither_its_pidfile_nor_its_metrics_port(tmp_path):
    """The master is SIGKILLed while a reload's probe waits in the app's import. Before: the probe kept
    the pidfile's lock and the metrics port (restarts all exited 2 naming the dead master) and the
    listeners. Now it dies with the master, and a new master with the same pidfile and metrics port
    starts at once."""
    marker, started, env = hanging_probe(tmp_path)
    env["SLOWIMPORT_SECONDS"] = "120"
    pidfile = tmp_path / "prefork.pid"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        metrics = f"127.0.0.1:{sock.getsockname()[1]}"
    args = [
        "slowimport:app",
        "-s",
        "slow.word=y",
        "--workers",
        "1",
        "--pidfile",
        str(pidfile),
        "--metrics-bind",
        metrics,
    ]
    with ServerProcess(args, env=env) as srv:
        marker.touch()
        srv.signal(signal.SIGHUP)
        probe = probe_in_its_import(started)
        os.kill(srv.pid, signal.SIGKILL)
        wait_for(lambda: not is_alive(probe), what="the probe to die with its master")
        marker.unlink()
        with ServerProcess(args, env=env) as again:  # starts (and serves) or fails the test
            assert again.proc.poll() is None
            assert scrape(metrics_port(again))[0].endswith("200 OK")


def test_ctrl_c_during_the_start_probe_is_one_line_and_leaves_no_probe(tmp_path):
    marker, started, env = hanging_probe(tmp_path)
    marker.touch()
    env.update({"SLOWIMPORT_SECONDS": "120", "TESTAPP_IMPORT_LOG": str(tmp_path / "log")})
    proc = subprocess.Popen(
        prefork_cmd("run", "slowimport:app", "-s", "slow.word=y", "--bind", "127.0.0.1:0"),
        env=test_env(env),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        probe_in_its_import(started)
        proc.send_signal(signal.SIGINT)  # to the command alone, as a terminal's Ctrl-C reaches it first
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 130 and err.strip() == "prefork: interrupted", err
        leftovers = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert not leftovers, leftovers  # the probe was killed with it
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
