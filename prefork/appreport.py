"""The app's part of a worker's heartbeat state (``prefork.state``): its ``stats()`` and why it is not ready.

Both hooks are the app's code, called by the worker's heartbeat every second: whatever they do, the
heartbeat goes out (a missed one would get the worker killed as hung). How ``prefork status``, /metrics and
/readyz use what they report is theirs to decide (``prefork.status``, ``prefork.metrics``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from prefork.interface import readiness_of, stats_of

MAX_APP_STATS_BYTES = 64 << 10  # of an app's stats() as JSON, well within what the master reads of a state
MAX_NOT_READY = 300  # characters of the app's reason for not being ready: /readyz answers it on one line

# The worker's logger: this is the worker's report, and its log lines keep the name they always had.
log = logging.getLogger("prefork.worker")


class AppReport:
    """What one worker reports of its app; says once when the app's stats cannot be reported."""

    def __init__(self) -> None:
        self._bad_stats_logged = False

    def stats(self, app: Any) -> Any:
        """The app's stats() as JSON-ready data, or None when it has none or they cannot be reported.

        Whatever the shape, the heartbeat goes out: stats that strict JSON cannot hold, or that are too
        large for the master to read, are left out and said so once."""
        stats = stats_of(app)
        if stats is None:
            return None
        try:
            value = stats()
            size = len(json.dumps(value, separators=(",", ":"), allow_nan=False))
        except Exception as exc:  # the app's own bug, or data JSON cannot hold
            self._bad_stats(f"{type(exc).__name__}: {exc}")
            return None
        if size > MAX_APP_STATS_BYTES:
            self._bad_stats(f"{size} bytes of JSON, more than {MAX_APP_STATS_BYTES}")
            return None
        return value

    def not_ready(self, app: Any, ready: bool) -> str | None:
        """Why the app says it cannot serve now (its optional ``readiness()``), or None: the master's
        /readyz answers 503 with it. Not asked before the worker is ``ready``. A hook that raises counts as
        not ready, saying so."""
        readiness = readiness_of(app)
        if readiness is None or not ready:
            return None
        try:
            reason = readiness()
        except Exception as exc:  # the app's own bug: not ready, and the heartbeat still goes out
            reason = f"the app's readiness() failed: {type(exc).__name__}: {exc}"
        return " ".join(str(reason).split())[:MAX_NOT_READY] if reason else None

    def _bad_stats(self, why: str) -> None:
        if not self._bad_stats_logged:
            log.warning("the app's stats() cannot be reported (%s); reporting without them", why)
            self._bad_stats_logged = True
