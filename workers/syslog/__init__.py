"""``workers.syslog:app``: each line is a syslog message (RFC 5424 or RFC 3164, one message per line),
stored parsed into columns: facility, severity, timestamp (as sent and in UTC), hostname, app-name, procid,
msgid, structured data (JSON), message, with the raw line, the peer, the arrival time and the worker.

It is the ingest app with another row (``workers.syslog.rows``): batching, group commit, LOAD DATA or
INSERT, retries, the unknown COMMIT outcome, line ids, backpressure and the per-line ``commit_timeout``
are ``workers.ingest``'s own code, set by ``[ingest]``, and ``OK`` still means committed. ``[syslog]``
names the table and says what becomes of a line that is no syslog message (``syslog.unparsed``: stored
raw with NULL fields, or answered ``ERR rejected``). How each form is read, and the year of an RFC 3164
timestamp: ``workers.syslog.parse``. The table: ``workers.schema`` (``etc/syslog.sql``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from prefork.config.loader import Config
from prefork.interface import Peer, Reply, WorkerInfo
from prefork.settings import Section
from workers.ingest import IngestApp, IngestSettings
from workers.ingest.commit import ERR_REJECTED
from workers.ingest.encoding import RowShape
from workers.schema import create_syslog_table_sql
from workers.syslog.parse import is_syslog
from workers.syslog.rows import SyslogShape
from workers.syslog.settings import UNPARSED_REJECT, SyslogSettings

__all__ = ["SyslogApp", "SyslogSettings", "app"]

log = logging.getLogger("workers.syslog")

LOGGED_CHARS = 200  # of a line that is no syslog message, in the one log line about it

SHAPE = SyslogShape()


class SyslogApp(IngestApp):
    """Store each syslog message as a row of ``syslog.table``, its fields in columns."""

    settings: ClassVar[type[Section] | Sequence[type[Section]]] = (IngestSettings, SyslogSettings)

    reject_unparsed: bool  # syslog.unparsed = reject
    unparsed: int  # lines that were no syslog message (stored raw or rejected), for stats

    def setup(self, worker: WorkerInfo) -> None:
        """As the ingest app's, into ``syslog.table``."""
        self.reject_unparsed = worker.config.section(SyslogSettings).unparsed == UNPARSED_REJECT
        self.unparsed = 0
        super().setup(worker)

    def table_of(self, cfg: Config) -> str:
        return cfg.section(SyslogSettings).table

    def row_shape(self, cfg: Config) -> RowShape:
        return SHAPE

    def table_sql(self, table: str) -> str:
        return create_syslog_table_sql(table)

    # Wider replies than IngestApp's (a plain ERR string besides its futures): still prefork.interface's.
    def handle(self, line: str, client: Peer) -> Reply:  # type: ignore[override]
        """Queue one message; a line that is none counts in ``unparsed``, and with syslog.unparsed = reject
        is answered ``ERR rejected`` at once."""
        replies = self.handle_lines([line], client)
        return replies[0]

    def handle_lines(  # type: ignore[override]
        self, lines: list[str], client: Peer, ids: list[str | None] | None = None
    ) -> Sequence[Reply]:
        """Queue the messages of one read (see ``IngestApp.handle_lines``). A line that is no syslog message
        counts in ``unparsed`` (the first is logged: a shipper's framing taken for its message, such as an
        octet count before ``<PRI>``, shows so); with syslog.unparsed = reject it is answered
        ``ERR rejected`` at once and never queued."""
        if all(map(is_syslog, lines)):
            return super().handle_lines(lines, client, ids)
        keep = [is_syslog(line) for line in lines]
        self._count_unparsed(lines, keep, client)
        if not self.reject_unparsed:
            return super().handle_lines(lines, client, ids)
        kept = [line for line, ok in zip(lines, keep, strict=True) if ok]
        kept_ids = None if ids is None else [i for i, ok in zip(ids, keep, strict=True) if ok]
        queued = iter(super().handle_lines(kept, client, kept_ids) if kept else [])
        return [next(queued) if ok else ERR_REJECTED for ok in keep]

    def _count_unparsed(self, lines: list[str], keep: list[bool], client: Peer) -> None:
        if self.unparsed == 0:
            first = lines[keep.index(False)]
            log.warning(
                "syslog: a line from %s is no syslog message (no valid <PRI> first; %s): %r (logged once; "
                "counted in the stats' unparsed)",
                client.addr,
                "rejected" if self.reject_unparsed else "stored raw",
                first[:LOGGED_CHARS],
            )
        self.unparsed += keep.count(False)

    def stats(self) -> dict[str, Any]:
        """The ingest app's figures, and the lines that were no syslog message."""
        return {**super().stats(), "unparsed": self.unparsed}


app = SyslogApp()  # what server.app = workers.syslog:app names: one per process, set up in each worker
