"""Loading the application that ``server.app`` names, from where a worker imports it: the one place that
does it (workers, the probe, ``prefork check``/``initdb``/``config``) and words its errors.

The master never imports the application: each worker imports it after the fork, so a SIGHUP's new
generation runs new code.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from typing import Any

from prefork.interface import is_app


class AppLoadError(Exception):
    """The application cannot be used: it does not import, has no usable ``handle`` or declares its
    settings sections wrongly. The message is one line."""


def import_app(spec: str, app_dir: str | None = None, pythonpath: Iterable[str] = ()) -> Any:
    """The application ``spec`` (``module:attribute``, instantiated if it is a class), imported as a worker
    does: from ``app_dir`` (server.chdir; None: where prefork started) with ``pythonpath``
    (server.pythonpath) first on sys.path. AppLoadError when the directory cannot be entered, the module
    does not import, the attribute is missing or has no ``handle``, or the app calls ``sys.exit()``."""
    app_dir = app_dir or start_directory()
    try:
        _enter_app_dir(app_dir, pythonpath)
    except OSError as exc:
        raise AppLoadError(f"server.chdir: cannot enter {app_dir}: {exc.strerror or exc}") from None
    try:
        return _load_app(spec)
    except SystemExit as exc:  # sys.exit("message") in the app's import: say what it said
        raise AppLoadError(f"{spec} exited: {exc.code}") from None


def _load_app(spec: str) -> Any:
    """Import ``module:attribute`` and return the application object (instantiated if it is a class)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AppLoadError(f"cannot import {module_name!r} (server.app={spec}): {exc!r}") from exc
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise AppLoadError(f"module {module_name!r} has no attribute {attr!r} (server.app={spec})") from None
    if isinstance(app, type):
        app = app()
    if not is_app(app):
        raise AppLoadError(f"{spec} has no handle(line, client) method")
    return app


def start_directory() -> str:
    """Where prefork was started: $PWD when it names the current directory (it keeps a symlink such as
    /srv/current, which a deploy may later point at a new release), else the resolved cwd."""
    cwd = os.getcwd()
    pwd = os.environ.get("PWD", "")
    try:
        if os.path.isabs(pwd) and os.path.samefile(pwd, cwd):
            return pwd
    except OSError:
        pass
    return cwd


def _enter_app_dir(app_dir: str, pythonpath: Iterable[str]) -> None:
    """Enter ``app_dir`` and put ``pythonpath``, then ``app_dir``, first on sys.path; OSError if it cannot enter."""
    os.chdir(app_dir)
    for path in reversed([*pythonpath, app_dir]):
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
