"""server.log_format and server.log_file: JSON lines, syslog, journald priorities (real master, real logs)."""

from __future__ import annotations

import json
import signal
import socket

import pytest

from devtools.mariadb import free_port
from tests.server import ServerProcess, roundtrip, wait_for


@pytest.mark.timeout(60)
def test_json_lines_name_level_logger_pid_generation_and_exception():
    with ServerProcess(["testapps:contract", "--workers", "1", "--log-format", "json"]) as srv:
        assert roundtrip(srv.port, [b"raise", b"ok"]) == [b"ERR unavailable", b"ok"]
        wait_for(lambda: "handle failed on purpose" in srv.logs(), 10, what="the app's exception logged")
        srv.signal(signal.SIGTERM)
        assert srv.wait(30) == 0
        text = srv.logs()
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is one object
    assert all({"time", "level", "logger", "pid", "generation", "message"} <= set(e) for e in entries)
    master = [e for e in entries if e["logger"] == "prefork.master"]
    assert master and all(e["generation"] is None and e["pid"] == srv.pid for e in master)
    (failure,) = [e for e in entries if "failed on a line" in e["message"]]
    assert failure["generation"] == 1 and failure["level"] == "error" and failure["pid"] != srv.pid
    assert "RuntimeError: handle failed on purpose" in failure["exception"]
    assert failure["time"].endswith("Z") and "T" in failure["time"]


@pytest.mark.timeout(60)
def test_syslog_gets_every_record_with_its_priority(tmp_path):
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(path)
        syslog.settimeout(20)
        port = free_port()
        srv = ServerProcess(
            ["workers.echo:app", "--workers", "1", "--log-file", f"syslog:{path}"], bind=f"127.0.0.1:{port}"
        )
        try:
            srv.start(wait=False)
            records: list[bytes] = []
            while not any(b"Workers are serving" in r for r in records):
                records.append(syslog.recv(65536))
            assert roundtrip(port, [b"hello"]) == [b"hello"]
            assert srv.logs() == ""  # nothing on stderr
        finally:
            srv.stop()
    serving = next(r for r in records if b"Workers are serving" in r)
    assert serving.startswith(b"<14>prefork[")  # facility user (1) * 8 + severity info (6)
    assert b"[INFO] prefork.master: Workers are serving" in serving


@pytest.mark.timeout(60)
def test_stderr_lines_carry_syslog_priorities_under_journald():
    with ServerProcess(["workers.echo:app", "--workers", "1"], env={"JOURNAL_STREAM": "8:12345"}) as srv:
        srv.signal(signal.SIGTERM)
        srv.wait(30)
        lines = srv.logs().splitlines()
    assert lines and all(line.startswith(("<6>[", "<4>[", "<3>[", "<7>[", "<2>[")) for line in lines), lines[:5]
    assert any(line.startswith("<6>[") and "Workers are serving" in line for line in lines)


@pytest.mark.parametrize(
    ("log_file", "address"),
    [
        ("syslog", "/dev/log"),
        ("syslog:/run/other.sock", "/run/other.sock"),
        ("syslog:logs.example", ("logs.example", 514)),
        ("syslog:10.0.0.1:5514", ("10.0.0.1", 5514)),
        ("syslog:[::1]:514", ("::1", 514)),  # before: ('[::1]', 514), a host name no resolver knows
        ("syslog:[::1]", ("::1", 514)),
        ("/var/log/prefork.log", None),
    ],
)
def test_a_syslog_address_is_read_like_every_other_address(log_file, address):
    from prefork.logs import syslog_address

    assert syslog_address(log_file) == address


@pytest.mark.parametrize("log_file", ["syslog:host:99999", "syslog:[::1", "syslog:::1:514"])
def test_a_bad_syslog_address_is_a_config_error_naming_the_key(log_file):
    """Before: accepted by the config and only failing (or logging nowhere) when the log was opened."""
    from prefork.config.errors import ConfigError
    from prefork.config.loader import load_config

    with pytest.raises(ConfigError, match="server.log_file"):
        load_config(env={}, overrides={"server.log_file": log_file})
