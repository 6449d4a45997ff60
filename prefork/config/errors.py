"""The configuration's error, and the "did you mean" hint its messages give for a mistyped name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(Exception):
    """A bad config: the message is ONE line naming the key (section.key) and the bad value, e.g.
    "server.workers: invalid value 'abc' (expected a positive integer or 'auto')".

    ``key`` is the setting's name when the error is about one known setting (the CLI may map it to a flag).
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        # One line always: the CLI prints it as it is and exits 2.
        super().__init__(" ".join(str(message).splitlines()))
        self.key = key


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` naming the candidate closest to a mistyped ``word``, or nothing."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
