"""A real unprivileged account for the tests of server.user, and a Python it can run.

``account()`` is the ``prefork-test`` system account, created when missing (``useradd --system``, no home,
no login shell); creating it is the only thing the tests need root for besides starting the master.

``python_for(account)`` is an interpreter (and PYTHONPATH) whose files the account can read. A worker
imports the app, and whatever the app imports, after it dropped to server.user, so the standard library,
the site-packages and the checkout must all be readable by that user. On a developer machine the Python
may live where nobody else can read (pyenv under ``/root``, mode 0700): then its standard library and
site-packages are linked (hard links, no copy when on the same file system) into a world-readable
temporary directory and the master runs from there. A real installation (a venv under /opt, Debian's
/usr/bin/python3) needs none of this; the README says so.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gevent

from tests.server import APPS, ROOT

ACCOUNT = "prefork-test"
USERADD = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
# Parts of the standard library no worker imports: left out of the linked copy.
STDLIB_UNUSED = ("site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip")


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: frozenset[int]  # what a process of this user running as server.user must have exactly

    def can(self, test_flag: str, path: str | os.PathLike) -> bool:
        """`test -r/-w/-x PATH` as this user (access(2) with its ids, every directory on the way checked)."""
        return subprocess.run(["runuser", "-u", self.name, "--", "test", test_flag, str(path)]).returncode == 0


def account() -> Account:
    """The tests' unprivileged account, created if missing (root only: callers skip otherwise)."""
    try:
        entry = pwd.getpwnam(ACCOUNT)
    except KeyError:
        subprocess.run([*USERADD, ACCOUNT], check=True, capture_output=True)
        entry = pwd.getpwnam(ACCOUNT)
    groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    assert 0 not in groups and entry.pw_uid != 0, f"{ACCOUNT} must not be privileged"
    grp.getgrgid(entry.pw_gid)  # its group exists
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


@dataclass(frozen=True)
class Python:
    executable: str
    pythonpath: str  # for test_env(): PYTHONPATH
    cwd: str  # where to start the master: the workers import the app from there (server.chdir)
    tmp: str | None  # a directory to remove at the end, when one was made
    libdir: str | None = None  # LD_LIBRARY_PATH for the user to start the interpreter itself (libpython)


def python_for(user: Account) -> Python:
    """An interpreter and PYTHONPATH that ``user`` can read (see the module docstring)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    libpython = _libpython()
    site = Path(gevent.__file__).resolve().parent.parent  # the site-packages the server's packages are in
    code = [ROOT, APPS]
    if all(user.can("-r", p / "__init__.py") for p in (ROOT / "prefork", ROOT / "workers")) and all(
        user.can("-r", p)
        for p in (stdlib / "os.py", site / "gevent" / "__init__.py", APPS / "testapps.py", *libpython, sys.executable)
    ):
        return Python(sys.executable, os.pathsep.join(map(str, [*code, site])), str(ROOT), None)
    tmp = Path(tempfile.mkdtemp(prefix="prefork-python-"))
    tmp.chmod(0o755)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (tmp / "bin").mkdir(mode=0o755)
    executable = tmp / "bin" / version
    shutil.copy2(os.path.realpath(sys.executable), executable)  # beside its lib/: it finds its stdlib there
    _link_tree(stdlib, tmp / "lib" / version, ignore=shutil.ignore_patterns(*STDLIB_UNUSED))
    _link_tree(site, tmp / "site-packages")
    for part in ("prefork", "workers"):
        _link_tree(ROOT / part, tmp / "src" / part)
    _link_tree(APPS, tmp / "apps")
    for lib in libpython:  # the binary names it by an absolute RUNPATH: found first on LD_LIBRARY_PATH
        _link_or_copy(str(lib), str(tmp / "lib" / lib.name))
    path = [tmp / "apps", tmp / "src", tmp / "site-packages"]
    return Python(str(executable), os.pathsep.join(map(str, path)), str(tmp / "src"), str(tmp), str(tmp / "lib"))


def _libpython() -> list[Path]:
    """The shared libpython this interpreter loads, if it is not linked in statically (Debian's is)."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return []
    lib = Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("INSTSONAME")
    return [lib] if lib.exists() else []


def _link_tree(src: Path, dst: Path, ignore=None) -> None:
    """Copy a tree as hard links (a copy across file systems), every directory readable by all."""
    shutil.copytree(src, dst, ignore=ignore, copy_function=_link_or_copy, dirs_exist_ok=True)
    for directory, _, _ in os.walk(dst):
        os.chmod(directory, 0o755)
    for parent in dst.parents:
        if parent == Path(tempfile.gettempdir()):
            break
        parent.chmod(0o755)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
