"""Prometheus text at ``/metrics``, served by the master when ``server.metrics_bind`` is set.

The master has no event loop to spare for HTTP, so the server is deliberately tiny: the master's main loop
selects on the listening socket and answers one request at a time, with a short deadline for the client,
from the same report `prefork status` prints (the workers' state files). It never talks to a worker or to
the database.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from prefork.config import Address

CLIENT_DEADLINE = 0.5  # seconds a scraper gets to send its request line: the master must not wait longer
MAX_REQUEST = 8192


def render(report: dict[str, Any]) -> str:
    """The status report as Prometheus text exposition format."""
    name = report["master"].get("name") or "prefork"
    out: list[str] = []

    def family(metric: str, kind: str, help_text: str, samples: list[tuple[dict[str, Any], float]]) -> None:
        out.append(f"# HELP prefork_{metric} {help_text}")
        out.append(f"# TYPE prefork_{metric} {kind}")
        for labels, value in samples:
            labels = {"name": name, **labels}
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            out.append(f"prefork_{metric}{{{text}}} {value}")

    m = report["master"]
    workers = report["workers"]
    family("up", "gauge", "1 while the master runs", [({}, 1)])
    family("generation", "gauge", "current worker generation", [({}, m.get("generation") or 0)])
    family("uptime_seconds", "gauge", "seconds since the master started", [({}, m.get("uptime_s") or 0)])
    family("workers_target", "gauge", "workers wanted", [({}, m.get("workers_target") or 0)])
    family("workers", "gauge", "workers reporting", [({}, len(workers))])

    def per_worker(metric: str, kind: str, help_text: str, get: Callable[[dict], Any]) -> None:
        family(
            metric, kind, help_text, [({"pid": w["pid"], "generation": w["generation"]}, get(w) or 0) for w in workers]
        )

    per_worker("clients", "gauge", "connected clients", lambda w: w["clients"])
    per_worker("lines_total", "counter", "lines read", lambda w: w["lines_in"])
    per_worker("replies_ok_total", "counter", "OK replies", lambda w: w["ok"])
    per_worker("replies_err_total", "counter", "ERR replies", lambda w: w["err"])
    per_worker("rss_bytes", "gauge", "worker resident memory", lambda w: w["rss_bytes"])
    per_worker("loop_lag_seconds", "gauge", "event loop lag", lambda w: (w["loop_lag_ms"] or 0) / 1000)
    for key in ("size", "idle", "in_use", "waiting", "max_size"):
        per_worker(f"pool_{key}", "gauge", f"pool connections: {key}", lambda w, k=key: w["pool"][k])
    for key in ("created", "acquires", "timeouts"):
        per_worker(f"pool_{key}_total", "counter", f"pool {key}", lambda w, k=key: w["pool"][k])
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
    return "\n".join(out) + "\n"


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
        return f"[{host}]:{port}" if self.sock.family == socket.AF_INET6 else f"{host}:{port}"

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
                    self._reply(conn, "200 OK", render(self.report()), "text/plain; version=0.0.4; charset=utf-8")
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
