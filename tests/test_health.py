"""/metrics, /healthz and /readyz of a real master: the exposition parses with Prometheus' own parser, a
killed worker's slot keeps its series and none goes down, /readyz follows the workers and the database."""

from __future__ import annotations

import os
import re
import signal
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server import ServerProcess, read_all, roundtrip, wait_for
from tests.test_metrics import check_exposition, counters

ECHO = "workers.echo:app"


def request(port: int, path: str, method: str = "GET") -> tuple[str, str, str]:
    """One HTTP/1.0 request, as HAProxy's httpchk sends it: (status line, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.0\r\n\r\n".encode())
        data = read_all(sock).decode()
    head, _, body = data.partition("\r\n\r\n")
    status, _, headers = head.partition("\r\n")
    return status, headers, body


def metrics_port(srv: ServerProcess) -> int:
    match = wait_for(lambda: re.search(r"Metrics at: http://127\.0\.0\.1:(\d+)/metrics", srv.logs()))
    return int(match.group(1))


def worker_slots(text: str) -> dict[str, str]:
    """{slot: pid} of prefork_worker_info."""
    return {
        s.labels["slot"]: s.labels["pid"]
        for f in text_string_to_metric_families(text)
        if f.name == "prefork_worker_info"
        for s in f.samples
    }


@pytest.fixture(scope="module")
def echo():
    """One echo server (2 workers) with its metrics listener, shared by this module's echo tests."""
    with ServerProcess([ECHO, "--workers", "2", "--name", "health", "--metrics-bind", "127.0.0.1:0"]) as srv:
        yield srv, metrics_port(srv)


@pytest.mark.timeout(30)
def test_endpoints_answer_as_probes_and_scrapers_expect(echo):
    srv, port = echo
    assert roundtrip(srv.port, [b"a", b"b", b""]) == [b"a", b"b", b"ERR empty"]

    def scraped():
        status, _, body = request(port, "/metrics")
        return body if 'prefork_lines_total{name="health"} 3' in body and len(worker_slots(body)) == 2 else None

    body = wait_for(scraped, what="both workers and the 3 lines in /metrics")
    series = check_exposition(body)
    assert {k[0] for k in series} >= {"prefork_worker_lines_total", "prefork_worker_clients", "prefork_ready"}
    assert request(port, "/healthz")[::2] == ("HTTP/1.1 200 OK", "ok\n")
    status, headers, body = request(port, "/healthz", "HEAD")
    assert status == "HTTP/1.1 200 OK" and "Content-Length: 3" in headers and body == ""
    assert request(port, "/readyz")[::2] == ("HTTP/1.1 200 OK", "ready\n")
    status, headers, _ = request(port, "/readyz", "POST")
    assert status == "HTTP/1.1 405 Method Not Allowed" and "Allow: GET, HEAD" in headers
    assert request(port, "/nope")[0] == "HTTP/1.1 404 Not Found"
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        pass  # a prober that says nothing must not hang the master
    assert request(port, "/healthz")[0] == "HTTP/1.1 200 OK"


@pytest.mark.timeout(30)
def test_a_killed_worker_leaves_its_slot_to_its_replacement_and_no_counter_goes_down(echo):
    srv, port = echo
    assert roundtrip(srv.port, [b"x"] * 20) == [b"x"] * 20
    before_text = wait_for(
        lambda: (t := request(port, "/metrics")[2]) and sum_lines(t) >= 20 and len(worker_slots(t)) == 2 and t,
        what="the lines counted per slot",
    )
    before, slots = counters(before_text), worker_slots(before_text)
    # The worker of the slot that read the most lines: its counts must live on in its slot.
    busiest = max(slots, key=lambda slot: before["prefork_worker_lines_total", slot_labels(slot)])
    victim = int(slots[busiest])
    os.kill(victim, signal.SIGKILL)

    def replaced():
        text = request(port, "/metrics")[2]
        now = worker_slots(text)
        return text if now.keys() == slots.keys() and str(victim) not in now.values() else None

    after_text = wait_for(replaced, what="the replacement reporting in the killed worker's slot")
    after = counters(after_text)
    assert set(before) <= set(after)
    assert [key for key, value in before.items() if after[key] < value] == []
    assert after["prefork_worker_lines_total", slot_labels(busiest)] >= 10  # 20 lines over 2 workers
    check_exposition(after_text)
    assert request(port, "/readyz")[0] == "HTTP/1.1 200 OK"


def slot_labels(slot: str) -> frozenset:
    return frozenset({"name": "health", "slot": slot}.items())


def sum_lines(text: str) -> float:
    return sum(v for (name, _), v in counters(text).items() if name == "prefork_worker_lines_total")


@pytest.mark.timeout(60)
def test_readyz_says_503_while_the_database_is_down_and_200_again_after(db):
    args = ["--dsn", db.dsn, "--table", "t_ready", "--workers", "1", "--ready-within", "2"]
    with ServerProcess([*args, "--pool-timeout", "1", "--metrics-bind", "127.0.0.1:0"]) as srv:
        port = metrics_port(srv)
        wait_for(lambda: request(port, "/readyz")[0] == "HTTP/1.1 200 OK", what="ready once the database answers")
        db.kill()
        try:
            status, _, body = wait_for(
                lambda: (r := request(port, "/readyz"))[0].startswith("HTTP/1.1 503") and r,
                what="not ready with the database down",
            )
            assert re.fullmatch(r"worker \d+ \(slot 0\): no database connection for \d+s: .+\n", body), body
            assert 'prefork_ready{name="prefork"} 0' in request(port, "/metrics")[2]
            assert request(port, "/healthz")[0] == "HTTP/1.1 200 OK"  # the master itself is fine
            assert "no database connection" in srv.status()["master"]["not_ready"]  # prefork status says so too
        finally:
            db.start()
        wait_for(lambda: request(port, "/readyz")[0] == "HTTP/1.1 200 OK", what="ready again")
        assert roundtrip(srv.port, [b"back"]) == [b"OK"]
