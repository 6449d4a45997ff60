"""Memory per idle client: prefork's echo worker against a bare gevent StreamServer. Prints JSON.

    python bench/idle_memory.py [CLIENTS]        # measure both servers (default 10,000 clients)
    python bench/idle_memory.py serve PORT       # the bare server: one process, a gevent StreamServer echo
    python bench/idle_memory.py clients PORT N [CAFILE]  # N idle clients (TLS with CAFILE); JSON once all are
                                                         # set up, held until stdin EOF

For each server: start it (a: `prefork run workers.echo:app --workers 1`; b: the bare server), warm it up
with a few short connections, read the serving process's RSS (VmRSS of /proc/PID/status; for prefork the
only worker, a child of the master), then open CLIENTS connections from one client process, each sending
one line and reading its reply (so the connection is fully set up on both sides), CONCURRENCY at a time.
The time from the first connect to the last reply is the time to accept them all. With every client
connected and idle, the RSS is read again: (after - before) / CLIENTS is the memory per idle client.

``measure_tls()`` (bench/tls.py) measures prefork twice instead, plaintext and with a TLS listener (its
clients speak TLS: each connection's handshake is done, then its line and reply, before it idles), and
compares the two.

``measure()`` is imported by bench/run.py; it never patches the calling process (the clients and the bare
server run in their own processes).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLIENTS = 10_000
CONCURRENCY = 500  # clients being set up at once
WARMUP_CLIENTS = 20
SETTLE_S = 1.0


def exchange_line(sock: socket.socket, line: bytes) -> bytes:
    """Send one line and read its reply up to its LF; ConnectionError if the server closes first."""
    sock.sendall(line)
    got = b""
    while not got.endswith(b"\n"):
        data = sock.recv(256)
        if not data:
            raise ConnectionError("closed before the reply")
        got += data
    return got


def _raise_nofile() -> int:
    """Raise this process's soft limit of open files to the hard one; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft if hard != resource.RLIM_INFINITY else 1 << 20


# -- the bare server ------------------------------------------------------------------------------------


def serve(port: int) -> None:
    """A gevent StreamServer in one process whose handler reads lines and echoes each one."""
    _raise_nofile()
    from gevent import monkey

    monkey.patch_all()
    from gevent.server import StreamServer

    def handle(sock, addr) -> None:
        tail = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            data = tail + data
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            if cut:
                sock.sendall(data[:cut])
        sock.close()

    StreamServer(("127.0.0.1", port), handle, backlog=4096).serve_forever()


# -- the clients ----------------------------------------------------------------------------------------


def clients(port: int, n: int, ca_file: str | None = None) -> None:
    """Open n clients, each sending a line and reading its echo (over TLS, verified against ca_file, when
    given); print JSON, hold them until stdin EOF."""
    _raise_nofile()
    from gevent import monkey

    monkey.patch_all()
    import gevent.pool
    import gevent.socket

    held: list = []
    failures: list[str] = []
    tls = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def one(i: int) -> None:
        try:
            sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=60)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname="localhost")
            line = f"idle client {i:06d}\n".encode()
            got = exchange_line(sock, line)
            if got != line:
                raise ConnectionError(f"reply {got!r}")
            held.append(sock)
        except Exception as exc:
            failures.append(str(exc))

    pool = gevent.pool.Pool(CONCURRENCY)
    start = time.perf_counter()
    for i in range(n):
        pool.spawn(one, i)
    pool.join()
    seconds = time.perf_counter() - start
    print(
        json.dumps({"clients": len(held), "failed": len(failures), "first_error": failures[:1], "seconds": seconds}),
        flush=True,
    )
    sys.stdin.read()
    for sock in held:
        sock.close()


# -- measuring ------------------------------------------------------------------------------------------


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of stat: the parent
            out.append(int(entry))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def _warm_up(port: int, tls: ssl.SSLContext | None) -> None:
    for i in range(WARMUP_CLIENTS):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            sock = raw if tls is None else tls.wrap_socket(raw, server_hostname="localhost")
            try:
                exchange_line(sock, f"warm up {i}\n".encode())
            except ConnectionError:
                pass  # a warm-up client: its reply matters not


def _one_server(kind: str, n: int, tls: tuple[str, str, str] | None = None) -> dict:
    """One server's figures; tls: (certificate, key, CA) makes prefork's listener and the clients speak TLS."""
    port = _free_port()
    log = tempfile.TemporaryFile()
    if kind == "prefork":
        cmd = [
            PY,
            "-m",
            "prefork.cli",
            "run",
            "workers.echo:app",
            "--workers",
            "1",
            "--worker-connections",
            str(n + 100),
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ]
        if tls is not None:
            cmd += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    else:
        cmd = [PY, str(Path(__file__).resolve()), "serve", str(port)]
    server = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    client = None
    try:
        _wait_port(port, server)
        if kind == "prefork":
            deadline = time.monotonic() + 30
            while len(_children(server.pid)) != 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("prefork: no single worker")
                time.sleep(0.1)
            pid = _children(server.pid)[0]
        else:
            pid = server.pid
        _warm_up(port, None if tls is None else ssl.create_default_context(cafile=tls[2]))
        time.sleep(SETTLE_S)
        before = _rss_kb(pid)
        client = subprocess.Popen(
            [PY, str(Path(__file__).resolve()), "clients", str(port), str(n), *([tls[2]] if tls else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        line = client.stdout.readline()
        if not line:
            raise RuntimeError(f"the client process exited with {client.wait()}")
        setup = json.loads(line)
        time.sleep(SETTLE_S)
        after = _rss_kb(pid)
        if kind == "prefork" and _children(server.pid) != [pid]:
            raise RuntimeError("prefork: the worker was replaced during the measure")
        return {
            "clients": setup["clients"],
            "failed": setup["failed"],
            "first_error": setup["first_error"],
            "accept_seconds": setup["seconds"],
            "rss_before_kb": before,
            "rss_after_kb": after,
            "kb_per_client": (after - before) / max(1, setup["clients"]),
        }
    except Exception:
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-3000:])
        raise
    finally:
        if client is not None:
            client.stdin.close()
            try:
                client.wait(30)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait()
        try:
            os.killpg(server.pid, signal.SIGKILL)  # the master and its worker
        except ProcessLookupError:
            pass
        server.wait(30)
        log.close()


def measure(clients: int = CLIENTS) -> dict:
    """Memory per idle client and time to accept them, prefork (echo app, one worker) and bare gevent."""
    limit = _raise_nofile()
    n = min(clients, limit - 200)
    prefork = _one_server("prefork", n)
    bare = _one_server("bare", n)
    return {
        "clients": n,
        "prefork": prefork,
        "bare": bare,
        "kb_ratio": prefork["kb_per_client"] / bare["kb_per_client"] if bare["kb_per_client"] > 0 else float("inf"),
        "accept_ratio": prefork["accept_seconds"] / bare["accept_seconds"],
    }


def measure_tls(clients: int, cert: str, key: str, ca: str) -> dict:
    """Memory per idle client and time to accept them, prefork's echo app (one worker) plaintext and with
    a TLS listener (certificate, key; the clients verify it against ca)."""
    limit = _raise_nofile()
    n = min(clients, limit - 200)
    plaintext = _one_server("prefork", n)
    tls = _one_server("prefork", n, (cert, key, ca))
    return {
        "clients": n,
        "plaintext": plaintext,
        "tls": tls,
        "kb_ratio": tls["kb_per_client"] / plaintext["kb_per_client"] if plaintext["kb_per_client"] > 0 else None,
        "accept_ratio": tls["accept_seconds"] / plaintext["accept_seconds"],
    }


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    elif len(sys.argv) >= 2 and sys.argv[1] == "clients":
        clients(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
    else:
        print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else CLIENTS), indent=1))


if __name__ == "__main__":
    main()
