"""The messages real shippers sent (tests/fixtures/syslog/, captured by devtools/capture_syslog.py), cut
into one message per line as a framer gives them, with what each must be stored as."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "syslog"

# The texts every shipper was given (devtools/capture_syslog.py MESSAGES): hello, then two awkward ones.
TAB = "tab\there, unicode: caf\u00e9 \u2713"
RSYSLOG_TAB = "tab#011here, unicode: caf\u00e9 \u2713"  # rsyslog escapes control characters as #ooo
AWKWARD = 'brackets ] [x] and "quotes" \\ back'
TIME_QUALITY = {"timeQuality": {"tzKnown": "1", "isSynced": "0"}}
LOCAL3_NOTICE = (19, 5)
MAIL_ERR = (2, 3)
USER_WARNING = (1, 4)


def messages(name: str) -> list[str]:
    """The messages of one fixture file as the framing hands them over: octet-counted frames cut by their
    length, NUL-terminated ones at the NUL (taken off, as ``server.framing = syslog`` does), others at LF."""
    data = (FIXTURES / f"{name}.txt").read_bytes()
    out: list[bytes] = []
    if "octet-count" in name:
        pos = 0
        while pos < len(data):
            space = data.index(b" ", pos)
            length = int(data[pos:space])
            out.append(data[space + 1 : space + 1 + length].rstrip(b"\n"))
            pos = space + 1 + length
            while data[pos : pos + 1] == b"\n":
                pos += 1
    elif name.startswith("python-syslog-handler"):  # each record ends with a NUL (a datagram per line, for UDP)
        out = [part.strip(b"\n") for part in data.split(b"\0") if part.strip(b"\n")]
    else:
        out = [line for line in data.split(b"\n") if line]
    return [m.decode() for m in out]


# Per fixture, per message: (facility, severity, hostname, app_name, procid, msgid, structured data, message).
Expected = tuple[int, int, str | None, str | None, str | None, str | None, dict | None, str | None]


def _logger(name: str, rfc5424: bool) -> list[Expected]:
    sd = TIME_QUALITY if rfc5424 else None
    rows: list[Expected] = [
        (*LOCAL3_NOTICE, "vm", "myapp", None, None, sd, f"hello from {name}"),
        (*LOCAL3_NOTICE, "vm", "myapp", None, None, sd, TAB),
        (*LOCAL3_NOTICE, "vm", "myapp", None, None, sd, AWKWARD),
    ]
    if rfc5424:
        zoo = {**TIME_QUALITY, "zoo@32473": {"tiger": "hungry", "note": 'a "b" c]'}}
        rows.append((*LOCAL3_NOTICE, "vm", "myapp", None, "ID47", zoo, "with structured data"))
    return rows


def _rsyslog(name: str, protocol23: bool) -> list[Expected]:
    sd = TIME_QUALITY if protocol23 else None
    return [
        (*MAIL_ERR, "vm", "relayed", None, None, sd, f"hello from {name}"),
        (*MAIL_ERR, "vm", "relayed", None, None, sd, RSYSLOG_TAB),
        (*MAIL_ERR, "vm", "relayed", None, None, sd, AWKWARD),
        # A message rsyslog got in RFC 3164 form: in RFC 5424 its MSG keeps the space after the tag.
        (*MAIL_ERR, "vm", "relayed", None, None, None, (" " if protocol23 else "") + "in 3164 to rsyslog"),
    ]


def _syslog_ng(name: str) -> list[Expected]:
    # Given RFC 3164 by logger; syslog() relays it in RFC 5424 (no structured data), network() as it came.
    return [
        (*USER_WARNING, "vm", "relayed", None, None, None, f"hello from {name}"),
        (*USER_WARNING, "vm", "relayed", None, None, None, TAB),
        (*USER_WARNING, "vm", "relayed", None, None, None, AWKWARD),
    ]


def _python(name: str) -> list[Expected]:
    return [
        (23, 4, None, None, None, None, None, f"hello from {name}"),
        (23, 3, None, None, None, None, None, TAB),
        (23, 6, None, "pyapp", "42", None, None, AWKWARD),
    ]


EXPECTED: dict[str, list[Expected]] = {
    "logger-rfc5424-tcp": _logger("logger-rfc5424-tcp", True),
    "logger-rfc5424-tcp-octet-count": _logger("logger-rfc5424-tcp-octet-count", True),
    "logger-rfc3164-tcp": _logger("logger-rfc3164-tcp", False),
    "logger-rfc3164-tcp-octet-count": _logger("logger-rfc3164-tcp-octet-count", False),
    "rsyslog-omfwd-traditional": _rsyslog("rsyslog-omfwd-traditional", False),
    "rsyslog-omfwd-forwardformat": _rsyslog("rsyslog-omfwd-forwardformat", False),
    "rsyslog-omfwd-protocol23": _rsyslog("rsyslog-omfwd-protocol23", True),
    "rsyslog-omfwd-protocol23-octet-counted": _rsyslog("rsyslog-omfwd-protocol23-octet-counted", True),
    "syslog-ng-syslog-octet-counted": _syslog_ng("syslog-ng-syslog-octet-counted"),
    "syslog-ng-network": _syslog_ng("syslog-ng-network"),
    "python-syslog-handler-udp": _python("python-syslog-handler-udp"),
    "python-syslog-handler-tcp": _python("python-syslog-handler-tcp"),
}
