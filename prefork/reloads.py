"""What became of the HUPs: the master's record of its reloads, read by `prefork reload --wait`.

A signal carries no number the CLI could follow, and HUPs coalesce (two sent before the master's loop
runs are one; one sent during a reload is queued and answered by the next). So the master counts the
HUPs it handles (``requested``), each reload attempt answers every HUP counted when it started, and when
the attempt ends the record says which HUPs it answered (``answered``) and how: ``serving`` (the new
generation serves, the old one is stopping), ``refused`` (bad config, the app's probe failed, a listener
or certificate could not be opened: nothing was started) or ``abandoned`` (the new workers failed to
boot). The CLI reads ``requested`` before it signals; its HUP is answered once ``answered`` is above it
(a HUP someone else sent in the meantime started a reload that read the config after that, too).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from prefork.state import iso

SERVING, REFUSED, ABANDONED = "serving", "refused", "abandoned"


@dataclass
class ReloadRecord:
    """The master's reload record, written in master.json under ``reload``."""

    requested: int = 0  # HUPs the master has handled
    answered: int = 0  # HUPs answered by the last finished reload attempt (all those up to this count)
    running: int | None = None  # HUPs the attempt under way answers (None: none under way)
    outcome: str | None = None  # of the last finished attempt: serving, refused or abandoned
    reason: str | None = None  # why it was refused or abandoned
    generation: int | None = None  # serving after the last finished attempt
    finished_at: str | None = None

    def hup(self) -> None:
        """A HUP was handled (a reload starts now, or is queued behind the one under way)."""
        self.requested += 1

    def begin(self) -> None:
        """A reload attempt starts: it reads the config now, so it answers every HUP handled so far."""
        self.running = self.requested

    def finish(self, outcome: str, generation: int, reason: str | None = None) -> None:
        """The attempt under way ended (no-op when none is: a stop abandons nothing the CLI waits for)."""
        if self.running is None:
            return
        self.answered, self.running = self.running, None
        self.outcome, self.reason, self.generation = outcome, reason, generation
        self.finished_at = iso(time.time())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReloadWaitError(Exception):
    """`reload --wait` cannot tell the outcome: the master is gone, or says nothing of its reloads."""


def requested(master: dict[str, Any] | None) -> int:
    """The HUPs a master handled so far, from its master.json (0 before its first write: it handled none)."""
    if master is None:
        return 0
    record = master.get("reload")
    if not isinstance(record, dict):
        raise ReloadWaitError("the master keeps no reload record (a prefork older than this command?)")
    return int(record.get("requested") or 0)


def answer(master: dict[str, Any] | None, before: int) -> dict[str, Any] | None:
    """The record once a reload answered the HUPs after the first ``before`` ones; None until then."""
    record = (master or {}).get("reload")
    if isinstance(record, dict) and (record.get("answered") or 0) > before:
        return record
    return None
