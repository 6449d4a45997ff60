"""The ingest app's queue entries: a batch of lines committed together, and the futures of their replies.

The lines of one read of one client arrive together (``IngestApp.handle_lines``): they are kept as one
*run* (arrival time, client address, count) beside the texts, so that nothing is built per line until the
rows are written, and their replies are one ``Share`` of the batch. Each share keeps its own deadline (its
arrival plus ``ingest.commit_timeout``): a line that joins an open batch late is not given up with the
lines that came before it. Lines join batches in arrival order, so the lines whose deadline has passed are
always at the front of a batch, and ``Batch.drop_expired`` answers them alone while the rest goes on.
"""

from __future__ import annotations

from typing import Any

from gevent.event import Event

from prefork.interface import ERR_UNAVAILABLE

# Where the lines of a run come from: the client's address, or, with ingest.client_cert on, (address, the
# subject of its verified TLS certificate or None).
Source = str | tuple[str, str | None]
# Lines of one read of one client, consecutive in a batch: (arrival time in epoch seconds, source, count).
Run = tuple[float, Source, int]


class Batch:
    """Lines committed together, and their common reply (or, once bisected, one reply per line)."""

    __slots__ = ("texts", "runs", "shares", "ids", "nbytes", "taken", "reply", "replies")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.runs: list[Run] = []
        self.shares: list[Share] = []  # one per run, in the same order
        # One id (or None) per text, made only once a line with an id joins: a batch without ids keeps
        # nothing per line.
        self.ids: list[str | None] | None = None
        self.nbytes = 0  # memory held by the texts
        self.taken = False  # a flusher owns it (or it expired): no more lines join
        self.reply: str | None = None
        self.replies: list[str] | None = None  # one per line, only when the lines' replies differ (bisected)

    def rows(self) -> Rows:
        """The lines still to store, as they are written."""
        return Rows(self.texts, self.runs, ids=self.ids)

    def due(self) -> float:
        """The earliest deadline of its lines (monotonic clock): the first share's."""
        return self.shares[0].due

    def resolve(self, reply: str) -> None:
        """Release the replies of every line still in the batch."""
        self.reply = reply
        for share in self.shares:
            share.wake()

    def drop_expired(self, now: float) -> tuple[int, int]:
        """Answer ``ERR unavailable`` now to the lines whose deadline is ``now`` or earlier, and take them out
        of the batch; return how many lines and bytes of text they were. They are at the front."""
        shares = self.shares
        k = 0
        while k < len(shares) and shares[k].due <= now:
            k += 1
        if k == 0:
            return 0, 0
        gone = shares[:k]
        lines = sum(share.count for share in gone)
        nbytes = sum(share.nbytes for share in gone)
        self.shares = shares[k:]
        self.runs = self.runs[k:]
        self.texts = self.texts[lines:]
        if self.ids is not None:
            self.ids = self.ids[lines:]
        for share in self.shares:
            share.start -= lines
        self.nbytes -= nbytes
        for share in gone:
            share.answer(ERR_UNAVAILABLE)
        return lines, nbytes


class Share:
    """The future of the replies of one run of lines in a batch.

    The protocol puts it in the place of each of those lines and resolves it once: ``get()`` gives one
    reply for all of them, or, for a bisected batch, the list of their own replies. A share whose deadline
    passes while its batch is still being retried is answered alone (``answer``).
    """

    __slots__ = ("batch", "start", "count", "due", "nbytes", "reply", "_event")

    def __init__(self, batch: Batch, start: int, count: int, due: float, nbytes: int):
        self.batch = batch
        self.start = start  # its first line's place in the batch
        self.count = count
        self.due = due  # monotonic time after which its lines get ERR unavailable
        self.nbytes = nbytes  # what its lines count in the app's pending_bytes
        self.reply: str | None = None  # its own reply, when it was answered apart from its batch
        # Made only when someone waits (the protocol links the share at the head of a client's queue).
        self._event: Event | None = None

    def get(self, block: bool = True, timeout: float | None = None) -> str | list[str]:
        if not self.ready():
            self._waiter().wait(timeout)
        if self.reply is not None:
            return self.reply
        batch = self.batch
        if batch.reply is None:
            return ERR_UNAVAILABLE
        replies = batch.replies
        if replies is None:
            return batch.reply
        if self.count == 1:
            return replies[self.start]
        return replies[self.start : self.start + self.count]

    def ready(self) -> bool:
        return self.reply is not None or self.batch.reply is not None

    def rawlink(self, callback: Any) -> None:
        """Have ``callback`` called (by the event loop) once the replies are known: the protocol sends them
        then, instead of keeping a greenlet waiting in ``get()``."""
        self._waiter().rawlink(callback)

    def answer(self, reply: str) -> None:
        """Give these lines their reply now, apart from the batch."""
        self.reply = reply
        self.wake()

    def wake(self) -> None:
        """Wake whoever waits for these replies (they are known)."""
        if self._event is not None:
            self._event.set()

    def _waiter(self) -> Event:
        event = self._event
        if event is None:
            event = self._event = Event()
            if self.ready():
                event.set()
        return event


class Rows:
    """Some consecutive lines of a batch, as they are written: texts, runs, their place in the batch, and
    their ids (None when none of them has one)."""

    __slots__ = ("texts", "runs", "offset", "ids")

    def __init__(self, texts: list[str], runs: list[Run], offset: int = 0, ids: list[str | None] | None = None):
        self.texts = texts
        self.runs = runs
        self.offset = offset
        self.ids = ids

    def __len__(self) -> int:
        return len(self.texts)

    def halves(self) -> tuple[Rows, Rows]:
        """The first and second half (a run split between them is split too)."""
        half = len(self.texts) // 2
        first: list[Run] = []
        second: list[Run] = []
        seen = 0
        for received, addr, count in self.runs:
            if seen + count <= half:
                first.append((received, addr, count))
            elif seen >= half:
                second.append((received, addr, count))
            else:
                first.append((received, addr, half - seen))
                second.append((received, addr, seen + count - half))
            seen += count
        ids = self.ids
        return (
            Rows(self.texts[:half], first, self.offset, None if ids is None else ids[:half]),
            Rows(self.texts[half:], second, self.offset + half, None if ids is None else ids[half:]),
        )

    def only(self, keep: list[bool]) -> Rows:
        """The rows whose place in ``keep`` is True, runs cut to match (for writing; no place in the batch)."""
        texts: list[str] = []
        ids: list[str | None] = []
        runs: list[Run] = []
        i = 0
        for received, addr, count in self.runs:
            kept = 0
            for j in range(i, i + count):
                if keep[j]:
                    texts.append(self.texts[j])
                    ids.append(self.ids[j] if self.ids is not None else None)
                    kept += 1
            if kept:
                runs.append((received, addr, kept))
            i += count
        return Rows(texts, runs, self.offset, ids)
