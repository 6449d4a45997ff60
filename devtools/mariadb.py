"""A private MariaDB server started from the installed server binary.

Used by the test suite (each test session gets its own server in a temporary directory, which tests may
kill and restart) and by ``make run`` when the configured DSN does not answer (data under ``var/``).
It never touches the machine's own database service: it has its own datadir, port and socket, and
reads no option file.

    server = MariaDBServer("/tmp/x")
    server.start()            # installs the datadir on first use, waits until it answers
    server.dsn                # mysql://root@127.0.0.1:PORT/test
    server.kill()             # SIGKILL, as a crash would
    server.restart()          # same datadir, same port
    server.stop()

With TLS (the tests of ``ssl_mode``): ``MariaDBServer(dir, tls=ServerTls(ca, cert, key), bind="127.0.0.1,
127.0.0.61")`` starts it with ``--ssl-ca --ssl-cert --ssl-key`` (the CA also checks client certificates of
users created ``REQUIRE X509``), listening on each address given. ``require_secure_transport`` is
dynamic: ``server.set_global("require_secure_transport", "ON")`` turns plaintext logins away without a
restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "install it with: sudo apt-get install mariadb-server"
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


class ServerBinaryMissing(RuntimeError):
    """No MariaDB/MySQL server binary (or its install-db tool) is installed."""


def find_binaries() -> tuple[str, str]:
    """Return the paths of the server binary and of the datadir installer, or raise ServerBinaryMissing."""
    server = shutil.which("mariadbd", path=_SBIN_PATH) or shutil.which("mysqld", path=_SBIN_PATH)
    install = shutil.which("mariadb-install-db", path=_SBIN_PATH) or shutil.which("mysql_install_db", path=_SBIN_PATH)
    if not server or not install:
        raise ServerBinaryMissing(f"no MariaDB server binary found; {INSTALL_HINT}")
    return server, install


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on host (127.0.0.1 by default) that nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def install_datadir(datadir: Path, user: str | None = None, extra_args: tuple[str, ...] = ()) -> None:
    """Create a fresh datadir with mariadb-install-db, owned by user (root's own server runs as root).

    root logs in with an empty password (normal authentication, not unix_socket), so that tests can connect
    over TCP; extra_args are server options for the bootstrap (mariadb-install-db passes them on)."""
    server, install = find_binaries()
    datadir.mkdir(parents=True, exist_ok=True)
    cmd = [
        install,
        "--no-defaults",
        f"--datadir={datadir}",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        "--skip-name-resolve",
    ]
    if user is not None:
        cmd.append(f"--user={user}")
    basedir = Path(server).resolve().parent.parent
    cmd.append(f"--basedir={basedir}")
    cmd.extend(extra_args)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed ({out.returncode}):\n{out.stdout[-2000:]}")


def kill_leftover(pidfile: Path, marker: str) -> None:
    """SIGKILL the server an earlier run left behind (found by its pid file, and recognised by marker, an
    argument of its command line), and wait until it is gone: a new server could not lock the datadir, and
    the old one would answer in its place."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if marker.encode() not in cmdline.split(b"\0"):
        return  # the pid was recycled by another process
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def file_tail(path: Path, lines: int = 30) -> str:
    """Return the last lines of a log file, or "(no log)"."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class ServerTls:
    """PEM files of a server's TLS: the CA its clients' certificates must be signed by, its own
    certificate and key."""

    ca: str | os.PathLike
    cert: str | os.PathLike
    key: str | os.PathLike


class MariaDBServer:
    """One private mariadbd process with its own datadir, port and socket."""

    def __init__(
        self,
        basedir: str | os.PathLike,
        port: int | None = None,
        database: str = "test",
        durable: bool = False,
        tls: ServerTls | None = None,
        bind: str = "127.0.0.1",
    ):
        self.basedir = Path(basedir).resolve()
        self.datadir = self.basedir / "data"
        self.socket = self.basedir / "mysqld.sock"
        self.pidfile = self.basedir / "mysqld.pid"
        self.logfile = self.basedir / "mysqld.log"
        # Its own temporary files (sorts, GROUP BY temp tables) beside its data, not in /tmp: a cleaner of
        # /tmp (tmpfiles.d, another program's test) would otherwise delete them under a running query.
        self.tmpdir = self.basedir / "tmp"
        self.portfile = self.basedir / "port"
        self.database = database
        # durable: an fsync per commit and the doublewrite buffer, as production runs (the bench); off for
        # tests, where a killed server (not a crashed machine) still loses nothing acknowledged.
        self.durable = durable
        self.tls = tls
        self.bind = bind  # comma separated addresses (MariaDB 10.11 binds each); the DSN names the first
        if port is None and self.portfile.exists():
            port = int(self.portfile.read_text())
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def dsn(self) -> str:
        """The DSN of the server's test database, over TCP."""
        return f"mysql://root@{self.host}:{self.port}/{self.database}"

    @property
    def host(self) -> str:
        """The first address the server listens on."""
        return self.bind.split(",")[0].strip()

    def install(self) -> None:
        """Create the datadir (once)."""
        if (self.datadir / "mysql").is_dir():
            return
        install_datadir(self.datadir, user="root" if os.geteuid() == 0 else None)

    def _command(self) -> list[str]:
        server, _ = find_binaries()
        cmd = [
            server,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--tmpdir={self.tmpdir}",
            f"--pid-file={self.pidfile}",
            f"--log-error={self.logfile}",
            f"--port={self.port}",
            f"--bind-address={self.bind}",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=128M",
            "--innodb-log-file-size=64M",
            f"--innodb-flush-log-at-trx-commit={1 if self.durable else 2}",
            f"--innodb-doublewrite={1 if self.durable else 0}",
            "--max-connections=1000",
            "--max-allowed-packet=64M",
        ]
        if self.tls is not None:
            cmd += [f"--ssl-ca={self.tls.ca}", f"--ssl-cert={self.tls.cert}", f"--ssl-key={self.tls.key}"]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        return cmd

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (installing the datadir first if needed) and wait until it answers."""
        self.install()
        self.tmpdir.mkdir(exist_ok=True)
        self.basedir.mkdir(parents=True, exist_ok=True)
        kill_leftover(self.pidfile, f"--datadir={self.datadir}")
        self.portfile.write_text(str(self.port))
        log = open(self.basedir / "stdout.log", "ab")
        self.proc = subprocess.Popen(
            self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self._wait_ready(timeout)
        self._create_database()

    def _wait_ready(self, timeout: float) -> None:
        import pymysql

        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                pymysql.connect(host=self.host, port=self.port, user="root", connect_timeout=2).close()
                return
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mariadbd did not answer within {timeout}s:\n{self.log_tail()}") from None
                time.sleep(0.1)

    def _create_database(self) -> None:
        self.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")

    def execute(self, sql: str) -> None:
        """Run one statement as root (over TLS when the server has it: a plaintext login may be refused)."""
        import pymysql

        tls = {"ssl_ca": str(self.tls.ca)} if self.tls is not None else {}
        conn = pymysql.connect(host=self.host, port=self.port, user="root", autocommit=True, **tls)
        try:
            conn.cursor().execute(sql)
        finally:
            conn.close()

    def set_global(self, name: str, value: str) -> None:
        """``SET GLOBAL name = value`` (a dynamic variable: require_secure_transport, say)."""
        self.execute(f"SET GLOBAL {name} = {value}")

    def log_tail(self, lines: int = 30) -> str:
        """Return the end of the server's error log."""
        return file_tail(self.logfile, lines)

    def is_running(self) -> bool:
        """Tell whether the server process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would, and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def restart(self, timeout: float = 60.0) -> None:
        """Start the server again on the same datadir and port (killing it first if it runs)."""
        self.kill()
        self.start(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server cleanly (SIGTERM), killing it if it takes longer than timeout."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> MariaDBServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
