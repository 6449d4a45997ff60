"""Hostile clients against the real master (`workers.echo:app`, 2 workers) while a normal client is served.

Every test runs one hostile behaviour inside `hostile(srv, label)`, which keeps a `Probe` going: a normal
client holding one connection to EACH worker (found through /proc, so a behaviour that lands on either
worker is caught) that sends a line on each every 0.1 s and times the reply. When the behaviour is over:

- the probe's replies all came back, right and in order; a behaviour that lasts as long as the test wants
  (idle and stalled clients, an endless stream) is held until the probe has made PROBE_MIN_ROUNDS round
  trips on every worker meanwhile (`Watch.served_meanwhile`): a worker monopolised by a hostile client
  would hold the probe's replies back until the behaviour ends, and the test would wait in vain;
- `prefork status` shows every closed connection gone (clients back to the probe's own connections), polled
  for a few seconds because the workers rewrite their state files every second;
- the workers are the processes that were there before (none crashed and was replaced), their RSS stayed
  under RSS_BOUND, and nothing new in the log is a traceback.

The figures (max probe round trip, max RSS per worker) are printed: run with `-s` to see them. No
assertion is a timing: progress is counted in round trips, and the slow-loris tests check that the server
logged the close as a client_timeout one (its debug log) rather than how long it took. Clients are plain
blocking sockets and threads: this process is not monkey-patched, and a probe in its own thread keeps
timing replies whatever the main thread is blocked in.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.server import ServerProcess, connect, read_all, read_lines, wait_for
from tests.test_protocol import ALLOCATOR_SLACK, expected_reply, rss, stalled_connection_bound

pytestmark = pytest.mark.hostile

ECHO = "workers.echo:app"
MiB = 1024 * 1024
MAX_LINE = 1024  # small, so that random garbage and streams hit ERR too-long often
CLIENT_TIMEOUT = 1.0  # of the `impatient` server
CLOSE_PATIENCE = 30.0  # how long a slow-loris client keeps going before the test gives up on the close
TIMEOUT_CLOSE_LOG = "closed: client_timeout"  # the worker's debug line for a close by client_timeout
PROBE_INTERVAL = 0.1
PROBE_MIN_ROUNDS = 5  # round trips per probe connection beside a behaviour (after it, or while it lasts)
SERVED_PATIENCE = 60.0  # how long a held behaviour waits for the probe's rounds before the test fails
RSS_BOUND = 200 * MiB  # per worker
SETTLE_TIMEOUT = 6.0  # state files are rewritten every second; a closing connection may drain for 2 s


# -- servers ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """Default client_timeout (300 s), so idle and stalled clients stay connected; room for 5,000 clients."""
    args = [ECHO, "--workers", "2", "--worker-connections", "4000", "--max-line", str(MAX_LINE)]
    with ServerProcess(args) as srv:
        yield srv


@pytest.fixture(scope="module")
def impatient() -> Iterator[ServerProcess]:
    """client_timeout of 1 s, for the slow-loris clients; debug log, which names the reason of each close."""
    args = [ECHO, "--workers", "2", "--max-line", str(MAX_LINE), "--client-timeout", str(CLIENT_TIMEOUT)]
    args += ["--log-level", "debug"]
    with ServerProcess(args) as srv:
        yield srv


# -- which worker serves a connection ---------------------------------------------------------------------


def socket_fds(pid: int) -> set[str]:
    """The sockets a process holds, as their /proc links (`socket:[INODE]`)."""
    links = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:"):
                    links.add(link)
    return links


def connect_to_each_worker(srv: ServerProcess, patience: float = 10.0) -> list[socket.socket]:
    """One connection served by each worker: connect until every worker holds one, close the extra ones.

    The worker that accepted a connection is the one whose descriptors gained a socket meanwhile: once the
    reply is in, the accepting worker holds the socket, so it is always among those that gained one, and
    another client accepted at the same time can only make the answer ambiguous (then it tries again),
    never wrong. (Looking the connection up in /proc/net/tcp is exact too, but slow: after a few storms it
    lists tens of thousands of TIME_WAITs, and a short client_timeout would close the probe meanwhile.)
    Both workers race to accept each connection, and on a busy machine one of them can win every race for
    a while: hence a deadline rather than a number of tries, and a pause between tries.
    """
    workers = srv.worker_pids()
    chosen: dict[int, socket.socket] = {}
    deadline = time.monotonic() + patience
    try:
        while len(chosen) < len(workers) and time.monotonic() < deadline:
            for sock in chosen.values():
                # Keep the chosen ones from idling into a short client_timeout while the search goes on.
                sock.sendall(b"hello\n")
                assert read_lines(sock, 1) == [b"hello"]
            before = {pid: socket_fds(pid) for pid in workers}
            sock = connect(srv.port, timeout=10)
            # A reply proves that a worker accepted the connection, so its socket is in that worker's fds.
            sock.sendall(b"hello\n")
            assert read_lines(sock, 1) == [b"hello"]
            gained = [pid for pid in workers if socket_fds(pid) - before[pid]]
            if len(gained) == 1 and gained[0] not in chosen:
                chosen[gained[0]] = sock
            else:
                sock.close()  # already covered, or not told apart: try another
                time.sleep(0.02)
    except BaseException:
        for sock in chosen.values():
            sock.close()
        raise
    if len(chosen) < len(workers):
        for sock in chosen.values():
            sock.close()
        raise AssertionError(
            f"for {patience} s every connection was served by workers {sorted(chosen)} of {workers}: "
            f"{srv.status()['workers']}"
        )
    return list(chosen.values())


# -- the normal client ------------------------------------------------------------------------------------


class Probe:
    """A normal client in its own thread: a line on each of its connections every PROBE_INTERVAL, timed."""

    def __init__(self, srv: ServerProcess):
        self.srv = srv
        self.socks: list[socket.socket] = []
        self.rtts: list[float] = []
        self.rounds = 0  # rounds done: one round trip on every connection each
        self.error: BaseException | None = None
        self.error_after = 0.0  # seconds from the probe's start to its error
        self._started = 0.0
        self.max_rss: dict[int, int] = {}  # worker pid -> the largest RSS seen, in bytes
        self._rss_lock = threading.Lock()
        self._workers: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def __enter__(self) -> Probe:
        self._workers = self.srv.worker_pids()
        self.socks = connect_to_each_worker(self.srv)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            # Enough rounds that even a hostile behaviour over in a few milliseconds had a probe beside it.
            deadline = time.monotonic() + SERVED_PATIENCE
            while self.rounds < PROBE_MIN_ROUNDS and self._thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            self._stop.set()
            self._thread.join(15)
            for sock in self.socks:
                sock.close()

    @property
    def max_rtt(self) -> float:
        return max(self.rtts, default=0.0)

    def note_rss(self, pid: int, size: int) -> None:
        """Record one RSS figure of a worker (from this thread or from a status in the test's thread)."""
        with self._rss_lock:
            self.max_rss[pid] = max(self.max_rss.get(pid, 0), size)

    def _sample_rss(self) -> None:
        # The same figure as the status's rss_bytes, read every round: the peak of a behaviour over in well
        # under a second would not reach a state file.
        for pid in self._workers:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
                self.note_rss(pid, pages * os.sysconf("SC_PAGE_SIZE"))

    def _run(self) -> None:
        count = 0
        next_round = self._started = time.monotonic()
        try:
            while not self._stop.is_set():
                for sock in self.socks:
                    count += 1
                    line = b"probe %d" % count
                    started = time.monotonic()
                    sock.sendall(line + b"\n")
                    reply = read_lines(sock, 1)[0]
                    self.rtts.append(time.monotonic() - started)
                    assert reply == line, f"the probe got {reply[:100]!r} for {line!r}"
                self.rounds += 1
                self._sample_rss()
                # A late round is not made up for with a burst: the next one starts one interval later.
                next_round = max(next_round + PROBE_INTERVAL, time.monotonic())
                self._stop.wait(next_round - time.monotonic())
        except BaseException as exc:  # reported by check(), in the test's thread
            self.error = exc
            self.error_after = time.monotonic() - self._started

    def check(self) -> None:
        assert self.error is None, (
            f"the normal client failed {self.error_after:.2f} s after it started, "
            f"after {len(self.rtts)} round trips: {self.error!r}"
        )
        assert self.rounds >= PROBE_MIN_ROUNDS, f"the normal client made only {self.rounds} rounds"


# -- the frame of every test ------------------------------------------------------------------------------


class Watch:
    """What `hostile` hands a test: the probe, and `wait_clients` to see the server's view of connections."""

    def __init__(self, srv: ServerProcess, probe: Probe):
        self.srv = srv
        self.probe = probe
        self.baseline_rss = {pid: rss(pid) for pid in probe._workers}  # before the behaviour

    def growth(self) -> dict[int, int]:
        """How much each worker's RSS grew, at its peak, over its RSS before the behaviour."""
        return {pid: self.probe.max_rss.get(pid, base) - base for pid, base in self.baseline_rss.items()}

    def served_meanwhile(self, rounds: int = PROBE_MIN_ROUNDS) -> None:
        """Wait until the probe has made `rounds` more round trips on every worker: call it while a hostile
        behaviour is in place, to see that the behaviour holds up no other client of its worker."""
        target = self.probe.rounds + rounds

        def served() -> bool:
            assert self.probe.error is None, f"the normal client failed: {self.probe.error!r}"
            return self.probe.rounds >= target

        wait_for(served, timeout=SERVED_PATIENCE, what=f"{rounds} probe round trips on each worker meanwhile")

    def wait_clients(self, still_open: int) -> dict:
        """Poll `prefork status` until the workers serve exactly the probe's connections plus `still_open`."""
        expected = len(self.probe.socks) + still_open
        seen: dict = {}

        def settled() -> bool:
            status = self.srv.status()
            seen["clients"] = sum(w["clients"] for w in status["workers"])
            seen["status"] = status
            for w in status["workers"]:
                self.probe.note_rss(w["pid"], w["rss_bytes"])
            return seen["clients"] == expected

        try:
            wait_for(settled, timeout=SETTLE_TIMEOUT, interval=0.2, what="the status")
        except AssertionError:
            raise AssertionError(
                f"status shows {seen.get('clients')} clients after {SETTLE_TIMEOUT} s, expected {expected} "
                f"({still_open} hostile + {len(self.probe.socks)} probe connections still open)"
            ) from None
        return seen["status"]


@contextlib.contextmanager
def hostile(srv: ServerProcess, label: str) -> Iterator[Watch]:
    """Run the body (one hostile behaviour, which closes its connections) beside a probe, then check."""
    log_start = len(srv.logs())
    workers = srv.worker_pids()
    with Probe(srv) as probe:
        watch = Watch(srv, probe)
        yield watch
        watch.wait_clients(still_open=0)  # every hostile connection is closed by now
    rss = {pid: round(size / MiB, 1) for pid, size in sorted(probe.max_rss.items())}
    print(
        f"\n[hostile] {label}: probe max round trip {probe.max_rtt * 1000:.1f} ms "
        f"({len(probe.rtts)} round trips); max RSS per worker (MiB): {rss}"
    )
    probe.check()
    assert srv.worker_pids() == workers, f"workers changed from {workers} to {srv.worker_pids()}"
    new_log = srv.logs()[log_start:]
    assert "Traceback" not in new_log, new_log[-3000:]
    assert max(probe.max_rss.values()) < RSS_BOUND, f"worker RSS (MiB): {rss}"


# -- client helpers ---------------------------------------------------------------------------------------


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER on, timeout 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def raise_nofile_limit(needed: int) -> tuple[int, int]:
    """Raise this process's soft open-files limit to at least `needed`; return the old limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"the hard open-files limit {hard} is below the {needed} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return soft, hard


def run_until_closed(
    sock: socket.socket, send: Callable[[socket.socket], int], deadline: float, pause: float
) -> tuple[bool, bytes]:
    """Keep sending with `send` (non-blocking socket) until the server closes or `deadline` passes.

    Returns (closed, everything received). Closed means EOF or a reset seen on either direction; the
    socket is checked for input before every send, and `pause` is the longest wait between sends.
    """
    received = bytearray()
    while time.monotonic() < deadline:
        readable, writable, _ = select.select([sock], [sock], [], min(pause, max(0.0, deadline - time.monotonic())))
        if readable:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return True, bytes(received)
            if not data:
                return True, bytes(received)
            received += data
            continue
        if writable:
            try:
                send(sock)
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                return True, bytes(received)
            if pause:
                time.sleep(pause)  # select said writable at once: this is where a slow client waits
    return False, bytes(received)


# -- 1. idle connections ----------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_5000_idle_connections_are_all_served(server):
    count = 5000
    old_soft, old_hard = raise_nofile_limit(count + 256)  # the clients, the probe, pytest's own files
    idle: list[socket.socket] = []
    try:
        with hostile(server, "5,000 idle connections") as watch:
            try:
                for _ in range(count):
                    idle.append(connect(server.port, timeout=30))
                # Served, not waiting in the backlog: the workers count every one of them as a client.
                status = watch.wait_clients(still_open=count)
                print(f"\n[hostile] idle clients per worker: {[w['clients'] for w in status['workers']]}")
                watch.served_meanwhile()
                # Every 50th one still answers after all that idling.
                for sock in idle[::50]:
                    sock.sendall(b"still here\n")
                    assert read_lines(sock, 1) == [b"still here"]
            finally:
                for sock in idle:
                    sock.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, old_hard))


# -- 2, 3. slow loris -------------------------------------------------------------------------------------


def closed_by_client_timeout(srv: ServerProcess, log_start: int) -> None:
    """The one connection the server closed since `log_start` was closed by client_timeout: the workers
    log the reason (debug), and the probe's connections, which keep sending, are never closed."""
    closes = srv.logs()[log_start:].count(TIMEOUT_CLOSE_LOG)
    assert closes == 1, f"{closes} closes by client_timeout logged, expected 1:\n{srv.logs()[log_start:][-2000:]}"


@pytest.mark.timeout(90)
def test_over_long_line_then_a_byte_every_300ms_is_closed_by_client_timeout(impatient):
    """Past max_line the server skips to the next LF; a trickle that never sends one is still timed out."""
    with hostile(impatient, "over-long line, then a byte every 0.3 s"):
        log_start = len(impatient.logs())
        started = time.monotonic()
        with connect(impatient.port) as sock:
            sock.sendall(b"L" * (4 * MAX_LINE))  # no LF: the server is now skipping this line
            sock.setblocking(False)
            closed, received = run_until_closed(
                sock, lambda s: s.send(b"L"), deadline=started + CLIENT_TIMEOUT + CLOSE_PATIENCE, pause=0.3
            )
            elapsed = time.monotonic() - started
        assert closed, f"still open {elapsed:.1f} s after connecting (client_timeout {CLIENT_TIMEOUT} s)"
        print(f"\n[hostile] trickling client closed after {elapsed:.2f} s")
        assert received == b"", f"a partial line got a reply: {received[:200]!r}"
        wait_for(lambda: TIMEOUT_CLOSE_LOG in impatient.logs()[log_start:], what="the close to be logged")
        closed_by_client_timeout(impatient, log_start)


@pytest.mark.timeout(60)
def test_endless_line_streamed_at_full_speed_is_closed_by_client_timeout(impatient):
    """A line with no LF at all, sent as fast as the client can, is cut by client_timeout.

    50 MB crosses the loopback in milliseconds here, so the line does not stop at 50 MB: it goes on until
    the server closes (or the deadline passes). The deadline applies to complete lines, whatever the reader
    is doing; the client gets at most one reply (ERR too-long), never more.
    """
    chunk = b"S" * MiB
    sent = 0

    def send_chunk(sock: socket.socket) -> int:
        nonlocal sent
        n = sock.send(chunk)
        sent += n
        return n

    with hostile(impatient, "endless line at full speed"):
        log_start = len(impatient.logs())
        started = time.monotonic()
        with connect(impatient.port) as sock:
            sock.setblocking(False)
            closed, received = run_until_closed(
                sock, send_chunk, deadline=started + CLIENT_TIMEOUT + CLOSE_PATIENCE, pause=0.0
            )
            elapsed = time.monotonic() - started
        print(f"\n[hostile] streamed {sent / MiB:.0f} MiB in {elapsed:.2f} s, closed: {closed}")
        assert closed, (
            f"still open {elapsed:.1f} s after connecting, {sent / MiB:.0f} MiB read "
            f"(client_timeout {CLIENT_TIMEOUT} s)"
        )
        assert received in (b"", b"ERR too-long\n"), f"more than one reply: {received[:200]!r}"
        wait_for(lambda: TIMEOUT_CLOSE_LOG in impatient.logs()[log_start:], what="the close to be logged")
        closed_by_client_timeout(impatient, log_start)


@pytest.mark.timeout(90)
def test_endless_line_streamed_at_full_speed_holds_up_no_other_client(server):
    """While one client streams a line with no LF as fast as it can (client_timeout 300 s: the stream goes
    on as long as the test wants), the probe keeps being served on both workers: the reader of the stream
    lets its worker's other clients in (FAIR_READS), whatever the stream's speed."""
    stop = threading.Event()
    sent = [0]

    def stream(sock: socket.socket) -> None:
        chunk = b"S" * MiB
        with contextlib.suppress(OSError):
            while not stop.is_set():
                sent[0] += sock.send(chunk)

    with hostile(server, "endless line at full speed, held") as watch:
        with connect(server.port) as sock:
            streamer = threading.Thread(target=stream, args=(sock,), daemon=True)
            streamer.start()
            try:
                wait_for(lambda: sent[0] >= 64 * MiB, timeout=SERVED_PATIENCE, what="the stream to flow")
                watch.served_meanwhile()
                assert streamer.is_alive(), "the stream ended before the probe was served"
                read = sent[0]
                watch.served_meanwhile()  # and the stream still flows meanwhile
                assert sent[0] > read, "the stream stalled while the probe was served"
            finally:
                stop.set()
                streamer.join(30)
        print(f"\n[hostile] streamed {sent[0] / MiB:.0f} MiB beside the probe")


# -- 4. clients that never read ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_clients_that_never_read_their_replies_stall_only_themselves(server):
    """Clients pipeline lines forever and never read: the server stops reading from each, and only them."""
    line_sizes = [10, 100, MAX_LINE - 1, MAX_LINE - 1]
    cap = 256 * MiB  # far beyond socket buffers plus 4096 lines in flight: the server read without bound
    with hostile(server, "clients that never read") as watch:
        socks = [connect(server.port) for _ in line_sizes]
        try:
            chunks = [(b"p" * size + b"\n") * max(1, 65536 // (size + 1)) for size in line_sizes]
            sent = [0] * len(socks)
            for sock in socks:
                sock.setblocking(False)
            # Push on every connection until none has taken a byte for a full second: all are stalled.
            last_progress = time.monotonic()
            while time.monotonic() - last_progress < 1.0 and max(sent) < cap:
                _, writable, _ = select.select([], socks, [], 0.1)
                for sock in writable:
                    i = socks.index(sock)
                    with contextlib.suppress(BlockingIOError):
                        sent[i] += sock.send(chunks[i])
                        last_progress = time.monotonic()
            print(f"\n[hostile] never-reading clients stalled after sending (MiB): {[s // MiB for s in sent]}")
            assert max(sent) < cap, f"the server read {max(sent) / MiB:.0f} MiB from a client that never reads"
            # Stalled, not dropped: they stay connected (client_timeout is 300 s) while the probe is served.
            watch.wait_clients(still_open=len(socks))
            watch.served_meanwhile()  # the probe keeps going beside the stalled clients
            # Each worker holds at most what the README promises for the stalled clients (all of them, as
            # which worker serves which is not known), over what it held before.
            bound = sum(stalled_connection_bound(size, MAX_LINE) for size in line_sizes) + ALLOCATOR_SLACK
            growth = watch.growth()
            print(f"[hostile] RSS growth per worker (MiB): {[round(g / MiB, 2) for g in growth.values()]}")
            assert max(growth.values()) <= bound, f"RSS growth {growth}, bound {bound} for {len(socks)} stalled clients"
        finally:
            for sock in socks:
                sock.close()  # with replies unread: the server sees RST


# -- 5. random garbage ------------------------------------------------------------------------------------

_TO_ASCII = bytes(i & 0x7F for i in range(256))


def garbage(rng: random.Random, size: int) -> bytes:
    """Random bytes with random LFs: full-range segments (mostly bad UTF-8, some over max_line) and 7-bit
    segments (mostly echoed lines, with every control byte, CR included)."""
    parts = []
    total = 0
    while total < size:
        part = rng.randbytes(rng.randint(1, 20_000))
        if rng.random() < 0.5:
            part = part.translate(_TO_ASCII)
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def garbage_session(port: int, seed: int, size: int) -> tuple[list[bytes], list[bytes]]:
    """Send `size` bytes of garbage in random pieces (a thread), half-close, read every reply until EOF.

    Returns (expected replies, replies)."""
    rng = random.Random(seed)
    data = garbage(rng, size)
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # data ended with LF: no final unterminated line
    expected = [expected_reply(line, max_line=MAX_LINE) for line in lines]
    with connect(port) as sock:
        # Replies flow while the garbage is sent: reading only afterwards would stall both sides.
        def send() -> None:
            i = 0
            while i < len(data):
                n = rng.randint(1, 70_000)
                sock.sendall(data[i : i + n])
                i += n
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        received = read_all(sock)
        sender.join(30)
    assert received == b"" or received.endswith(b"\n"), f"reply stream ends mid-line: {received[-100:]!r}"
    return expected, received.split(b"\n")[:-1]


@pytest.mark.timeout(90)
def test_random_binary_garbage_gets_well_formed_replies_only(server):
    seed = random.randrange(1 << 32)
    print(f"\n[hostile] garbage seed {seed}")
    with hostile(server, "random binary garbage"):
        with ThreadPoolExecutor(4) as pool:
            sessions = list(pool.map(lambda i: garbage_session(server.port, seed + i, 4 * MiB), range(4)))
    for i, (expected, replies) in enumerate(sessions):
        allowed = {b"ERR too-long", b"ERR empty", b"ERR bad-utf8"}
        odd = [r for r, e in zip(replies, expected, strict=False) if r != e and r not in allowed]
        assert not odd, f"session {i} (seed {seed + i}): replies neither the line nor an ERR: {odd[:3]!r}"
        assert len(replies) == len(expected), f"session {i} (seed {seed + i}): {len(replies)} of {len(expected)}"
        first = next((j for j, (r, e) in enumerate(zip(replies, expected, strict=False)) if r != e), None)
        assert first is None, (
            f"session {i} (seed {seed + i}): reply {first} is {replies[first][:80]!r}, "
            f"expected {expected[first][:80]!r}"
        )


# -- 6. connect-and-close storms --------------------------------------------------------------------------


def storm(port: int, seed: int, count: int) -> None:
    """`count` connections closed at once in assorted ways, half of them with RST."""
    rng = random.Random(seed)
    for _ in range(count):
        sock = connect(port, timeout=10)
        how = rng.randrange(6)
        try:
            if how == 0:
                sock.close()  # FIN at once
            elif how == 1:
                reset(sock)  # RST at once
            elif how == 2:
                sock.sendall(b"partial line")
                reset(sock)
            elif how == 3:
                sock.sendall(b"line\n")
                sock.close()  # the reply meets a closed socket
            elif how == 4:
                sock.sendall(b"line\npartial")
                sock.shutdown(socket.SHUT_WR)
                sock.close()
            else:
                sock.sendall(b"line\n" * 100)
                reset(sock)
        finally:
            sock.close()


@pytest.mark.timeout(90)
def test_connect_and_close_storms(server):
    threads, per_thread = 4, 1000
    with hostile(server, f"{threads * per_thread} connect/close, half with RST"):
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda i: storm(server.port, i, per_thread), range(threads)))


# -- 7. RST with lines in flight --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_reset_with_4000_lines_in_flight(server):
    """4,000 lines sent without reading a reply, then RST: at once, or once replies have started to flow."""
    with hostile(server, "RST with 4,000 lines in flight"):
        for i in range(20):
            size = 10 if i % 2 else MAX_LINE - 1
            sock = connect(server.port)
            try:
                sock.sendall(b"".join(b"%04d " % n + b"r" * (size - 5) + b"\n" for n in range(4000)))
                if i % 4 >= 2:
                    assert sock.recv(1), "no reply at all"  # the server is writing replies now
            finally:
                reset(sock)


# -- 8. a huge single write -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_100000_lines_in_one_write_all_answered_in_order(server):
    count = 100_000
    lines = [b"line %06d" % i for i in range(count)]
    payload = b"".join(line + b"\n" for line in lines)
    with hostile(server, "100,000 lines in one write"):
        with connect(server.port) as sock:
            # One sendall of the whole payload; the replies are read meanwhile, or both sides would stall.
            sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
            sender.start()
            replies = read_lines(sock, count)
            sender.join(30)
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b""
    assert replies == lines
