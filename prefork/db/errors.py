"""Error numbers by name, and which errors mean that a connection is gone.

Compare an error number with PyMySQL's ``pymysql.constants.ER`` (server errors) or ``CR`` (client errors)
where they name it for what it means today, and with the names here otherwise: MariaDB's and MySQL 8's
own numbers, which PyMySQL's list (MySQL 5.1's) lacks or names for what the number meant then, and
Galera's meaning of a shared one. ``error_code(exc)`` reads the number of a driver error.
"""

from __future__ import annotations

import pymysql
from pymysql.constants import CR, ER

# PyMySQL's InterfaceError(0, "") and OperationalError(0, ""): the connection was closed under the caller.
CLOSED_BY_DRIVER = 0
# Galera: a node outside the primary component (cut off, or still joining) answers every statement with
# ER_UNKNOWN_COM_ERROR ("WSREP has not yet prepared node for application use") until it is back.
WSREP_NOT_READY = ER.UNKNOWN_COM_ERROR
# MariaDB: the session was killed (KILL CONNECTION, or a server timeout such as
# idle_write_transaction_timeout).
CONNECTION_KILLED = 1927
# Failed to read the auto-increment value: a wait for the table's AUTO-INC lock that timed out (MariaDB,
# MySQL 5.5 and later; PyMySQL's ER calls 1467 HOSTNAME, its meaning in MySQL 5.1).
AUTOINC_READ_FAILED = 1467
# MariaDB 10.5 and later: the server (local_infile = OFF) or the client refuses LOAD DATA LOCAL INFILE.
LOAD_INFILE_CAPABILITY_DISABLED = 4166
# MySQL 8: "loading local data is disabled; this must be enabled on both the client and server sides".
CLIENT_LOCAL_FILES_DISABLED = 3948
# MySQL 8.0.16 and later: a CHECK constraint failed (MariaDB says ER.CONSTRAINT_FAILED, 4025).
CHECK_CONSTRAINT_VIOLATED = 3819
# MySQL 8.0.24 and later: ER_CLIENT_INTERACTION_TIMEOUT, "the client was disconnected by the server because
# of inactivity" (wait_timeout), sent before the server closes an idle session; the next statement reads it.
CLIENT_INTERACTION_TIMEOUT = 4031
# MySQL 8: ER_SECURE_TRANSPORT_REQUIRED, a plaintext login refused under require_secure_transport=ON.
SECURE_TRANSPORT_REQUIRED = 3159
# ER_DUP_FIELDNAME and ER_DUP_KEYNAME: an ALTER adding a column or key that another session added meanwhile.
DUPLICATE_COLUMN = ER.DUP_FIELDNAME
DUPLICATE_KEY_NAME = ER.DUP_KEYNAME

# Errors after which the connection is unusable: PyMySQL's closed connection, server shutdown in
# progress, connection killed, MySQL's disconnect for inactivity, a Galera node that left the primary
# component (a new connection goes to a ready host of the DSN), server gone away, lost connection, commands
# out of sync, and two numbers of the C client library PyMySQL itself does not raise (2045, and 2055: lost
# connection with a system error).
DISCONNECT_CODES = frozenset(
    {
        CLOSED_BY_DRIVER,
        WSREP_NOT_READY,
        ER.SERVER_SHUTDOWN,
        CONNECTION_KILLED,
        CLIENT_INTERACTION_TIMEOUT,
        CR.CR_SERVER_GONE_ERROR,
        CR.CR_SERVER_LOST,
        CR.CR_COMMANDS_OUT_OF_SYNC,
        CR.CR_SHARED_MEMORY_CONNECT_ABANDONED_ERROR,
        CR.CR_SERVER_LOST_EXTENDED,
    }
)


def error_code(exc: BaseException) -> int | None:
    """The error number of a driver error (``exc.args[0]``), None for anything else."""
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def is_disconnect(exc: BaseException) -> bool:
    """Tell whether a driver error means the connection is unusable."""
    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    if isinstance(exc, pymysql.err.OperationalError):
        return bool(exc.args) and exc.args[0] in DISCONNECT_CODES
    return isinstance(exc, (ConnectionError, OSError))
