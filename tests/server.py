"""Run the real prefork master as a subprocess and talk to it over real sockets.

    with ServerProcess(["workers.echo:app", "--workers", "2"]) as srv:
        srv.port                      # the real port of the first TCP listener
        srv.worker_pids()             # live workers, from /proc
        srv.signal(signal.SIGHUP)
        assert roundtrip(srv.port, [b"a", b"b"]) == [b"a", b"b"]

The master runs in its own session, and everything it started is killed at exit whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from prefork.state import state_dir_for

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"  # test applications, importable by the workers


def prefork_cmd(*args: str, python: str | None = None) -> list[str]:
    """The command line of the prefork CLI in this interpreter (or in `python`)."""
    return [python or sys.executable, "-m", "prefork.cli", *args]


def test_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a prefork subprocess: no PREFORK_* from outside, test apps importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT)])
    env.update(extra or {})
    return env


test_env.__test__ = False  # a helper, not a test, when imported into a test module


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll until predicate() is truthy and return its value; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class ServerProcess:
    """One `prefork run` master subprocess."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        bind: str | None = "127.0.0.1:0",
        python: str | None = None,
    ):
        self.args = list(args)
        if bind and "--bind" not in self.args:
            self.args += ["--bind", bind]
        self.env = test_env(env)
        self.cwd = str(cwd or ROOT)
        self.python = python  # another interpreter than this one (tests/unprivileged.py)
        self.tmp = tempfile.mkdtemp(prefix="prefork-test-")
        self.log_path = Path(self.tmp) / "master.log"
        self.proc: subprocess.Popen | None = None
        self._final_logs: str | None = None

    def start(self, wait: bool = True, timeout: float = 30.0, preexec_fn=None, pass_fds=()) -> ServerProcess:
        """Start the master; with wait, return once it listens and its workers are serving. ``pass_fds``:
        descriptors it inherits (as systemd passes sockets)."""
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            prefork_cmd("run", *self.args, python=self.python),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=preexec_fn,
            pass_fds=pass_fds,
        )
        if wait:
            wait_for(
                lambda: "Workers are serving" in self.logs() or self.proc.poll() is not None,
                timeout,
                what="workers to serve",
            )
            if self.proc.poll() is not None:
                raise AssertionError(f"master exited with {self.proc.returncode}:\n{self.logs()}")
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self) -> str:
        """Everything the master and its workers logged so far."""
        if self._final_logs is not None:
            return self._final_logs
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def listening(self) -> list[str]:
        """The addresses from the `Listening at:` log lines."""
        return re.findall(r"Listening at: ([^\s\"]+)", self.logs())

    @property
    def port(self) -> int:
        for addr in self.listening():
            if not addr.startswith("unix:"):
                return int(addr.rsplit(":", 1)[1])
        raise AssertionError(f"no TCP listener logged:\n{self.logs()}")

    def worker_pids(self) -> list[int]:
        """The master's live child processes."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return []
        return sorted(int(p) for p in text.split() if is_alive(int(p)))

    def titles(self) -> dict[int, str]:
        """Process titles of the master and its workers."""
        return {pid: cmdline(pid) for pid in [self.pid, *self.worker_pids()]}

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def status(self) -> dict:
        """`prefork status --json` for this master (found through its state directory)."""
        out = subprocess.run(
            prefork_cmd("status", "--json", "--pidfile", self.pidfile()),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def pidfile(self) -> str:
        path = Path(self.tmp) / "master.pid"
        if not path.exists():
            path.write_text(f"{self.pid}\n")
        return str(path)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Kill the master's whole session (master and workers), whatever state it is in."""
        if self.proc is None:
            return
        pids = self.worker_pids()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in pids:  # a worker that left the session (it should not) is killed too
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        # Keep the log readable after the files are gone; remove what a killed master cannot.
        self._final_logs = self.logs()
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(state_dir_for(self.proc.pid), ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        try:
            return self.start()
        except BaseException:
            self.stop()  # a start that failed must not leave a master running: __exit__ will not run
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def is_alive(pid: int) -> bool:
    """Tell whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped between open and read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    """A process's command line (its title, once it set one)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def connect(port: int, timeout: float = 30.0) -> socket.socket:
    """A blocking client socket to 127.0.0.1:port."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def read_lines(sock: socket.socket, count: int) -> list[bytes]:
    """Read exactly `count` reply lines (fails on EOF before that)."""
    buf = b""
    while buf.count(b"\n") < count:
        data = sock.recv(65536)
        if not data:
            got = buf.count(b"\n")
            raise AssertionError(f"connection closed after {got} of {count} replies: {buf[-200:]!r}")
        buf += data
    lines = buf.split(b"\n")
    assert lines[count:] == [b""], f"more than {count} replies: {buf[-200:]!r}"
    return lines[:count]


def read_all(sock: socket.socket) -> bytes:
    """Read until the server closes the connection."""
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def roundtrip(port: int, lines: list[bytes], terminator: bytes = b"\n") -> list[bytes]:
    """Send lines (pipelined), half-close, and return every reply line until the server closes."""
    with connect(port) as sock:
        sock.sendall(b"".join(line + terminator for line in lines))
        sock.shutdown(socket.SHUT_WR)
        data = read_all(sock)
    assert data.endswith(b"\n") or not data, data[-100:]
    return data.split(b"\n")[:-1]


def client_loop(port: int, index: int, stop: threading.Event, errors: list, counts: list) -> None:
    """Until `stop`: open a new connection per round, send lines, check every reply (odd clients half-close
    and read to EOF, even ones read the replies on the open connection); record anything that went wrong
    in `errors` and the rounds done in `counts[index]`. For reloads under load: nothing may be refused."""
    n = 0
    while not stop.is_set():
        lines = [f"c{index}-r{n}-l{k}".encode() for k in range(5)]
        try:
            if index % 2:
                replies = roundtrip(port, lines)  # half-close, read to EOF
            else:
                with connect(port, timeout=30) as sock:
                    sock.sendall(b"".join(line + b"\n" for line in lines))
                    replies = read_lines(sock, len(lines))
        except (OSError, AssertionError) as exc:  # ConnectionRefusedError is an OSError; a reset too
            errors.append(f"client {index} round {n}: {exc!r}")
        else:
            if replies != lines:
                errors.append(f"client {index} round {n}: sent {lines!r}, got {replies!r}")
        n += 1
        counts[index] = n
