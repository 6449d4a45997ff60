"""Telling systemd what the master is doing (``Type=notify``), without a dependency.

systemd passes ``NOTIFY_SOCKET`` (a datagram socket, abstract when it starts with ``@``); each message is
newline-separated ``KEY=VALUE`` lines. The master sends:

- ``READY=1`` once every worker of the first generation serves, and again when a reload ends (the new
  generation serves, or the old one was kept);
- ``RELOADING=1`` with ``MONOTONIC_USEC`` when a HUP starts a reload;
- ``STOPPING=1`` when it starts to stop;
- ``STATUS=2 workers, gen 3, 1,234 clients`` when that summary changes;
- ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` when systemd asks for it (``WatchdogSec=``);
- ``MAINPID=<pid>`` with ``READY=1`` from a new master started by an upgrade (USR2), once it serves
  (``NotifyAccess=all``: it is not the main process yet); a new master that fails sends nothing.

Without ``NOTIFY_SOCKET`` every call is a no-op. A failing send is ignored: systemd's view must never
stop the server.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """The master's line to systemd."""

    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_s = int(env.get("WATCHDOG_USEC", "0") or 0) / 1e6
        if env.get("WATCHDOG_PID") and env.get("WATCHDOG_PID") != str(os.getpid()):
            self.watchdog_s = 0.0  # meant for another process
        self._next_watchdog = 0.0
        self._status = ""
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> None:
        """Send one message of KEY=VALUE lines."""
        if not self.address:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            pass

    def ready(self, status: str) -> None:
        self._status = status
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, status: str) -> None:
        """Send STATUS= if it changed."""
        if status != self._status:
            self._status = status
            self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        """Send WATCHDOG=1 when due (call it on every pass of the main loop)."""
        if self.watchdog_s and time.monotonic() >= self._next_watchdog:
            self._next_watchdog = time.monotonic() + self.watchdog_s / 2
            self.send("WATCHDOG=1")

    def filenos(self) -> list[int]:
        """The descriptor of the socket to systemd, once one is open: a forked worker must close it."""
        return [] if self._sock is None else [self._sock.fileno()]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
