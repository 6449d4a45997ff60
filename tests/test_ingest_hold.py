"""The ingest queue's hold (``workers.ingest.pending``): while a flusher is busy, the open batch is left to
grow rather than taken by a second transaction of the same worker, until it is full, the busy flusher is
done, or it has waited its time. In-process, no database."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

from workers.ingest.pending import HOLD_MAX_S, Pending

BATCH = 4


def queue() -> Pending:
    return Pending(batch_size=BATCH, commit_timeout=30.0, max_pending=1000, max_pending_bytes=1 << 20)


@pytest.mark.timeout(10)
def test_with_no_flusher_busy_a_line_is_taken_at_once():
    pending = queue()
    pending.add(["one"], "127.0.0.1", None)
    batch = pending.take()
    assert batch is not None and batch.texts == ["one"] and pending.busy == 1


@pytest.mark.timeout(10)
def test_while_a_flusher_is_busy_the_open_batch_grows_until_it_is_full():
    pending = queue()
    pending.add(["first"], "127.0.0.1", None)
    assert pending.take() is not None  # the busy flusher's
    pending.cycle_s = 3600.0  # commits take long lately: only a full batch (or the busy one done) ends the hold
    pending.add(["a"], "127.0.0.1", None)
    second = gevent.spawn(pending.take)
    gevent.sleep(0)
    assert not second.ready(), "taken while the other flusher is busy and the batch not full"
    pending.add(["b", "c", "d", "e"], "127.0.0.1", None)  # fills the open batch and opens another
    batch = second.get()
    assert batch is not None and batch.texts == ["a", "b", "c", "d"]


@pytest.mark.timeout(10)
def test_the_open_batch_is_taken_when_the_busy_flusher_is_done():
    pending = queue()
    pending.add(["first"], "127.0.0.1", None)
    assert pending.take() is not None
    pending.cycle_s = 3600.0
    pending.add(["a"], "127.0.0.1", None)
    second = gevent.spawn(pending.take)
    gevent.sleep(0)
    assert not second.ready()
    pending.done(0.001)
    batch = second.get()
    assert batch is not None and batch.texts == ["a"]


@pytest.mark.timeout(10)
def test_the_hold_is_bounded_even_after_a_slow_commit():
    pending = queue()
    pending.add(["first"], "127.0.0.1", None)
    assert pending.take() is not None
    pending.cycle_s = 3600.0  # an hour-long batch (an outage): the hold is still HOLD_MAX_S at most
    pending.add(["a"], "127.0.0.1", None)
    batch = gevent.spawn(pending.take).get(timeout=HOLD_MAX_S * 100)
    assert batch is not None and batch.texts == ["a"]


@pytest.mark.timeout(10)
def test_lines_joining_the_held_batch_do_not_wake_the_holding_flusher():
    # Each wake was a greenlet switch and a look at the clock per client read, for nothing: the hold ends
    # only when the batch is full, the busy flusher is done or the time is up.
    pending = queue()
    pending.add(["first"], "127.0.0.1", None)
    assert pending.take() is not None
    pending.cycle_s = 3600.0
    pending.add(["a"], "127.0.0.1", None)
    waits: list[float | None] = []

    class CountedWaits(Event):
        def wait(self, timeout=None):
            waits.append(timeout)
            return super().wait(timeout)

    pending._work = CountedWaits()
    second = gevent.spawn(pending.take)
    gevent.sleep(0)
    assert len(waits) == 1
    for line in ("b", "c"):
        pending.add([line], "127.0.0.1", None)
        gevent.sleep(0)
    assert not second.ready() and len(waits) == 1, "woken by lines that only joined the held batch"
    pending.add(["d", "e"], "127.0.0.1", None)  # fills it and opens the next: the hold ends
    batch = second.get(timeout=1)
    assert batch is not None and batch.texts == ["a", "b", "c", "d"]
