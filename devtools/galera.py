"""A real MariaDB Galera cluster of a few nodes on one machine, for the cluster tests.

Node i listens on its own loopback address, 127.0.0.(first_address + i), with the same port numbers on
every address (MariaDB, Galera replication, IST and SST), each with its own datadir, socket, pid file and
option file under base_dir/nodeI. Nothing binds a wildcard or non-loopback address, and the machine's own
database service is never touched. Node 0 bootstraps the cluster; the others join it one at a time and take
their state from a donor by rsync (SST) or, on a restart, by incremental transfer (IST) when the donor
still has the missed writes.

As root, the nodes run as the ``mysql`` user (their datadirs chowned to it): the rsync daemon that receives
an SST drops to ``nobody`` when started as root and could not write the datadir. So base_dir must then be
reachable by ``mysql``: every directory above it searchable by others (tempfile.mkdtemp() in /tmp is).

    cluster = GaleraCluster("/tmp/x")      # nodes=3, first_address=11
    cluster.start()                        # bootstrap node 0, join 1 and 2; returns the seconds it took
    cluster.hosts()                        # "127.0.0.11:PORT,127.0.0.12:PORT,127.0.0.13:PORT"
    cluster.dsn(1)                         # mysql://root@127.0.0.12:PORT/test
    cluster.query(2, "SELECT ...")         # rows, read after every write committed anywhere before it
    cluster.kill(1)                        # SIGKILL, as a crash would
    cluster.wait_synced(0, size=2)         # the others see it gone
    cluster.restart(1)                     # rejoins (IST or SST), waits until Synced and the size is back
    cluster.kill_all()
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

from devtools.mariadb import file_tail, find_binaries, install_datadir, kill_leftover

GALERA_HINT = "install it with: sudo apt-get install galera-4 rsync"
_PROVIDER_GLOBS = ("/usr/lib/galera/libgalera_smm.so", "/usr/lib/*/galera*/libgalera_smm.so", "/usr/lib64/galera*/*.so")
_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"])
# Galera evicts a silent node after evs.inactive_timeout (15 s by default); a killed node is suspected after
# 2 s and gone after 4, so a test sees the cluster shrink quickly. gcache is kept small (it is a file).
_PROVIDER_OPTIONS = (
    "gcache.size=32M; evs.keepalive_period=PT0.5S; evs.suspect_timeout=PT2S; evs.inactive_timeout=PT4S; "
    "evs.install_timeout=PT4S"
)


class GaleraMissing(RuntimeError):
    """The Galera provider library or rsync (the SST method) is not installed."""


def find_provider() -> str:
    """Return the path of the installed Galera 4 provider library, or raise GaleraMissing."""
    for pattern in _PROVIDER_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise GaleraMissing(f"no Galera provider (libgalera_smm.so) found; {GALERA_HINT}")


def free_ports(addresses: list[str], count: int) -> list[int]:
    """Return count distinct TCP port numbers that are free on every one of addresses right now."""
    for _ in range(100):
        held: list[socket.socket] = []
        try:
            ports = []
            for _ in range(count):
                first = socket.socket()
                held.append(first)
                first.bind((addresses[0], 0))
                port = first.getsockname()[1]
                for address in addresses[1:]:
                    other = socket.socket()
                    held.append(other)
                    other.bind((address, port))
                ports.append(port)
            return ports
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"found no {count} ports free on all of {addresses}")


def _synced(status: dict[str, str]) -> bool:
    return status.get("wsrep_local_state_comment") == "Synced" and status.get("wsrep_cluster_status") == "Primary"


class GaleraNode:
    """The files and the process of one node."""

    def __init__(self, index: int, address: str, directory: Path):
        self.index = index
        self.name = f"node{index}"
        self.address = address
        self.dir = directory
        self.datadir = directory / "data"
        self.tmpdir = directory / "tmp"
        self.cnf = directory / "my.cnf"
        self.socket = directory / "mysqld.sock"
        self.pidfile = directory / "mysqld.pid"
        self.logfile = directory / "mysqld.log"
        self.stdout = directory / "stdout.log"
        self.proc: subprocess.Popen | None = None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class GaleraCluster:
    """A MariaDB Galera cluster of nodes mariadbd processes on 127.0.0.(first_address + i)."""

    def __init__(
        self, base_dir: str | os.PathLike, nodes: int = 3, first_address: int = 11, database: str = "test"
    ) -> None:
        if nodes < 1 or first_address + nodes > 255:
            raise ValueError(f"cannot place {nodes} nodes from 127.0.0.{first_address}")
        self.base_dir = Path(base_dir).resolve()
        self.database = database
        self.nodes = [GaleraNode(i, f"127.0.0.{first_address + i}", self.base_dir / f"node{i}") for i in range(nodes)]
        self.addresses = [node.address for node in self.nodes]
        # One number of each kind, the same on every node's address.
        self.port, self.galera_port, self.ist_port, self.sst_port = free_ports(self.addresses, 4)
        self.user = "mysql" if os.geteuid() == 0 else None
        self.formed_seconds: float | None = None

    # -- addresses ---------------------------------------------------------------------------------------

    def dsn(self, i: int, database: str | None = None) -> str:
        """The DSN of node i's database, over TCP to its own address."""
        return f"mysql://root@{self.nodes[i].address}:{self.port}/{database or self.database}"

    def hosts(self) -> str:
        """Every node as host:port, comma-separated: "127.0.0.11:PORT,127.0.0.12:PORT,..."."""
        return ",".join(f"{address}:{self.port}" for address in self.addresses)

    @property
    def ports(self) -> tuple[int, int, int, int]:
        """The MariaDB, Galera, IST and SST port numbers (the same on every node's address)."""
        return self.port, self.galera_port, self.ist_port, self.sst_port

    # -- setup -------------------------------------------------------------------------------------------

    def _check_reachable(self) -> None:
        """As root the nodes run as mysql, which must be able to reach base_dir."""
        if self.user is None:
            return
        try:
            pwd.getpwnam(self.user)
        except KeyError:
            raise GaleraMissing(f"no {self.user} user to run the nodes as; install mariadb-server") from None
        for parent in self.base_dir.parents:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                raise RuntimeError(
                    f"{parent} is not searchable by the {self.user} user the Galera nodes run as; put the cluster "
                    "under a directory made by tempfile.mkdtemp() in /tmp"
                )

    def _config(self, node: GaleraNode) -> str:
        provider = find_provider()
        cluster_address = ",".join(f"{address}:{self.galera_port}" for address in self.addresses)
        options = (
            f"gmcast.listen_addr=tcp://{node.address}:{self.galera_port}; "
            f"ist.recv_addr={node.address}:{self.ist_port}; {_PROVIDER_OPTIONS}"
        )
        lines = [
            "[mysqld]",
            f"datadir={node.datadir}",
            f"tmpdir={node.tmpdir}",
            f"socket={node.socket}",
            f"pid-file={node.pidfile}",
            f"log-error={node.logfile}",
            f"port={self.port}",
            f"bind-address={node.address}",
            "skip-name-resolve",
            "max-connections=1000",
            "max-allowed-packet=64M",
            "performance-schema=OFF",
            "innodb-buffer-pool-size=32M",
            "innodb-log-file-size=16M",
            "innodb-log-buffer-size=4M",
            "innodb-flush-log-at-trx-commit=2",
            "innodb-doublewrite=0",
            "key-buffer-size=1M",
            "aria-pagecache-buffer-size=8M",
            "binlog-format=ROW",
            "default-storage-engine=InnoDB",
            "innodb-autoinc-lock-mode=2",
            "wsrep-on=ON",
            f"wsrep-provider={provider}",
            "wsrep-cluster-name=prefork-test",
            f"wsrep-cluster-address=gcomm://{cluster_address}",
            f"wsrep-provider-options={options}",
            f"wsrep-node-address={node.address}:{self.galera_port}",
            f"wsrep-node-name={node.name}",
            "wsrep-sst-method=rsync",
            f"wsrep-sst-receive-address={node.address}:{self.sst_port}",
        ]
        if self.user is not None:
            lines.append(f"user={self.user}")
        return "\n".join(lines) + "\n"

    def _chown(self, path: Path, recursive: bool = True) -> None:
        """Give path (and what it holds) to the user the nodes run as."""
        if self.user is None:
            return
        shutil.chown(path, self.user, self.user)
        for root, dirs, files in os.walk(path) if recursive else ():
            for name in dirs + files:
                shutil.chown(os.path.join(root, name), self.user, self.user)

    def _prepare(self) -> None:
        """Write every node's option file and create the datadirs (once): node 0's by mariadb-install-db,
        the others as copies of it, replaced by the SST anyway when they first join."""
        find_binaries()
        find_provider()
        if not shutil.which("rsync", path=_PATH):
            raise GaleraMissing(f"no rsync (the SST method of the cluster) found; {GALERA_HINT}")
        self._check_reachable()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.base_dir, recursive=False)
        first = self.nodes[0]
        for node in self.nodes:
            node.dir.mkdir(exist_ok=True)
            node.tmpdir.mkdir(exist_ok=True)
            node.cnf.write_text(self._config(node))
            self._chown(node.dir)
        if not (first.datadir / "mysql").is_dir():
            install_datadir(first.datadir, self.user, ("--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M"))
        for node in self.nodes[1:]:
            if not (node.datadir / "mysql").is_dir():
                shutil.copytree(first.datadir, node.datadir, dirs_exist_ok=True)
        for node in self.nodes:
            self._chown(node.datadir)

    # -- processes ---------------------------------------------------------------------------------------

    def _spawn(self, i: int, bootstrap: bool = False) -> None:
        node = self.nodes[i]
        if node.is_running():
            raise RuntimeError(f"{node.name} is already running")
        kill_leftover(node.pidfile, f"--defaults-file={node.cnf}")
        server, _ = find_binaries()
        cmd = [server, f"--defaults-file={node.cnf}"]
        if bootstrap:
            cmd.append("--wsrep-new-cluster")
        with open(node.stdout, "ab") as out:
            node.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: kill() takes the SST script and rsync too
                env=dict(os.environ, PATH=_PATH),
            )

    def start(self, timeout: float = 120.0) -> float:
        """Form the cluster: bootstrap node 0, then join the others one at a time, each waited for until it
        is Synced in a cluster of its size. Returns the seconds it took. On failure every node is killed."""
        started = time.monotonic()
        try:
            self._prepare()
            self._spawn(0, bootstrap=True)
            self.wait_synced(0, size=1, timeout=timeout)
            self._setup_accounts()
            for i in range(1, len(self.nodes)):
                self._spawn(i)
                self.wait_synced(i, size=i + 1, timeout=timeout)
            for i in range(len(self.nodes)):  # a donor is back to Synced once its joiner is
                self.wait_synced(i, size=len(self.nodes), timeout=timeout)
        except BaseException:
            self.kill_all()
            raise
        self.formed_seconds = time.monotonic() - started
        return self.formed_seconds

    def _setup_accounts(self) -> None:
        """root may log in without a password from any loopback address; the test database exists. Both
        replicate to the nodes that join later."""
        conn = self._admin(0)
        try:
            cur = conn.cursor()
            cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.0/255.0.0.0'")
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.0/255.0.0.0' WITH GRANT OPTION")
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        finally:
            conn.close()

    def kill(self, i: int) -> None:
        """SIGKILL node i (its whole process group: a crash of that machine), and wait until it is gone."""
        node = self.nodes[i]
        if node.proc is None or node.proc.poll() is not None:
            return
        try:
            os.killpg(node.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.proc.wait(30)

    def restart(self, i: int, timeout: float = 120.0) -> float:
        """Start node i again (killing it first if it runs) so that it rejoins the running nodes; wait until
        it is Synced and every running node sees the cluster size back. Returns the seconds it took."""
        started = time.monotonic()
        self.kill(i)
        self._spawn(i)
        size = sum(node.is_running() for node in self.nodes)
        self.wait_synced(i, size=size, timeout=timeout)
        for j, node in enumerate(self.nodes):
            if node.is_running():
                self.wait_synced(j, size=size, timeout=timeout)
        return time.monotonic() - started

    def heal(self, timeout: float = 120.0) -> None:
        """Restart every node that is down and wait until all are Synced in the whole cluster, so that a
        test starts from a whole cluster."""
        for i, node in enumerate(self.nodes):
            if not node.is_running():
                self.restart(i, timeout)
        for i in range(len(self.nodes)):
            self.wait_synced(i, size=len(self.nodes), timeout=timeout)

    def kill_all(self) -> None:
        """SIGKILL every node (cleanup)."""
        for i in range(len(self.nodes)):
            self.kill(i)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node cleanly (SIGTERM), the bootstrap node last; kill what takes longer than timeout."""
        for node in reversed(self.nodes):
            if node.is_running():
                node.proc.terminate()
                try:
                    node.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.kill(node.index)

    def __enter__(self) -> GaleraCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()

    # -- state -------------------------------------------------------------------------------------------

    def _admin(self, i: int):
        """A connection to node i over its unix socket (works whatever the TCP grants and wsrep state)."""
        import pymysql

        return pymysql.connect(
            unix_socket=str(self.nodes[i].socket), user="root", autocommit=True, connect_timeout=2, read_timeout=10
        )

    def status(self, i: int) -> dict[str, str]:
        """Node i's wsrep_% status variables (raises pymysql errors when it does not answer)."""
        conn = self._admin(i)
        try:
            cur = conn.cursor()
            cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep%'")
            return {name.lower(): str(value) for name, value in cur.fetchall()}
        finally:
            conn.close()

    def is_synced(self, i: int) -> bool:
        """Tell whether node i answers, is Synced and belongs to the primary component."""
        import pymysql

        if not self.nodes[i].is_running():
            return False
        try:
            return _synced(self.status(i))
        except pymysql.err.MySQLError:
            return False

    def cluster_size(self, i: int) -> int:
        """The cluster size node i sees (raises pymysql errors when it does not answer)."""
        return int(self.status(i).get("wsrep_cluster_size", 0))

    def wait_synced(self, i: int, size: int | None = None, timeout: float = 60.0) -> None:
        """Wait until node i is Synced in the primary component and, if size is given, sees that cluster
        size. Raises RuntimeError with the end of its error log if it exits or the timeout passes."""
        import pymysql

        node = self.nodes[i]
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if not node.is_running():
                code = None if node.proc is None else node.proc.returncode
                raise RuntimeError(f"galera {node.name} is not running (exit {code}):\n{self.log_tail(i)}")
            try:
                st = self.status(i)
                state = st.get("wsrep_local_state_comment")
                seen = int(st.get("wsrep_cluster_size", 0))
                last = f"state {state}, cluster size {seen}, status {st.get('wsrep_cluster_status')}"
                if _synced(st) and (size is None or seen == size):
                    return
            except pymysql.err.MySQLError as exc:
                last = f"no answer: {exc}"
            if time.monotonic() > deadline:
                want = "" if size is None else f" in a cluster of {size}"
                others = ", ".join(str(other.logfile) for other in self.nodes if other is not node)
                raise RuntimeError(
                    f"galera {node.name} ({node.address}) not Synced{want} within {timeout}s ({last}); "
                    f"the other nodes' logs: {others}\n{self.log_tail(i)}"
                )
            time.sleep(0.2)

    def query(self, i: int, sql: str, args: object = None) -> tuple:
        """Run one statement on node i over TCP (autocommit) and return its rows. Reads wait until the node
        has applied every write committed in the cluster before them (wsrep_sync_wait=1)."""
        import pymysql

        conn = pymysql.connect(
            host=self.nodes[i].address,
            port=self.port,
            user="root",
            database=self.database,
            autocommit=True,
            connect_timeout=5,
            read_timeout=30,
        )
        try:
            cur = conn.cursor()
            cur.execute("SET SESSION wsrep_sync_wait = 1")
            cur.execute(sql, args)
            return cur.fetchall()
        finally:
            conn.close()

    def log_tail(self, i: int, lines: int = 40) -> str:
        """The end of node i's error log."""
        node = self.nodes[i]
        return f"--- {node.logfile} ---\n{file_tail(node.logfile, lines)}"
