"""The green connection pool against the private MariaDB: one test per rule at least."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time

import gevent
import pymysql
import pytest

from devtools.mariadb import free_port
from prefork.pool import (
    Pool,
    PoolClosed,
    PoolConnectError,
    PoolForkError,
    PoolTimeout,
    connect_once,
)
from tests.helpers import connect, query
from tests.mysql_proxy import FaultProxy
from tests.server import wait_for
from tests.silent_server import SilentServer


def make_pool(dsn: str, **kwargs) -> Pool:
    kwargs.setdefault("min_size", 0)
    return Pool.from_dsn(dsn, **kwargs)


def connection_id(pool: Pool) -> int:
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        return cur.fetchone()[0]


def pool_thread_ids(dsn: str) -> set[int]:
    """Ids of the server's client connections, other than the one asking."""
    rows = query(
        dsn, "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND <> 'Daemon' AND ID <> CONNECTION_ID()"
    )
    return {r[0] for r in rows}


def assert_consistent(pool: Pool) -> dict:
    s = pool.stats()
    assert s["size"] == s["idle"] + s["in_use"], s
    assert s["size"] <= s["max_size"], s
    assert s["created"] - sum(s["closed"].values()) == s["size"], s
    return s


def test_lazy_then_fills_to_min_size(dsn):
    pool = make_pool(dsn, min_size=3, max_size=5)
    assert pool.stats()["size"] == 0  # nothing opened before the first acquire
    connection_id(pool)
    pool.maintain()
    s = assert_consistent(pool)
    assert s["size"] == 3 and s["idle"] == 3
    pool.close()


def test_max_size_never_exceeded_under_200_greenlets(dsn):
    before = pool_thread_ids(dsn)
    pool = make_pool(dsn, max_size=5, timeout=30)
    peak = {"in_use": 0, "server": 0}
    stop = gevent.event.Event()

    def hammer(i):
        for _ in range(3):
            with pool.connection() as conn:
                peak["in_use"] = max(peak["in_use"], pool.stats()["in_use"])
                conn.cursor().execute("SELECT SLEEP(0.002)")

    def watch():
        watcher = connect(dsn)
        cur = watcher.cursor()
        while not stop.is_set():
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND <> 'Daemon'")
            ids = {r[0] for r in cur.fetchall()} - before - {watcher.thread_id()}
            peak["server"] = max(peak["server"], len(ids))
            gevent.sleep(0.005)
        watcher.close()

    w = gevent.spawn(watch)
    gevent.joinall([gevent.spawn(hammer, i) for i in range(200)], raise_error=True)
    stop.set()
    w.join()
    s = assert_consistent(pool)
    assert peak["in_use"] == 5
    assert 1 <= peak["server"] <= 5
    assert s["acquires"] == 600 and s["created"] <= 5 and s["timeouts"] == 0
    pool.close()


def test_waiters_are_served_first_come_first_served(dsn):
    pool = make_pool(dsn, max_size=1)
    order = []

    def waiter(i):
        with pool.connection():
            order.append(i)

    with pool.connection():
        greenlets = []
        for i in range(6):
            greenlets.append(gevent.spawn(waiter, i))
            gevent.sleep(0.01)  # let it queue before the next one
        assert pool.stats()["waiting"] == 6
    gevent.joinall(greenlets, raise_error=True)
    assert order == list(range(6))
    pool.close()


def test_acquire_timeout_names_the_pool_state(dsn):
    pool = make_pool(dsn, max_size=1, timeout=0.2)
    with pool.connection():
        with pytest.raises(PoolTimeout) as info:
            with pool.connection():
                pass
    msg = str(info.value)
    assert "0.2s" in msg and "size 1 of max 1" in msg and "in use 1" in msg and "waiting" in msg
    s = assert_consistent(pool)
    assert s["timeouts"] == 1 and s["waiting"] == 0
    pool.close()


@pytest.mark.timeout(10)
def test_one_deadline_covers_connecting(dsn):
    """A server that accepts but never greets must not stretch a 0.3 s acquire to connect_timeout."""
    silent = gevent.socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    port = silent.getsockname()[1]
    pool = make_pool(f"mysql://root@127.0.0.1:{port}/test?connect_timeout=60", timeout=0.3)
    with pytest.raises(PoolTimeout, match="connecting took longer"):
        with pool.connection():
            pass
    assert assert_consistent(pool)["size"] == 0
    silent.close()


def test_retire_by_max_uses(dsn):
    pool = make_pool(dsn, max_uses=2)
    ids = [connection_id(pool) for _ in range(6)]
    assert ids[0] == ids[1] != ids[2] == ids[3] != ids[4] == ids[5]
    s = assert_consistent(pool)
    assert s["closed"]["max_uses"] == 3
    pool.close()


def test_retire_by_max_idle_down_to_min_size(dsn):
    pool = make_pool(dsn, min_size=1, max_size=3, max_idle=0.3)
    with pool.connection(), pool.connection(), pool.connection():
        pass
    assert pool.stats()["idle"] == 3
    time.sleep(0.5)
    pool.maintain()
    s = assert_consistent(pool)
    assert s["size"] == 1 and s["closed"]["max_idle"] == 2


def test_idle_past_max_idle_is_never_handed_out(dsn):
    pool = make_pool(dsn, max_idle=0.2)
    first = connection_id(pool)
    time.sleep(0.4)
    assert connection_id(pool) != first
    assert pool.stats()["closed"]["max_idle"] == 1
    pool.close()


def test_retire_by_max_lifetime(dsn):
    pool = make_pool(dsn, max_lifetime=0.3)
    first = connection_id(pool)
    assert connection_id(pool) == first
    time.sleep(0.4)
    connection_id(pool)  # returned past its lifetime: closed at return
    assert connection_id(pool) != first
    assert pool.stats()["closed"]["max_lifetime"] >= 1
    pool.close()


def test_connection_killed_server_side_is_replaced_on_checkout(dsn):
    pool = make_pool(dsn, ping_interval=0)
    victim = connection_id(pool)
    query(dsn, f"KILL {victim}")
    wait_for(lambda: not query(dsn, "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", (victim,)))
    with pool.connection() as conn:  # pinged, found dead, replaced: never handed out
        cur = conn.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        assert cur.fetchone()[0] != victim
    s = assert_consistent(pool)
    assert s["closed"]["broken"] == 1 and s["created"] == 2
    pool.close()


def test_open_transaction_rolled_back_on_return(dsn):
    query(dsn, "CREATE TABLE IF NOT EXISTS pool_rb (x INT) ENGINE=InnoDB")
    query(dsn, "DELETE FROM pool_rb")
    pool = make_pool(dsn)
    with pool.connection() as conn:
        conn.cursor().execute("INSERT INTO pool_rb VALUES (1)")
    assert query(dsn, "SELECT COUNT(*) FROM pool_rb") == [(0,)]
    with pool.connection() as conn:  # the same connection, and it holds no pending row
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM pool_rb")
        assert cur.fetchone() == (0,)
    with pool.connection() as conn:
        conn.cursor().execute("INSERT INTO pool_rb VALUES (2)")
        conn.commit()
    assert query(dsn, "SELECT x FROM pool_rb") == [(2,)]
    assert pool.stats()["created"] == 1
    pool.close()


def test_no_stale_snapshot_after_a_select(dsn):
    """A SELECT opens a read view that PyMySQL does not report: it must be rolled back too."""
    query(dsn, "CREATE TABLE IF NOT EXISTS pool_snap (x INT) ENGINE=InnoDB")
    query(dsn, "DELETE FROM pool_snap")
    pool = make_pool(dsn)
    with pool.connection() as conn:
        conn.cursor().execute("SELECT COUNT(*) FROM pool_snap")
    query(dsn, "INSERT INTO pool_snap VALUES (7)")
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM pool_snap")
        assert cur.fetchone() == (1,)
    pool.close()


def test_disconnect_error_discards_the_connection(dsn):
    pool = make_pool(dsn)
    with pytest.raises(pymysql.err.OperationalError):
        with pool.connection() as conn:
            cur = conn.cursor()
            cur.execute("SELECT CONNECTION_ID()")
            query(dsn, f"KILL {cur.fetchone()[0]}")
            cur.execute("SELECT 1")
    s = assert_consistent(pool)
    assert s["size"] == 0 and s["closed"]["broken"] == 1
    assert connection_id(pool)  # a fresh one
    pool.close()


def test_ordinary_sql_error_keeps_the_connection(dsn):
    pool = make_pool(dsn)
    first = connection_id(pool)
    with pytest.raises(pymysql.err.ProgrammingError):
        with pool.connection() as conn:
            conn.cursor().execute("SELECT * FROM no_such_table")
    assert connection_id(pool) == first
    pool.close()


def test_fork_guard_raises_in_child_and_leaves_parent_socket_alone(dsn):
    pool = make_pool(dsn)
    first = connection_id(pool)
    pid = os.fork()
    if pid == 0:  # child: must raise at once, and dropping the pool must not send QUIT
        code = 1
        try:
            with pool.connection():
                pass
        except PoolForkError:
            code = 0
        except BaseException:
            code = 2
        pool.close()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert connection_id(pool) == first  # the parent's socket still works
    pool.close()


def test_waiter_cancelled_by_gevent_timeout_leaves_no_trace(dsn):
    pool = make_pool(dsn, max_size=1, timeout=30)
    with pool.connection():
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.1):
                with pool.connection():
                    pass
        assert pool.stats()["waiting"] == 0
    s = assert_consistent(pool)
    assert (s["size"], s["idle"], s["in_use"]) == (1, 1, 0)
    connection_id(pool)


def test_waiter_killed_just_after_its_grant_passes_it_on(dsn):
    pool = make_pool(dsn, max_size=1, timeout=30)
    got = []
    cm = pool.connection()
    cm.__enter__()
    first = gevent.spawn(lambda: pool.connection().__enter__())
    second = gevent.spawn(lambda: got.append(connection_id(pool)))
    gevent.sleep(0.05)
    assert pool.stats()["waiting"] == 2
    cm.__exit__(None, None, None)  # granted to `first`, which has not run yet...
    first.kill()  # ...and is killed: the grant must go on to `second`
    second.join(5)
    assert got, "the grant was lost with the killed waiter"
    s = assert_consistent(pool)
    assert (s["size"], s["idle"], s["in_use"], s["waiting"]) == (1, 1, 0, 0)


def test_holder_killed_mid_query_frees_its_slot(dsn):
    pool = make_pool(dsn, max_size=1)

    def hold():
        with pool.connection() as conn:
            conn.cursor().execute("SELECT SLEEP(5)")

    g = gevent.spawn(hold)
    gevent.sleep(0.2)
    assert pool.stats()["in_use"] == 1
    g.kill()
    s = assert_consistent(pool)
    assert s["size"] == 0 and s["closed"]["broken"] == 1  # mid-reply: never reused
    assert connection_id(pool)


def test_leak_warning_names_the_acquirer(dsn, caplog):
    pool = make_pool(dsn, leak_timeout=0.1)

    def forgetful_handler():
        with pool.connection():
            gevent.sleep(0.3)
            pool.maintain()
            pool.maintain()  # warned once only

    with caplog.at_level(logging.WARNING, logger="prefork.pool"):
        forgetful_handler()
    warnings = [r for r in caplog.records if "checked out for" in r.getMessage()]
    assert len(warnings) == 1
    assert "forgetful_handler" in warnings[0].getMessage()
    pool.close()


def test_stats_consistent_after_mixed_workload(dsn):
    pool = make_pool(dsn, max_size=4, timeout=0.05, max_uses=5)
    outcomes = {"ok": 0, "timeout": 0, "error": 0}

    def work(i):
        try:
            with pool.connection() as conn:
                if i % 7 == 0:
                    conn.cursor().execute("SELECT * FROM no_such_table")
                conn.cursor().execute("SELECT SLEEP(0.02)")
            outcomes["ok"] += 1
        except PoolTimeout:
            outcomes["timeout"] += 1
        except pymysql.err.ProgrammingError:
            outcomes["error"] += 1

    gevent.joinall([gevent.spawn(work, i) for i in range(60)])
    s = assert_consistent(pool)
    assert s["acquires"] == outcomes["ok"] + outcomes["error"]
    assert s["timeouts"] == outcomes["timeout"] > 0
    assert s["in_use"] == 0 and s["waiting"] == 0
    assert s["wait_max_s"] <= s["wait_total_s"]
    pool.close()


def test_close_fails_waiters_and_closes_connections_at_return(dsn):
    pool = make_pool(dsn, max_size=1, timeout=30)
    results = []

    def waiter():
        try:
            with pool.connection():
                results.append("got")
        except PoolClosed as exc:
            results.append(str(exc))

    with pool.connection():
        g = gevent.spawn(waiter)
        gevent.sleep(0.05)
        pool.close()
        g.join()
    assert results and "closed" in results[0]
    s = pool.stats()
    assert s["size"] == 0 and s["closed"]["closed"] == 1
    with pytest.raises(PoolClosed):
        with pool.connection():
            pass


def test_plain_threads(dsn, monkeypatch):
    # Blocking stdlib sockets, as in a threaded program that never heard of gevent.
    monkeypatch.setattr(pymysql.connections, "socket", socket)
    pool = make_pool(dsn, max_size=3, timeout=30)
    errors = []
    peak = [0]

    def work():
        try:
            for _ in range(10):
                with pool.connection() as conn:
                    peak[0] = max(peak[0], pool.stats()["in_use"])
                    conn.cursor().execute("SELECT 1")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    s = assert_consistent(pool)
    assert s["acquires"] == 80 and peak[0] <= 3 and s["in_use"] == 0


def test_warns_when_max_idle_exceeds_wait_timeout(dsn, caplog):
    with caplog.at_level(logging.WARNING, logger="prefork.pool"):
        pool = make_pool(dsn, max_idle=10**6)
        connection_id(pool)
    assert any("wait_timeout" in r.getMessage() for r in caplog.records)
    pool.close()


@pytest.mark.timeout(120)
def test_database_down_fails_fast_then_recovers_by_itself(db):
    pool = make_pool(db.dsn, timeout=3, ping_interval=0)
    first = connection_id(pool)
    db.kill()
    with pytest.raises((PoolConnectError, PoolTimeout)) as info:
        connection_id(pool)  # the idle connection is dead; opening a new one fails
    assert pool.name in str(info.value)
    s = assert_consistent(pool)
    assert s["size"] == 0 and s["in_use"] == 0
    db.restart()
    assert connection_id(pool) != first
    pool.close()


# -- return under faults (each of these failed before its fix) -------------------------------------------


def open_transactions(dsn: str, thread_id: int) -> int:
    rows = query(dsn, "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = %s", (thread_id,))
    return rows[0][0]


@pytest.mark.parametrize("raised", [False, True], ids=["caught-in-the-block", "raised-from-the-block"])
def test_failed_insert_leaves_no_transaction_on_a_pooled_connection(dsn, raised):
    """A duplicate-key INSERT as the first statement: PyMySQL's server_status is stale after the error
    packet, and the transaction it opened (its locks, its read view) must not stay on the pooled connection."""
    query(dsn, "CREATE TABLE IF NOT EXISTS pool_dup (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
    query(dsn, "REPLACE INTO pool_dup VALUES (1, 0)")
    pool = make_pool(dsn)
    thread_id = connection_id(pool)
    with pytest.raises(pymysql.err.IntegrityError) if raised else contextlib.nullcontext():
        with pool.connection() as conn:
            try:
                conn.cursor().execute("INSERT INTO pool_dup VALUES (1, 1)")
            except pymysql.err.IntegrityError:
                if raised:
                    raise
    assert open_transactions(dsn, thread_id) == 0, "the pooled connection kept its transaction open"
    other = connect(dsn, autocommit=False)
    try:
        other.cursor().execute("SET SESSION innodb_lock_wait_timeout = 1")
        other.cursor().execute("UPDATE pool_dup SET v = 2 WHERE id = 1")  # no lock left behind
        other.commit()
    finally:
        other.close()
    assert connection_id(pool) == thread_id  # the connection itself is fine and reused
    pool.close()


def test_connection_whose_socket_the_driver_closed_is_discarded(dsn):
    """The block catches the errors of a connection killed under it: PyMySQL closed its socket, so the
    connection must not go back to idle (the next checkout, without a ping, would get a dead one)."""
    pool = make_pool(dsn, ping_interval=3600)
    victim = connection_id(pool)
    with pool.connection() as conn:
        query(dsn, f"KILL {victim}")
        try:
            conn.cursor().execute("SELECT 1")
        except pymysql.err.OperationalError:
            pass  # lost connection: PyMySQL closed its socket
        assert not conn.open
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        assert cur.fetchone()[0] != victim
    assert pool.stats()["closed"]["broken"] == 1
    pool.close()


@pytest.mark.parametrize("code", [1053, 1927])
def test_server_shutdown_and_connection_killed_errors_are_disconnects(dsn, code):
    """1053 (server shutdown) and 1927 (connection killed) come as error packets on a connection the server
    then closes: a block that raised one discards its connection."""
    from prefork.pool import is_disconnect

    assert is_disconnect(pymysql.err.OperationalError(code, "x"))
    pool = make_pool(dsn)
    victim = connection_id(pool)
    with pytest.raises(pymysql.err.OperationalError) as raised:
        with pool.connection() as conn:
            query(dsn, f"KILL {victim}")
            conn.cursor().execute("SELECT 1")
    s = assert_consistent(pool)
    assert s["closed"]["broken"] == 1 and s["size"] == 0, (raised.value, s)
    pool.close()


def test_constructor_defaults_are_the_config_schema_defaults():
    """The pool's limits have one set of defaults: a Pool built with none equals one built from an empty
    [pool] section, and POOL_SETTINGS names every key of that section but the DSN."""
    import inspect

    from prefork.config.framework import SETTINGS
    from prefork.config.loader import load_config
    from prefork.db.pool import POOL_SETTINGS

    section = load_config(env={}).pool
    assert set(POOL_SETTINGS) == {s.key for s in SETTINGS if s.section == "pool"} - {"dsn"}
    params = inspect.signature(Pool).parameters
    for key in POOL_SETTINGS:
        assert params[key].default == getattr(section, key), key


def test_from_config_takes_every_limit_of_the_section(dsn):
    from prefork.config.loader import load_config
    from prefork.db.pool import POOL_SETTINGS

    overrides = {"pool.dsn": dsn, "pool.min_size": "0", "pool.max_size": "3", "pool.timeout": "2.5"}
    overrides |= {"pool.max_uses": "7", "pool.max_idle": "11", "pool.max_lifetime": "13"}
    overrides |= {"pool.ping_interval": "17", "pool.leak_timeout": "19"}
    section = load_config(env={}, overrides=overrides).pool
    pool = Pool.from_config(section)
    try:
        for key in POOL_SETTINGS:
            assert getattr(pool, key) == getattr(section, key), key
        with pool.connection() as conn:
            assert conn.cursor().execute("SELECT 1") == 1
        assert "secret" not in pool.name and "127.0.0.1" in pool.name
    finally:
        pool.close()


def test_on_connect_runs_once_per_new_connection_before_it_is_lent(dsn):
    calls = []

    def on_connect(conn):
        calls.append(conn.thread_id())
        conn.cursor().execute("SET time_zone = '+05:30'")

    pool = make_pool(dsn, max_size=2, on_connect=on_connect)
    try:
        for _ in range(3):
            with pool.connection() as conn:
                cur = conn.cursor()
                cur.execute("SELECT @@session.time_zone")
                assert cur.fetchone()[0] == "+05:30"
        assert len(calls) == 1
    finally:
        pool.close()


def test_failing_on_connect_closes_the_connection_and_fails_the_acquire(dsn):
    def on_connect(conn):
        raise RuntimeError("session setup refused")

    before = pool_thread_ids(dsn)
    pool = make_pool(dsn, max_size=1, timeout=5, on_connect=on_connect)
    try:
        with pytest.raises(PoolConnectError, match="session setup refused"):
            with pool.connection():
                pass
        stats = assert_consistent(pool)
        assert stats["size"] == 0 and stats["in_use"] == 0
        wait_until_gone = time.monotonic() + 5
        while pool_thread_ids(dsn) - before and time.monotonic() < wait_until_gone:
            time.sleep(0.05)
        assert not pool_thread_ids(dsn) - before, "the connection on_connect refused is still open"
    finally:
        pool.close()


def test_several_hosts_the_first_that_answers_in_order(db):
    """A DSN listing hosts (a Galera cluster): connections go to the first host that answers; a standalone
    server (wsrep off) counts as ready. Here the first host is a port nobody listens on."""
    dead = f"127.0.0.1:{free_port()}"
    live = f"127.0.0.1:{db.port}"
    pool = make_pool(db.dsn.replace(live, f"{dead},{live}"), max_size=2)
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT @@port")
        assert cur.fetchone()[0] == db.port
    pool.close()
    pool = make_pool(db.dsn.replace(live, f"{live},{dead}"), max_size=1)  # the live one first: it is used
    with pool.connection() as conn:
        conn.cursor().execute("SELECT 1")
    pool.close()
    only_dead = make_pool(db.dsn.replace(live, f"{dead},{dead.replace('127.0.0.1', '127.0.0.2')}"), timeout=2)
    with pytest.raises((PoolTimeout, PoolConnectError)):
        with only_dead.connection():
            pass
    only_dead.close()


def test_connect_once_walks_the_hosts_as_the_pool_does(db):
    """connect_once (the check and initdb hooks' connection) chooses its host as the pool does: a first host
    that refuses is passed for the next one; with every host refusing, the error names the DSN."""
    dead = f"127.0.0.1:{free_port()}"
    live = f"127.0.0.1:{db.port}"
    conn = connect_once(db.dsn.replace(live, f"{dead},{live}"))
    try:
        cur = conn.cursor()
        cur.execute("SELECT @@port")
        assert cur.fetchone()[0] == db.port
    finally:
        conn.close()
    with pytest.raises(PoolConnectError, match=dead):
        connect_once(db.dsn.replace(live, f"{dead},{dead.replace('127.0.0.1', '127.0.0.2')}"))


def test_several_hosts_stay_on_the_host_they_failed_over_to(db):
    """Two hosts (two proxies in front of the private server): connections go to the first; when it goes
    down they go to the second, and stay there when the first is back (a Galera cluster written on one
    node at a time has no certification conflicts)."""
    upstream = ("127.0.0.1", db.port)
    with FaultProxy(upstream, lambda count: None) as first, FaultProxy(upstream, lambda count: None) as second:
        pool = make_pool(f"mysql://root@127.0.0.1:{first.port},127.0.0.1:{second.port}/test", max_size=1, max_uses=1)

        def used() -> tuple[int, int]:
            with pool.connection() as conn:
                conn.cursor().execute("SELECT 1")
            return len(first._links), len(second._links)

        assert used() == (1, 0)
        first.down()
        assert used() == (1, 1)  # max_uses=1: each checkout a new connection
        first.up()
        assert used() == (1, 2) and used() == (1, 3)  # still the second
        pool.close()


@pytest.mark.timeout(30)
def test_a_first_host_that_never_greets_is_passed_within_the_acquire_timeout(db):
    """The first host accepts TCP and never sends its greeting (a hung server, a half-dead proxy): the
    pool moves on to the second within one acquire timeout, though the DSN gives each connection 60 s of
    read_timeout and 10 s of connect_timeout; before, the acquire spent its whole timeout on the first."""
    with SilentServer("127.0.0.31") as silent:
        pool = make_pool(f"mysql://root@{silent.address},127.0.0.1:{db.port}/test", timeout=4, max_size=2)
        try:
            with pool.connection() as conn:
                cur = conn.cursor()
                cur.execute("SELECT @@port")
                assert cur.fetchone()[0] == db.port
            assert silent.accepted == 1
            assert assert_consistent(pool)["timeouts"] == 0
        finally:
            pool.close()


@pytest.mark.timeout(30)
def test_a_host_that_did_not_answer_in_time_is_tried_last(db):
    """Hosts: a silent one, then two proxies to the private server. The first acquire passes the silent
    host and uses the first proxy; when that proxy goes down, the next connection goes to the second proxy
    without trying the silent host again (it is tried last for a while), as the silent listener's count of
    accepted connections tells."""
    upstream = ("127.0.0.1", db.port)
    with (
        SilentServer("127.0.0.32") as silent,
        FaultProxy(upstream, lambda count: None) as first,
        FaultProxy(upstream, lambda count: None) as second,
    ):
        hosts = f"{silent.address},127.0.0.1:{first.port},127.0.0.1:{second.port}"
        pool = make_pool(f"mysql://root@{hosts}/test", timeout=6, max_size=1, max_uses=1)

        def used() -> tuple[int, int, int]:
            with pool.connection() as conn:
                conn.cursor().execute("SELECT 1")
            return silent.accepted, len(first._links), len(second._links)

        try:
            assert used() == (1, 1, 0)
            first.down()
            assert used() == (1, 1, 1)
        finally:
            pool.close()


@pytest.mark.timeout(30)
def test_the_greeting_is_read_within_connect_timeout():
    """One host that never greets, connect_timeout=1 and the default read_timeout of 60 s: the connect
    fails after connect_timeout (the driver alone would wait read_timeout for the greeting; this test's
    deadline is half of that)."""
    with SilentServer("127.0.0.33") as silent:
        with pytest.raises(PoolConnectError, match="127.0.0.33"):
            connect_once(f"mysql://root:pw@{silent.address}/test?connect_timeout=1")
        assert silent.accepted == 1
