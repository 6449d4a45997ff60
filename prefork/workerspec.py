"""What the master hands a worker at fork time: the one piece of the worker that the master imports.

The worker module itself (``prefork.worker``) monkey-patches with gevent when it is imported, so only a
freshly forked child ever imports it: the master never loads gevent.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from prefork.privileges import Identity
from prefork.protocol.allow import AllowList


@dataclass
class WorkerSpec:
    """Everything a new worker needs from its master."""

    config: Any  # prefork.config.loader.Config
    listeners: list[socket.socket]
    generation: int
    heartbeat_fd: int  # an anonymous file shared with the master: state and heartbeat (prefork.state)
    master_pid: int
    close_fds: list[int] = field(default_factory=list)
    app_dir: str = ""  # the directory to import the app from (server.chdir, else where prefork started)
    identity: Identity | None = None  # who to run as (server.user/group), or None: unchanged
    accept_table: Any = None  # prefork.state.AcceptTable shared by all workers: client counts per worker
    accept_slot: int | None = None  # this worker's slot in it (None: takes no part in balancing)
    proxy_modes: list[str] = field(default_factory=list)  # server.proxy_protocol of each listener, in order
    framings: list[str] = field(default_factory=list)  # server.framing of each listener, in order
    acks: list[str] = field(default_factory=list)  # server.ack (on, off, auto) of each listener, in order
    tls: list[Any] = field(default_factory=list)  # prefork.tls.TlsSettings (None: plaintext) of each listener
    allow_from: list[AllowList] = field(default_factory=list)  # server.allow_from of each listener, in order
    handoff_channel: socket.socket | None = None  # this generation's handoff listener (prefork.handoff)
    handoff_board: Any = None  # prefork.handoff.HandoffBoard: the generation serving now
