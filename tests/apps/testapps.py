"""Line applications for tests, imported by the workers from tests/apps on PYTHONPATH."""

from __future__ import annotations

import os

import gevent
from gevent.monkey import get_original

from prefork.settings import Section, option, positive_int, string

if os.environ.get("TESTAPP_IMPORT_LOG"):  # who imported this module: the master never may
    with open(os.environ["TESTAPP_IMPORT_LOG"], "a") as _log:
        _log.write(f"{os.getpid()}\n")

_real_sleep = get_original("time", "sleep")


class Blocking:
    """Echo, except that the line `block` blocks the whole event loop (an unpatched sleep); with
    TESTAPP_BLOCKED set, the worker first writes its pid to that file (the test knows it is blocked)."""

    def handle(self, line: str, client) -> str:
        if line == "block":
            if os.environ.get("TESTAPP_BLOCKED"):
                with open(os.environ["TESTAPP_BLOCKED"], "w") as marker:
                    marker.write(f"{os.getpid()}\n")
            _real_sleep(3600)
        return line


class Pid:
    """Reply with the worker's pid and the generation's marker (from the environment at import)."""

    marker = os.environ.get("TESTAPP_MARKER", "")

    def handle(self, line: str, client) -> str:
        return f"{os.getpid()} {self.marker} {line}"


class FailingSetup:
    """An app whose setup always fails: the worker cannot boot."""

    def setup(self, worker) -> None:
        raise RuntimeError("setup failed on purpose")

    def handle(self, line: str, client) -> str:
        return line


blocking = Blocking()
pid = Pid()
failing_setup = FailingSetup()


class Hold:
    """Echo, except that the reply to a line `hold PATH` is held until the file PATH exists.

    The line is read (and counted) at once, but stays in flight: for tests of graceful stops.
    """

    def handle(self, line: str, client):
        if not line.startswith("hold "):
            return line
        import gevent
        from gevent.event import AsyncResult

        path = line[len("hold ") :]
        result = AsyncResult()

        def release() -> None:
            while not os.path.exists(path):
                gevent.sleep(0.02)
            result.set(line)

        gevent.spawn(release)
        return result


hold = Hold()


class Crashing:
    """Echo, except that the line `crash` kills the worker process at once."""

    def handle(self, line: str, client):
        if line == "crash":
            os._exit(1)
        return line


crashing = Crashing()


class Gated:
    """Echo, but no reply is released before the file named by $TESTAPP_GATE exists; the line `stall`
    blocks inside handle() for good (an app applying backpressure, as the ingest app does when full).

    Lines are read (and counted) at once and stay in flight: for tests of backpressure and stops.
    """

    def __init__(self) -> None:
        self._open = None

    def handle(self, line: str, client):
        import gevent
        from gevent.event import AsyncResult, Event

        if self._open is None:
            self._open = Event()
            gevent.spawn(self._watch, os.environ["TESTAPP_GATE"])
        if line == "stall":
            gevent.sleep(3600)
        if self._open.is_set():
            return line
        result = AsyncResult()
        self._open.rawlink(lambda _event: result.set(line))
        return result

    def _watch(self, path: str) -> None:
        import gevent

        while not os.path.exists(path):
            gevent.sleep(0.02)
        self._open.set()


gated = Gated()


class Staged(Hold):
    """Hold, whose new generations (2 and later, with $TESTAPP_STAGE_DIR set) boot only their first worker:
    the others wait for the file `fail` in that directory, then fail their setup. For abandoned reloads."""

    def setup(self, worker) -> None:
        import time

        stage = os.environ.get("TESTAPP_STAGE_DIR")
        if not stage or worker.generation < 2:
            return
        try:
            os.close(os.open(os.path.join(stage, f"first-{worker.generation}"), os.O_CREAT | os.O_EXCL))
            return
        except FileExistsError:
            pass
        while not os.path.exists(os.path.join(stage, "fail")):
            time.sleep(0.05)  # green: the worker is patched by now
        raise RuntimeError("this worker of the new generation fails on purpose")


staged = Staged()


class OddStats:
    """Echo, whose stats() take the shape named by $TESTAPP_STATS (see SHAPES): JSON the master cannot
    use as pool figures, or no JSON at all."""

    SHAPES = {
        "object": lambda: {"pool": {"size": object()}},  # not JSON
        "nan": lambda: {"ratio": float("nan")},  # not strict JSON
        "huge": lambda: {"blob": "x" * (2 << 20)},  # larger than a state file may be
        "bad-pool": lambda: {"pool": {"size": 1, "closed": "not a mapping"}},
        "pool-number": lambda: {"pool": 5},
        "pool-none": lambda: {"pool": None},
        "pool-strings": lambda: {"pool": {"size": "three", "idle": None, "closed": {"idle": "x", "age": 2}}},
        "none": lambda: None,
        "number": lambda: 5,
        "list": lambda: [1, "two", {"three": 3}],
        "extra": lambda: {"pool": {"size": 2, "idle": 1}, "queue": {"depth": 7, "name": "q"}, "note": "hi"},
    }

    def handle(self, line: str, client) -> str:
        return line

    def stats(self):
        return self.SHAPES[os.environ.get("TESTAPP_STATS", "bad-pool")]()


odd_stats = OddStats()


class Contract:
    """Replies that break the reply contract, chosen by the line; any other line is echoed through a future
    that resolves a moment later (so bad replies sit behind pending futures, as in a real app)."""

    def handle(self, line: str, client):
        import gevent
        from gevent.event import AsyncResult

        bad = {"none": None, "int": 42, "newline": "two\nlines", "list": ["a", "b"]}
        if line == "raise":
            raise RuntimeError("handle failed on purpose")
        result = AsyncResult()
        if line == "future-raises":
            gevent.spawn_later(0.01, result.set_exception, RuntimeError("future failed on purpose"))
        elif line in bad:
            gevent.spawn_later(0.01, result.set, bad[line])
        elif line == "bare-none":
            return None
        elif line.startswith("plain"):
            return PlainFuture(line)
        else:
            gevent.spawn_later(0.01, result.set, line)
        return result


class PlainFuture:
    """A future with get() and ready() only (no rawlink): the protocol must wait for it in a greenlet."""

    def __init__(self, reply: str):
        import time

        self._reply = reply
        self._at = time.monotonic() + 0.01

    def ready(self) -> bool:
        import time

        return time.monotonic() >= self._at

    def get(self, block: bool = True, timeout=None) -> str:
        import time

        import gevent

        gevent.sleep(max(0.0, self._at - time.monotonic()))
        return self._reply


contract = Contract()


class Grouped:
    """handle_lines: the lines of a read share one future, which resolves to a list of one reply per line
    (upper-cased); a read holding the line `short` gets a list one reply short (a broken app)."""

    def handle(self, line: str, client):
        return line.upper()

    def handle_lines(self, lines: list[str], client):
        import gevent
        from gevent.event import AsyncResult

        result = AsyncResult()
        replies = [line.upper() for line in lines]
        if "short" in lines:
            replies.pop()
        gevent.spawn_later(0.01, result.set, replies)
        return [result] * len(lines)


grouped = Grouped()


class HookedSettings(Section, name="hooked"):
    """``[hooked]``: the settings section the Hooked test app declares."""

    greeting: str = option("hello", string, "the word put before each line", flag="--greeting")
    repeat: int = option("1", positive_int, "how many times each line is said")


class Hooked:
    """Replies '<greeting> <line>' (repeated) from its own [hooked] section, with check and initdb hooks
    that report or fail as $TESTAPP_HOOK says."""

    settings = HookedSettings

    def setup(self, worker) -> None:
        self.conf = worker.config.section(HookedSettings)

    def handle(self, line: str, client) -> str:
        return " ".join([f"{self.conf.greeting} {line}"] * self.conf.repeat)

    def check(self, worker) -> str:
        if os.environ.get("TESTAPP_HOOK") == "fail":
            raise RuntimeError("the check hook found something wrong")
        conf = worker.config.section(HookedSettings)
        return f"checked generation {worker.generation}, greeting {conf.greeting!r} x{conf.repeat}"

    def initdb(self, worker) -> str:
        return "created what this app needs"


hooked = Hooked()


class BadSettings:
    """Declares its sections wrongly (``settings`` must hold Section classes): a mistake to report."""

    settings = ("not a section",)

    def handle(self, line: str, client) -> str:
        return line


class IdEcho:
    """Accepts line ids: replies '<id> <line>' for each line, '- <line>' for one without an id, and
    'noids <line>' when it is called without ids (server.line_ids off)."""

    accepts_line_ids = True

    def handle(self, line: str, client) -> str:
        return f"noids {line}"

    def handle_lines(self, lines: list[str], client, ids=None) -> list[str]:
        if ids is None:
            return [f"noids {line}" for line in lines]
        return [f"{ident or '-'} {line}" for ident, line in zip(ids, lines, strict=True)]


id_echo = IdEcho()


class ClientAddr:
    """Reply '<client address> <line>': the address the framework serves the connection as."""

    def handle(self, line: str, client) -> str:
        return f"{client.addr} {line}"


client_addr = ClientAddr()


class SlowOk:
    """Answer OK to every line, a millisecond later each (a slow store, for prefork send's progress bar)."""

    def handle(self, line: str, client) -> str:
        gevent.sleep(0.001)
        return "OK"


slow_ok = SlowOk()


class TlsWhoAmI:
    """Echo, except that the line `whoami` is answered with the client's verified TLS certificate (Peer.tls):
    its subject and SANs, or `none`."""

    def handle(self, line: str, client) -> str:
        if line != "whoami":
            return line
        tls = client.tls
        return "none" if tls is None else f"{tls.subject} {tls.common_name} {','.join(tls.sans)}"
