"""`prefork check` and `prefork initdb`: what an operator runs before starting the server.

Both load the configured app (validating the config first) and run its hook, if it has one:
``check(worker)`` and ``initdb(worker)`` (see ``prefork.interface``). The framework itself knows no app: the
ingest app's hooks connect and look for (or create) its table; an app without hooks, such as the echo
app, opens no database connection.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from prefork.config.loader import Config
from prefork.exits import EXIT_OK, EXIT_USAGE
from prefork.interface import Hook, WorkerInfo, accepts_line_ids, hook_of, line_ids_refused


def _fail(message: str) -> int:
    print(f"prefork: check failed: {message}", file=sys.stderr)
    return EXIT_USAGE


def _run_hook(cfg: Config, name: Hook, tokens: Sequence[str]) -> tuple[int, str | None]:
    """Load the app, check its settings and run its hook ``name``: (exit code, what the hook said; None
    if it has none). A bad value of the app's settings is a ConfigError (exit 2, printed by the CLI)."""
    from prefork.config.appload import AppLoadError
    from prefork.config.appsections import load_settled

    try:
        app, cfg, _ = load_settled(cfg, tokens)
    except AppLoadError as exc:  # it does not import, or declares its sections wrongly
        return _fail(str(exc)), None
    if name == "check" and cfg.server.line_ids:
        if not accepts_line_ids(app):
            return _fail(line_ids_refused(cfg.server.app)), None  # its workers would not boot
    hook = hook_of(app, name)
    if hook is None:
        return EXIT_OK, None
    try:
        said = hook(WorkerInfo(pid=os.getpid(), generation=0, config=cfg))
    except Exception as exc:
        return _fail(f"{cfg.server.app}: {exc}"), None
    return EXIT_OK, str(said or f"its {name} passed")


def check_tls(cfg: Config) -> int:
    """Check the certificate files of each TLS listener (prefork.tls) and print when each one expires, with a
    warning for one expiring within EXPIRY_WARNING_DAYS; exit 2 for an unreadable, mismatched or expired one."""
    from prefork.config.errors import ConfigError
    from prefork.tls import EXPIRY_WARNING_DAYS, check_config

    try:
        found = check_config(cfg)
    except ConfigError as exc:
        return _fail(str(exc))
    for address, info in found:
        days = info.days_left()
        print(f"prefork: TLS on {address}: {info.path} ({info.subject}) expires {info.expires()}, in {days:.0f} days")
        if days < EXPIRY_WARNING_DAYS:
            print(
                f"prefork: warning: the TLS certificate of {address} expires within {EXPIRY_WARNING_DAYS} days",
                file=sys.stderr,
            )
    return EXIT_OK


def check(cfg: Config, tokens: Sequence[str] = ()) -> int:
    """Validate the config and the TLS listeners' files, import the app, check its settings (``tokens``: its
    flags), run its ``check``."""
    code = check_tls(cfg)
    if code != EXIT_OK:
        return code
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
