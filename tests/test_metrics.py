"""/metrics rendering, without a server: the exposition parses with the Prometheus project's own parser and
follows its rules, and per-slot counters never go down when a worker in a slot is replaced."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from prefork.metrics import Exposition, carry, render


def check_exposition(text: str) -> dict[tuple[str, frozenset], float]:
    """Parse ``text`` as Prometheus does and check the rules prefork keeps; return {(name, labels): value}.

    Every family has HELP and TYPE (the parser makes a family without TYPE "unknown" and one without HELP
    has no documentation), counters' samples end in _total, no series appears twice, no label takes a pid
    or a generation except prefork_worker_info's, and prefork_up is gone (Prometheus has `up`)."""
    series: dict[tuple[str, frozenset], float] = {}
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        assert family.type in ("counter", "gauge"), family
        assert family.documentation, family
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample
            if family.name != "prefork_worker_info":
                assert not {"pid", "generation"} & set(sample.labels), sample
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in series, f"duplicate series {key}"
            series[key] = sample.value
    assert "prefork_up" not in names
    assert text.count("# HELP ") == text.count("# TYPE ") == len(names)
    return series


def counters(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        if f.type == "counter"
        for s in f.samples
    }


def worker(pid: int, slot: int, lines: int, created: int, closed: int) -> dict:
    pool = {"size": 1, "idle": 1, "in_use": 0, "waiting": 0, "max_size": 4, "created": created, "acquires": lines}
    pool |= {"timeouts": 0, "wait_total_s": 0.5, "closed": {"broken": closed}}
    return {
        "pid": pid,
        "slot": slot,
        "generation": 1,
        "started_ts": time.time(),
        "clients": 2,
        "lines_in": lines,
        "ok": lines,
        "err_by_reason": {"empty": 1},
        "rss_bytes": 1 << 20,
        "loop_lag_ms": 1.5,
        "app": {"pool": pool, "queue": {"depth": 3}},
    }


def state(workers: list[dict], retired: dict | None = None) -> dict:
    return {
        "name": "t",
        "generation": 1,
        "workers_target": 2,
        "started_ts": time.time(),
        "workers": workers,
        "retired": retired or {"lines": 0, "ok": 0, "slots": {}},
        "restarts": {"crash": 0},
        "reloads": {"ok": 0, "failed": 0},
        "not_ready": None,
    }


def test_the_exposition_parses_and_follows_the_rules():
    text = render(state([worker(101, 0, 5, 1, 0), worker(102, 1, 7, 2, 1)]))
    series = check_exposition(text)
    assert series["prefork_worker_lines_total", frozenset({"name": "t", "slot": "0"}.items())] == 5
    assert series["prefork_worker_info", frozenset({"name": "t", "slot": "1", "pid": "102", "generation": "1"}.items())]
    assert series["prefork_worker_loop_lag_seconds", frozenset({"name": "t", "slot": "0"}.items())] == 0.0015
    assert series["prefork_app_stat", frozenset({"name": "t", "slot": "1", "key": "queue.depth"}.items())] == 3
    assert series["prefork_ready", frozenset({"name": "t"}.items())] == 1


def test_a_replaced_workers_slot_keeps_counting_up():
    """Slot 0's worker is reaped (its last counts carried into the slot) and a new one takes the slot,
    counting from 0: every counter series is still there and none went down."""
    retired: dict = {"lines": 0, "ok": 0, "err_by_reason": {}, "slots": {}}
    old, other = worker(101, 0, 50, 3, 2), worker(102, 1, 7, 2, 1)
    before = counters(render(state([old, other], retired)))
    retired["lines"] += old["lines_in"]
    retired["ok"] += old["ok"]
    retired["err_by_reason"]["empty"] = old["err_by_reason"]["empty"]  # as Master.retire does
    carry(retired["slots"], 0, old)
    gap = counters(render(state([other], retired)))  # reaped, its replacement not reporting yet
    after = counters(render(state([worker(103, 0, 1, 1, 0), other], retired)))
    for then, now in ((before, gap), (gap, after)):
        assert set(then) <= set(now)
        assert all(now[key] >= value for key, value in then.items()), [k for k in then if now[k] < then[k]]
    assert after["prefork_worker_lines_total", frozenset({"name": "t", "slot": "0"}.items())] == 51
    assert after["prefork_pool_closed_total", frozenset({"name": "t", "slot": "0", "reason": "broken"}.items())] == 2


def test_a_counter_must_end_in_total():
    with pytest.raises(ValueError, match="_total"):
        Exposition("t").family("lines", "counter", "lines", [])
