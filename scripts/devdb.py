"""Make sure a MySQL/MariaDB answers for `make run` (README, its opening: what `make run` uses).

python scripts/devdb.py ensure [DSN]   # print the DSN to use: the given one if it answers, else a
                                       # private MariaDB with its data under var/ (started if needed)
python scripts/devdb.py stop           # stop the private MariaDB under var/
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devtools/ is not installed: the checkout's

from devtools.mariadb import MariaDBServer, ServerBinaryMissing  # noqa: E402
from prefork.db.dsn import parse_dsn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "mariadb"
DEFAULT_DSN = "mysql://root@127.0.0.1:3306/test"


def answers(dsn: str) -> bool:
    """Tell whether the DSN's server accepts a connection (and create its database if missing)."""
    kwargs = parse_dsn(dsn).connect_kwargs()
    database = kwargs.pop("database")
    kwargs["connect_timeout"] = 3
    try:
        conn = pymysql.connect(**kwargs)
    except pymysql.err.MySQLError:
        return False
    try:
        if database:
            conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    finally:
        conn.close()
    return True


def private_server() -> MariaDBServer:
    return MariaDBServer(VAR)


def ensure(dsn: str) -> int:
    if answers(dsn):
        print(dsn)
        return 0
    server = private_server()
    if answers(server.dsn):
        print(server.dsn)
        return 0
    try:
        server.install()
    except ServerBinaryMissing:
        script = ROOT / "scripts" / "ensure-mariadb-binary.sh"
        if subprocess.call(["sh", str(script)]) != 0:
            return 1
    print(
        f"prefork: {parse_dsn(dsn).redacted} does not answer; starting a private MariaDB under {VAR}", file=sys.stderr
    )
    server.start()
    print(server.dsn)
    return 0


def stop() -> int:
    pidfile = VAR / "mysqld.pid"
    if not pidfile.exists():
        return 0
    try:
        os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
    except (ValueError, ProcessLookupError):
        pass
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["ensure"]:
        dsn = argv[1] if len(argv) > 1 else os.environ.get("PREFORK_POOL_DSN", DEFAULT_DSN)
        return ensure(dsn)
    if argv[:1] == ["stop"]:
        return stop()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
