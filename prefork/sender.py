"""``prefork send``: stream the lines of files (or stdin) with ``prefork.client`` and report.

On a terminal a progress line (lines/s, acked, errors, ETA from the files' sizes) is redrawn on stderr;
otherwise only the summary is printed. Exit 0 only when every line got ``OK``; ``--errors FILE`` gets each
line that got ``ERR``, after its reason and a tab.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import IO

from prefork.client import Client, ClientError

EXIT_OK = 0
EXIT_NOT_ALL_OK = 1
PROGRESS_INTERVAL_S = 0.2


class _Lines:
    """The lines of the files in turn, counting the bytes read (for the ETA)."""

    def __init__(self, paths: list[str]):
        self.paths = paths
        self.bytes_read = 0
        self.total_bytes = 0
        for path in paths:
            try:
                self.total_bytes += os.path.getsize(path) if path != "-" else 0
            except OSError:
                pass

    def __iter__(self) -> Iterator[bytes]:
        for path in self.paths:
            handle: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")
            try:
                for line in handle:
                    self.bytes_read += len(line)
                    yield line  # the client drops the LF
            finally:
                if handle is not sys.stdin.buffer:
                    handle.close()


def send_files(paths: list[str], address: str, *, window: int = 1000, errors_path: str | None = None) -> int:
    """Send every line of ``paths`` to ``address``; print a summary; 0 if every line got OK."""
    lines = _Lines(paths)
    errors_file = open(errors_path, "wb") if errors_path else None
    tty = sys.stderr.isatty()
    start = last_drawn = time.monotonic()
    not_ok = 0  # replies other than OK: ERR, or an app's own reply
    try:
        client = Client(address, window=window)
    except ValueError as exc:
        print(f"prefork: error: --to: {exc}", file=sys.stderr)
        return 2
    try:
        with client:
            for line, reply in client.stream(lines):
                if reply != "OK":
                    not_ok += 1
                    if errors_file is not None and reply.startswith("ERR"):
                        errors_file.write(reply[4:].encode() + b"\t" + line + b"\n")
                now = time.monotonic()
                if tty and now - last_drawn >= PROGRESS_INTERVAL_S:
                    last_drawn = now
                    _draw(client, lines, now - start)
    except ClientError as exc:
        print(f"\nprefork send: {exc}", file=sys.stderr)
        return EXIT_NOT_ALL_OK
    except OSError as exc:
        print(f"\nprefork send: {exc}", file=sys.stderr)
        return EXIT_NOT_ALL_OK
    finally:
        if errors_file is not None:
            errors_file.close()
    elapsed = time.monotonic() - start
    if tty:
        sys.stderr.write("\r\033[K")
    other = f", {not_ok - client.errors:,} other replies" if not_ok > client.errors else ""
    print(
        f"prefork send: {client.acked:,} lines, {client.acked - not_ok:,} OK, {client.errors:,} ERR{other}, "
        f"{client.resent:,} resent after {client.reconnects} reconnects, {elapsed:.1f} s "
        f"({client.acked / max(elapsed, 1e-9):,.0f} lines/s)"
    )
    return EXIT_OK if not_ok == 0 else EXIT_NOT_ALL_OK


def _draw(client: Client, lines: _Lines, elapsed: float) -> None:
    rate = client.acked / max(elapsed, 1e-9)
    eta = ""
    if lines.total_bytes and lines.bytes_read:
        left = elapsed * (lines.total_bytes - lines.bytes_read) / lines.bytes_read
        eta = f", ETA {int(left // 60)}:{int(left % 60):02d}"
    done = f" {100 * lines.bytes_read / lines.total_bytes:.0f}%" if lines.total_bytes else ""
    sys.stderr.write(f"\r\033[K{client.acked:,} acked{done}, {client.errors:,} errors, {rate:,.0f} lines/s{eta}")
    sys.stderr.flush()
