"""The worker's check of ``server.allow_from`` on one TCP listener: a peer outside is closed as it is
accepted, before a byte of it is read, counted (``Counters.refused``) and logged (rate-limited: ``DOOR``).

With the PROXY protocol, a connection from the balancer (a peer in ``server.proxy_allow_from``) is let in
at accept: the check applies to the client its header names, once it is read (``after_header``). A header
naming nobody (LOCAL, UNKNOWN: a health check) is the balancer itself, which proxy_allow_from admits.
"""

from __future__ import annotations

import socket
from typing import Any

from prefork.protocol.allow import AllowList
from prefork.protocol.counters import Counters
from prefork.protocol.proxy import Networks, allowed
from prefork.protocol.rejects import DOOR
from prefork.sockets import address_of

SETTING = "server.allow_from"
# Connections refused at accept in one go before the event loop gets a turn: a flood of them must not starve
# the clients already served.
REFUSED_PER_WAKE = 64


class Door:
    """``server.allow_from`` of one TCP listener (the worker makes none for a unix socket, nor for everyone)."""

    __slots__ = ("allow", "listener", "balancers", "counters")

    def __init__(self, allow: AllowList, listener: str, balancers: Networks | None, counters: Counters):
        self.allow = allow
        self.listener = listener  # its address, for the log
        self.balancers = balancers  # server.proxy_allow_from when the listener takes PROXY headers, else None
        self.counters = counters

    def at_accept(self, sock: socket.socket, addr: Any) -> bool:
        """Whether a connection just accepted may go on; if not, it is closed, counted and logged."""
        peer = str(addr[0])
        if self.balancers is not None and allowed(peer, self.balancers):
            return True  # the balancer: its header names the client to check
        return self._check(sock, peer, peer)

    def after_header(self, sock: socket.socket, addr: Any, client: Any) -> bool:
        """Whether a connection whose PROXY header named ``client`` may go on (``client is addr``: the header
        named nobody, or the peer is no balancer and was checked at accept); if not, closed, counted, logged."""
        if client is addr:
            return True
        return self._check(sock, str(client[0]), f"{client[0]} (PROXY header from {addr[0]})")

    def _check(self, sock: socket.socket, address: str, who: str) -> bool:
        if self.allow.admits(address):
            return True
        sock.close()
        self.counters.refused["allow_from"] += 1
        DOOR.connection_refused(who, self.listener, SETTING)
        return False


def door_for(listener: socket.socket, allow: AllowList, balancers: Networks | None, counters: Counters) -> Door | None:
    """The check of ``allow`` on a listener (``balancers``: server.proxy_allow_from if it takes PROXY headers);
    None when it lets everyone in, and for a unix socket (its peers have no address; its file mode, set by
    server.unix_mode, says who may connect)."""
    if allow.everyone or listener.family == socket.AF_UNIX:
        return None
    return Door(allow, address_of(listener), balancers, counters)
