"""A real HAProxy (the installed binary) in TCP mode, for the cluster tests.

The configuration is generated into base_dir/haproxy.cfg: one frontend per Frontend, bound on a loopback
address, each with its own backend of servers (leastconn, health checks every `inter`, long client and
server timeouts for long-lived clients, optionally the PROXY protocol v2 towards a server, its checks
included). HAProxy runs in the foreground (-db), a child we can kill, and answers on a stats socket in
base_dir.

    proxy = HAProxy("/tmp/x", [Frontend("app", "127.0.0.20", 7000,
                                        [Server("a", "127.0.0.21", 7001), Server("b", "127.0.0.22", 7001)])])
    proxy.start()
    proxy.server_states()              # {"a": "UP", "b": "UP"}
    proxy.wait_state("a", "DOWN")
    proxy.stop()

A frontend with ``bind_options="ssl crt /path/cert-and-key.pem"`` terminates TLS (add ``ca-file CA.pem verify
required`` for client certificates) in front of plaintext servers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from devtools.mariadb import file_tail

INSTALL_HINT = "install it with: sudo apt-get install haproxy"
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


class HAProxyMissing(RuntimeError):
    """No haproxy binary is installed."""


def find_haproxy() -> str:
    """Return the path of the haproxy binary, or raise HAProxyMissing."""
    path = shutil.which("haproxy", path=_SBIN_PATH)
    if not path:
        raise HAProxyMissing(f"no haproxy binary found; {INSTALL_HINT}")
    return path


@dataclass
class Server:
    """One backend server. send_proxy: speak the PROXY protocol v2 to it (health checks too)."""

    name: str
    address: str
    port: int
    send_proxy: bool = False


@dataclass
class Frontend:
    """A listener on address:port and the backend of servers it balances over (leastconn)."""

    name: str
    address: str
    port: int
    servers: list[Server] = field(default_factory=list)
    inter: str = "500ms"  # health check interval
    fall: int = 2  # failed checks before a server is DOWN
    rise: int = 2  # passed checks before it is UP again
    bind_options: str = ""  # after the address on the bind line: "ssl crt FILE" terminates TLS


class HAProxy:
    """One haproxy process in the foreground with a generated configuration."""

    def __init__(
        self,
        base_dir: str | os.PathLike,
        frontends: list[Frontend] | None = None,
        timeout: str = "1h",
        text: str | None = None,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.frontends = list(frontends or [])
        self.text = text  # a whole configuration (etc/haproxy.cfg, say) instead of frontends
        self.timeout = timeout  # client and server inactivity timeout: long-lived clients stay connected
        self.config = self.base_dir / "haproxy.cfg"
        self.stats_socket = self.base_dir / "haproxy.sock"
        self.logfile = self.base_dir / "haproxy.log"
        self.proc: subprocess.Popen | None = None
        names = [s.name for f in self.frontends for s in f.servers]
        if len(names) != len(set(names)):
            raise ValueError(f"server names must be unique across frontends: {names}")

    def render(self) -> str:
        """The configuration text: ``text`` with a stats socket added to its global section, or one made
        from ``frontends``."""
        if self.text is not None:
            head, sep, rest = self.text.partition("\nglobal\n")
            if not sep:
                raise ValueError("the configuration has no global section")
            return f"{head}\nglobal\n    stats socket {self.stats_socket} mode 600 level admin\n{rest}"
        lines = [
            "global",
            f"    stats socket {self.stats_socket} mode 600 level admin",
            "    log stdout format raw local0",
            "    nbthread 1",
            "",
            "defaults",
            "    mode tcp",
            "    log global",
            "    option tcplog",
            "    timeout connect 2s",
            f"    timeout client {self.timeout}",
            f"    timeout server {self.timeout}",
            "    timeout check 2s",
        ]
        for fe in self.frontends:
            lines += [
                "",
                f"frontend {fe.name}",
                f"    bind {fe.address}:{fe.port} {fe.bind_options}".rstrip(),
                f"    default_backend {fe.name}_servers",
                "",
                f"backend {fe.name}_servers",
                "    balance leastconn",
                f"    default-server check inter {fe.inter} fall {fe.fall} rise {fe.rise}",
            ]
            for s in fe.servers:
                proxy = " send-proxy-v2 check-send-proxy" if s.send_proxy else ""
                lines.append(f"    server {s.name} {s.address}:{s.port}{proxy}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        """Write the configuration, start haproxy and wait until its stats socket answers."""
        binary = find_haproxy()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.render())
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-db", "-f", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n{file_tail(self.logfile)}")
            try:
                self.command("show info")
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"haproxy did not answer within {timeout}s:\n{file_tail(self.logfile)}"
                    ) from None
                time.sleep(0.05)

    def command(self, line: str) -> str:
        """Send one command to the stats socket and return the answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[str, str]:
        """Every server's status from `show stat`: "UP", "DOWN", "UP 1/2" (going down), "MAINT", ..."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        svname, status = header.index("svname"), header.index("status")
        states = {}
        for line in lines[1:]:
            row = line.split(",")
            if len(row) > status and row[svname] not in ("FRONTEND", "BACKEND"):
                states[row[svname]] = row[status]
        return states

    def wait_state(self, name: str, state: str, timeout: float = 10.0) -> float:
        """Wait until server name reports state (e.g. "DOWN"); return the seconds it took."""
        started = time.monotonic()
        while True:
            current = self.server_states().get(name)
            if current == state:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"haproxy server {name} is {current}, not {state}, after {timeout}s")
            time.sleep(0.05)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop haproxy (SIGTERM: close every connection now), killing it if it takes longer than timeout."""
        if not self.is_running():
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> HAProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
