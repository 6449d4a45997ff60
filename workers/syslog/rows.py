"""The syslog app's rows: each line parsed (``workers.syslog.parse``) into its columns, plus the line as
sent in ``raw``; the ``RowShape`` the ingest app's encoder writes them with (``workers.ingest.encoding``)."""

from __future__ import annotations

from itertools import islice

from workers.ingest.batch import Rows
from workers.ingest.encoding import NULL_FIELD, Escape, escape_field
from workers.syslog.parse import COLUMNS, Fields, parse

RAW_COLUMN = "raw"
UNPARSED: Fields = (None,) * len(COLUMNS)  # a line that is no syslog message: stored raw, fields NULL
SD_INDEX = COLUMNS.index("structured_data")  # the one field a clean line can make unclean (JSON escapes)


class SyslogShape:
    """Rows of ``COLUMNS`` then ``raw``, each line parsed once per encoding, dated by its run's arrival."""

    columns = (*COLUMNS, RAW_COLUMN)

    def load_fields(self, rows: Rows) -> list[str]:
        out = []
        for fields, text in _parsed(rows):
            if "\\" in text or "\t" in text or "\0" in text:
                values = [NULL_FIELD if v is None else escape_field(v) for v in fields]
                values.append(escape_field(text))
            else:
                # Every field is a part of the text, and needs no escaping either, but for the JSON of
                # STRUCTURED-DATA, whose string escapes bring backslashes.
                values = [NULL_FIELD if v is None else v for v in fields]
                sd = fields[SD_INDEX]
                if sd is not None and "\\" in sd:
                    values[SD_INDEX] = escape_field(sd)
                values.append(text)
            out.append("\t".join(values))
        return out

    def sql_values(self, escape: Escape, rows: Rows) -> list[str]:
        return [",".join(map(escape, (*fields, text))) for fields, text in _parsed(rows)]


def _parsed(rows: Rows) -> list[tuple[Fields, str]]:
    """Each line's fields (UNPARSED for a line that is no syslog message) and its text."""
    texts = iter(rows.texts)
    out = []
    for received, _addr, count in rows.runs:
        for text in islice(texts, count):
            out.append((parse(text, received) or UNPARSED, text))
    return out
