"""Real log shippers for tests and benchmarks: a private rsyslogd, never the machine's own.

``Rsyslog(workdir, config)`` runs ``rsyslogd -n -f CONF -i PIDFILE`` from the installed Debian package
(``rsyslog``, with ``rsyslog-relp`` for omrelp) with a config of the caller's in its own directory: its queue
files, pid file and log are there, and it listens only where that config says (a private port on loopback).
``RELP_FORWARDER`` is such a config: messages in over plain TCP (``imtcp``, LF-framed), out over RELP
(``omrelp``) with rsyslog's reliable settings (retry forever, a queue that holds what is not acked yet), each
forwarded as the raw line it received.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

RSYSLOGD = "/usr/sbin/rsyslogd"
OMRELP = "omrelp.so"
START_TIMEOUT_S = 30.0

# {port}: where rsyslog takes messages (imtcp); {target}/{target_port}: the RELP server; {workdir}: its own.
RELP_FORWARDER = """\
global(workDirectory="{workdir}" maxMessageSize="64k")
module(load="imtcp")
module(load="omrelp")
template(name="raw" type="string" string="%rawmsg%")
input(type="imtcp" address="127.0.0.1" port="{port}")
action(type="omrelp" target="{target}" port="{target_port}" template="raw" windowSize="{window}"
       timeout="10" conn.timeout="5" rebindInterval="0"
       action.resumeRetryCount="-1" action.resumeInterval="1"
       queue.type="LinkedList" queue.size="1000000" queue.dequeueBatchSize="512"
       queue.filename="relpq" queue.saveOnShutdown="on" queue.maxDiskSpace="1g")
"""


class ShipperMissing(RuntimeError):
    """The shipper's Debian package is not installed (the message says which one)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_module_dir() -> Path:
    """Where rsyslog's modules are (omrelp among them), or ShipperMissing naming the package."""
    if not os.access(RSYSLOGD, os.X_OK):
        raise ShipperMissing("rsyslogd is not installed: apt-get install rsyslog rsyslog-relp")
    for candidate in Path("/usr/lib").glob("*/rsyslog"):
        if (candidate / OMRELP).exists():
            return candidate
    raise ShipperMissing("rsyslog's omrelp module is not installed: apt-get install rsyslog-relp")


class Rsyslog:
    """One private ``rsyslogd -n`` with ``config`` (a format string of RELP_FORWARDER's fields)."""

    def __init__(self, workdir: Path, config: str, **fields: object) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.module_dir = find_module_dir()
        self.port = free_port()
        self.conf = self.workdir / "rsyslog.conf"
        self.conf.write_text(config.format(workdir=self.workdir, port=self.port, **fields))
        self.pidfile = self.workdir / "rsyslogd.pid"
        self.log_path = self.workdir / "rsyslogd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Rsyslog:
        """Start it and wait until its TCP input takes connections."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile), "-M", str(self.module_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rsyslogd does not listen on {self.port}: {self.log_tail()}") from None
                time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (rsyslog saves its queue), then SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Rsyslog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cleanup(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
