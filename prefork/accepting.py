"""Taking connections, in the worker: off its listeners, and from the previous generation at a reload.

Imported only by ``prefork.worker``, after its gevent monkey-patching. ``Acceptor`` serves every listener
with a gevent StreamServer, all sharing one pool of ``worker_connections`` clients, and hands each
connection, once it is a client, to the worker's ``serve``:

- Balancing: before each accept a worker holding more than its share of the clients pauses accepting
  (``AcceptGate``; the shared counts are ``prefork.state.AcceptTable``), and ``server.allow_from`` closes a
  refused peer at once (``GatedStreamServer``, with the listener's ``prefork.protocol.door.Door``).
- Before a connection is a client: on a PROXY listener its header (``prefork.protocol.proxy``), on a TLS
  listener its handshake (``prefork.protocol.tlsaccept``), each in the connection's own greenlet
  (``handshakes``, which a graceful stop ends).
- Adoption: a connection handed off by a worker of the previous generation (``prefork.handoff``) is served
  as if accepted here, on the settings of the listener it came in on.
- At a graceful stop (the worker's ``_graceful_stop`` says when): accepting stops, and at the final stop
  what the listen backlog holds is accepted and served first (the last close of a listener resets it).
"""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer
from gevent.socket import socket as green_socket

from prefork.handoff import HANDOFF_TIMEOUT_S, adopt
from prefork.protocol.allow import EVERYONE
from prefork.protocol.connection import ProtocolSettings
from prefork.protocol.counters import Counters
from prefork.protocol.door import REFUSED_PER_WAKE, Door, door_for
from prefork.protocol.proxy import client_address
from prefork.protocol.replies import StopReading
from prefork.protocol.tlsaccept import TlsListener
from prefork.workerspec import WorkerSpec

# Accept balancing (AcceptGate below; the shared counts are prefork.state.AcceptTable).
# Clients a worker may hold above the least loaded accepting worker before it pauses: 2, or 1/16 of that
# worker's clients when more. The share keeps the spread within about 6% at any scale while sparing the
# pauses of a large burst (two workers taking 5,000 clients leapfrog in steps of the slack: with 2 alone,
# some 850 pauses made accepting them take 1.7x as long; with the share, 90 pauses and no measurable cost).
ACCEPT_SLACK = 2
ACCEPT_SLACK_PART = 16
ACCEPT_STAMP_S = 0.25  # how often an accepting worker stamps its slot
ACCEPT_STALE_NS = 1_000_000_000  # a worker not stamped for 1 s has a blocked loop: the others stop waiting for it
# How long a worker ahead of the others leaves the backlog to them before it looks again: 0.2 ms after an
# accept, doubling while it stays ahead, up to 5 ms. Short, because two workers leapfrog each other through a
# burst and each one's pause may hold up the other's turn (100 clients at once: 1 ms pauses added 10-15 ms);
# growing, because a worker kept ahead (the others busy, or one with a blocked loop not yet left out) would
# otherwise wake thousands of times a second.
ACCEPT_PAUSE_S = (0.0002, 0.005)

# The worker's side of a client: (listener's settings, socket, client address, bytes carried over from the
# previous generation, the framer's state it sent). Returns when the client is done.
Serve = Callable[[ProtocolSettings, Any, Any, bytes, dict | None], None]


class Acceptor:
    """One worker's listeners and handoff channel: takes connections and hands each client to ``serve``."""

    def __init__(
        self,
        spec: WorkerSpec,
        settings: list[ProtocolSettings],
        tls: list[TlsListener | None],
        counters: Counters,
        serve: Serve,
    ):
        self.spec = spec
        self.cfg = spec.config
        self.settings = settings  # per listener (server.framing and server.ack may differ by address)
        self.tls = tls  # each listener's TLS context (server.tls_cert), None: plaintext
        self.counters = counters
        self.serve = serve
        self.gate = AcceptGate(spec.accept_table, spec.accept_slot, self.cfg.server.worker_connections)
        self.servers: list[Any] = []
        self.pool: Any = None
        # Greenlets of connections still reading their PROXY header (server.proxy_protocol) or in their TLS
        # handshake: not clients yet, so not the worker's connections, but a graceful stop must end them too.
        self.handshakes: set[gevent.Greenlet] = set()
        self.draining = False  # a graceful stop began: a connection that becomes a client now is stopped at once
        self.adopter: Any = None  # the server adopting connections handed off by the previous generation

    def start(self) -> None:
        """Start accepting on every listener, and adopting on this generation's handoff channel."""
        # One connection pool across all listeners: worker_connections is per worker. When it is full
        # the servers stop accepting and further clients wait in the listen backlog.
        pool = self.pool = Pool(self.cfg.server.worker_connections)
        modes = self.spec.proxy_modes or ["off"] * len(self.spec.listeners)
        allows = self.spec.allow_from or [EVERYONE] * len(self.spec.listeners)
        tls = self.tls or [None] * len(self.spec.listeners)
        listening = zip(self.spec.listeners, modes, self.settings, allows, tls, strict=True)
        for sock, mode, settings, allow, tls_listener in listening:
            listener = green_socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
            balancers = None if mode == "off" else self.cfg.server.proxy_allow_from
            door = door_for(listener, allow, balancers, self.counters)
            if mode == "off" and tls_listener is None:
                handle = functools.partial(self._client, settings)
            else:
                handle = functools.partial(self._handle_proxied, mode, tls_listener, settings, door=door)
            server = GatedStreamServer(listener, handle, spawn=pool)
            server.gate = self.gate
            server.door = door
            server.start()
            self.servers.append(server)
            self.gate.servers.append(server)
        channel = self.spec.handoff_channel
        if channel is not None:
            listener = green_socket(channel.family, channel.type, channel.proto, fileno=channel.detach())
            self.adopter = StreamServer(listener, self._adopt)
            self.adopter.start()
        self.gate.open()

    # -- taking connections -------------------------------------------------------------------------

    def _handle_proxied(
        self,
        mode: str,
        tls: TlsListener | None,
        settings: ProtocolSettings,
        sock: Any,
        addr: Any,
        door: Door | None = None,
    ) -> None:
        # A balancer's header first (server.proxy_protocol): the client it names is the one served. The wait
        # for it (up to HEADER_TIMEOUT, or that long to tell a direct client) is cut short by a graceful stop.
        # Then, on a TLS listener, the handshake (HAProxy in TCP mode passes TLS through after its header),
        # with its deadline, cut short by a graceful stop too.
        me = gevent.getcurrent()
        self.handshakes.add(me)
        try:
            client = None if self.draining else client_address(sock, addr, mode, self.cfg.server.proxy_allow_from)
            if client is not None and door is not None and not door.after_header(sock, addr, client):
                client = None  # outside server.allow_from: closed, counted, logged (before any TLS is spent on it)
            if client is not None and tls is not None:
                peer = "unix" if sock.family == socket.AF_UNIX else str(client[0])
                tls_sock = tls.accept(sock, peer, self.counters)
                if tls_sock is None:
                    client = None
                else:
                    sock = tls_sock
        except StopReading:
            client = None  # thrown by end_handshakes: no line was read, the peer sees a close
        finally:
            self.handshakes.discard(me)
        if client is None:
            sock.close()
            self.gate.released()
            return
        self._client(settings, sock, client)

    def _client(
        self, settings: ProtocolSettings, sock: Any, addr: Any, carried: bytes = b"", state: dict | None = None
    ) -> None:
        try:
            self.serve(settings, sock, addr, carried, state)
        finally:
            self.gate.released()

    def _adopt(self, channel: Any, _addr: Any) -> None:
        """A connection handed off by a worker of the previous generation at a reload (prefork.handoff):
        served as if accepted here, its carried bytes first."""
        channel.settimeout(HANDOFF_TIMEOUT_S)
        try:
            adopted = adopt(channel)
        finally:
            channel.close()
        if adopted is None:
            return
        fd, addr, carried, state = adopted
        sock = green_socket(fileno=fd)
        self.counters.handoffs["in"] += 1
        self.gate.accepted()
        self.pool.spawn(self._client, self._settings_of(sock), sock, addr, carried, state)

    def _settings_of(self, sock: Any) -> ProtocolSettings:
        """The settings of the listener an adopted connection came in on: the one whose address is its local
        address (a wildcard bind matches by port), the first listener's if none does."""
        local = sock.getsockname()
        for server, settings in zip(self.servers, self.settings, strict=False):
            bound = server.socket.getsockname()
            if bound == local:
                return settings
            if isinstance(bound, tuple) and isinstance(local, tuple) and bound[1] == local[1]:
                if bound[0] in ("0.0.0.0", "::"):
                    return settings
        return self.settings[0]

    # -- stopping -----------------------------------------------------------------------------------

    def stop(self, final: bool) -> None:
        """A graceful stop begins: take no more connections, except, at the final stop (``final``), what the
        listen backlog holds (``serve_backlogs``). Connections that become clients from now on are stopped
        at once by the worker (``draining``)."""
        self.gate.close()  # first: the other workers stop comparing themselves with this one
        if self.adopter is not None:
            self.adopter.close()  # this generation takes no more connections from the one before
        if not final:
            # The listeners stay open in the master for the workers that go on: what waits in the backlog
            # is theirs.
            for server in self.servers:
                server.close()  # stops accepting; the listening socket closes in this process only
        self.draining = True

    def end_handshakes(self) -> None:
        """End the wait for every PROXY header and TLS handshake under way: those peers see a close."""
        for handshake in list(self.handshakes):
            handshake.kill(StopReading, block=False)

    def serve_backlogs(self, read_until: float, deadline: float) -> None:
        """The final stop: the last close of a listener resets what its backlog holds, so serve that first
        (accepting until the event loop's time ``read_until``; waiting until ``time.monotonic()`` is
        ``deadline`` at most)."""
        backlogs = [gevent.spawn(self._serve_backlog, server, read_until) for server in self.servers]
        gevent.joinall(backlogs, timeout=max(0.0, deadline - time.monotonic()))

    def _serve_backlog(self, server: StreamServer, read_until: float) -> None:
        """Accept what the listen backlog holds (connections the kernel completed that no worker accepted
        yet), waiting for room as clients leave, then close the listener in this process. The last close of
        a listener resets the connections still queued on it: accepted, they are served through the stop
        like the others. Bounded by the stop's reading time."""
        server.stop_accepting()
        clock = gevent.get_hub().loop
        try:
            while (left := read_until - clock.now()) > 0:
                if server.pool is not None and not server.pool.wait_available(timeout=left):
                    break
                try:
                    accepted = server.do_read()
                except OSError:
                    break
                if not accepted:
                    if server.refused_only:
                        continue  # refused ones (server.allow_from) were all it took: look again
                    break  # the backlog is empty
                server.do_handle(*accepted)
        finally:
            server.close()

    def join(self, deadline: float) -> None:
        """Wait for every client to be done, until ``time.monotonic()`` is ``deadline`` at most."""
        pools = {server.pool for server in self.servers}
        for pool in pools:
            pool.join(timeout=max(0.0, deadline - time.monotonic()))


class AcceptGate:
    """Keeps this worker from holding more than its share of the clients.

    All workers accept on the same listeners, and whichever wakes first takes what the backlog holds:
    without this, one of 2 workers took all of 100 clients connecting at once, and with clients that stay
    connected for hours the other worker stayed idle. So before each accept the worker compares its clients
    with the fewest held by any accepting worker with room (prefork.state.AcceptTable). More than the slack
    above it (ACCEPT_SLACK, or 1/ACCEPT_SLACK_PART of those fewest), it leaves the connection in the
    kernel's backlog for a worker with fewer clients: it stops accepting for a moment (ACCEPT_PAUSE_S, or
    until one of its own clients leaves), then waits for the listeners again and looks again if a connection
    is still waiting. So a worker that is ahead looks again only while the others have connections to take,
    and sleeps otherwise. The least loaded worker never pauses, so some worker always accepts; a worker
    whose loop is blocked stops stamping its slot and is left out within ACCEPT_STALE_NS. Counts change only
    at accept and close: nothing is done per line.
    """

    def __init__(self, table: Any, slot: int | None, capacity: int):
        self.table = table if slot is not None else None  # no slot (table full): accept as gevent does
        self.slot = slot
        self.capacity = capacity
        self.servers: list[Any] = []
        self.clients = 0
        self._pause: Any = None  # the timer of a pause
        self._pause_s = ACCEPT_PAUSE_S[0]  # the length of the next one
        self._stamper: Any = None

    def open(self) -> None:
        """This worker accepts from now on."""
        if self.table is None:
            return
        self.table.open(self.slot, os.getpid(), self.capacity)
        self._stamper = gevent.get_hub().loop.timer(ACCEPT_STAMP_S, ACCEPT_STAMP_S, ref=False)
        self._stamper.start(self.table.stamp, self.slot)

    def close(self) -> None:
        """This worker stops accepting (graceful stop)."""
        if self.table is None:
            return
        self.table.close(self.slot)
        for timer in (self._stamper, self._pause):
            if timer is not None:
                timer.stop()
                timer.close()
        self._stamper = self._pause = None
        self.table = None

    def admit(self) -> bool:
        """Whether to accept one more connection now; if not, pause accepting for a moment."""
        if self.table is None or not self._ahead():
            return True
        for server in self.servers:
            server.stop_accepting()
        if self._pause is None:  # else paused already (gevent restarted a server as a client left)
            self._pause = gevent.get_hub().loop.timer(self._pause_s, ref=False)
            self._pause.start(self._resume)
            self._pause_s = min(self._pause_s * 2, ACCEPT_PAUSE_S[1])
        return False

    def accepted(self) -> None:
        self._pause_s = ACCEPT_PAUSE_S[0]
        self.clients += 1
        if self.table is not None:
            self.table.set_clients(self.slot, self.clients)

    def released(self) -> None:
        self.clients -= 1
        if self.table is not None:
            self.table.set_clients(self.slot, self.clients)
            if self._pause is not None and not self._ahead():
                # No longer ahead: accept again now. Waiting out the pause could leave nobody accepting
                # (the others may have paused meanwhile, ahead of this worker's new count).
                self._pause.stop()
                self._resume()

    def _ahead(self) -> bool:
        assert self.table is not None and self.slot is not None  # only asked of a worker with a slot
        fewest = self.table.fewest_clients(self.slot, ACCEPT_STALE_NS)
        return self.clients > fewest + max(ACCEPT_SLACK, fewest // ACCEPT_SLACK_PART)

    def _resume(self) -> None:
        self._pause.close()
        self._pause = None
        for server in self.servers:
            if server.started:
                server.start_accepting()


class GatedStreamServer(StreamServer):
    """A StreamServer that asks its worker's AcceptGate before each accept, and closes at once a peer its
    Door refuses (server.allow_from): no greenlet, no client slot, no count in the gate."""

    gate: AcceptGate
    door: Door | None = None
    refused_only = False  # the last do_read refused REFUSED_PER_WAKE connections and accepted none: more may wait

    def do_read(self) -> Any:
        # Called by gevent's accept loop (up to max_accept times per wake-up); None ends the loop.
        self.refused_only = False
        for _ in range(REFUSED_PER_WAKE):
            if not self.gate.admit():
                return None
            accepted = super().do_read()
            if not accepted:
                return accepted
            if self.door is None or self.door.at_accept(*accepted):
                self.gate.accepted()
                return accepted
        self.refused_only = True  # the loop's other watchers get their turn, then accepting goes on
        return None
