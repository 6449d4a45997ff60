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
from prefork.config.errors import ConfigError
from prefork.config.loader import Config
from prefork.config.section import Section, sections_of


def declared_sections(app: Any) -> tuple[type[Section], ...]:
    """The Section classes an app lists in its ``settings`` attribute (none if it has no such attribute)."""
    try:
        return sections_of(getattr(app, "settings", None))
    except TypeError as exc:
        raise AppLoadError(f"{type(app).__name__}.settings: {exc}") from None


def resolve_flags(tokens: Sequence[str], sections: Sequence[type[Section]]) -> dict[str, str]:
    """``--flag VALUE`` / ``--flag=VALUE`` tokens the framework's parser left over, as ``section.key``
    overrides of the app's sections; ConfigError for a token that is none of their flags."""
    flags = {s.flag: s.name for kind in sections for s in kind.settings() if s.flag}
    result: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        flag, eq, value = tokens[i].partition("=")
        if flag not in flags:
            offered = f" (the app's flags: {', '.join(sorted(flags))})" if flags else ""
            raise ConfigError(f"unrecognized argument {tokens[i]!r}{offered}")
        if not eq:
            if i + 1 >= len(tokens):
                raise ConfigError(f"{flag}: expected a value ({flags[flag]})", flags[flag])
            i += 1
            value = tokens[i]
        result[flags[flag]] = value
        i += 1
    return result


def settle(cfg: Config, app: Any, tokens: Sequence[str] = ()) -> Config:
    """``cfg`` with the app's flags folded in, its sections validated; ConfigError on the first problem."""
    sections = declared_sections(app)
    if tokens:
        cfg = cfg.with_app_flags(resolve_flags(tokens, sections))
    cfg.check_sections(sections, cfg.server.app)
    return cfg
