"""A release installs anywhere: `python -m build` makes the sdist and, from it, the wheel; the wheel installed
into a fresh venv (no system site-packages), run from a directory outside the checkout with no PYTHONPATH,
answers `--version`, `check` and serves a line with `run` — no file of the checkout is reachable from it.

The venv gets gevent, PyMySQL and setproctitle the way a user's would: pip resolves them from its configured
index (pip's cache keeps a second run short).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import prefork
from tests.server import ROOT, roundtrip, wait_for


@dataclass
class Release:
    wheel: Path
    sdist: Path
    venv: Path
    home: Path  # outside the checkout: the cwd of every command


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    tmp = tmp_path_factory.mktemp("release")
    assert not tmp.is_relative_to(ROOT)
    dist = tmp / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], cwd=tmp, timeout=180)
    wheel, sdist = next(dist.glob("*.whl")), next(dist.glob("*.tar.gz"))
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp, timeout=180)
    home = tmp / "home"
    home.mkdir()
    yield Release(wheel, sdist, venv, home)


def outside_env() -> dict[str, str]:
    """The environment of a user's shell: nothing pointing into the checkout, no PREFORK_* settings."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME") and "PREFORK" not in k}


def run(argv: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, cwd=cwd, env=outside_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{argv}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def test_the_wheel_holds_the_packages_and_nothing_of_the_checkouts_tooling(release: Release):
    names = zipfile.ZipFile(release.wheel).namelist()
    for needed in (
        "prefork/cli.py",
        "prefork/py.typed",
        "workers/echo.py",
        "workers/schema.py",
        "workers/ingest/write.py",
    ):
        assert needed in names, needed
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"prefork", "workers", f"prefork-{prefork.__version__}.dist-info"}, tops  # no tests/, devtools/
    entry_points = zipfile.ZipFile(release.wheel).read(f"prefork-{prefork.__version__}.dist-info/entry_points.txt")
    assert "prefork = prefork.cli:main" in entry_points.decode()
    sdist = {name.split("/", 1)[1] for name in tarfile.open(release.sdist).getnames() if "/" in name}
    assert {"etc/prefork.service", "etc/prefork.ini", "etc/schema.sql", "LICENSE", "README.md"} <= sdist
    assert not any(name.startswith("tests/") for name in sdist)  # they need the whole checkout


def test_the_installed_code_is_the_wheels_and_nothing_of_the_checkout(release: Release):
    python = str(release.venv / "bin" / "python")
    code = "import json, sys, prefork, workers.echo as e; print(json.dumps([prefork.__file__, e.__file__, sys.path]))"
    prefork_file, echo_file, path = json.loads(run([python, "-c", code], cwd=release.home).stdout)
    site = release.venv / "lib"
    assert Path(prefork_file).is_relative_to(site) and Path(echo_file).is_relative_to(site), (prefork_file, echo_file)
    assert not [entry for entry in path if entry and Path(entry).resolve().is_relative_to(ROOT)], path


def test_version_names_prefork_gevent_pymysql_and_python(release: Release):
    out = run([str(release.venv / "bin" / "prefork"), "--version"], cwd=release.home)
    match = re.fullmatch(r"prefork (\S+) \(gevent (\S+), PyMySQL (\S+), Python (\S+)\)\n", out.stdout)
    assert match and match[1] == prefork.__version__, out.stdout


def test_check_and_run_serve_the_echo_app(release: Release):
    prefork_bin = str(release.venv / "bin" / "prefork")
    run([prefork_bin, "check", "workers.echo:app"], cwd=release.home)
    log = release.home / "run.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [prefork_bin, "run", "workers.echo:app", "--bind", "127.0.0.1:0", "--workers", "1"],
            cwd=release.home,
            env=outside_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "Workers are serving" in log.read_text() or proc.poll() is not None, what="serving")
        assert proc.poll() is None, log.read_text()
        port = int(re.search(r"Listening at: 127\.0\.0\.1:(\d+)", log.read_text())[1])
        assert roundtrip(port, [b"from the wheel"]) == [b"from the wheel"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
