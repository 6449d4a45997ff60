"""A test app that records who imports it: one JSON line per import appended to $WHOAMI_LOG with the
process's pid, parent, ids (real, effective, saved, file system), supplementary groups and open
descriptors (number -> what it points to). What a worker, or the app probe, runs as and holds. It has a
settings section ([who]), so that a value there makes the master probe it."""

from __future__ import annotations

import json
import os

from prefork.settings import Section, option, string


class WhoSettings(Section, name="who"):
    tag: str = option("", string, "a value, so that the master has something to probe")


def descriptors() -> dict[int, str]:
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return found


def record() -> dict:
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "uid": [int(x) for x in status["Uid"].split()],
        "gid": [int(x) for x in status["Gid"].split()],
        "groups": [int(x) for x in status["Groups"].split()],
        "fds": descriptors(),
    }


if os.environ.get("WHOAMI_LOG"):
    line = json.dumps(record()) + "\n"  # before opening the log: its descriptor is not the importer's
    with open(os.environ["WHOAMI_LOG"], "a") as log:
        log.write(line)


class WhoAmI:
    settings = WhoSettings

    def handle(self, line: str, client) -> str:
        return line


app = WhoAmI()
