"""etc/prefork.service: an unprivileged, sandboxed service. What can be checked without systemd as PID 1:
the unit's options, that its commands are valid prefork commands, `systemd-analyze verify` when the tool
is installed, that README explains every option, and the unit's command run as systemd would run it (as
an unprivileged user with no capabilities, umask 0077, its runtime directory, a notify socket)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefork.cli import build_parser
from prefork.config.loader import load_config
from tests.server import ROOT, ServerProcess, prefork_cmd, roundtrip, test_env, wait_for
from tests.test_supervision import FakeSystemd
from tests.unprivileged import Account, Python, account, python_for

UNIT = ROOT / "etc" / "prefork.service"
SOCKET_UNIT = ROOT / "etc" / "prefork.socket"  # socket activation (tests/test_socket_activation.py)
CONFIG = "/etc/prefork/prefork.ini"  # where the unit reads its config

# The sandbox a network daemon that talks to a database gets (issue 16): each must be in the unit as is.
SANDBOX = {
    "DynamicUser": "yes",
    "RuntimeDirectory": "prefork",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
}


def options(section: str = "Service", unit: Path = UNIT) -> list[tuple[str, str]]:
    """The unit's `Key=value` lines of one section, in order (a key may repeat, as systemd allows)."""
    found, current = [], None
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif line and not line.startswith(("#", ";")) and current == section:
            key, _, value = line.partition("=")
            found.append((key.strip(), value.strip()))
    return found


def test_the_unit_runs_nothing_as_root_and_sandboxes_the_service():
    service = options()
    values = dict(service)
    for key, value in SANDBOX.items():
        assert values.get(key) == value, f"{key}={values.get(key)!r}, expected {value!r}"
    assert "User" not in values and "Group" not in values  # DynamicUser= makes one up: never root
    assert "AmbientCapabilities" not in values  # a port below 1024 is the operator's choice (README)
    filters = [value for key, value in service if key == "SystemCallFilter"]
    assert filters[0] == "@system-service" and all(f.startswith("~") for f in filters[1:]), filters
    for kept in ("Type=notify", "RestartPreventExitStatus=2 3", "KillMode=mixed"):
        assert tuple(kept.split("=", 1)) in service, kept


def test_the_units_commands_are_valid_prefork_commands():
    values = dict(options())
    argv = shlex.split(values["ExecStart"])
    assert argv[0].endswith("/bin/prefork"), argv
    args = build_parser().parse_args(argv[1:])  # SystemExit (exit 2) on an unknown flag
    assert args.command == "run" and args.config == CONFIG, args
    assert not vars(args).get("flag:server.daemon")  # Type=notify: the master stays in the foreground
    reload = shlex.split(values["ExecReload"].replace("$MAINPID", "4242"))
    assert reload[0] == argv[0], reload  # the same installation's command
    args = build_parser().parse_args(reload[1:])
    assert args.command == "reload" and args.wait and args.pid == 4242, args  # the outcome, not only a HUP


def test_the_readme_says_why_each_option_is_there():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### The systemd unit", 1)[1].split("\n## ", 1)[0]
    for key, _ in options():
        assert f"`{key}=" in section, f"README's systemd unit section does not explain {key}="
    for key in ("AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"):
        assert key in section and key in UNIT.read_text(), key  # documented for ports below 1024


def test_the_socket_unit_passes_the_default_listener_to_the_service():
    """etc/prefork.socket: served with the default config (its address is server.bind's default), named
    as systemd allows (no ":"), started with the service's name and enabled by sockets.target."""
    socket_ = dict(options("Socket", SOCKET_UNIT))
    assert socket_["Service"] == UNIT.name and socket_["ListenStream"] == "127.0.0.1:32777", socket_
    assert socket_["FileDescriptorName"] and ":" not in socket_["FileDescriptorName"], socket_
    assert dict(options("Install", SOCKET_UNIT)) == {"WantedBy": "sockets.target"}
    assert [str(a) for a in load_config(env={}).server.bind] == [socket_["ListenStream"]]


def test_systemd_analyze_verifies_the_units(tmp_path):
    """`systemd-analyze verify` needs the command to exist: the unit's path is that of this checkout's.
    (`make test` installs Debian's systemd package when the command is missing: it does not make systemd
    PID 1, and a missing command fails here, naming the package.)"""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed: apt-get install systemd", pytrace=False)
    prefork = Path(sys.executable).with_name("prefork")
    assert prefork.exists(), prefork
    unit = tmp_path / "prefork.service"
    unit.write_text(UNIT.read_text().replace("/opt/prefork/.venv/bin/prefork", str(prefork)))
    (tmp_path / SOCKET_UNIT.name).write_text(SOCKET_UNIT.read_text())
    verify = ["systemd-analyze", "verify", str(unit), str(tmp_path / SOCKET_UNIT.name)]
    out = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


# -- the unit's command, run as systemd would run it ----------------------------------------------------


@pytest.fixture(scope="module")
def user() -> Account:
    if os.geteuid() != 0:
        pytest.skip("only root can start a process as another user")
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv is not installed: apt-get install util-linux", pytrace=False)
    return account()


@pytest.fixture(scope="module")
def python(user: Account) -> Iterator[Python]:
    found = python_for(user)
    yield found
    if found.tmp:
        shutil.rmtree(found.tmp, ignore_errors=True)


@pytest.fixture
def shared() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="prefork-unit-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_the_unit_would(user: Account, python: Python, directory: Path) -> str:
    """A script starting `python` as systemd starts the unit's command: as the unprivileged user (with
    only its own groups), without capabilities, with no_new_privs, under UMask=0077."""
    script = directory / "python-as-the-unit"
    setpriv = f"setpriv --reuid={user.uid} --regid={user.gid} --init-groups --no-new-privs"
    setpriv += " --inh-caps=-all --bounding-set=-all"
    script.write_text(f'#!/bin/sh\numask 0077\nexec {setpriv} -- {python.executable} "$@"\n')
    script.chmod(0o755)
    return str(script)


def test_the_units_command_runs_unprivileged_as_systemd_runs_it(user: Account, python: Python, shared: Path):
    """Before this unit nothing of prefork ran without root here: a master with no privileges at all,
    its pidfile and state in $RUNTIME_DIRECTORY, telling systemd READY/RELOADING/STOPPING."""
    runtime = shared / "run-prefork"  # RuntimeDirectory=prefork: made by systemd, owned by the service's user
    runtime.mkdir(mode=0o755)
    os.chown(runtime, user.uid, user.gid)
    config = shared / "prefork.ini"  # as the unit's comment says: readable by all, pidfile in /run/prefork
    config.write_text(f"[server]\napp = workers.echo:app\nworkers = 2\npidfile = {runtime}/prefork.pid\n")
    config.chmod(0o644)
    argv = shlex.split(dict(options())["ExecStart"])[1:]
    assert argv[0] == "run"
    args = [str(config) if arg == CONFIG else arg for arg in argv[1:]]
    systemd = FakeSystemd(shared / "notify")
    (shared / "notify").chmod(0o777)  # systemd's notify socket accepts anyone's datagrams
    env = {"PYTHONPATH": python.pythonpath, "RUNTIME_DIRECTORY": str(runtime), "NOTIFY_SOCKET": str(shared / "notify")}
    if python.libdir:
        env["LD_LIBRARY_PATH"] = python.libdir
    srv = ServerProcess(args, env=env, cwd=python.cwd, python=as_the_unit_would(user, python, shared))
    try:
        srv.start()
        wait_for(lambda: "READY" in systemd.keys(), what="READY=1")
        status = Path(f"/proc/{srv.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{user.uid}\s+{user.uid}\s+{user.uid}\s+{user.uid}$", status, re.M), status
        assert re.search(r"^CapEff:\s+0+$", status, re.M) and re.search(r"^NoNewPrivs:\s+1$", status, re.M)
        pidfile = runtime / "prefork.pid"
        assert int(pidfile.read_text()) == srv.pid
        assert pidfile.stat().st_uid == user.uid and pidfile.stat().st_mode & 0o077 == 0  # UMask=0077
        assert (runtime / f"prefork-{srv.pid}" / "master.json").exists()  # state in $RUNTIME_DIRECTORY
        out = subprocess.run(
            prefork_cmd("status", "--json", "--pidfile", str(pidfile)),
            env=test_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0 and len(json.loads(out.stdout)["workers"]) == 2, out.stderr
        assert roundtrip(srv.port, [b"a"]) == [b"a"]
        # ExecReload=, as the service's user: it returns once the new generation serves.
        reload = shlex.split(dict(options())["ExecReload"].replace("$MAINPID", str(srv.pid)))[1:]
        script = as_the_unit_would(user, python, shared)
        out = subprocess.run(
            [script, "-m", "prefork.cli", *reload], env=env, cwd=python.cwd, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and "generation 2 serving" in out.stdout, (out.stdout, out.stderr)
        wait_for(lambda: systemd.keys().count("READY") == 2, timeout=30, what="READY=1 after the reload")
        srv.signal(signal.SIGTERM)  # KillSignal=
        assert srv.wait(30) == 0, srv.logs()
        assert [k for k in systemd.keys() if k != "WATCHDOG"] == ["READY", "RELOADING", "READY", "STOPPING"]
        assert not pidfile.exists()
    finally:
        srv.stop()
        systemd.close()
