"""Rows as the database reads them: the file of a ``LOAD DATA LOCAL INFILE``, multi-row INSERT statements,
the id lookup, and their escaping.

No I/O here: an ``Encoder`` builds text and bytes, the writer (``workers.ingest.write``) sends them. Every
value that goes into SQL goes through the driver's escaping, passed in as ``escape`` (``conn.escape``, which
honours NO_BACKSLASH_ESCAPES); a LOAD file has its own escaping (``escape_field``).

Every row starts with ``received_at, client_addr, worker_pid`` (with ``ingest.client_cert`` on,
``client_cert`` after ``client_addr``: a run's source is then the pair); what follows, the columns a line fills, is
the encoder's ``RowShape``: ingest's is ``Payload`` (the line as sent), the syslog app's parses the line
into its columns (``workers.syslog.rows``). A shape works on all the rows of a write at once, so that
ingest's builds nothing per line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from workers.ingest.batch import Rows, Source
from workers.schema import CLIENT_CERT_COLUMN, LINE_ID_COLUMN, quote_identifier

# Split a batch's INSERT well below max_allowed_packet (16 MiB by default): a character is at most 4 bytes
# of UTF-8, and escaping can double it.
STATEMENT_CHARS = 1_000_000
# The file of a LOAD: tab-separated fields, one row per LF, backslash escapes. Hex literals, so that the
# statement means the same under NO_BACKSLASH_ESCAPES.
LOAD_FORMAT = "CHARACTER SET utf8mb4 FIELDS TERMINATED BY x'09' ESCAPED BY x'5c' LINES TERMINATED BY x'0a'"
ID_LOOKUP_CHUNK = 1000  # ids per SELECT ... IN (...), well below max_allowed_packet
# Client addresses whose escaped LOAD field is kept: past this many the cache starts over (a worker with
# that many distinct peers gains little from it, and its memory stays bounded).
LOAD_FIELDS_KEPT = 10000

# The driver's escaping of one value into an SQL literal (``conn.escape``).
Escape = Callable[[Any], str]
# The fields of a row that come before the line's own, in every table the encoder writes.
ROW_HEAD = ("received_at", "client_addr", "worker_pid")
NULL_FIELD = "\\N"  # NULL in a LOAD file (LOAD_FORMAT)


class RowShape(Protocol):
    """The columns a line fills, after ROW_HEAD, and their values for some rows."""

    @property
    def columns(self) -> tuple[str, ...]: ...

    def load_fields(self, rows: Rows) -> list[str]:
        """Per row, its fields after ROW_HEAD as a LOAD file holds them: escaped (``escape_field``, NULL
        as NULL_FIELD), joined by tabs."""
        ...

    def sql_values(self, escape: Escape, rows: Rows) -> list[str]:
        """Per row, its values after ROW_HEAD as SQL literals (through ``escape``), joined by commas."""
        ...


class Payload:
    """Ingest's rows: the line as sent, in ``payload``."""

    columns = ("payload",)

    def load_fields(self, rows: Rows) -> list[str]:
        texts = rows.texts
        joined = "\n".join(texts)  # a payload never holds LF
        if "\\" in joined or "\t" in joined or "\0" in joined:
            return escape_field(joined).split("\n")
        return texts

    def sql_values(self, escape: Escape, rows: Rows) -> list[str]:
        return list(map(escape, rows.texts))


PAYLOAD = Payload()


class Encoder:
    """The statements and LOAD files for one worker's rows of one table (``worker_pid`` is this worker's),
    each row ROW_HEAD then the columns of ``shape``."""

    def __init__(self, table: str, pid: int, shape: RowShape = PAYLOAD, client_cert: bool = False) -> None:
        self.pid = pid
        self.shape = shape
        quoted = quote_identifier(table)
        head = ROW_HEAD[:2] + (CLIENT_CERT_COLUMN,) + ROW_HEAD[2:] if client_cert else ROW_HEAD
        names = head + tuple(shape.columns)
        columns = f"({', '.join(names)})"
        self._insert_head = f"INSERT INTO {quoted} {columns} VALUES "
        self._load_sql = f"LOAD DATA LOCAL INFILE 'prefork-batch' INTO TABLE {quoted} {LOAD_FORMAT} {columns}"
        # Rows with ids name the line id column too; rows without any keep the statements above, so that
        # with line ids off nothing differs from a table without the column.
        with_id = f"({', '.join(names)}, {LINE_ID_COLUMN})"
        self._insert_head_ids = f"INSERT INTO {quoted} {with_id} VALUES "
        self._load_sql_ids = f"LOAD DATA LOCAL INFILE 'prefork-batch' INTO TABLE {quoted} {LOAD_FORMAT} {with_id}"
        self._id_lookup = f"SELECT {LINE_ID_COLUMN} FROM {quoted} WHERE {LINE_ID_COLUMN} IN "
        self._load_fields: dict[Source, str] = {}  # a run's source -> its escaped field(s) in a LOAD file
        self._stamp_secs = -1  # the second whose text is _stamp_text
        self._stamp_text = ""

    def load_statement(self, rows: Rows) -> str:
        """The LOAD DATA LOCAL INFILE statement for these rows (with the line id column if they have ids)."""
        return self._load_sql if rows.ids is None else self._load_sql_ids

    def load_data(self, rows: Rows) -> bytes:
        """The rows as the file of a LOAD (LOAD_FORMAT): stamp, address, pid and the shape's fields per row.

        Built per run, not per line: the fields before the line's own are the same for a whole run.
        """
        texts = self.shape.load_fields(rows)
        if rows.ids is not None:
            # One more field, the id (\N: NULL); ids hold no character that needs escaping.
            texts = [
                f"{text}\t{ident}" if ident is not None else f"{text}\t\\N"
                for text, ident in zip(texts, rows.ids, strict=True)
            ]
        parts = []
        done = 0
        for received, addr, count in rows.runs:
            head = f"{self.stamp(received)}\t{self._load_field(addr)}\t{self.pid}\t"
            parts.append(head)
            parts.append(("\n" + head).join(texts[done : done + count]))
            parts.append("\n")
            done += count
        return "".join(parts).encode()

    def _load_field(self, addr: Source) -> str:
        field = self._load_fields.get(addr)
        if field is None:
            if len(self._load_fields) > LOAD_FIELDS_KEPT:
                self._load_fields.clear()
            if isinstance(addr, str):
                field = escape_field(addr)
            else:  # (address, certificate subject): two fields
                field = f"{escape_field(addr[0])}\t{NULL_FIELD if addr[1] is None else escape_field(addr[1])}"
            self._load_fields[addr] = field
        return field

    def inserts(self, escape: Escape, rows: Rows) -> Iterator[str]:
        """Multi-row INSERTs of the rows, each under STATEMENT_CHARS of the lines' escaped values.

        Values go through the driver's own parameter escaping (``escape``: ``conn.escape``, which is what
        ``cursor.execute(sql, params)`` applies, and which honours NO_BACKSLASH_ESCAPES); building the
        statement here skips the driver's per-value type dispatch and %-formatting of 4 parameters per
        row. No value is ever formatted into SQL unescaped.
        """
        values: list[str] = []
        size = 0
        texts = iter(self.shape.sql_values(escape, rows))
        if rows.ids is None:
            insert_head, ends = self._insert_head, None
        else:
            insert_head = self._insert_head_ids
            ends = iter([f",{escape(ident)})" if ident is not None else ",NULL)" for ident in rows.ids])
        for received, addr, count in rows.runs:
            source = escape(addr) if isinstance(addr, str) else f"{escape(addr[0])},{escape(addr[1])}"
            head = f"('{self.stamp(received)}',{source},{self.pid},"
            for _ in range(count):
                text = next(texts)
                if size + len(text) > STATEMENT_CHARS and values:
                    yield insert_head + ",".join(values)
                    values, size = [], 0
                values.append(f"{head}{text}{next(ends) if ends is not None else ')'}")
                size += len(text)
        if values:
            yield insert_head + ",".join(values)

    def id_lookups(self, escape: Escape, ids: list[str]) -> Iterable[str]:
        """SELECTs of those of ``ids`` that the table holds, ID_LOOKUP_CHUNK ids per statement."""
        for start in range(0, len(ids), ID_LOOKUP_CHUNK):
            listed = ",".join(map(escape, ids[start : start + ID_LOOKUP_CHUNK]))
            yield f"{self._id_lookup}({listed})"

    def stamp(self, ts: float) -> str:
        """A DATETIME(6) value in UTC for an epoch timestamp (the second's text is cached)."""
        secs = int(ts)
        if secs != self._stamp_secs:
            self._stamp_secs = secs
            self._stamp_text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs))
        return f"{self._stamp_text}.{int((ts - secs) * 1e6):06d}"


def escape_field(text: str) -> str:
    """Escape a field of a LOAD file (LOAD_FORMAT): backslash, tab and NUL (LF never occurs in a line)."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\0", "\\0")
