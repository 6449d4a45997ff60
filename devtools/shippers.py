"""Real syslog shippers for the tests and benchmarks: rsyslogd in the foreground with a config of its own.

``Rsyslog(directory, config)`` writes the config into ``directory`` (its work directory, pidfile and log
too) and runs ``rsyslogd -n -f CONF -i PIDFILE`` there, as a process of its own session, never touching the
machine's rsyslog (its config, its pidfile, ``/dev/log``: a config given here loads no input it does not
name). ``omfwd_config`` is a config that takes syslog lines on a local TCP port (``imtcp``) and forwards
them to prefork (``omfwd``, octet-counted by default); ``omrelp_config`` forwards over RELP instead, with the
repository's ``etc/rsyslog-omrelp.conf`` (``omrelp``, Debian's ``rsyslog-relp``, rsyslog's reliable settings).

    with Rsyslog(tmp_path / "rsyslog", omfwd_config(tmp_path / "rsyslog", in_port, prefork_port)) as rs:
        send_lines(in_port, [b"<13>hello"])
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

OMRELP_CONF = Path(__file__).resolve().parent.parent / "etc" / "rsyslog-omrelp.conf"
STOP_TIMEOUT_S = 30.0  # rsyslogd flushes its queues at SIGTERM: give it this long before SIGKILL
START_TIMEOUT_S = 30.0
POLL_S = 0.05
# RFC 5424 as rsyslog forwards it (its own RSYSLOG_SyslogProtocol23Format): ends with a LF, inside the count.
RFC5424_TEMPLATE = "RSYSLOG_SyslogProtocol23Format"


def rsyslogd_path() -> str:
    """The rsyslogd binary (Debian's package ``rsyslog`` puts it in /usr/sbin, not always on PATH)."""
    found = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if not os.access(found, os.X_OK):
        raise FileNotFoundError("rsyslogd not found: install the Debian package rsyslog")
    return found


class Rsyslog:
    """rsyslogd in the foreground with its own config, work directory and pidfile; a context manager."""

    def __init__(self, directory: Path, config: str, wait_port: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = self.directory / "rsyslog.conf"
        self.config_path.write_text(config)
        self.pidfile = self.directory / "rsyslogd.pid"
        self.log_path = self.directory / "rsyslogd.log"
        self.wait_port = wait_port  # an input port to wait for at start (None: wait for the pidfile)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = START_TIMEOUT_S) -> Rsyslog:
        """Start rsyslogd and wait until it serves (its input port accepts, or its pidfile is written)."""
        cmd = [rsyslogd_path(), "-n", "-f", str(self.config_path), "-i", str(self.pidfile)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.directory, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self._serving():
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited with {self.proc.returncode}: {self.logs()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"rsyslogd did not start within {timeout}s: {self.logs()[-2000:]}")
            time.sleep(POLL_S)
        return self

    def _serving(self) -> bool:
        if self.wait_port is None:
            return self.pidfile.exists()
        try:
            with socket.create_connection(("127.0.0.1", self.wait_port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (rsyslogd flushes what it holds), SIGKILL after ``timeout``; its exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = None
        return proc.returncode

    def signal(self, signum: int) -> None:
        if self.proc is not None:
            self.proc.send_signal(signum)

    def logs(self) -> str:
        """What rsyslogd wrote to stdout and stderr."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Rsyslog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def omfwd_config(
    directory: Path,
    in_port: int,
    target_port: int,
    framing: str = "octet-counted",
    template: str = RFC5424_TEMPLATE,
    action_options: str = "",
) -> str:
    """Take syslog over TCP on 127.0.0.1:in_port, forward every message to prefork on 127.0.0.1:target_port
    with ``omfwd`` (``framing``: octet-counted or traditional); ``action_options`` go into the action as is
    (queue and retry settings). Control characters (a tab) are kept as received, not escaped (``#011``)."""
    return f"""\
global(workDirectory="{directory}" maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{in_port}")
action(type="omfwd" target="127.0.0.1" port="{target_port}" protocol="tcp" TCP_Framing="{framing}"
       template="{template}" {action_options})
"""


def omrelp_config(directory: Path, in_port: int, target_port: int, window: int = 128) -> str:
    """Take syslog over TCP on 127.0.0.1:in_port and forward it with the repository's own
    ``etc/rsyslog-omrelp.conf`` (omrelp, retry forever, a queue saved in ``directory``), its port made
    ``target_port`` and its window ``window``."""
    action = OMRELP_CONF.read_text()
    for default, value in (('port="32777"', f'port="{target_port}"'), ('windowSize="128"', f'windowSize="{window}"')):
        if default not in action:
            raise ValueError(f"{OMRELP_CONF} no longer holds {default}: the test cannot point it at prefork")
        action = action.replace(default, value)
    return f"""\
global(workDirectory="{directory}" maxMessageSize="64k")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{in_port}")
{action}"""


def send_lines(port: int, lines: Iterable[bytes], timeout: float = 60.0) -> None:
    """Send LF-terminated lines to a shipper's TCP input (127.0.0.1:port), then close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(line + b"\n" for line in lines))
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
