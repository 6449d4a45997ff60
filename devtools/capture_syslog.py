"""Capture what real syslog shippers send, into tests/fixtures/syslog/ (its README says how and with what).

Usage: ``python devtools/capture_syslog.py OUTDIR [RSYSLOG_ROOT [SYSLOG_NG_ROOT]]``. A plain TCP (and UDP) listener on
127.0.0.1 keeps the bytes as received, one file per shipper and form: TCP streams as they came, UDP
datagrams one per line (a datagram is a message; the LF between them is the only byte added).
``RSYSLOG_ROOT`` is a tree with ``usr/sbin/rsyslogd`` (``apt-get download rsyslog`` then ``dpkg -x``): it
runs with a config of its own in a temporary directory, never the system's. ``SYSLOG_NG_ROOT`` likewise
holds ``usr/sbin/syslog-ng`` (``syslog-ng-core``, ``libivykis0``, ``libpcre3``, ``libnet1`` unpacked: the
package conflicts with rsyslog).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
SETTLE_S = 1.0  # quiet time after which a capture is taken as complete
MESSAGES = ["hello from {who}", "tab\there, unicode: caf\u00e9 \u2713", 'brackets ] [x] and "quotes" \\ back']


class Capture:
    """A TCP and a UDP listener on free ports of 127.0.0.1; ``take()`` gives what came since the last take."""

    def __init__(self) -> None:
        self.tcp = socket.create_server((HOST, 0))
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((HOST, self.port))
        self.data = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._datagrams, daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.tcp.accept()
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        while chunk := conn.recv(65536):
            with self.lock:
                self.data += chunk
        conn.close()

    def _datagrams(self) -> None:
        while True:
            chunk = self.udp.recv(65536)
            with self.lock:
                self.data += chunk + b"\n"

    def take(self) -> bytes:
        size = -1
        while True:
            time.sleep(SETTLE_S)
            with self.lock:
                if len(self.data) == size:
                    out = bytes(self.data)
                    self.data.clear()
                    return out
                size = len(self.data)


def logger_forms(cap: Capture, out: Path) -> None:
    forms = {
        "logger-rfc5424-tcp": ["--rfc5424"],
        "logger-rfc5424-tcp-octet-count": ["--rfc5424", "--octet-count"],
        "logger-rfc3164-tcp": ["--rfc3164"],
        "logger-rfc3164-tcp-octet-count": ["--rfc3164", "--octet-count"],
    }
    for name, args in forms.items():
        for text in MESSAGES:
            base = ["logger", "--tcp", "-n", HOST, "-P", str(cap.port), "-t", "myapp", "-p", "local3.notice"]
            subprocess.run([*base, *args, text.format(who=name)], check=True)
        if "--rfc5424" in args:
            sd = ["--sd-id", "zoo@32473", "--sd-param", 'tiger="hungry"', "--sd-param", 'note="a \\"b\\" c\\]"']
            subprocess.run([*base, *args, "--msgid", "ID47", *sd, "with structured data"], check=True)
        (out / f"{name}.txt").write_bytes(cap.take())


def python_handler(cap: Capture, out: Path) -> None:
    for name, kind in (
        ("python-syslog-handler-udp", socket.SOCK_DGRAM),
        ("python-syslog-handler-tcp", socket.SOCK_STREAM),
    ):
        handler = logging.handlers.SysLogHandler((HOST, cap.port), facility="local7", socktype=kind)
        log = logging.getLogger(name)
        log.propagate = False
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
        log.warning(MESSAGES[0].format(who=name))
        log.error(MESSAGES[1])
        handler.ident = "pyapp[42]: "
        log.info(MESSAGES[2])
        handler.close()
        (out / f"{name}.txt").write_bytes(cap.take())


RSYSLOG_CONF = """
global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{inport}" ruleset="fwd")
ruleset(name="fwd") {{
  action(type="omfwd" target="127.0.0.1" port="{outport}" protocol="tcp" template="{template}"
         TCP_Framing="{framing}")
}}
"""


def rsyslog_forms(cap: Capture, out: Path, root: Path) -> None:
    forms = {
        "rsyslog-omfwd-traditional": ("RSYSLOG_TraditionalForwardFormat", "traditional"),
        "rsyslog-omfwd-forwardformat": ("RSYSLOG_ForwardFormat", "traditional"),
        "rsyslog-omfwd-protocol23": ("RSYSLOG_SyslogProtocol23Format", "traditional"),
        "rsyslog-omfwd-protocol23-octet-counted": ("RSYSLOG_SyslogProtocol23Format", "octet-counted"),
    }
    env = dict(os.environ, LD_LIBRARY_PATH=str(root / "usr/lib/x86_64-linux-gnu"))
    for name, (template, framing) in forms.items():
        with tempfile.TemporaryDirectory() as tmp:
            probe = socket.create_server((HOST, 0))
            inport = probe.getsockname()[1]
            probe.close()
            conf = Path(tmp) / "rsyslog.conf"
            conf.write_text(
                RSYSLOG_CONF.format(work=tmp, inport=inport, outport=cap.port, template=template, framing=framing)
            )
            cmd = [
                str(root / "usr/sbin/rsyslogd"),
                "-n",
                "-f",
                str(conf),
                "-i",
                f"{tmp}/pid",
                "-M",
                str(root / "usr/lib/x86_64-linux-gnu/rsyslog"),
            ]
            proc = subprocess.Popen(cmd, env=env)
            try:
                for _ in range(100):
                    try:
                        socket.create_connection((HOST, inport)).close()
                        break
                    except OSError:
                        time.sleep(0.1)
                base = ["logger", "--tcp", "-n", HOST, "-P", str(inport), "-t", "relayed", "-p", "mail.err"]
                for text in MESSAGES:
                    subprocess.run([*base, "--rfc5424", text.format(who=name)], check=True)
                subprocess.run([*base, "--rfc3164", "in 3164 to rsyslog"], check=True)
                (out / f"{name}.txt").write_bytes(cap.take())
            finally:
                proc.terminate()
                proc.wait()


SYSLOG_NG_CONF = """@version: 3.38
options {{ keep-hostname(yes); }};
source s_in {{ network(ip("127.0.0.1") port({inport}) transport("tcp")); }};
destination d_out {{ {driver}("127.0.0.1" port({outport}) transport("tcp")); }};
log {{ source(s_in); destination(d_out); }};
"""


def syslog_ng_forms(cap: Capture, out: Path, root: Path) -> None:
    forms = {"syslog-ng-syslog-octet-counted": "syslog", "syslog-ng-network": "network"}
    libs = [root / "usr/lib/syslog-ng", root / "usr/lib/x86_64-linux-gnu", root / "lib/x86_64-linux-gnu"]
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(map(str, libs)))
    for name, driver in forms.items():
        with tempfile.TemporaryDirectory() as tmp:
            probe = socket.create_server((HOST, 0))
            inport = probe.getsockname()[1]
            probe.close()
            conf = Path(tmp) / "syslog-ng.conf"
            conf.write_text(SYSLOG_NG_CONF.format(inport=inport, outport=cap.port, driver=driver))
            cmd = [
                str(root / "usr/sbin/syslog-ng"),
                "-F",
                "--no-caps",
                "-f",
                str(conf),
                f"--module-path={root / 'usr/lib/syslog-ng/3.38'}",
                "-p",
                f"{tmp}/pid",
                "-R",
                f"{tmp}/persist",
                "-c",
                f"{tmp}/ctl",
            ]
            proc = subprocess.Popen(cmd, env=env)
            try:
                _wait_listening(inport)
                base = ["logger", "--tcp", "-n", HOST, "-P", str(inport), "-t", "relayed", "-p", "user.warning"]
                for text in MESSAGES:
                    subprocess.run([*base, "--rfc3164", text.format(who=name)], check=True)
                (out / f"{name}.txt").write_bytes(cap.take())
            finally:
                proc.terminate()
                proc.wait()


def _wait_listening(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection((HOST, port)).close()
            return
        except OSError:
            time.sleep(0.1)


def main() -> None:
    out = Path(sys.argv[1])
    cap = Capture()
    logger_forms(cap, out)
    python_handler(cap, out)
    if len(sys.argv) > 2:
        rsyslog_forms(cap, out, Path(sys.argv[2]))
    if len(sys.argv) > 3:
        syslog_ng_forms(cap, out, Path(sys.argv[3]))


if __name__ == "__main__":
    main()
