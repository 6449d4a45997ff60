"""Prometheus text at ``/metrics``, served by the master when ``server.metrics_bind`` is set.

The master has no event loop to spare for HTTP, so the server is deliberately tiny: the master's main loop
selects on the listening socket and answers one request at a time, with a short deadline for the client,
from the same state `prefork status` prints (what the master read from its workers' heartbeats). It never
talks to a worker or to the database.
"""

from __future__ import annotations

import logging
import math
import platform
import socket
import time
from collections.abc import Callable
from typing import Any

from prefork import __version__
from prefork.config.address import Address, format_host_port
from prefork.status import build_report

log = logging.getLogger("prefork.metrics")
_PY = platform.python_version()

CLIENT_DEADLINE = 0.5  # seconds a scraper gets to send its request line: the master must not wait longer
MAX_REQUEST = 8192
MAX_APP_SERIES = 100  # per worker, of the numbers an app reports: a scrape stays small whatever it reports


def render(state: dict[str, Any]) -> str:
    """The master's state (``Master.state()``) as Prometheus text exposition format.

    Counters without a pid label (lines, replies, restarts, reloads) add every retired worker's last
    counts to the live workers' ones, so they never go down when a worker exits, crashes or is replaced
    by a reload or max_requests. Per-worker series (pid label) are gauges and the pool's own counters.
    """
    report = build_report(state)
    name = report["master"].get("name") or "prefork"
    out: list[str] = []

    def family(
        metric: str, kind: str, help_text: str, samples: list[tuple[dict[str, Any], float]], prefix: str = "prefork_"
    ) -> None:
        out.append(f"# HELP {prefix}{metric} {help_text}")
        out.append(f"# TYPE {prefix}{metric} {kind}")
        for labels, value in samples:
            labels = {"name": name, **labels}
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            out.append(f"{prefix}{metric}{{{text}}} {value}")

    m = report["master"]
    workers = report["workers"]
    live = state.get("workers", [])
    retired = state.get("retired") or {}
    errors = dict(retired.get("err_by_reason") or {})
    for w in live:
        for reason, n in (w.get("err_by_reason") or {}).items():
            errors[reason] = errors.get(reason, 0) + n
    family("build_info", "gauge", "version of prefork and Python", [({"version": __version__, "python": _PY}, 1)])
    family("start_time_seconds", "gauge", "when the master started", [({}, state.get("started_ts") or 0)], "process_")
    family("up", "gauge", "1 while the master runs", [({}, 1)])
    family("lines_total", "counter", "lines read, all workers ever", [({}, _sum(live, retired, "lines_in", "lines"))])
    family(
        "replies_total",
        "counter",
        "replies, all workers ever, by result and reason (with server.ack off counted though not sent: every "
        "refused frame is here)",
        [({"result": "ok", "reason": ""}, _sum(live, retired, "ok", "ok"))]
        + [({"result": "err", "reason": reason}, n) for reason, n in sorted(errors.items())],
    )
    family(
        "clients_not_reading_total",
        "counter",
        "connections stopped because the client read none of its replies (set server.ack = off for such clients)",
        [({}, _sum(live, retired, "unread_clients", "unread_clients"))],
    )
    family(
        "worker_restarts_total",
        "counter",
        "workers that ended, by reason (crash, timeout, max_requests, reload, ttou)",
        [({"reason": reason}, n) for reason, n in sorted((state.get("restarts") or {}).items())],
    )
    family(
        "reloads_total",
        "counter",
        "reloads, by outcome",
        [({"outcome": outcome}, n) for outcome, n in sorted((state.get("reloads") or {}).items())],
    )
    handoffs = report["handoffs"]
    family(
        "handoffs_total",
        "counter",
        "client connections at reloads: out = handed to the new generation, fallback = closed instead, in = adopted",
        [({"result": result}, handoffs.get(result, 0)) for result in ("out", "fallback", "in")],
    )
    refused = {"allow_from": 0}
    for counts in [retired.get("refused"), *(w.get("refused") for w in live)]:
        for reason, n in (counts or {}).items():
            refused[reason] = refused.get(reason, 0) + n
    family(
        "connections_refused_total",
        "counter",
        "connections closed as they were accepted, all workers ever, by reason (allow_from: outside server.allow_from)",
        [({"reason": reason}, n) for reason, n in sorted(refused.items())],
    )
    tls = report["tls"]
    family("tls_handshakes_total", "counter", "TLS handshakes completed", [({}, tls.get("handshakes", 0))])
    family(
        "tls_handshake_failures_total",
        "counter",
        "TLS connections closed before their handshake completed, by reason (timeout, bad-certificate, "
        "no-certificate, certificate-expired, protocol-version, name-not-allowed, ...)",
        [({"reason": k.partition(":")[2]}, n) for k, n in sorted(tls.items()) if k.startswith("failed:")],
    )
    family(
        "wrong_protocol_total",
        "counter",
        "connections closed at once for speaking the other protocol: plaintext on a TLS listener, tls on a "
        "plaintext one",
        [({"found": found}, tls.get(f"wrong:{found}", 0)) for found in ("plaintext", "tls")],
    )
    family("generation", "gauge", "current worker generation", [({}, m.get("generation") or 0)])
    family("uptime_seconds", "gauge", "seconds since the master started", [({}, m.get("uptime_s") or 0)])
    family("workers_target", "gauge", "workers wanted", [({}, m.get("workers_target") or 0)])
    family("workers", "gauge", "workers reporting", [({}, len(workers))])

    def per_worker(metric: str, kind: str, help_text: str, get: Callable[[dict], Any]) -> None:
        family(
            metric, kind, help_text, [({"pid": w["pid"], "generation": w["generation"]}, get(w) or 0) for w in workers]
        )

    per_worker("clients", "gauge", "connected clients", lambda w: w["clients"])
    per_worker("worker_lines", "gauge", "lines read by this worker since it started", lambda w: w["lines_in"])
    per_worker("rss_bytes", "gauge", "worker resident memory", lambda w: w["rss_bytes"])
    per_worker("loop_lag_seconds", "gauge", "event loop lag", lambda w: (w["loop_lag_ms"] or 0) / 1000)
    for key in ("size", "idle", "in_use", "waiting", "max_size"):
        per_worker(f"pool_{key}", "gauge", f"pool connections: {key}", _pool_figure(key))
    for key in ("created", "acquires", "timeouts"):
        per_worker(f"pool_{key}_total", "counter", f"pool {key}", _pool_figure(key))
    per_worker(
        "pool_wait_seconds_total", "counter", "time spent waiting to acquire", lambda w: w["pool"]["wait_total_s"]
    )
    family(
        "pool_closed_total",
        "counter",
        "pool connections closed, by reason",
        [
            ({"pid": w["pid"], "generation": w["generation"], "reason": reason}, n)
            for w in workers
            for reason, n in (w["pool"]["closed"] or {}).items()
        ],
    )
    family(
        "app_stat",
        "gauge",
        "a number the app reports in its stats(), by its dotted key (the pool's figures are above)",
        [
            ({"pid": w["pid"], "generation": w["generation"], "key": key}, value)
            for w in workers
            for key, value in app_numbers(w.get("app"))
        ],
    )
    return "\n".join(out) + "\n"


def app_numbers(stats: Any, limit: int = MAX_APP_SERIES) -> list[tuple[str, int | float]]:
    """The finite numbers in an app's stats as (dotted key, value), depth first, at most ``limit`` of them;
    the ``pool`` key is left out (its figures have series of their own). Any other JSON is skipped."""
    found: list[tuple[str, int | float]] = []

    def walk(value: Any, key: str) -> None:
        if len(found) >= limit:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                if key or k != "pool":
                    walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}" if key else str(i))
        elif (type(value) is int or type(value) is float) and math.isfinite(value):
            found.append((key, value))

    walk(stats, "")
    return found


def _sum(live: list[dict[str, Any]], retired: dict[str, Any], key: str, retired_key: str) -> int:
    return (retired.get(retired_key) or 0) + sum(w.get(key) or 0 for w in live)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    """A listening socket the master selects on; `serve_one` answers one scrape."""

    def __init__(self, address: Address, report: Callable[[], dict[str, Any]]):
        infos = socket.getaddrinfo(address.host, address.port, socket.AF_UNSPEC, socket.SOCK_STREAM)
        family, type_, proto, _, sockaddr = infos[0]
        self.sock = socket.socket(family, type_, proto)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(sockaddr)
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.report = report

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return format_host_port(host, port)

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve_one(self) -> None:
        """Accept and answer one request; a slow or bad client gets at most CLIENT_DEADLINE seconds."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            try:
                request = self._read_request(conn)
                if request is None:
                    return
                method, _, rest = request.partition(" ")
                path = rest.split(" ", 1)[0]
                if method != "GET":
                    self._reply(conn, "405 Method Not Allowed", "only GET\n")
                elif path.split("?", 1)[0] != "/metrics":
                    self._reply(conn, "404 Not Found", "see /metrics\n")
                else:
                    try:
                        body = render(self.report())
                    except Exception:  # a rendering bug answers 500; it never stops the master
                        log.exception("rendering /metrics failed")
                        self._reply(conn, "500 Internal Server Error", "rendering failed; see the log\n")
                    else:
                        self._reply(conn, "200 OK", body, "text/plain; version=0.0.4; charset=utf-8")
            except OSError:
                pass

    @staticmethod
    def _read_request(conn: socket.socket) -> str | None:
        conn.settimeout(CLIENT_DEADLINE)
        deadline = time.monotonic() + CLIENT_DEADLINE
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < MAX_REQUEST:
            if time.monotonic() > deadline:
                return None
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        line = data.split(b"\n", 1)[0].strip()
        return line.decode("latin-1") if line else None

    @staticmethod
    def _reply(conn: socket.socket, status: str, body: str, ctype: str = "text/plain; charset=utf-8") -> None:
        payload = body.encode()
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode()
        conn.sendall(head + payload)

    def close(self) -> None:
        self.sock.close()


def _pool_figure(key: str) -> Callable[[dict], Any]:
    """The getter of one figure of a worker's pool."""
    return lambda w: w["pool"][key]
