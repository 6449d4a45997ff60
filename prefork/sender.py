"""``prefork send``: stream the lines of files (or stdin) with ``prefork.client`` and report.

On a terminal a progress bar (share of the files sent, acked, errors, lines/s, ETA) is redrawn on stderr;
otherwise only the summary is printed. Exit 0 only when every line got ``OK``; ``--errors FILE`` gets each
line that got ``ERR``, after its reason and a tab.

Line ids are used whenever the server offers them (``--no-ids``: never), and they are stable, so that a
re-run of an interrupted send stores nothing twice. They identify the file, not its name, the way log
shippers fingerprint files: the id of a file's line is ``<fingerprint>:<line number>``, ``<fingerprint>`` a
short hash of the file's device and inode and of its first line (up to ``FINGERPRINT_BYTES`` of it). So:

- a re-run stores each line once, under any name of the file (a hard link, a rename, the same file named
  twice in one run: the same ids);
- a rotated log, a new file at the same path, has other ids and is sent in full (a new inode; and when
  ``copytruncate`` keeps the inode, or a deleted file's inode is reused, another first line);
- appending keeps every id: a complete first line never changes. The last line of a file without its LF
  (still being written, perhaps) gets ``<fingerprint>:<line number>.<hash of the line>``, so that once it
  is completed the whole line is stored too, not taken for the part sent before.

The limit of this: a file truncated in place and rewritten from the same first line (a fixed header, no
timestamp) has the old ids and would have its lines taken for already stored; send it with ``--no-ids``.
Stdin's lines are ``<TEXT>:<line number>`` with ``--id-prefix TEXT``, else random ids (exactly-once within
one run only).

TLS (``--tls``, implied by ``--tls-ca``, ``--tls-cert``, ``--tls-key`` and ``--tls-server-name``) is the
client's (``prefork.client_tls``): a file that will not load is a usage error (exit 2); a certificate that
does not verify is one line naming the server and the reason (exit 1, like a server that cannot be reached).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
import time
from collections.abc import Iterator
from typing import IO

from prefork.client import DEFAULT_PORT, Client, ClientError, Item, check_id_prefix
from prefork.config.address import parse_peer
from prefork.exits import EXIT_NOT_ALL_OK, EXIT_OK, EXIT_USAGE

PROGRESS_INTERVAL_S = 0.2
FINGERPRINT_BYTES = 1024  # of a file's first line: with its device and inode, what tells files apart
FINGERPRINT_CHARS = 16  # 64 bits of hash: distinct files never share ids in practice
PARTIAL_LINE_HASH_CHARS = 8  # in the id of a last line without its LF


def file_fingerprint(st: os.stat_result, first_line: bytes) -> str:
    """The prefix of the ids of a file's lines: a short hash of its device, inode and first line (up to
    FINGERPRINT_BYTES of it), which appending to the file never changes."""
    identity = b"%d:%d:" % (st.st_dev, st.st_ino) + first_line[:FINGERPRINT_BYTES]
    return hashlib.sha256(identity).hexdigest()[:FINGERPRINT_CHARS]


def line_id(prefix: str, number: int, line: bytes) -> str:
    """The id of a file's line: ``<prefix>:<number>``, and a hash of the line when it has no LF (the last
    line of a file still being written may be completed later: then it is another line)."""
    if line[-1:] == b"\n":
        return f"{prefix}:{number}"
    return f"{prefix}:{number}.{hashlib.sha256(line).hexdigest()[:PARTIAL_LINE_HASH_CHARS]}"


class _Lines:
    """The lines of the files in turn, counting the bytes read (for the ETA); with ``ids``, each with its
    stable id (``<prefix>:<line number>``) where it has one."""

    def __init__(self, paths: list[str], ids: bool = False, stdin_prefix: str | None = None):
        self.paths = paths
        self.ids = ids
        self.stdin_prefix = stdin_prefix
        self.bytes_read = 0
        self.total_bytes = 0
        for path in paths:
            try:
                self.total_bytes += os.path.getsize(path) if path != "-" else 0
            except OSError:
                pass

    def __iter__(self) -> Iterator[Item]:
        for path in self.paths:
            if path == "-":
                yield from self._numbered(sys.stdin.buffer, self.stdin_prefix if self.ids else None)
                continue
            with open(path, "rb") as handle:
                if not self.ids:
                    yield from self._numbered(handle, None)
                    continue
                # Read, not peeked: the file may be a pipe. The identity is taken from the open file, so a
                # rename or a rotation meanwhile cannot mix two files.
                first = handle.readline()
                prefix = file_fingerprint(os.fstat(handle.fileno()), first)
                for number, line in enumerate(itertools.chain([first] if first else [], handle), 1):
                    self.bytes_read += len(line)
                    yield line_id(prefix, number, line), line

    def _numbered(self, handle: IO[bytes], prefix: str | None) -> Iterator[Item]:
        """Lines of stdin (ids ``<prefix>:<number>``), or of any file without ids (prefix None)."""
        for number, line in enumerate(handle, 1):
            self.bytes_read += len(line)
            # The client drops the LF; without a prefix it numbers the line itself (random ids).
            yield line if prefix is None else (f"{prefix}:{number}", line)


def send_files(
    paths: list[str],
    address: str,
    *,
    window: int = 1000,
    errors_path: str | None = None,
    ids: bool = True,
    id_prefix: str | None = None,
    tls: bool | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    server_name: str | None = None,
) -> int:
    """Send every line of ``paths`` to ``address``; print a summary; 0 if every line got OK.

    ``ids``: use line ids when the server offers them (stable ones: see the module); ``id_prefix``: the
    prefix of stdin's ids (without it, stdin's ids are random); ``tls`` ... ``server_name``: the
    Client's TLS arguments."""
    if id_prefix is not None:
        try:
            check_id_prefix(id_prefix)
        except ValueError as exc:
            print(f"prefork: error: --id-prefix: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if "-" not in paths:
            print(
                "prefork: error: --id-prefix: names stdin's ids (-); a file's ids come from the file itself",
                file=sys.stderr,
            )
            return EXIT_USAGE
    lines = _Lines(paths, ids, id_prefix)
    tty = sys.stderr.isatty()
    not_ok = 0  # replies other than OK: ERR, or an app's own reply
    try:
        parse_peer(address, DEFAULT_PORT)
    except ValueError as exc:
        print(f"prefork: error: --to: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        client = Client(
            address,
            window=window,
            ids=None if ids else False,
            tls=tls,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            server_name=server_name,
        )
    except ValueError as exc:
        print(f"prefork: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    errors_file = open(errors_path, "wb") if errors_path else None
    start = last_drawn = time.monotonic()
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
    except (ClientError, OSError) as exc:
        below_bar = "\n" if tty else ""  # one line, under the progress bar on a terminal
        print(f"{below_bar}prefork send: {exc}", file=sys.stderr)
        return EXIT_NOT_ALL_OK
    finally:
        if errors_file is not None:
            errors_file.close()
    elapsed = time.monotonic() - start
    if tty:
        sys.stderr.write("\r\033[K")
    other = f", {not_ok - client.errors:,} other replies" if not_ok > client.errors else ""
    if not ids:
        used = "no (--no-ids)"
    elif client.using_ids is False:
        used = "no (the server does not offer them)"
    else:
        used = "yes" if client.using_ids else "no (nothing was sent)"
    print(
        f"prefork send: {client.acked:,} lines, {client.acked - not_ok:,} OK, {client.errors:,} ERR{other}, "
        f"{client.resent:,} resent after {client.reconnects} reconnects, {elapsed:.1f} s "
        f"({client.acked / max(elapsed, 1e-9):,.0f} lines/s), line ids: {used}, TLS: {client.tls_version or 'no'}"
    )
    return EXIT_OK if not_ok == 0 else EXIT_NOT_ALL_OK


BAR_WIDTH = 24


def _draw(client: Client, lines: _Lines, elapsed: float) -> None:
    """Redraw the progress line: a bar and percentage of the files' bytes (when their sizes are known),
    lines acked, errors, lines/s and the ETA."""
    rate = client.acked / max(elapsed, 1e-9)
    head = eta = ""
    if lines.total_bytes:
        share = min(1.0, lines.bytes_read / lines.total_bytes)
        filled = int(share * BAR_WIDTH)
        head = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {100 * share:3.0f}%  "
        if lines.bytes_read:
            left = elapsed * (lines.total_bytes - lines.bytes_read) / lines.bytes_read
            eta = f", ETA {int(left // 60)}:{int(left % 60):02d}"
    sys.stderr.write(f"\r\033[K{head}{client.acked:,} acked, {client.errors:,} errors, {rate:,.0f} lines/s{eta}")
    sys.stderr.flush()
