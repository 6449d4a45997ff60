"""Lines per second of the syslog parser alone (workers.syslog.parse), and of the rows it makes for a LOAD
file (workers.syslog.rows), on the captured shippers' messages: ``python -m devtools.bench_syslog_parse``."""

from __future__ import annotations

import time

from tests.syslog_fixtures import EXPECTED, messages
from workers.ingest.batch import Rows
from workers.syslog.parse import parse
from workers.syslog.rows import SyslogShape

LINES = 200_000
BATCH = 1000


def main() -> None:
    sample = [text for name in sorted(EXPECTED) for text in messages(name)]
    lines = (sample * (LINES // len(sample) + 1))[:LINES]
    now = time.time()
    start = time.perf_counter()
    for text in lines:
        parse(text, now)
    parsed = time.perf_counter() - start
    shape = SyslogShape()
    start = time.perf_counter()
    for at in range(0, LINES, BATCH):
        shape.load_fields(Rows(lines[at : at + BATCH], [(now, "127.0.0.1:1", BATCH)]))
    loaded = time.perf_counter() - start
    print(f"{len(sample)} distinct messages, {LINES} lines")
    print(f"parse alone:          {LINES / parsed:,.0f} lines/s ({parsed / LINES * 1e6:.2f} us/line)")
    print(f"parse + LOAD fields:  {LINES / loaded:,.0f} lines/s ({loaded / LINES * 1e6:.2f} us/line)")


if __name__ == "__main__":
    main()
