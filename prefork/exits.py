"""Exit statuses of every prefork process and command, in one place (README, "Command line"), and
``HaltServer``, how the master's code stops the master with one.

The numbers are a contract: systemd units stop restarting on ``EXIT_USAGE`` and ``EXIT_BOOT``
(``RestartPreventExitStatus=2 3``), and scripts test ``prefork send``'s status.
"""

from __future__ import annotations

EXIT_OK = 0  # a clean stop; a command that did what it was asked
EXIT_FAILURE = 1  # a runtime failure (the master's unhandled error, a worker's crash); a command cut short; a
# reload refused or abandoned (`reload --wait`)
EXIT_NOT_ALL_OK = 1  # `prefork send`: some line was not answered OK
EXIT_USAGE = 2  # a usage, config or bind error (or a socket systemd passed that cannot be served), or a failed
# `check`/`initdb`: restarting cannot help
EXIT_BOOT = 3  # workers could not boot: a worker whose app fails to import or set up, and the master after that
EXIT_TIMEOUT = 124  # as timeout(1) reports: a command's wait ran out (`reload --wait`), the outcome is not known
EXIT_INTERRUPTED = 130  # as a shell reports a command killed by SIGINT


class HaltServer(Exception):
    """Stop the master with this reason and exit status (its main loop catches it, ``Master.halt``)."""

    def __init__(self, reason: str, exit_status: int = EXIT_OK):
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status
