"""A test app whose rows carry its version: the ingest app, each payload stored as ``VERSION LINE``.

tests/test_upgrade.py copies this file into a directory of its own and rewrites VERSION there (or makes
the module unimportable) between two upgrades: a new master imports it afresh. While the file
$VERSIONED_HOLD exists, an import waits."""

from __future__ import annotations

import os
import time

from prefork.interface import Peer
from workers.ingest.batch import Share
from workers.ingest.flow import IngestApp

VERSION = "v1"

while os.path.exists(os.environ.get("VERSIONED_HOLD", "/nonexistent")):  # the test holds the import here
    time.sleep(0.05)


class VersionedApp(IngestApp):
    """The ingest app, the version before each payload."""

    def handle(self, line: str, client: Peer) -> Share:
        return super().handle(f"{VERSION} {line}", client)

    def handle_lines(self, lines: list[str], client: Peer, ids: list[str | None] | None = None) -> list[Share]:
        return super().handle_lines([f"{VERSION} {line}" for line in lines], client, ids)


app = VersionedApp()
