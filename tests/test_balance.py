"""Workers share long-lived clients evenly: a worker holding more than its share stops accepting.

Before the accept gate, the first worker to wake took the whole burst (gevent accepts up to 100
connections per wake-up): with 2 workers and 100 clients the split was anywhere from 50/50 to 100/0, and
steady arrivals went mostly to one worker too. These tests check the distribution (not a timing), and that
the gate never holds connections back: not during a reload, nor behind a worker whose loop is blocked.

The real master runs as a subprocess (tests/server.py); figures come from `prefork status --json`.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time

import pytest

from tests.server import ServerProcess, client_loop, connect, is_alive, read_lines, wait_for

ECHO = "workers.echo:app"
CLIENTS = 100
LINES = 20  # per client, pipelined
MAX_RATIO = 1.3
HUNG_TIMEOUT = 60  # the master's heartbeat timeout in the blocked-worker test


def serving(srv: ServerProcess, n: int) -> list[int]:
    def ready():
        workers = srv.status()["workers"]
        return len(workers) == n and len(srv.worker_pids()) == n and sorted(w["pid"] for w in workers)

    return wait_for(ready, what=f"{n} workers serving")


def burst(port: int, count: int) -> list[socket.socket]:
    """`count` connects issued back to back (non-blocking), returned once every one is established."""
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        socks.append(sock)
    pending = list(socks)
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], pending, [], 1.0)
        for sock in writable:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            pending.remove(sock)
    assert not pending, f"{len(pending)} connects did not complete"
    for sock in socks:
        sock.settimeout(30)
    return socks


def steady(port: int, count: int, gap: float = 0.01) -> list[socket.socket]:
    """One client every `gap` seconds, each sending its lines as soon as it is connected."""
    socks = []
    for i in range(count):
        sock = connect(port)
        sock.sendall(lines_of(i))
        socks.append(sock)
        time.sleep(gap)
    return socks


def lines_of(i: int) -> bytes:
    return b"".join(b"client %d line %d\n" % (i, k) for k in range(LINES))


def served_spread(
    srv: ServerProcess, socks: list[socket.socket], sent: bool = False, total: int | None = None
) -> dict[int, int]:
    """Pipeline every client's lines (unless already sent), read every reply, then return each worker's
    clients once `total` clients (default: these) are connected."""
    if not sent:
        for i, sock in enumerate(socks):
            sock.sendall(lines_of(i))
    for i, sock in enumerate(socks):
        assert read_lines(sock, LINES) == lines_of(i).split(b"\n")[:-1]
    total = len(socks) if total is None else total
    report = wait_for(
        lambda: (r := srv.status())["totals"]["clients"] == total and r, timeout=10, what="every client counted"
    )
    return {w["pid"]: w["clients"] for w in report["workers"]}


def ratio(spread: dict[int, int]) -> float:
    counts = list(spread.values())
    return max(counts) / min(counts) if min(counts) else float("inf")


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("arrival", ["burst", "steady"])
def test_long_lived_clients_are_spread_evenly_over_the_workers(arrival):
    """100 clients that stay connected, over 2 workers: max/min <= 1.3 (the issue saw 100/0 and 99/1).
    Three rounds on the same server, each after the previous clients left."""
    with ServerProcess([ECHO, "--workers", "2"]) as srv:
        pids = serving(srv, 2)
        for _ in range(3):
            socks = burst(srv.port, CLIENTS) if arrival == "burst" else steady(srv.port, CLIENTS)
            try:
                spread = served_spread(srv, socks, sent=arrival == "steady")
            finally:
                close_all(socks)
            assert sorted(spread) == pids
            assert ratio(spread) <= MAX_RATIO, spread
            wait_for(lambda: srv.status()["totals"]["clients"] == 0, timeout=10, what="the clients to leave")


@pytest.mark.timeout(120)
def test_a_reload_under_a_burst_of_connects_refuses_no_connection_and_balances_the_new_generation():
    """HUPs while clients connect as fast as they can: no connection is refused or reset (the gate only
    pauses a worker's accepting; the listeners stay open in the master) and, once the old generation is
    gone, a burst is spread evenly over the new one (the old workers' slots were released)."""
    with ServerProcess([ECHO, "--workers", "2", "--graceful-timeout", "10"]) as srv:
        serving(srv, 2)
        stop = threading.Event()
        errors: list[str] = []
        rounds = [0] * 8

        threads = [
            threading.Thread(target=client_loop, args=(srv.port, i, stop, errors, rounds), daemon=True)
            for i in range(len(rounds))
        ]
        for t in threads:
            t.start()
        try:
            for generation in (2, 3, 4):
                srv.signal(signal.SIGHUP)
                wait_for(
                    lambda g=generation: f"Reloaded: generation {g}" in srv.logs(), what=f"generation {generation}"
                )
            before = list(rounds)
            wait_for(lambda: all(r >= b + 5 for r, b in zip(rounds, before, strict=True)), what="clients served")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert errors == [], errors[:10]
        new = wait_for(
            lambda: (
                (r := srv.status())["workers"]
                and len(r["workers"]) == 2
                and {w["generation"] for w in r["workers"]} == {4}
                and r["totals"]["clients"] == 0
            ),
            what="only the generation 4 workers, idle",
        )
        assert new
        socks = burst(srv.port, CLIENTS)
        try:
            spread = served_spread(srv, socks)
        finally:
            close_all(socks)
        assert ratio(spread) <= MAX_RATIO, spread


@pytest.mark.timeout(150)
def test_a_worker_whose_loop_is_blocked_does_not_hold_up_the_others(tmp_path):
    """A worker with fewer clients than the others but a blocked event loop (it stops stamping its slot)
    is left out of the comparison within about a second: the others go on accepting long before the
    master kills it at `timeout` (every client must be answered while it is still alive; `timeout` is
    60 s so that no load can make that a race: without the rule, the clients wait for the kill)."""
    marker = tmp_path / "blocked"
    env = {"TESTAPP_BLOCKED": str(marker)}
    with ServerProcess(["testapps:blocking", "--workers", "2", "--timeout", str(HUNG_TIMEOUT)], env=env) as srv:
        pids = serving(srv, 2)
        blocker = connect(srv.port)
        try:
            blocker.sendall(b"block\n")
            # Its worker is stuck in an unpatched sleep from now on.
            blocked = int(wait_for(lambda: marker.exists() and marker.read_text().strip(), what="the block"))
            assert blocked in pids
            socks = [connect(srv.port, timeout=2 * HUNG_TIMEOUT) for _ in range(20)]
            try:
                for i, sock in enumerate(socks):
                    sock.sendall(b"after %d\n" % i)
                for i, sock in enumerate(socks):
                    assert read_lines(sock, 1) == [b"after %d" % i]
            finally:
                close_all(socks)
            # Held back until the master killed the hung worker, they would find it dead here.
            assert is_alive(blocked), "the clients were answered only once the hung worker was killed"
            assert all(is_alive(p) for p in pids)
        finally:
            blocker.close()


@pytest.mark.timeout(90)
def test_after_a_crash_the_respawned_worker_takes_the_new_clients_until_the_counts_are_even():
    """40 clients spread 20/20; one worker is killed (its clients go with it) and replaced: the survivor
    keeps its 20 and pauses, so the next 60 clients go mostly to the new worker, about 40/40 in all."""
    with ServerProcess([ECHO, "--workers", "2"]) as srv:
        pids = serving(srv, 2)
        first = burst(srv.port, 40)
        assert ratio(served_spread(srv, first)) <= MAX_RATIO
        os.kill(pids[0], signal.SIGKILL)
        wait_for(lambda: not is_alive(pids[0]), what="the killed worker to exit")  # its sockets are closed
        # Every reply was read: a connection readable now was closed by the dead worker.
        dead, _, _ = select.select(first, [], [], 0)
        close_all(dead)
        survivors = [sock for sock in first if sock not in dead]
        assert 14 <= len(survivors) <= 26
        wait_for(
            lambda: (
                (w := srv.status()["workers"])
                and len(w) == 2
                and pids[0] not in {x["pid"] for x in w}
                and sum(x["clients"] for x in w) == len(survivors)
            ),
            what="the replacement worker",
        )
        more = burst(srv.port, 60)
        try:
            spread = served_spread(srv, more, total=len(survivors) + 60)
        finally:
            close_all(more)
            close_all(survivors)
        assert pids[1] in spread
        assert ratio(spread) <= MAX_RATIO, spread
