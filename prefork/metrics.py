"""Prometheus text at ``/metrics``, and ``/healthz`` and ``/readyz``, served by the master when
``server.metrics_bind`` is set.

The master has no event loop to spare for HTTP, so the server is deliberately tiny: the master's main loop
selects on the listening socket and answers one request at a time, with a short deadline for the client,
from the same state `prefork status` prints (what the master read from its workers' heartbeats). It never
talks to a worker or to the database.

Series follow Prometheus' naming guide: counters end in ``_total`` and never go down, units are base units
named in the metric (``_seconds``, ``_bytes``), and no label takes unbounded values. Per-worker series are
labelled by the worker's *slot* (its place in the accept table, ``prefork.state.AcceptTable``), which a
replacement worker takes over; never by pid or generation, which change at every restart and reload (the
pid is in ``prefork_worker_info`` only, one series per live worker). A slot's counters carry the last
counts of every worker that held the slot before (``carry``, at reaping), so a replaced worker's
counters starting from 0 never make the slot's series go down; its gauges are the current worker's.
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
from prefork.status import build_report, pool_figures

log = logging.getLogger("prefork.metrics")
_PY = platform.python_version()

CLIENT_DEADLINE = 0.5  # seconds a scraper gets to send its request line: the master must not wait longer
MAX_REQUEST = 8192
MAX_APP_SERIES = 100  # per worker, of the numbers an app reports: a scrape stays small whatever it reports
POOL_GAUGES = ("size", "idle", "in_use", "waiting", "max_size")
POOL_COUNTERS = ("created", "acquires", "timeouts")  # with wait_total_s and closed: what a slot carries
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Exposition:
    """Text exposition being built: one `family` call per metric family (HELP, TYPE and its samples).

    Every sample gets the server's ``name`` label first. A counter's name must end in ``_total``."""

    def __init__(self, name: str):
        self.name = name
        self.lines: list[str] = []

    def family(
        self,
        metric: str,
        kind: str,
        help_text: str,
        samples: list[tuple[dict[str, Any], float]],
        prefix: str = "prefork_",
    ) -> None:
        """Add one family: ``metric`` (without ``prefix``), gauge or counter, its help and (labels, value)s."""
        if kind == "counter" and not metric.endswith("_total"):
            raise ValueError(f"counter {prefix}{metric} must end in _total")
        self.lines.append(f"# HELP {prefix}{metric} {help_text}")
        self.lines.append(f"# TYPE {prefix}{metric} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in {"name": self.name, **labels}.items())
            self.lines.append(f"{prefix}{metric}{{{text}}} {value}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(state: dict[str, Any]) -> str:
    """The master's state (``prefork.master_status.Reporter.state``) as Prometheus text exposition format.

    Counters without a slot label (lines, replies, restarts, reloads) add every retired worker's last
    counts to the live workers' ones, so they never go down when a worker exits, crashes or is replaced
    by a reload or max_requests; per-slot counters do the same within their slot (module docstring).
    """
    report = build_report(state)
    out = Exposition(report["master"].get("name") or "prefork")
    family = out.family
    m = report["master"]
    live = state.get("workers", [])
    retired = state.get("retired") or {}
    errors = dict(retired.get("err_by_reason") or {})
    for w in live:
        for reason, n in (w.get("err_by_reason") or {}).items():
            errors[reason] = errors.get(reason, 0) + n
    family("build_info", "gauge", "version of prefork and Python", [({"version": __version__, "python": _PY}, 1)])
    family("start_time_seconds", "gauge", "when the master started", [({}, state.get("started_ts") or 0)], "process_")
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
    family("workers_target", "gauge", "workers wanted", [({}, m.get("workers_target") or 0)])
    family("workers", "gauge", "workers reporting", [({}, len(report["workers"]))])
    family("ready", "gauge", "1 when /readyz answers 200", [({}, 0 if state.get("not_ready") else 1)])
    _per_slot(out, report["workers"], retired.get("slots") or {})
    return out.text()


def _per_slot(out: Exposition, workers: list[dict[str, Any]], carried: dict[str, dict[str, Any]]) -> None:
    """The per-worker families, labelled by slot: gauges of the slot's live worker, counters that add the
    slot's carried counts (every slot ever used has them, live worker or not)."""
    family = out.family
    # A slot is held by one worker at a time (the master gives a free one at each fork); a worker without
    # one (more workers than the accept table has slots) is in the totals only.
    with_slot = sorted((w for w in workers if w.get("slot") is not None), key=lambda w: w["slot"])
    live = {str(w["slot"]): w for w in with_slot}
    slots = sorted({*live, *carried}, key=int)

    def gauge(metric: str, help_text: str, get: Callable[[dict], Any]) -> None:
        family(metric, "gauge", help_text, [({"slot": s}, get(w) or 0) for s, w in live.items()])

    def counter(metric: str, help_text: str, key: str) -> None:
        samples = []
        for s in slots:
            total = (carried.get(s) or {}).get(key) or 0
            if s in live:
                total += slot_counts(live[s])[key]
            samples.append(({"slot": s}, total))
        family(metric, "counter", help_text, samples)

    family(
        "worker_info",
        "gauge",
        "the worker in each slot now: its pid and generation",
        [({"slot": s, "pid": w["pid"], "generation": w["generation"]}, 1) for s, w in live.items()],
    )
    gauge("worker_start_time_seconds", "when the slot's worker started", lambda w: w.get("started_ts"))
    gauge("worker_clients", "connected clients", lambda w: w["clients"])
    gauge("worker_resident_memory_bytes", "worker resident memory", lambda w: w["rss_bytes"])
    gauge("worker_loop_lag_seconds", "event loop lag", lambda w: (w["loop_lag_ms"] or 0) / 1000)
    counter("worker_lines_total", "lines read by the workers of this slot", "lines")
    for key in POOL_GAUGES:
        gauge(f"pool_{key}", f"pool connections: {key}", _pool_figure(key))
    for key in POOL_COUNTERS:
        counter(f"pool_{key}_total", f"pool {key}, by the workers of this slot", f"pool_{key}")
    counter("pool_wait_seconds_total", "time spent waiting to acquire, by the workers of this slot", "pool_wait_s")
    closed: dict[tuple[str, str], int] = {}
    for s in slots:
        for reason, n in ((carried.get(s) or {}).get("pool_closed") or {}).items():
            closed[s, reason] = closed.get((s, reason), 0) + n
        if s in live:
            for reason, n in slot_counts(live[s])["pool_closed"].items():
                closed[s, reason] = closed.get((s, reason), 0) + n
    family(
        "pool_closed_total",
        "counter",
        "pool connections closed, by reason, by the workers of this slot",
        [({"slot": s, "reason": reason}, n) for (s, reason), n in sorted(closed.items(), key=_by_slot)],
    )
    family(
        "app_stat",
        "gauge",
        "a number the app reports in its stats(), by its dotted key (the pool's figures are above)",
        [({"slot": s, "key": key}, value) for s, w in live.items() for key, value in app_numbers(w.get("app"))],
    )


def slot_counts(worker: dict[str, Any]) -> dict[str, Any]:
    """The counts of a worker's state (a heartbeat, or its entry in ``build_report``) that its slot's
    counters add up: lines, and the pool's created, acquires, timeouts, wait time and closed by reason."""
    app = worker.get("app")
    pool = pool_figures(app.get("pool") if isinstance(app, dict) else worker.get("pool"))  # as build_report
    counts: dict[str, Any] = {"lines": worker.get("lines_in") or 0}
    for key in POOL_COUNTERS:
        counts[f"pool_{key}"] = pool[key]
    counts["pool_wait_s"] = pool["wait_total_s"]
    counts["pool_closed"] = dict(pool["closed"])
    return counts


def carry(slots: dict[str, dict[str, Any]], slot: int | None, last: dict[str, Any]) -> None:
    """Add a reaped worker's last counts (its last heartbeat) to what its slot carries (``slots``, the
    master's ``retired["slots"]``), so that the slot's counters never go down when another worker takes
    the slot and starts counting from 0."""
    if slot is None:
        return
    mine = slots.setdefault(str(slot), {})
    for key, value in slot_counts(last).items():
        if isinstance(value, dict):
            into = mine.setdefault(key, {})
            for k, n in value.items():
                into[k] = into.get(k, 0) + n
        else:
            mine[key] = mine.get(key, 0) + value


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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _by_slot(item: tuple[tuple[str, str], int]) -> tuple[int, str]:
    return int(item[0][0]), item[0][1]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    """A listening socket the master selects on; `serve_one` answers one request.

    ``report`` gives the master's state (``prefork.master_status.Reporter.state``): ``/metrics`` renders
    it, ``/readyz`` reads its ``not_ready`` (None when ready, else why not), ``/healthz`` answers as long as
    the master's loop runs. GET and HEAD only."""

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
                path = rest.split(" ", 1)[0].split("?", 1)[0]
                if method not in ("GET", "HEAD"):
                    status, body, ctype = "405 Method Not Allowed", "only GET and HEAD\n", None
                else:
                    status, body, ctype = self._answer(path)
                self._reply(conn, status, body, ctype, head_only=method == "HEAD")
            except OSError:
                pass

    def _answer(self, path: str) -> tuple[str, str, str | None]:
        """Status line, body and content type (None: plain text) of a GET of ``path``."""
        if path == "/healthz":
            return "200 OK", "ok\n", None
        if path not in ("/metrics", "/readyz"):
            return "404 Not Found", "see /metrics, /healthz, /readyz\n", None
        try:
            state = self.report()
            if path == "/readyz":
                reason = state.get("not_ready")
                if reason:
                    return "503 Service Unavailable", f"{_one_line(reason)}\n", None
                return "200 OK", "ready\n", None
            return "200 OK", render(state), CONTENT_TYPE
        except Exception:  # a rendering bug answers 500; it never stops the master
            log.exception("answering %s failed", path)
            return "500 Internal Server Error", "rendering failed; see the log\n", None

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
    def _reply(conn: socket.socket, status: str, body: str, ctype: str | None, head_only: bool = False) -> None:
        payload = body.encode()
        allow = "Allow: GET, HEAD\r\n" if status.startswith("405") else ""
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype or 'text/plain; charset=utf-8'}\r\n"
            f"Content-Length: {len(payload)}\r\n{allow}Connection: close\r\n\r\n"
        ).encode()
        conn.sendall(head if head_only else head + payload)

    def close(self) -> None:
        self.sock.close()


def _pool_figure(key: str) -> Callable[[dict], Any]:
    """The getter of one figure of a worker's pool."""
    return lambda w: w["pool"][key]
