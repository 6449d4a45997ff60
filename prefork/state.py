"""Run-time state: how workers report to the master, and the master to `prefork status` and `/metrics`.

Heartbeats do not go through the file system. Before forking a worker, the master creates an anonymous
in-memory file for it (``memfd_create``) that both keep open. About once a second the worker writes its
state there as JSON and then sets the file's modification time to the *monotonic* clock; the master reads
both through its own descriptor. So:

- a wall-clock step (NTP, a resumed VM) neither kills every worker nor hides a hung one;
- a tmp cleaner or logind removing the state directory, or a full disk, cannot stop a heartbeat;
- a worker writes only to its own file and never needs write access to any directory of the master's,
  even when it runs as another user (``server.user``): the master gives the file to that user before the
  fork, since only a file's owner may set its times to arbitrary values (root's master still reads it).

The master writes ``master.json`` (its own figures and every worker's last state) in its state directory,
``<runtime_dir>/prefork-PID``, which it creates itself (mode 0755, refused if someone else owns it) and
writes with ``O_NOFOLLOW``. ``runtime_dir`` defaults to ``$RUNTIME_DIRECTORY`` (systemd's
``RuntimeDirectory=``), else ``/run/prefork`` when root, else ``$XDG_RUNTIME_DIR`` or the temp dir.

Workers also share one small table of their client counts (``AcceptTable``), which keeps long-lived
clients spread evenly over them (see the class).
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MASTER_FILE = "master.json"
PIDFILE_STATE_SUFFIX = ".state"  # beside the pidfile, a file naming the state directory
STATE_DIR_PREFIX = "prefork-"
STATE_DIR_MODE = 0o755
MAX_STATE_BYTES = 1 << 20
_WALL_CLOCK_FLOOR = 1e9  # an mtime above this is wall-clock time: the worker is between its two writes


class StateDirError(Exception):
    """The state directory exists and is not safely ours."""


def default_runtime_dir() -> Path:
    """Where state lives when ``server.runtime_dir`` is not set."""
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/run/prefork")
    return Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())


def runtime_dir(configured: str | None) -> Path:
    """The base directory of state directories: ``server.runtime_dir`` if set, else the default."""
    return Path(configured) if configured else default_runtime_dir()


def state_dir_for(master_pid: int, base: Path | None = None) -> Path:
    """The state directory of the master with this pid."""
    return (base or default_runtime_dir()) / f"{STATE_DIR_PREFIX}{master_pid}"


def candidate_state_dirs(master_pid: int, extra: list[Path] | None = None) -> list[Path]:
    """Where the state directory of this master may be, whatever environment the caller has."""
    bases = [*(extra or []), default_runtime_dir()]
    if os.environ.get("RUNTIME_DIRECTORY"):
        bases.append(Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0]))
    bases += [Path("/run/prefork"), Path(f"/run/user/{os.getuid()}"), Path(tempfile.gettempdir())]
    if os.environ.get("XDG_RUNTIME_DIR"):
        bases.append(Path(os.environ["XDG_RUNTIME_DIR"]))
    seen: list[Path] = []
    for base in bases:
        path = base / f"{STATE_DIR_PREFIX}{master_pid}"
        if path not in seen:
            seen.append(path)
    return seen


def prepare_state_dir(path: Path) -> None:
    """Create the state directory, or take over a leftover one that is safely ours.

    Refused (StateDirError) when the path is a symlink or not a directory, or belongs to another user, or
    others may write in it: another user could have planted it to make this process write elsewhere.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, STATE_DIR_MODE)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise StateDirError(f"state directory {path} exists and is not a directory") from None
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise StateDirError(
                f"state directory {path} exists and is owned by uid {st.st_uid} with mode "
                f"{stat.S_IMODE(st.st_mode):o}: refusing to use it"
            ) from None
        for entry in path.iterdir():  # a dead master's leftovers (the pid was reused)
            entry.unlink()
    os.chmod(path, STATE_DIR_MODE)  # whatever the umask


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace a state file atomically, never writing through a symlink."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        os.unlink(tmp)  # a leftover, or a link someone planted: removed, never followed
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """Read a state file, or None if it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class Heartbeat:
    """The master's side of one worker's heartbeat file (see the module docstring)."""

    def __init__(self, name: str, owner: tuple[int, int] | None = None):
        self.fd = os.memfd_create(name)  # the forked worker inherits it (close-on-exec only matters to exec)
        if owner is not None:  # (uid, gid) the worker runs as: `beat` sets the mtime, which only the owner may
            os.fchown(self.fd, *owner)
        self.last: dict[str, Any] = {}
        self._seen_mtime = 0.0
        now = time.monotonic()
        os.utime(self.fd, (now, now))  # the boot counts toward `timeout` from now

    def silent_s(self) -> float:
        """Seconds since the worker's last heartbeat (monotonic)."""
        mtime = os.fstat(self.fd).st_mtime
        if mtime > _WALL_CLOCK_FLOOR:
            return 0.0
        return max(0.0, time.monotonic() - mtime)

    def read(self) -> dict[str, Any]:
        """The worker's last state; the previous one while a write is under way."""
        mtime = os.fstat(self.fd).st_mtime
        if mtime != self._seen_mtime:
            try:
                state, _ = json.JSONDecoder().raw_decode(os.pread(self.fd, MAX_STATE_BYTES, 0).decode())
            except ValueError:
                return self.last  # caught between the worker's writes: read again on the next pass
            self._seen_mtime = mtime
            if isinstance(state, dict):
                self.last = state
        return self.last

    def close(self) -> None:
        os.close(self.fd)


class AcceptTable:
    """Each worker's number of clients, in memory shared by the master and every worker, so that a worker
    holding more than its share stops accepting and leaves new connections to the others.

    Why: every worker accepts on the same inherited listeners, and the first to wake takes what the
    backlog holds (gevent accepts up to 100 connections per wake-up): 100 clients connecting at once went
    100/0 to one of 2 workers. Per-worker SO_REUSEPORT listeners would not fix it (the kernel's hash
    spreads 100 connections binomially, past 1.3:1 one time in five) and a listener closed at a reload
    resets the connections queued on it. Counting is exact, and the listeners stay as they are.

    The master creates the table before forking (an anonymous shared mapping: no file, nothing to clean
    up), gives each worker a slot and zeroes it when the worker is reaped. A worker writes only its own
    slot: its pid while it accepts (0 once it stops), its clients, the clients it may hold
    (worker_connections) and a monotonic stamp it renews while its event loop runs. Every field is an
    aligned 64-bit integer, so a reader never sees half of a write; a value one write old only makes one
    accept decision a connection early or late.
    """

    FIELDS = 4  # per slot: pid, clients, capacity, stamp (monotonic ns)
    PID, CLIENTS, CAPACITY, STAMP = range(FIELDS)

    def __init__(self, slots: int = 1024):
        self.slots = slots
        # MAP_SHARED | MAP_ANONYMOUS: the forked workers share these pages with the master. Field 0 of
        # the header row is the number of slots ever handed out, so readers scan only those.
        self._mem = mmap.mmap(-1, 8 * self.FIELDS * (slots + 1))
        self._q = memoryview(self._mem).cast("q")

    # -- the master's side --------------------------------------------------------------------------

    def claim(self, in_use: set[int]) -> int | None:
        """A free slot for a new worker (None when all are taken: that worker then takes no part)."""
        for slot in range(self.slots):
            if slot not in in_use:
                self.release(slot)
                self._q[0] = max(self._q[0], slot + 1)
                return slot
        return None

    def release(self, slot: int | None) -> None:
        """Zero a slot: its worker is gone (or about to be born)."""
        if slot is not None:
            base = self._base(slot)
            self._q[base + self.PID] = 0  # first: the slot stops counting at once
            for field in (self.CLIENTS, self.CAPACITY, self.STAMP):
                self._q[base + field] = 0

    # -- a worker's side ----------------------------------------------------------------------------

    def open(self, slot: int, pid: int, capacity: int) -> None:
        """The worker accepts from now on."""
        base = self._base(slot)
        self._q[base + self.CAPACITY] = capacity
        self.stamp(slot)
        self._q[base + self.PID] = pid  # last: counted only once the rest is there

    def close(self, slot: int) -> None:
        """The worker stops accepting (a graceful stop): the others no longer wait for it."""
        self._q[self._base(slot) + self.PID] = 0

    def set_clients(self, slot: int, clients: int) -> None:
        self._q[self._base(slot) + self.CLIENTS] = clients

    def stamp(self, slot: int) -> None:
        self._q[self._base(slot) + self.STAMP] = time.monotonic_ns()

    def fewest_clients(self, slot: int, stale_ns: int) -> int:
        """The fewest clients held by an accepting worker that has room for more, this one included.

        Left out: slots of workers that do not accept (booting, stopping, gone), workers at their
        capacity (they cannot take the next connection), and workers whose stamp is older than
        ``stale_ns`` (an event loop blocked by the app: waiting for it would stop every worker from
        accepting until the master kills it at ``timeout``).
        """
        q = self._q
        fewest = q[self._base(slot) + self.CLIENTS]
        now = time.monotonic_ns()
        for other in range(min(q[0], self.slots)):
            base = self._base(other)
            if other == slot or not q[base + self.PID]:
                continue
            clients = q[base + self.CLIENTS]
            if clients < fewest and clients < q[base + self.CAPACITY] and now - q[base + self.STAMP] < stale_ns:
                fewest = clients
        return fewest

    def _base(self, slot: int) -> int:
        return self.FIELDS * (slot + 1)


def beat(fd: int, state: dict[str, Any]) -> None:
    """The worker's side: publish its state and stamp the heartbeat with the monotonic clock."""
    data = json.dumps(state, separators=(",", ":")).encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    now = time.monotonic()
    os.utime(fd, (now, now))


def iso(ts: float) -> str:
    """An epoch timestamp as an ISO 8601 UTC string."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
