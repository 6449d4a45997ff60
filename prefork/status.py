"""`prefork status` and `/metrics`: the master's state file (its figures and its workers' last states) as one report."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from prefork.state import MASTER_FILE, read_json

POOL_KEYS = (
    "size",
    "idle",
    "in_use",
    "waiting",
    "max_size",
    "created",
    "closed",
    "acquires",
    "timeouts",
    "wait_total_s",
    "wait_max_s",
)
APP_LINE = 100  # characters of an app's stats shown per worker in the table
WORKER_KEYS = (
    "pid",
    "slot",  # its place in the accept table, taken over by its replacement: /metrics labels series by it
    "generation",
    "started_at",
    "age_s",
    "clients",
    "lines_in",
    "ok",
    "err",
    "unread_clients",
    "rss_bytes",
    "loop_lag_ms",
    "refused",  # connections closed as they came, by reason (allow_from)
)


def collect(master_pid: int, state_dir: Path) -> dict[str, Any]:
    """Build the status report of the master with this pid from its state directory."""
    return build_report(read_json(state_dir / MASTER_FILE) or {"pid": master_pid})


def build_report(master: dict[str, Any]) -> dict[str, Any]:
    """The report (README, "Operations") from the master's state: its figures and its workers' last states."""
    now = time.time()
    workers = []
    for state in master.get("workers", []):
        entry = {key: state.get(key) for key in WORKER_KEYS}
        entry["age_s"] = round(now - state.get("started_ts", now), 3)
        app = state.get("app")
        entry["pool"] = pool_figures(app.get("pool") if isinstance(app, dict) else state.get("pool"))
        entry["app"] = app
        workers.append(entry)
    # Connections at reloads (prefork.handoff), all workers ever: the retired ones' last counts and the live.
    handoffs = _summed(master, "handoffs", {"out": 0, "fallback": 0, "in": 0})
    # TLS listeners, all workers ever (prefork.protocol.counters: handshakes, failed:REASON, wrong:KIND).
    tls = _summed(master, "tls", {})
    master = dict(master)
    if "started_at" in master:
        master["uptime_s"] = round(now - master.pop("written_ts", now) + master.get("uptime_s", 0), 3)
    master = {
        k: master.get(k)
        for k in (
            "pid",
            "name",
            "generation",
            "started_at",
            "uptime_s",
            "workers_target",
            "listeners",
            "reload",
            "upgrade",
            "not_ready",
        )
    }
    totals = {
        "workers": len(workers),
        "clients": sum(w["clients"] or 0 for w in workers),
        "lines_in": sum(w["lines_in"] or 0 for w in workers),
        "ok": sum(w["ok"] or 0 for w in workers),
        "err": sum(w["err"] or 0 for w in workers),
        "unread_clients": sum(w["unread_clients"] or 0 for w in workers),
        "pool_size": sum(w["pool"]["size"] for w in workers),
        "pool_in_use": sum(w["pool"]["in_use"] for w in workers),
        "pool_waiting": sum(w["pool"]["waiting"] for w in workers),
    }
    return {"master": master, "workers": workers, "totals": totals, "handoffs": handoffs, "tls": tls}


def _summed(master: dict[str, Any], key: str, counts: dict[str, int]) -> dict[str, int]:
    """The counts under ``key`` of every worker ever: the retired ones' last counts and the live ones'."""
    for more in [(master.get("retired") or {}).get(key), *(s.get(key) for s in master.get("workers", []))]:
        for name, n in (more or {}).items():
            if type(n) is int:
                counts[name] = counts.get(name, 0) + n
    return counts


def pool_figures(pool: Any) -> dict[str, Any]:
    """The pool columns of a worker from what its app reported under "pool": numbers where numbers are
    expected (0 otherwise) and ``closed`` as {reason: count}, whatever shape the app gave them. The app's
    own JSON is shown as it is beside them (``app``), so nothing it reports is lost."""
    pool = pool if isinstance(pool, dict) else {}
    figures: dict[str, Any] = {key: _number(pool.get(key)) for key in POOL_KEYS if key != "closed"}
    closed = pool.get("closed")
    closed = closed if isinstance(closed, dict) else {}
    figures["closed"] = {str(k): v for k, v in closed.items() if type(v) is int}
    return {key: figures[key] for key in POOL_KEYS}


def _number(value: Any) -> int | float:
    """``value`` if it is a finite number (not a bool), else 0."""
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return value
    return 0


def render_table(report: dict[str, Any]) -> str:
    """The report as a human-readable table."""
    m = report["master"]
    lines = [
        f"master {m['pid']} [{m['name']}] generation {m['generation']}, up {_duration(m['uptime_s'])}, "
        f"{m['workers_target']} workers wanted, listening at {', '.join(m['listeners'] or [])}",
        "",
        f"{'PID':>8} {'GEN':>4} {'AGE':>8} {'CLIENTS':>8} {'LINES':>10} {'OK':>10} {'ERR':>8} {'UNREAD':>7} "
        f"{'POOL size/idle/use/wait':>24}",
    ]
    for w in report["workers"]:
        p = w["pool"]
        pool = f"{p['size']}/{p['idle']}/{p['in_use']}/{p['waiting']}"
        lines.append(
            f"{w['pid']:>8} {w['generation']:>4} {_duration(w['age_s']):>8} {w['clients']:>8} "
            f"{w['lines_in']:>10} {w['ok']:>10} {w['err']:>8} {w['unread_clients'] or 0:>7} {pool:>24}"
        )
    if m.get("not_ready"):
        lines[1:1] = [f"not ready (/readyz answers 503): {m['not_ready']}"]
    t = report["totals"]
    lines.append(
        f"{'total':>8} {t['workers']:>4} {'':>8} {t['clients']:>8} {t['lines_in']:>10} {t['ok']:>10} "
        f"{t['err']:>8} {t['unread_clients']:>7} {t['pool_size']:>14}/-/{t['pool_in_use']}/{t['pool_waiting']}"
    )
    r = m.get("reload") or {}
    if r.get("outcome") == "serving":
        lines.append(f"last reload ({r['finished_at']}): generation {r['generation']} serving")
    elif r.get("outcome"):
        lines.append(
            f"last reload ({r['finished_at']}): {r['outcome']}: {r['reason']}; generation {r['generation']} kept"
        )
    u = m.get("upgrade") or {}
    if u.get("running"):
        lines.append(f"upgrading: new master {u['running']} booting (USR2)")
    elif u.get("outcome") == "failed":
        lines.append(f"last upgrade ({u['finished_at']}): failed: {u['reason']}")
    h = report["handoffs"]
    if any(h.values()):
        lines.append(
            f"connections at reloads: {h['out']} handed off, {h['fallback']} closed instead, {h['in']} adopted"
        )
    tls = report["tls"]
    if tls:
        failed = {k.partition(":")[2]: n for k, n in tls.items() if k.startswith("failed:")}
        lines.append(
            f"TLS: {tls.get('handshakes', 0)} handshakes, {sum(failed.values())} failed"
            + (f" ({', '.join(f'{n} {r}' for r, n in sorted(failed.items()))})" if failed else "")
            + f", {tls.get('wrong:plaintext', 0)} plaintext on a TLS listener, "
            f"{tls.get('wrong:tls', 0)} TLS on a plaintext one"
        )
    # What the apps report besides their pool, one line per worker (the whole of it is in --json).
    extra = [(w["pid"], _without_pool(w.get("app"))) for w in report["workers"]]
    if any(app is not None for _, app in extra):
        lines.append("")
        for pid, app in extra:
            if app is not None:
                text = json.dumps(app, separators=(", ", ": "))
                lines.append(f"{pid:>8} app: {text if len(text) <= APP_LINE else text[: APP_LINE - 3] + '...'}")
    return "\n".join(lines)


def _without_pool(app: Any) -> Any:
    """An app's stats less the pool figures the table already shows; None when nothing else is left."""
    if isinstance(app, dict):
        app = {k: v for k, v in app.items() if k != "pool"}
        return app or None
    return app


def _duration(seconds: float | None) -> str:
    s = int(seconds or 0)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
