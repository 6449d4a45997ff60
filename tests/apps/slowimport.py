"""A test app whose import waits while the file $SLOWIMPORT_WHEN exists, up to $SLOWIMPORT_SECONDS: the
app probe of a reload (or of a start) hanging in an import, until the test removes the file. When it
starts waiting it appends its pid to $SLOWIMPORT_STARTED (if set): the test knows the probe is in its
import, and which process it is."""

from __future__ import annotations

import os
import time

from prefork.settings import Section, option, string

_WHEN = os.environ.get("SLOWIMPORT_WHEN", "/nonexistent")
if os.path.exists(_WHEN):
    if os.environ.get("SLOWIMPORT_STARTED"):
        with open(os.environ["SLOWIMPORT_STARTED"], "a") as started:
            started.write(f"{os.getpid()}\n")
    _deadline = time.monotonic() + float(os.environ.get("SLOWIMPORT_SECONDS", "60"))
    while os.path.exists(_WHEN) and time.monotonic() < _deadline:
        time.sleep(0.05)


class SlowSettings(Section, name="slow"):
    word: str = option("x", string, "a word")


class Slow:
    settings = SlowSettings

    def handle(self, line: str, client) -> str:
        return line


app = Slow()
