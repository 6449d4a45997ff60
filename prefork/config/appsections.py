"""An application's own settings sections, once the app is imported: its command-line flags resolved,
its values checked against what it declares (``settle()``).

The one-shot commands (``check``, ``initdb``, ``config``) import the app and settle the config in their
own process (``load_settled()``); ``prefork run`` and SIGHUP have the probe (prefork.config.probe) do it,
so that the master never imports the app.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from prefork.config.appload import AppLoadError, import_app
from prefork.config.flags import resolve_flags
from prefork.config.loader import Config
from prefork.config.section import Section, sections_of
from prefork.interface import settings_of


def declared_sections(app: Any) -> tuple[type[Section], ...]:
    """The Section classes an app lists in its ``settings`` attribute (none if it has no such attribute)."""
    try:
        return sections_of(settings_of(app))
    except TypeError as exc:
        raise AppLoadError(f"{type(app).__name__}.settings: {exc}") from None


def settle(cfg: Config, app: Any, tokens: Sequence[str] = ()) -> Config:
    """``cfg`` with the app's flags folded in, its sections validated; ConfigError on the first problem."""
    sections = declared_sections(app)
    if tokens:
        cfg = cfg.with_app_flags(resolve_flags(tokens, sections))
    cfg.check_sections(sections, cfg.server.app)
    return cfg


class SettledApp(NamedTuple):
    """An imported app, the config settled against its sections, and those sections."""

    app: Any
    config: Config
    sections: tuple[type[Section], ...]


def load_settled(cfg: Config, tokens: Sequence[str] = (), app_dir: str | None = None) -> SettledApp:
    """Import the app ``cfg`` names (from ``app_dir``, else server.chdir, else where prefork started) and
    ``settle()`` the config with the app's flags ``tokens``. AppLoadError when the app does not load or
    declares its sections wrongly; ConfigError for a bad value of its sections."""
    app = import_app(cfg.server.app, app_dir or cfg.server.chdir, cfg.server.pythonpath)
    sections = declared_sections(app)
    return SettledApp(app, settle(cfg, app, tokens), sections)
