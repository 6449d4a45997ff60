"""The connection pool as apps use it: ``from prefork.pool import Pool, connect_once``.

The pool and what it is built from live in the database wing, ``prefork.db`` (README, "Layout").
"""

from prefork.db.pool import (
    Pool,
    PoolClosed,
    PoolConnectError,
    PoolError,
    PoolForkError,
    PoolTimeout,
    connect_once,
    is_disconnect,
    set_session_variable,
)

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
]
