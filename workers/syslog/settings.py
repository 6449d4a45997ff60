"""``[syslog]``: the syslog app's own settings section (its batching and commits are ``[ingest]``'s)."""

from __future__ import annotations

from prefork.settings import Section, choice, option, table_name

UNPARSED_STORE = "store"
UNPARSED_REJECT = "reject"


# fmt: off
class SyslogSettings(Section, name="syslog"):
    """``[syslog]``: where the messages go, and what becomes of a line that is no syslog message."""

    table: str = option(
        "syslog_messages", table_name, "target table (always quoted with backticks in SQL)",
        flag="--syslog-table")
    unparsed: str = option(
        UNPARSED_STORE, choice(UNPARSED_STORE, UNPARSED_REJECT),
        "a line that is no syslog message (no valid <PRI>): store (raw, its fields NULL) or reject "
        "(reply ERR rejected, not stored)")
# fmt: on
