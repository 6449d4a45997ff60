"""Run-time state files: how workers report to the master and the master to `prefork status`.

Each worker rewrites ``worker-PID.json`` in the master's state directory every second: its modification
time is the heartbeat the master watches, and its content (ready flag, counters, pool figures) is what
`prefork status` shows. The master writes ``master.json`` beside them. Files are replaced atomically
(write, then rename), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MASTER_FILE = "master.json"
STATE_DIR_PREFIX = "prefork-"


def state_dir_for(master_pid: int) -> Path:
    """The state directory of the master with this pid."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"{STATE_DIR_PREFIX}{master_pid}"


def worker_file(state_dir: Path, pid: int) -> Path:
    """The state file of one worker."""
    return state_dir / f"worker-{pid}.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace a state file atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """Read a state file, or None if it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def iso(ts: float) -> str:
    """An epoch timestamp as an ISO 8601 UTC string."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
