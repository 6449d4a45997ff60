"""prefork's PyMySQL connection class, and the one module that touches PyMySQL's private members.

PyMySQL has no public hook for what prefork needs, so ``Connection`` overrides or calls these members
as PyMySQL 1.1 and 1.2 define them (setup.cfg pins that range; tests/test_pymysql_contract.py names the
member that changed when a release breaks one of them):

- ``Connection._read_timeout``: the timeout the socket gets before each packet read;
- ``Connection._execute_command(command, sql)``: every command to the server starts there;
- ``Connection._read_ok_packet()``: reads the OK reply of COMMIT, ROLLBACK, BEGIN, SET autocommit;
- ``Connection._read_query_result(unbuffered=False)`` and ``Connection._result``: copied, so that a
  query's result is a ``LocalDataResult``;
- ``Connection._read_packet()`` and ``MySQLResult._read_ok_packet(packet)``: the reply after a file;
- ``MySQLResult._read_load_local_packet(first_packet)``: the server asking for a LOAD DATA LOCAL file;
- ``Connection._force_close()``: close the socket without a word to the server (``force_close``);
- ``Connection._write_bytes(data)`` and ``Connection._next_seq_id``: a LOAD's file and its end packet go
  out in one send, numbered as ``write_packet`` would number them;
- ``Connection._request_authentication()``, ``Connection.ssl`` and ``Connection.server_capabilities``:
  the login, whether TLS was asked for (``ssl=`` an SSLContext), what the server's greeting offered.

What the class adds:

- ``status_current``: PyMySQL updates ``server_status`` from OK packets only; after an error reply (a
  duplicate key, a deadlock) it still holds what an earlier reply said, which may be "no transaction"
  while one is open. ``status_current`` is true only right after a reply that carried a status, and
  ``transaction_closed(conn)`` believes the status only then.
- The server's greeting and the login are read with ``connect_timeout`` as the socket's timeout, like the
  TCP connect, rather than ``read_timeout`` (PyMySQL 1.1-1.2: a server that accepts but never greets held
  a connect for read_timeout, 60 s by default).
- A connection asked to speak TLS (the DSN's ``ssl_mode``, ``prefork.db.tls``) refuses a server whose
  greeting offers none, before the login, naming the host (PyMySQL 1.1 would log in in plaintext, 1.2
  refuses without naming it). A plaintext login refused with "access denied" by a server that offers TLS
  says that the server may require it: MariaDB answers a plaintext login under
  ``require_secure_transport=ON`` with nothing else than error 1045; MySQL says why, with error 3159, to
  which the same advice is added.
- ``load_local_data(sql, data)`` runs a ``LOAD DATA LOCAL INFILE`` statement and sends ``data`` when the
  server asks for the file. PyMySQL itself would open whatever file name the server asks for; this class
  never opens a file: a request it did not offer data for gets an empty file. ``set_multi_statements``
  (COM_SET_OPTION) lets a statement go in the LOAD's round trip (``load_local_data(sql, data, first)``).
"""

from __future__ import annotations

import struct
from typing import Any

import pymysql
import pymysql.connections
from pymysql.constants import CLIENT, COMMAND, CR, ER, SERVER_STATUS

from prefork.config.address import format_host_port
from prefork.db.errors import SECURE_TRANSPORT_REQUIRED

# LOAD DATA LOCAL data goes out in packets of this size (below any server's max_allowed_packet).
LOCAL_DATA_PACKET = 256 * 1024


class LocalDataResult(pymysql.connections.MySQLResult):
    """A query's result that answers a LOAD DATA LOCAL request with the offered data, or an empty file."""

    def _read_load_local_packet(self, first_packet: Any) -> None:
        conn = self.connection
        data = conn.offered_data
        conn.offered_data = None  # one statement, one file
        try:
            # The file's packets and its end in one send: the server wakes once for the whole file (and a
            # LOAD holds the table's AUTO-INC lock until the end arrives).
            conn._write_bytes(conn.file_packets(data or b""))
        finally:
            ok = conn._read_packet()  # raises the statement's error, if any
        if not ok.is_ok_packet():
            raise pymysql.err.OperationalError(CR.CR_COMMANDS_OUT_OF_SYNC, "Commands Out of Sync")
        self._read_ok_packet(ok)


class Connection(pymysql.connections.Connection):
    """PyMySQL's Connection that knows whether its ``server_status`` is current, reads the greeting
    within ``connect_timeout``, and answers LOAD DATA LOCAL INFILE from memory only."""

    status_current = False
    offered_data: bytes | None = None
    last_warning_count = 0

    def connect(self, sock: Any = None) -> None:
        read_timeout = self._read_timeout  # type: ignore[has-type]
        self._read_timeout = self.connect_timeout  # PyMySQL reads the greeting with _read_timeout
        try:
            super().connect(sock)
        finally:
            self._read_timeout = read_timeout  # the next packet read sets it on the socket

    def _request_authentication(self) -> None:
        if self.ssl and not self.server_capabilities & CLIENT.SSL:
            where = format_host_port(self.host, self.port)
            raise pymysql.err.OperationalError(
                CR.CR_SSL_CONNECTION_ERROR,
                f"{where} does not offer TLS and the DSN's ssl_mode requires it (no certificate on the server?)",
            )
        try:
            super()._request_authentication()
        except pymysql.err.OperationalError as exc:
            if not self.ssl and exc.args[:1] == (SECURE_TRANSPORT_REQUIRED,):
                hint = f"{exc.args[1]}: the server requires TLS (require_secure_transport=ON): give the DSN an ssl_mode"
                raise pymysql.err.OperationalError(SECURE_TRANSPORT_REQUIRED, hint) from exc
            if self.ssl or not self.server_capabilities & CLIENT.SSL or exc.args[:1] != (ER.ACCESS_DENIED_ERROR,):
                raise
            hint = (
                f"{exc.args[1]}: a plaintext login, and the server offers TLS; if it requires secure transport "
                "(require_secure_transport=ON), give the DSN an ssl_mode"
            )
            raise pymysql.err.OperationalError(ER.ACCESS_DENIED_ERROR, hint) from exc

    def _execute_command(self, command: int, sql: Any) -> None:
        self.status_current = False
        super()._execute_command(command, sql)

    def _read_ok_packet(self) -> Any:
        ok = super()._read_ok_packet()
        self.status_current = True
        return ok

    def _read_query_result(self, unbuffered: bool = False) -> int:
        self._result = None
        result = LocalDataResult(self)
        if unbuffered:
            result.init_unbuffered_query()
        else:
            result.read()
        self._result = result
        if result.server_status is not None:
            self.server_status = result.server_status
        self.status_current = result.server_status is not None
        self.last_warning_count = result.warning_count or 0
        return result.affected_rows

    multi_statements = False  # set_multi_statements(True) was answered: one query may hold several statements

    def set_multi_statements(self, on: bool) -> None:
        """Let one query hold several statements (COM_SET_OPTION), for this session only."""
        self._execute_command(COMMAND.COM_SET_OPTION, struct.pack("<H", 0 if on else 1))
        self._read_packet()  # EOF or OK; raises the server's error, if any
        self.multi_statements = on

    def file_packets(self, data: bytes) -> bytes:
        """``data`` as the packets of a LOAD DATA LOCAL file, its empty end packet included, numbered from
        the connection's next sequence id (which they advance)."""
        view = memoryview(data)
        seq: int = self._next_seq_id  # type: ignore[has-type]
        parts: list[bytes | memoryview] = []
        for start in range(0, len(view), LOCAL_DATA_PACKET):
            chunk = view[start : start + LOCAL_DATA_PACKET]
            parts.append(struct.pack("<I", len(chunk))[:3] + bytes((seq,)))
            parts.append(chunk)
            seq = (seq + 1) % 256
        parts.append(b"\0\0\0" + bytes((seq,)))  # end of file: an empty packet
        self._next_seq_id = (seq + 1) % 256
        return b"".join(parts)

    def load_local_data(self, sql: str, data: bytes, first: str | None = None) -> tuple[int, int]:
        """Run a LOAD DATA LOCAL INFILE statement with ``data`` as its file; return the rows it
        stored and its warning count (LOCAL turns bad values into warnings, not errors).

        ``first``: a statement run before it in the same round trip (with ``multi_statements`` on; else
        apart, before it). If it fails, the LOAD is not run.
        """
        if first is not None and not self.multi_statements:
            self.query(first)
            first = None
        self.offered_data = data
        try:
            if first is None:
                rows = self.query(sql)
            else:
                self.query(f"{first};{sql}")
                rows = self.next_result()
        finally:
            self.offered_data = None
        return rows, self.last_warning_count


def open_connection(**kwargs: Any) -> Connection:
    """A new connection for a pool: LOAD DATA LOCAL accepted, and answered from memory only."""
    return Connection(**kwargs, local_infile=True)


def transaction_closed(conn: Any) -> bool:
    """True only when the connection's last reply was one that carried a status (see ``Connection``) and
    said no transaction is open; False for a connection of another class."""
    if not getattr(conn, "status_current", False):
        return False
    return not conn.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS


def force_close(conn: Any) -> None:
    """Close a connection's socket without a word to the server (QUIT could be misread mid-protocol)."""
    force = getattr(conn, "_force_close", None)
    try:
        force() if force is not None else conn.close()
    except Exception:
        pass
