"""Real syslog shippers for the tests and benchmarks: rsyslogd and syslog-ng in the foreground, each with a
config of its own.

``Rsyslog(directory, config)`` writes the config into ``directory`` (its work directory, pidfile and log
too) and runs ``rsyslogd -n -f CONF -i PIDFILE`` there, as a process of its own session, never touching the
machine's rsyslog (its config, its pidfile, ``/dev/log``: a config given here loads no input it does not
name). ``omfwd_config`` is a config that takes syslog lines on a local TCP port (``imtcp``) and forwards
them to prefork (``omfwd``, octet-counted by default); ``omrelp_config`` forwards over RELP instead, with the
repository's ``etc/shippers/rsyslog-omrelp.conf`` (``omrelp``, Debian's ``rsyslog-relp``, rsyslog's reliable settings).

``SyslogNg(directory, config)`` runs Debian's syslog-ng the same way (``syslog-ng -F``, its pid, persist and
control files in ``directory``) from the package unpacked by ``syslog_ng_root()`` (``apt-get download`` and
``dpkg -x`` into a cache directory: syslog-ng conflicts with rsyslog, so it is never installed).

``shipper_config(name, host, port, certs)`` reads a config of etc/shippers/ as a user would drop it in, with its
placeholder host and port (``PLACEHOLDER_HOST``, ``PLACEHOLDER_PORT``) replaced, and for the TLS configs the
directory of its CA, client certificate and key (``PLACEHOLDER_CERTS``: ca.pem, client.pem, client.key, as
tests/certs.py names them) made ``certs``; nothing else changed.

    with Rsyslog(tmp_path / "rsyslog", omfwd_config(tmp_path / "rsyslog", in_port, prefork_port)) as rs:
        send_lines(in_port, [b"<13>hello"])
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

ETC_SHIPPERS = Path(__file__).resolve().parent.parent / "etc" / "shippers"
# What the configs of etc/shippers/ name prefork by, for the user to change (and the tests to substitute).
PLACEHOLDER_HOST = "prefork.example.com"
PLACEHOLDER_PORT = "6514"
# Where the TLS configs expect the CA (ca.pem) and the client's certificate and key (client.pem, client.key).
PLACEHOLDER_CERTS = "/etc/ssl/prefork"
# Debian's syslog-ng, unpacked (never installed: it conflicts with rsyslog), and the libraries it needs that
# a machine with rsyslog lacks.
SYSLOG_NG_PACKAGES = ("syslog-ng-core", "libivykis0", "libpcre3", "libnet1")
SYSLOG_NG_VERSION = "3.38"

OMRELP_CONF = ETC_SHIPPERS / "rsyslog-omrelp.conf"
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


def rsyslog_module(module: str, package: str) -> Path:
    """The path of one of rsyslog's loadable modules (``lmnsd_ossl``, ``omrelp``); missing, an error naming
    the Debian package that has it."""
    for found in sorted(Path("/usr/lib").glob(f"*/rsyslog/{module}.so")):
        return found
    raise FileNotFoundError(f"rsyslog's {module} module is missing: install the Debian package {package}")


class Rsyslog:
    """rsyslogd in the foreground with its own config, work directory and pidfile; a context manager (the
    base of ``SyslogNg`` too)."""

    name = "rsyslogd"
    config_name = "rsyslog.conf"

    def __init__(
        self, directory: Path, config: str, wait_port: int | None = None, wait_path: Path | None = None
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = self.directory / self.config_name
        self.config_path.write_text(config)
        self.pidfile = self.directory / f"{self.name}.pid"
        self.log_path = self.directory / f"{self.name}.log"
        self.wait_port = wait_port  # an input port to wait for at start (None: wait for the pidfile)
        self.wait_path = wait_path  # or an input socket's path to wait for
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """The daemon's command line, in the foreground."""
        return [rsyslogd_path(), "-n", "-f", str(self.config_path), "-i", str(self.pidfile)]

    def environment(self) -> dict[str, str] | None:
        """The daemon's environment (None: this one's)."""
        return None

    def start(self, timeout: float = START_TIMEOUT_S) -> Rsyslog:
        """Start the daemon and wait until it serves (its input port accepts, or its pidfile is written)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.directory,
                env=self.environment(),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._serving():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.logs()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} did not start within {timeout}s: {self.logs()[-2000:]}")
            time.sleep(POLL_S)
        return self

    def _serving(self) -> bool:
        if self.wait_path is not None:
            return self.wait_path.exists()
        if self.wait_port is None:
            return self.pidfile.exists()
        try:
            with socket.create_connection(("127.0.0.1", self.wait_port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (the daemon flushes what it holds), SIGKILL after ``timeout``; its exit status."""
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
        """What the daemon wrote to stdout and stderr."""
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
    ``etc/shippers/rsyslog-omrelp.conf`` (omrelp, retry forever, a queue saved in ``directory``), its port made
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


def shipper_config(name: str, host: str, port: int, certs: Path | None = None) -> str:
    """etc/shippers/NAME as a user drops it in, prefork's placeholder host and port replaced by these, and
    the placeholder certificate directory by ``certs`` (a TLS config needs it; any other refuses it)."""
    text = (ETC_SHIPPERS / name).read_text()
    for placeholder in (PLACEHOLDER_HOST, PLACEHOLDER_PORT):
        if placeholder not in text:
            raise ValueError(f"etc/shippers/{name} does not name prefork as {placeholder}")
    if (PLACEHOLDER_CERTS in text) != (certs is not None):
        raise ValueError(
            f"etc/shippers/{name}: certificates given {certs}, but it names {PLACEHOLDER_CERTS}: "
            f"{PLACEHOLDER_CERTS in text}"
        )
    text = text.replace(PLACEHOLDER_HOST, host).replace(PLACEHOLDER_PORT, str(port))
    return text if certs is None else text.replace(PLACEHOLDER_CERTS, str(certs))


def rsyslog_main_config(directory: Path, socket_path: Path, include: Path) -> str:
    """rsyslogd's main config around a drop-in (``include``, as /etc/rsyslog.d/*.conf): its work directory,
    and one input, a private unix socket (``logger -u``) without rate limiting, instead of /dev/log."""
    return f"""\
global(workDirectory="{directory}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{socket_path}" RateLimit.Interval="0")
include(file="{include}")
"""


def syslog_ng_main_config(socket_path: Path, include: Path) -> str:
    """syslog-ng's main config around a drop-in (``include``, as /etc/syslog-ng/conf.d/*.conf): Debian's
    source name ``s_src``, here a private unix-dgram socket (``logger -u``) instead of /dev/log."""
    return f"""\
@version: {SYSLOG_NG_VERSION}
source s_src {{ unix-dgram("{socket_path}"); }};
@include "{include}"
"""


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prefork"


def syslog_ng_root(cache: Path | None = None) -> Path:
    """A tree holding Debian's syslog-ng (``usr/sbin/syslog-ng``), made once per cache directory by
    ``apt-get download`` and ``dpkg -x``; a failure raises, naming the command."""
    cache = cache or cache_dir()
    root = cache / f"syslog-ng-{SYSLOG_NG_VERSION}"
    if (root / "usr/sbin/syslog-ng").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        _run(["apt-get", "download", *SYSLOG_NG_PACKAGES], cwd=tmp)
        unpacked = Path(tmp) / "root"
        for deb in sorted(Path(tmp).glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(unpacked)], cwd=tmp)
        if not (unpacked / "usr/sbin/syslog-ng").exists():
            raise RuntimeError(f"no usr/sbin/syslog-ng in the packages {' '.join(SYSLOG_NG_PACKAGES)}")
        try:
            unpacked.rename(root)  # atomic: a concurrent run that won keeps its tree
        except OSError:
            if not (root / "usr/sbin/syslog-ng").exists():
                raise
    return root


def _run(cmd: list[str], cwd: str) -> None:
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except OSError as exc:  # no apt-get or dpkg: as loud as a failed download
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {exc}") from exc
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed with {result.returncode}: {result.stderr[-2000:]}")


class SyslogNg(Rsyslog):
    """Debian's syslog-ng in the foreground (``-F``) from an unpacked tree, with its own config and its pid,
    persist and control files in ``directory``; a context manager."""

    name = "syslog-ng"
    config_name = "syslog-ng.conf"

    def __init__(
        self,
        directory: Path,
        config: str,
        wait_port: int | None = None,
        wait_path: Path | None = None,
        root: Path | None = None,
    ) -> None:
        super().__init__(directory, config, wait_port, wait_path)
        self.root = root or syslog_ng_root()

    def command(self) -> list[str]:
        return [
            str(self.root / "usr/sbin/syslog-ng"),
            "-F",
            "--no-caps",
            "-f",
            str(self.config_path),
            f"--module-path={self.root / 'usr/lib/syslog-ng' / SYSLOG_NG_VERSION}",
            "-p",
            str(self.pidfile),
            "-R",
            str(self.directory / "syslog-ng.persist"),
            "-c",
            str(self.directory / "syslog-ng.ctl"),
        ]

    def environment(self) -> dict[str, str] | None:
        # The unpacked libraries (libivykis, libpcre3, libnet) and syslog-ng's own; the rest are the machine's.
        root = self.root
        libs = [root / "usr/lib/syslog-ng", *root.glob("usr/lib/*-linux-gnu"), *root.glob("lib/*-linux-gnu")]
        return dict(os.environ, LD_LIBRARY_PATH=":".join(map(str, libs)))
