"""Daemon mode: detach from the terminal, and report the start's outcome to the launching process.

The launching process returns 0 only once the first workers are serving, and the master's exit status
(2, 3, ...) if it stops before that: `prefork run --daemon` never claims a start that did not happen.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prefork.exits import EXIT_FAILURE, EXIT_OK


def daemonize(master: Any) -> Callable[[int], None]:
    """Fork into the background. Returns, in the daemon, a function that reports the start outcome;
    the launching process waits for that outcome and exits with it."""
    r, w = os.pipe()
    if os.fork():
        os.close(w)
        # One read, not read-to-EOF: the workers inherit the write end, so EOF would wait for them to exit.
        # The outcome is one short write; EOF without it (b"") means the daemon died before reporting.
        outcome = os.read(r, 16).strip()
        os._exit(int(outcome) if outcome.isdigit() else EXIT_FAILURE)
    os.close(r)
    os.setsid()
    if os.fork():  # not a session leader: can never reacquire a terminal
        os._exit(EXIT_OK)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    reported = False

    def report(code: int) -> None:
        nonlocal reported
        if reported:
            return
        reported = True
        os.write(w, str(code).encode())
        os.close(w)
        if code == EXIT_OK:  # serving: let go of the launcher's terminal
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 2)
            os.close(devnull)

    master.on_ready.append(lambda: report(EXIT_OK))
    return report
