"""What prefork asks a server through a connection: which server it is (MariaDB or MySQL), whether a
Galera node is ready, session variables a server may not have (MySQL lacks MariaDB's own, a server without
Galera its wsrep_*), and whether the connection is encrypted."""

from __future__ import annotations

from typing import Any

import pymysql
from pymysql.constants import ER

from prefork.db.errors import error_code

MARIADB = "mariadb"
MYSQL = "mysql"


def flavour_of_version(version: str) -> str:
    """``mariadb`` for a version string MariaDB reports (``10.11.6-MariaDB-0+deb12u1``, or in the greeting
    ``5.5.5-10.11.6-MariaDB``), ``mysql`` for any other (MySQL's is ``8.0.36`` or ``8.4.0-log``)."""
    return MARIADB if "mariadb" in version.lower() else MYSQL


def flavour(conn: Any) -> str:
    """Which server a connection talks to (``MARIADB`` or ``MYSQL``): read from the version in the server's
    greeting, which PyMySQL keeps (``server_version``), else asked with ``SELECT VERSION()``."""
    version = getattr(conn, "server_version", None)
    if not isinstance(version, str):
        cur = conn.cursor()
        try:
            cur.execute("SELECT VERSION()")
            version = str(cur.fetchone()[0])
        finally:
            cur.close()
    return flavour_of_version(version)


def set_session_variable(cur: Any, name: str, value: int) -> bool:
    """``SET SESSION name = value`` on a cursor; False, and nothing set, when the server has no such
    variable (MySQL lacks MariaDB's own, a server without Galera its wsrep_*); other errors are raised."""
    try:
        cur.execute(f"SET SESSION {name} = {int(value)}")
    except pymysql.err.MySQLError as exc:
        if error_code(exc) == ER.UNKNOWN_SYSTEM_VARIABLE:
            return False
        raise
    return True


def transport(conn: Any) -> str:
    """How the connection reaches the server, as the server sees it: its TLS version (``TLSv1.3``) or
    ``plaintext``; ``unknown`` when it will not say."""
    cur = conn.cursor()
    try:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        row = cur.fetchone()
    except pymysql.err.MySQLError:
        return "unknown"
    finally:
        cur.close()
    return str(row[1]) if row and row[1] else "plaintext"


def node_ready(conn: Any) -> bool:
    """False for a Galera node that accepts connections but not queries yet (joining, or cut off from the
    primary component); True for any other server, a standalone MariaDB (wsrep_on = 0) included."""
    cur = conn.cursor()
    try:
        try:
            cur.execute("SELECT @@wsrep_on")
        except pymysql.err.MySQLError as exc:
            return error_code(exc) == ER.UNKNOWN_SYSTEM_VARIABLE  # a server without Galera
        if not int(cur.fetchone()[0]):
            return True
        cur.execute("SHOW STATUS LIKE 'wsrep_ready'")
        row = cur.fetchone()
        return row is not None and str(row[1]).upper() == "ON"
    except Exception:
        return False
    finally:
        cur.close()
