"""The signals the master handles, and undoing its handlers in a child forked from it.

The master's handlers only queue a signal for its main loop (prefork.master). A child (a worker, the app
probe) inherits them but never runs that loop: it must put them back before a signal arrives, or a TERM
would be queued for nobody.
"""

from __future__ import annotations

import signal
from collections.abc import Collection

# What the master acts on (README, "Signals"): each has a ``handle_<name>`` method on the master.
MASTER_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
)


def handler_name(signum: int) -> str:
    """``hup`` for SIGHUP: the master's method for it is ``handle_hup``."""
    return signal.Signals(signum).name.removeprefix("SIG").lower()


def reset_master_handlers(ignored: Collection[int] = ()) -> None:
    """In a child of the master: every signal the master handles back to its default action, or ignored
    if in ``ignored``; and no wakeup descriptor (the master's self-pipe, which the child closes)."""
    signal.set_wakeup_fd(-1)
    for signum in MASTER_SIGNALS:
        signal.signal(signum, signal.SIG_IGN if signum in ignored else signal.SIG_DFL)
