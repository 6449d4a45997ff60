"""`prefork check` and `prefork initdb`: what an operator runs before starting the server.

Both load the configured app (validating the config first) and run its hook, if it has one:
``check(worker)`` and ``initdb(worker)`` (see ``prefork.app``). The framework itself knows no app: the
ingest app's hooks connect and look for (or create) its table; an app without hooks, such as the echo
app, opens no database connection.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from prefork.config import Config

EXIT_OK = 0
EXIT_FAILED = 2


def _fail(message: str) -> int:
    print(f"prefork: check failed: {message}", file=sys.stderr)
    return EXIT_FAILED


def load(cfg: Config) -> Any:
    """Import the configured app here, from where a worker would (server.chdir, server.pythonpath)."""
    from prefork.app import AppLoadError, enter_app_dir, load_app, start_directory

    app_dir = cfg.server.chdir or start_directory()
    try:
        enter_app_dir(app_dir, cfg.server.pythonpath)
    except OSError as exc:
        raise AppLoadError(f"server.chdir: cannot enter {app_dir}: {exc.strerror or exc}") from None
    try:
        return load_app(cfg.server.app)
    except SystemExit as exc:
        raise AppLoadError(f"{cfg.server.app} exited: {exc.code}") from None


def _run_hook(cfg: Config, name: str, tokens: Sequence[str]) -> tuple[int, str | None]:
    """Load the app, check its settings and run its hook ``name``: (exit code, what the hook said; None
    if it has none). A bad value of the app's settings is a ConfigError (exit 2, printed by the CLI)."""
    from prefork.app import AppLoadError, WorkerInfo
    from prefork.appconfig import settle

    try:
        app = load(cfg)
    except AppLoadError as exc:
        return _fail(str(exc)), None
    cfg = settle(cfg, app, tokens)
    if name == "check" and cfg.server.line_ids:
        from prefork.protocol.lines import accepts_line_ids, line_ids_refused

        if not accepts_line_ids(app):
            return _fail(line_ids_refused(cfg.server.app)), None  # its workers would not boot
    hook = getattr(app, name, None)
    if hook is None:
        return EXIT_OK, None
    try:
        said = hook(WorkerInfo(pid=os.getpid(), generation=0, config=cfg))
    except Exception as exc:
        return _fail(f"{cfg.server.app}: {exc}"), None
    return EXIT_OK, str(said or f"its {name} passed")


def check(cfg: Config, tokens: Sequence[str] = ()) -> int:
    """Validate the config, import the app, check its settings (``tokens``: its flags), run its ``check``."""
    code, said = _run_hook(cfg, "check", tokens)
    if code == EXIT_OK:
        print(f"prefork: config ok, app {cfg.server.app} imports" + (f"; {said}" if said else " (no check hook)"))
    return code


def initdb(cfg: Config, tokens: Sequence[str] = ()) -> int:
    """Import the app, check its settings and run its ``initdb`` hook (ingest creates its tables)."""
    code, said = _run_hook(cfg, "initdb", tokens)
    if code == EXIT_OK:
        print(f"prefork: {said}" if said else f"prefork: app {cfg.server.app} has nothing to create (no initdb hook)")
    return code
