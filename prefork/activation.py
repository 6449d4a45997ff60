"""systemd socket activation: the listening sockets systemd passes (``LISTEN_FDS``), matched to ``server.bind``.

systemd (or ``systemd-socket-activate``) binds the sockets of a ``.socket`` unit itself and starts the
service with them open from fd 3 on, ``LISTEN_FDS`` saying how many, ``LISTEN_PID`` whose they are and
``LISTEN_FDNAMES`` their ``FileDescriptorName=`` (colon separated), as ``sd_listen_fds(3)`` reads them.
The master serves them instead of binding, so that connections systemd queued before prefork was up, or
while it restarts, are served and none is refused.

Each inherited socket is matched to one ``server.bind`` entry, so that its per-listener options
(``server.framing``, ``server.ack``, ``server.proxy_protocol``, ``server.allow_from``) apply: by name
first (a ``server.fd_name`` equal to its ``FileDescriptorName=``: systemd forbids ``:`` in a name, so the
bind address itself cannot be one), then by the address it really listens on (``getsockname``). A socket
that matches no entry is an error (exit 2): serving it with default options could, say, take PROXY
headers from anyone. A bind entry that no socket matches is bound as usual.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass

from prefork.config.address import Address
from prefork.sockets import address_of

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): the first passed descriptor
FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)  # those server.bind can name
VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(Exception):
    """A passed socket that cannot be served, or matches no server.bind entry: one line, exit 2."""


@dataclass
class Inherited:
    """One listening socket systemd passed."""

    sock: socket.socket
    name: str  # its FileDescriptorName= ("" when systemd gave none)

    def describe(self) -> str:
        named = f" named {self.name!r}" if self.name else ""
        return f"fd {self.sock.fileno()}{named} ({address_of(self.sock)})"


def take(environ: MutableMapping[str, str] | None = None) -> tuple[list[Inherited], str | None]:
    """The listening sockets systemd passed to this process, checked, and why none were taken when
    ``LISTEN_FDS`` is set but ``LISTEN_PID`` is another process's (they were meant for it: ignored, the
    caller logs the reason once logging is set up).

    The variables are removed from ``environ`` (os.environ by default) whatever they said, so that no
    worker or child process takes them for its own; each descriptor is made close-on-exec.
    """
    env = os.environ if environ is None else environ
    pid, count, names = (env.pop(key, None) for key in VARIABLES)
    if count is None:
        return [], None
    if pid != str(os.getpid()):
        return [], f"LISTEN_FDS={count} ignored: LISTEN_PID={pid} is not this process ({os.getpid()})"
    if not count.isdigit():
        raise ActivationError(f"LISTEN_FDS={count!r}: expected a number of descriptors")
    fds = range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count))
    given = names.split(":") if names else []
    for fd in fds:  # first, so that nothing exec'd from here inherits one, whatever happens next
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            raise ActivationError(f"LISTEN_FDS={count}: fd {fd} is not open ({exc.strerror})") from None
    return [_listener(fd, given[i] if i < len(given) else "") for i, fd in enumerate(fds)], None


def _listener(fd: int, name: str) -> Inherited:
    """fd as a socket, if it is a listening stream socket of a family prefork serves."""
    what = f"LISTEN_FDS: fd {fd}" + (f" named {name!r}" if name else "")
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        raise ActivationError(f"{what} is not a socket")
    sock = socket.socket(fileno=fd)
    if sock.family not in FAMILIES or sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != socket.SOCK_STREAM:
        raise ActivationError(f"{what} is not a TCP or unix stream socket (ListenStream= in the .socket unit)")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ActivationError(f"{what} ({address_of(sock)}) is not listening")
    return Inherited(sock, name)


def match(inherited: Sequence[Inherited], binds: Sequence[Address], names: Sequence[str]) -> dict[str, Inherited]:
    """Which inherited socket serves which ``server.bind`` entry (keyed as the master keys listeners,
    ``str(address)``); ``names`` are the entries' ``server.fd_name`` (one for all, or one per entry).

    By name first: the entries whose fd_name is the socket's name (none when it has no name); among them,
    or among all entries when no name matched, the one at the socket's address. ActivationError for a
    socket no entry matches, or two sockets for one entry.
    """
    named = [names[i if len(names) > 1 else 0] if names else "" for i in range(len(binds))]
    served: dict[str, Inherited] = {}
    for each in inherited:
        by_name = [b for b, n in zip(binds, named, strict=True) if each.name and n == each.name]
        if len(by_name) != 1:
            by_name = [b for b in (by_name or binds) if same_address(b, each.sock)]
        if len(by_name) != 1:
            raise ActivationError(
                f"the socket systemd passed as {each.describe()} matches no server.bind address, by its address or "
                "by server.fd_name (its FileDescriptorName=)"
            )
        key = str(by_name[0])
        if key in served:
            raise ActivationError(f"server.bind={key}: both {served[key].describe()} and {each.describe()} match it")
        served[key] = each
    return served


def same_address(address: Address, sock: socket.socket) -> bool:
    """Whether a listener bound as ``address`` would be ``sock`` (which listens where it really does)."""
    name = sock.getsockname()
    if address.kind == "unix" or sock.family == socket.AF_UNIX:
        return address.kind == "unix" and sock.family == socket.AF_UNIX and _path(address.path) == _path(name)
    if not address.port or address.port != name[1]:
        return False  # port 0 asks for any free port: only a name can match it
    try:
        infos = socket.getaddrinfo(address.host, address.port, sock.family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except OSError:
        return False
    mine = ipaddress.ip_address(name[0])
    return any(ipaddress.ip_address(sockaddr[0]) == mine for *_, sockaddr in infos)


def _path(path: str | bytes) -> str:
    return os.path.abspath(os.fsdecode(path))
