"""The shipper configs of etc/shippers/, run as they are (prefork's placeholder host and port replaced, nothing
else changed) by the real shippers, into workers.syslog:app and the private MariaDB; the table checked
message by message, column by column.

The daemons (rsyslogd from Debian's ``rsyslog``; syslog-ng from Debian's packages unpacked into a cache
directory by devtools.shippers, never installed: it conflicts with rsyslog) run each config as a drop-in of a
main config whose only input is a private unix socket, fed by ``logger -u``. They are sent their messages in
three parts with a SIGHUP reload of prefork during the second: every message of every part is stored
exactly once, the ones that went through the reload too (the reload hands each open connection, with the
frame it was cut in, to the new generation: prefork.handoff), and rsyslog never sees its connection close.
``logger`` and Python's ``SysLogHandler`` keep one connection and never reconnect: they are run without a
reload. Each test prints the rate it saw.

Marker ``shippers``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from devtools.shippers import (
    ETC_SHIPPERS,
    PLACEHOLDER_HOST,
    Rsyslog,
    SyslogNg,
    rsyslog_main_config,
    shipper_config,
    syslog_ng_main_config,
    syslog_ng_root,
)
from tests.helpers import query
from tests.server import ServerProcess, wait_for

pytestmark = [pytest.mark.shippers, pytest.mark.timeout(180)]

APP = "workers.syslog:app"
MESSAGES = 3_000  # in three parts for the daemons
STORE_TIMEOUT_S = 60.0
RELOAD_TIMEOUT_S = 40.0
RELOAD_CHUNK = 50  # the part sent during the reload: this many messages at a time,
RELOAD_PACE_S = 0.15  # this far apart (about 3 s in all: the reload, and the old workers' stop)
TAG = "shipper"
LOCAL3 = 19
TESTED = (
    "rsyslog-omfwd.conf",
    "syslog-ng-syslog.conf",
    "syslog-ng-network.conf",
    "logger.sh",
    "python-syslog-handler.py",
)
NOTICE, WARNING = 5, 4


def texts(count: int = MESSAGES) -> list[str]:
    """Distinct messages with spaces, non-ASCII, brackets, quotes and a backslash (no control characters:
    rsyslog escapes those by default)."""
    return [f'msg-{i:05d} grüße [x] "q" back\\slash {"y" * (i % 40)}' for i in range(count)]


def syslog_server(dsn: str, table: str, framing: str) -> ServerProcess:
    query(dsn, f"DROP TABLE IF EXISTS `{table}`")
    return ServerProcess([APP, "--dsn", dsn, "--syslog-table", table, "--workers", "1", "--framing", framing])


def rows(dsn: str, table: str) -> list[tuple]:
    sql = f"SELECT facility, severity, ts_utc, hostname, app_name, procid, message FROM `{table}` ORDER BY id"
    return query(dsn, sql)


def stored_messages(dsn: str, table: str) -> list[str]:
    return [r[0] for r in query(dsn, f"SELECT message FROM `{table}`")]


def check_rows(
    dsn: str,
    table: str,
    sent: list[str],
    severity: int,
    app_name: str,
    procid: str | None,
    lead: str = "",
    header: bool = True,
) -> Counter:
    """Every row one whole message of ``sent`` in its columns (``lead``: what the shipper puts before the
    message text, rsyslog's space after `TAG:`; ``header``: a timestamp and one host name in every row, else
    neither); the count of each message stored."""
    expected = {lead + text for text in sent}
    counts: Counter = Counter()
    hosts = set()
    for facility, sev, ts_utc, host, app, pid, message in rows(dsn, table):
        assert message in expected, message  # not merged, split, framed wrong or altered
        assert (facility, sev, app, pid) == (LOCAL3, severity, app_name, procid), message
        assert (ts_utc is not None) == header, message
        hosts.add(host)
        counts[message] += 1
    assert len(hosts) <= 1 and (None not in hosts) == header, hosts
    return counts


def send_with_logger(socket_path: Path, lines: list[str], tmp: Path) -> None:
    """``logger -u``: one datagram per line into the daemon's private socket (blocks while it is full)."""
    path = tmp / "part.txt"
    path.write_text("".join(line + "\n" for line in lines))
    cmd = ["logger", "-u", str(socket_path), "-d", "-t", TAG, "-p", "local3.notice", "-f", str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=STORE_TIMEOUT_S)
    assert result.returncode == 0, (cmd, result.stderr)


def report(what: str, sent: int, counts: Counter, started: float) -> None:
    elapsed = time.monotonic() - started
    lost = sent - len(counts)
    duplicates = sum(counts.values()) - len(counts)
    print(
        f"\n{what}: {sent} sent, {len(counts)} stored, {lost} lost, {duplicates} duplicates, "
        f"{sent / elapsed:.0f} messages/s",
        file=sys.stderr,
    )


def wait_stored(dsn: str, table: str, wanted: set[str], what: str) -> None:
    wait_for(lambda: wanted <= set(stored_messages(dsn, table)), STORE_TIMEOUT_S, 0.05, what)


def through_a_reload(dsn: str, table: str, srv: ServerProcess, socket_path: Path, tmp: Path, lead: str) -> Counter:
    """Three parts: the first sent at once and stored (its rate printed); the second sent in small chunks over
    a few seconds while prefork reloads (SIGHUP after its first chunk) and its old workers stop; the last
    once they are gone. Every message of the three parts is stored exactly once, every row one whole message
    of those sent: the reload moved the shipper's connection, open, to the new generation (before the
    handoff, 0 to 276 of the second part were lost in each run)."""
    sent = texts()
    third = len(sent) // 3
    parts = [sent[:third], sent[third : 2 * third], sent[2 * third :]]
    wanted = [{lead + text for text in part} for part in parts]
    started = time.monotonic()
    send_with_logger(socket_path, parts[0], tmp)
    wait_stored(dsn, table, wanted[0], "the first part stored")
    rate = third / (time.monotonic() - started)
    old_workers = srv.worker_pids()
    chunks = [parts[1][i : i + RELOAD_CHUNK] for i in range(0, third, RELOAD_CHUNK)]
    for n, chunk in enumerate(chunks):
        send_with_logger(socket_path, chunk, tmp)
        if n == 0:
            srv.signal(signal.SIGHUP)
        time.sleep(RELOAD_PACE_S)  # a stream that spans the reload, not a burst before it
    wait_for(lambda: "Reloaded: generation 2" in srv.logs(), RELOAD_TIMEOUT_S, 0.1, "the reload")
    exited = [f"Worker {pid} exited" for pid in old_workers]
    wait_for(lambda: all(line in srv.logs() for line in exited), RELOAD_TIMEOUT_S, 0.1, "the old workers' exit")
    send_with_logger(socket_path, parts[2], tmp)
    try:
        wait_stored(dsn, table, wanted[2], "the last part stored")
    except AssertionError:
        have = set(stored_messages(dsn, table))
        print(f"\nstored of each part: {[len(w & have) for w in wanted]}\n{srv.logs()[-3000:]}", file=sys.stderr)
        raise
    # FIFO shippers: once the last part is in, whatever of the second will ever arrive has.
    counts = check_rows(dsn, table, sent, NOTICE, TAG, None, lead)
    lost = len(wanted[1] - set(counts))
    print(
        f"\n{table}: {rate:.0f} messages/s; through a reload: {lost} of {third} lost, "
        f"{sum(counts[m] - 1 for m in wanted[1] if counts[m] > 1)} stored twice",
        file=sys.stderr,
    )
    assert lost == 0 and all(counts[m] == 1 for m in wanted[0] | wanted[1] | wanted[2])
    return counts


def test_rsyslog_omfwd_conf(dsn, tmp_path):
    """etc/shippers/rsyslog-omfwd.conf as /etc/rsyslog.d/prefork.conf, into an octet-count listener."""
    table = "shipper_rsyslog_omfwd"
    directory = tmp_path / "rsyslog"
    directory.mkdir()
    socket_path = directory / "log.sock"
    with syslog_server(dsn, table, "octet-count") as srv:
        drop_in = directory / "prefork.conf"
        drop_in.write_text(shipper_config("rsyslog-omfwd.conf", "127.0.0.1", srv.port))
        main = rsyslog_main_config(directory, socket_path, drop_in)
        with Rsyslog(directory, main, wait_path=socket_path) as rsyslog:
            through_a_reload(dsn, table, srv, socket_path, tmp_path, lead=" ")
            # The reload moved its connection: rsyslog never saw it close, and nothing went wrong.
            lines = rsyslog.logs().splitlines()
            assert not [line for line in lines if "closed connection" in line or "error" in line.lower()], lines


@pytest.mark.parametrize(
    "conf, framing",
    [
        ("syslog-ng-syslog.conf", "octet-count"),
        ("syslog-ng-syslog.conf", "syslog"),  # the config's other listener: counted frames on a syslog port
        ("syslog-ng-network.conf", "syslog"),
    ],
)
def test_syslog_ng_conf(dsn, tmp_path, conf, framing):
    """etc/shippers/syslog-ng-*.conf as /etc/syslog-ng/conf.d/prefork.conf, Debian's syslog-ng unpacked."""
    table = "shipper_" + conf.removesuffix(".conf").replace("-", "_") + "_into_" + framing.replace("-", "_")
    root = syslog_ng_root()  # a download that fails raises here, naming the command
    directory = tmp_path / "syslog-ng"
    directory.mkdir()
    socket_path = directory / "log.sock"
    with syslog_server(dsn, table, framing) as srv:
        drop_in = directory / "prefork.conf"
        drop_in.write_text(shipper_config(conf, "127.0.0.1", srv.port))
        main = syslog_ng_main_config(socket_path, drop_in)
        with SyslogNg(directory, main, wait_path=socket_path, root=root):
            through_a_reload(dsn, table, srv, socket_path, tmp_path, lead="")


def test_logger_sh(dsn, tmp_path):
    """etc/shippers/logger.sh -t TAG -p local3.notice -f FILE, into an octet-count listener."""
    table = "shipper_logger_sh"
    sent = texts()
    path = tmp_path / "messages.txt"
    path.write_text("".join(text + "\n" for text in sent))
    with syslog_server(dsn, table, "octet-count") as srv:
        script = tmp_path / "logger.sh"
        script.write_text(shipper_config("logger.sh", "127.0.0.1", srv.port))
        started = time.monotonic()
        cmd = ["sh", str(script), "-t", TAG, "-p", "local3.notice", "-f", str(path)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=STORE_TIMEOUT_S)
        assert result.returncode == 0, result.stderr
        count_sql = f"SELECT COUNT(*) FROM `{table}`"
        wait_for(lambda: int(query(dsn, count_sql)[0][0]) >= len(sent), STORE_TIMEOUT_S, 0.1, "every row")
        counts = check_rows(dsn, table, sent, NOTICE, TAG, None)
        report(table, len(sent), counts, started)
    assert sorted(counts) == sorted(sent) and set(counts.values()) == {1}


def test_python_syslog_handler(dsn, tmp_path):
    """etc/shippers/python-syslog-handler.py run as a script (each line of stdin a warning), into a syslog
    listener: NUL-terminated `<PRI>myapp[PID]: MESSAGE`."""
    table = "shipper_python"
    sent = texts()
    with syslog_server(dsn, table, "syslog") as srv:
        script = tmp_path / "python-syslog-handler.py"
        script.write_text(shipper_config("python-syslog-handler.py", "127.0.0.1", srv.port))
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(script)],
            input="".join(text + "\n" for text in sent),
            capture_output=True,
            text=True,
            timeout=STORE_TIMEOUT_S,
        )
        assert proc.returncode == 0 and not proc.stderr, proc.stderr
        count_sql = f"SELECT COUNT(*) FROM `{table}`"
        wait_for(lambda: int(query(dsn, count_sql)[0][0]) >= len(sent), STORE_TIMEOUT_S, 0.1, "every row")
        procids = {r[5] for r in rows(dsn, table)}
        assert len(procids) == 1, procids
        counts = check_rows(dsn, table, sent, WARNING, "myapp", procids.pop(), header=False)
        report(table, len(sent), counts, started)
    assert sorted(counts) == sorted(sent) and set(counts.values()) == {1}


def test_every_config_names_prefork_by_the_placeholders():
    """The files run above exist and name prefork by the placeholders shipper_config replaces (so a test
    cannot run a config that still points at prefork.example.com)."""
    for name in TESTED:
        assert (ETC_SHIPPERS / name).is_file(), name
        text = shipper_config(name, "127.0.0.1", 1)
        assert PLACEHOLDER_HOST not in text, name


def test_a_failed_syslog_ng_download_fails_naming_the_command(tmp_path, monkeypatch):
    """No apt-get (an empty PATH here): the syslog-ng tests fail, never skip, and say what to run."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get download syslog-ng-core"):
        syslog_ng_root(tmp_path / "cache")
