"""Who a worker (and the app probe) runs as: ``server.user`` / ``server.group``, resolved once, dropped in
the child right after the fork.

The master resolves the names when it starts (``resolve``) and every child that runs app code drops to
the result (``drop``) before it imports anything of the app:

- uid: the user's; gid: ``server.group``, else the user's login group;
- supplementary groups: the user's groups in the group database plus the gid (what ``initgroups(3)``
  sets, as login, su and systemd's ``User=`` do) when a user is named; only the gid when just a group is;
- real, effective, saved and file-system ids alike (``setresgid``/``setresuid``), so the child can never
  take root back.

gunicorn does less by default: it calls ``setgid`` and ``setuid`` only, so its workers keep root's
supplementary groups unless ``initgroups`` is set. Here the groups are always set, and checked after the
drop (``PrivilegeError`` if the kernel left anything else).

A child that runs as another user must still read what it imports: the interpreter's standard library,
the virtualenv and the app's directory must be readable by ``server.user`` (a Python under ``/root`` is
not). What it may write is only what it was handed: its own heartbeat file, given to its user before the
drop (prefork.state), and the descriptors it inherited (listeners, the log file).
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import signal
from dataclasses import dataclass

from prefork.exits import EXIT_FAILURE

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class PrivilegeError(Exception):
    """server.user / server.group cannot be resolved or taken."""


@dataclass(frozen=True)
class Identity:
    """The ids a worker runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, the gid among them

    def matches(self) -> bool:
        """Whether this process runs as exactly this identity already."""
        return (
            os.getresuid() == (self.uid,) * 3
            and os.getresgid() == (self.gid,) * 3
            and set(os.getgroups()) == set(self.groups)
        )


def resolve(user: str | None, group: str | None) -> Identity | None:
    """The identity of ``server.user`` / ``server.group`` (names or numbers), or None when neither is set.

    Raises PrivilegeError for an unknown name, or when this process is not root and would have to switch.
    """
    if not user and not group:
        return None
    uid, gid, name = os.getuid(), os.getgid(), None
    if user:
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise PrivilegeError(f"server.user: no such user {user!r}") from None
        uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
    if group:
        try:
            gid = (grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)).gr_gid
        except KeyError:
            raise PrivilegeError(f"server.group: no such group {group!r}") from None
    groups = tuple(sorted(set(os.getgrouplist(name, gid)))) if name else (gid,)
    identity = Identity(uid, gid, groups)
    if os.geteuid() != 0 and (uid, gid) != (os.getuid(), os.getgid()):
        raise PrivilegeError(f"server.user/server.group: only root can switch to user {user!r} group {group!r}")
    return identity


def file_owner(identity: Identity | None) -> tuple[int, int] | None:
    """The (uid, gid) to give a file that workers of this identity must write (None: leave it as is)."""
    return (identity.uid, identity.gid) if identity is not None else None


def drop(identity: Identity | None) -> None:
    """Become ``identity`` for good (groups first: once the user is dropped they can no longer change).

    A process that is not root and already runs as the identity's uid and gid keeps its groups (it could
    not change them, and they are its own)."""
    if identity is None or identity.matches():
        return
    if os.geteuid() != 0:
        if (os.getuid(), os.getgid()) == (identity.uid, identity.gid):
            return
        raise PrivilegeError(f"cannot switch to uid {identity.uid} gid {identity.gid}: not root")
    os.setgroups(list(identity.groups))
    os.setresgid(identity.gid, identity.gid, identity.gid)
    os.setresuid(identity.uid, identity.uid, identity.uid)
    if not identity.matches():
        raise PrivilegeError(
            f"after dropping privileges: uids {os.getresuid()}, gids {os.getresgid()}, groups {os.getgroups()}"
        )


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``), and exit at
    once if the parent is gone already. Call it after ``drop``: the kernel clears the setting whenever the
    effective or file-system ids change."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:  # the parent died before the prctl: nobody would send the signal
        os._exit(EXIT_FAILURE)
