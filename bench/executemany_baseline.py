"""Baseline: PyMySQL executemany, batches of BATCH rows + COMMIT, in one process. Prints JSON.

python bench/executemany_baseline.py DSN TABLE ROWS PREFIX
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone

import pymysql

from prefork.db.dsn import parse_dsn

BATCH = 1000


def main() -> None:
    dsn, table, rows, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    conn = pymysql.connect(**parse_dsn(dsn).connect_kwargs())
    cur = conn.cursor()
    sql = f"INSERT INTO `{table}` (received_at, client_addr, worker_pid, payload) VALUES (%s,%s,%s,%s)"
    pid = os.getpid()
    payload = [f"{prefix}-{i} some typical log line payload of moderate length, with a number {i}" for i in range(rows)]
    sys.stdin.read(1)
    start = time.perf_counter()
    for i in range(0, rows, BATCH):
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        cur.executemany(sql, [(now, "127.0.0.1", pid, p) for p in payload[i : i + BATCH]])
        conn.commit()
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
