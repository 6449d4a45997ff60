"""An application's own settings sections, once the app is imported: its command-line flags resolved,
its values checked against what it declares (``settle()``).

The one-shot commands (``check``, ``initdb``, ``config``) import the app in their own process and call
``settle()``; ``prefork run`` and SIGHUP have the probe (prefork.config.probe) call it, so that the master
never imports the app.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefork.config.appload import AppLoadError
from prefork.config.flags import resolve_flags
from prefork.config.loader import Config
from prefork.config.section import Section, sections_of


def declared_sections(app: Any) -> tuple[type[Section], ...]:
    """The Section classes an app lists in its ``settings`` attribute (none if it has no such attribute)."""
    try:
        return sections_of(getattr(app, "settings", None))
    except TypeError as exc:
        raise AppLoadError(f"{type(app).__name__}.settings: {exc}") from None


def settle(cfg: Config, app: Any, tokens: Sequence[str] = ()) -> Config:
    """``cfg`` with the app's flags folded in, its sections validated; ConfigError on the first problem."""
    sections = declared_sections(app)
    if tokens:
        cfg = cfg.with_app_flags(resolve_flags(tokens, sections))
    cfg.check_sections(sections, cfg.server.app)
    return cfg
