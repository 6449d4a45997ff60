"""etc/schema.sql is made from workers/schema.py: the statements the workers and `prefork initdb` run."""

from __future__ import annotations

from tests.server import ROOT


def test_etc_schema_is_made_from_workers_schema():
    from workers.ingest import IngestSettings
    from workers.schema import schema_sql

    (table,) = (s.default for s in IngestSettings.settings() if s.key == "table")
    expected = schema_sql(table)
    assert (ROOT / "etc" / "schema.sql").read_text() == expected, "run: python -m workers.schema > etc/schema.sql"


def test_etc_syslog_sql_is_made_from_workers_schema():
    from workers.schema import syslog_schema_sql
    from workers.syslog import SyslogSettings

    (table,) = (s.default for s in SyslogSettings.settings() if s.key == "table")
    expected = syslog_schema_sql(table)
    assert (ROOT / "etc" / "syslog.sql").read_text() == expected, (
        "run: python -m workers.schema syslog > etc/syslog.sql"
    )
