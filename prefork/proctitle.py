"""Process titles (``prefork: master [NAME]``, ``prefork: worker [NAME] gen G``), as ps and top show them."""

from __future__ import annotations


def set_title(title: str) -> None:
    """Set this process's title; without the setproctitle package (a runtime dependency), do nothing."""
    try:
        from setproctitle import setproctitle
    except ImportError:  # pragma: no cover - a runtime dependency
        return
    setproctitle(title)
