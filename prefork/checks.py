"""`prefork check` and `prefork initdb`: what an operator runs before starting the server.

Both load the configured app (validating the config first) and run its hook, if it has one:
``check(worker)`` and ``initdb(worker)`` (see ``prefork.app``). The framework itself knows no app: the
ingest app's hooks connect and look for (or create) its table; an app without hooks, such as the echo
app, opens no database connection.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from prefork.config import Config

EXIT_OK = 0
EXIT_FAILED = 2


def _fail(message: str) -> int:
    print(f"prefork: check failed: {message}", file=sys.stderr)
    return EXIT_FAILED


def _load(cfg: Config) -> Any:
    from prefork.app import load_app

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return load_app(cfg.server.app)


def _run_hook(cfg: Config, name: str) -> tuple[int, str | None]:
    """Load the app and run its hook ``name``: (exit code, what the hook said; None if it has none)."""
    from prefork.app import AppLoadError, WorkerInfo

    try:
        app = _load(cfg)
    except AppLoadError as exc:
        return _fail(str(exc)), None
    hook = getattr(app, name, None)
    if hook is None:
        return EXIT_OK, None
    try:
        said = hook(WorkerInfo(pid=os.getpid(), generation=0, config=cfg))
    except Exception as exc:
        return _fail(f"{cfg.server.app}: {exc}"), None
    return EXIT_OK, str(said or f"its {name} passed")


def check(cfg: Config) -> int:
    """Validate the config (already done by loading it), import the app, run its ``check`` hook."""
    code, said = _run_hook(cfg, "check")
    if code == EXIT_OK:
        print(f"prefork: config ok, app {cfg.server.app} imports" + (f"; {said}" if said else " (no check hook)"))
    return code


def initdb(cfg: Config) -> int:
    """Import the app and run its ``initdb`` hook (the ingest app creates its tables)."""
    code, said = _run_hook(cfg, "initdb")
    if code == EXIT_OK:
        print(f"prefork: {said}" if said else f"prefork: app {cfg.server.app} has nothing to create (no initdb hook)")
    return code
