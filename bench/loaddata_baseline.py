"""Ceiling: LOAD DATA LOCAL INFILE over one PyMySQL connection, batches of BATCH rows + COMMIT. Prints JSON.

python bench/loaddata_baseline.py DSN TABLE ROWS PREFIX

The rows are those workers.ingest stores (received_at, client_addr, worker_pid, payload of the table made by
workers.schema.create_table_sql), in the file format of its LOAD method: tab-separated, one row per LF,
backslash escapes, hex literals for the separators. Every batch's file is written before the clock starts
(to a temporary directory, on tmpfs when /dev/shm exists), so the time measured is the database's: take
the file, parse it, insert the rows, fsync at each COMMIT. Waits for a byte on stdin before it starts.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone

import pymysql

from prefork.db.dsn import parse_dsn

BATCH = 1000  # = ingest.batch_size default
LOAD_FORMAT = "CHARACTER SET utf8mb4 FIELDS TERMINATED BY x'09' ESCAPED BY x'5c' LINES TERMINATED BY x'0a'"
# What LOAD DATA's ESCAPED BY '\' reads back as the byte itself.
ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\0": "\\0"})


def main() -> None:
    dsn, table, rows, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    conn = pymysql.connect(**parse_dsn(dsn).connect_kwargs(), local_infile=True)
    cur = conn.cursor()
    sql = (
        f"LOAD DATA LOCAL INFILE %s INTO TABLE `{table}` {LOAD_FORMAT} (received_at, client_addr, worker_pid, payload)"
    )
    pid = os.getpid()
    payload = [f"{prefix}-{i} some typical log line payload of moderate length, with a number {i}" for i in range(rows)]
    tmpdir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="bench-loaddata-", dir=tmpdir) as tmp:
        files = []
        for i in range(0, rows, BATCH):
            now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
            head = f"{now}\t127.0.0.1\t{pid}\t"
            path = os.path.join(tmp, f"batch-{i // BATCH}.tsv")
            with open(path, "wb") as f:
                f.write("".join(f"{head}{p.translate(ESCAPES)}\n" for p in payload[i : i + BATCH]).encode())
            files.append((path, min(BATCH, rows - i)))
        sys.stdin.read(1)
        start = time.perf_counter()
        for path, count in files:
            stored = cur.execute(sql, (path,))
            warnings = conn._result.warning_count if conn._result is not None else 0
            if stored != count or warnings:
                raise SystemExit(f"LOAD DATA stored {stored} of {count} rows with {warnings} warnings")
            conn.commit()
        seconds = time.perf_counter() - start
    print(json.dumps({"rows": rows, "seconds": seconds}))


if __name__ == "__main__":
    main()
