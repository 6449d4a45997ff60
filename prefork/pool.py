"""The connection pool as apps use it: ``from prefork.pool import Pool, connect_once``.

The pool and what it is built from live in the database wing, ``prefork.db`` (README, "Layout").
"""

from prefork.db.errors import is_disconnect
from prefork.db.pool import Pool, PoolClosed, PoolConnectError, PoolError, PoolForkError, PoolTimeout, connect_once
from prefork.db.server import set_session_variable, transport

__all__ = [
    "Pool",
    "PoolClosed",
    "PoolConnectError",
    "PoolError",
    "PoolForkError",
    "PoolTimeout",
    "connect_once",
    "is_disconnect",
    "set_session_variable",
    "transport",
]
