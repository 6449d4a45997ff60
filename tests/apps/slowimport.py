"""A test app whose import takes $SLOWIMPORT_SECONDS while the file $SLOWIMPORT_WHEN exists: the app
probe of a reload (or of a start) hanging in an import. With $SLOWIMPORT_STARTED, the importer appends its
pid to that file as the slow part begins, so that a test knows the probe is in its import."""

from __future__ import annotations

import os
import time

from prefork.settings import Section, option, string

if os.path.exists(os.environ.get("SLOWIMPORT_WHEN", "/nonexistent")):
    if os.environ.get("SLOWIMPORT_STARTED"):
        with open(os.environ["SLOWIMPORT_STARTED"], "a") as started:
            started.write(f"{os.getpid()}\n")
    time.sleep(float(os.environ.get("SLOWIMPORT_SECONDS", "60")))


class SlowSettings(Section, name="slow"):
    word: str = option("x", string, "a word")


class Slow:
    settings = SlowSettings

    def handle(self, line: str, client) -> str:
        return line


app = Slow()
