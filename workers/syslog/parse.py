"""One syslog message (one line, framing already removed) into its columns, RFC 5424 or RFC 3164.

``parse(text, received)`` gives a ``Fields`` tuple of strings (None for NULL), in the order of
``COLUMNS``, or None when the text is neither: no valid ``<PRI>`` (0 to 191) opens it. It is called per
line when the rows are written, so it is built for speed: regexes compiled once, a tuple per line, and the
UTC value of a timestamp cached per second as sent.

The forms, tried in this order after ``<PRI>``:

- RFC 5424: ``1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]``; ``-`` (NILVALUE) is NULL;
  STRUCTURED-DATA becomes a JSON object ``{SD-ID: {PARAM-NAME: value}}`` with the escapes ``\\"``, ``\\\\``
  and ``\\]`` decoded (a PARAM-NAME given twice in one element: a list of its values, in order); a UTF-8
  BOM opening MSG is dropped. A header field out of the RFC's bounds (length, characters, a timestamp
  that is no date) makes the text not RFC 5424, and the forms below are tried.
- RFC 3164 and its variants: ``Mmm dd hh:mm:ss`` (RFC 3164) or an RFC 3339 timestamp (rsyslog's
  ``RSYSLOG_ForwardFormat``), then ``HOSTNAME`` unless the first word is already a tag ending in ``:``
  (glibc's and ``logger``'s local form), then ``TAG[PID]:`` (``TAG`` up to 48 characters, the ``[PID]``
  optional, ended by ``:`` or a space as rsyslog's parser reads it), then MSG.
- ``<PRI>`` alone before the message (Python's ``SysLogHandler``): facility and severity; a leading
  ``TAG[PID]: `` (with its ``[PID]``) is taken as app-name and procid; the rest is MSG.

A NUL is part of the message like any other character: ``SysLogHandler``'s NUL terminator is the framing's
(``server.framing = syslog`` takes it off), not the message's.

Timestamps: ``ts_text`` is the timestamp as sent; ``ts_utc`` the same instant in UTC (DATETIME(6) text).
A second of ``60`` (a leap second) is the first instant of the next minute. An RFC 3164 timestamp has no
year and no zone: it is read as UTC, in the receiver's current year (UTC), except that a December stamp
received in January is of the year before and a January stamp received in December of the year after.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta

# The columns a parse gives, in order (the raw line, the peer and the arrival are the writer's).
COLUMNS = (
    "facility",
    "severity",
    "ts_text",
    "ts_utc",
    "hostname",
    "app_name",
    "procid",
    "msgid",
    "structured_data",
    "message",
)
Fields = tuple[str | None, ...]

MAX_PRI = 191  # facility 23, severity 7
NILVALUE = "-"
BOM = "\ufeff"
UTC_CACHE_SIZE = 4096  # distinct seconds (with their zone) whose UTC text is kept; then it starts over
MONTHS = {name: n for n, name in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)}
DECEMBER, JANUARY = 12, 1
MICRO_DIGITS = 6  # DATETIME(6): a longer fraction is truncated
LEAP_SECOND = 60  # read as the last second plus one: the first instant of the next minute
MIN_YEAR, MAX_YEAR = 1000, 9999  # DATETIME's range

# <PRI>: 1 to 3 digits, no leading zero but for 0 itself. Digits are ASCII only (re.ASCII): int() would
# read other scripts' digits too.
PRI = re.compile(r"<(0|[1-9]\d{0,2})>", re.ASCII)
# RFC 5424 after <PRI>: VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP, then SD [SP MSG].
# The fields are PRINTUSASCII (33-126) of the RFC's lengths.
RFC5424 = re.compile(r"1 (\S+) ([!-~]{1,255}) ([!-~]{1,48}) ([!-~]{1,128}) ([!-~]{1,32}) ")
RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", re.ASCII)
# One SD-ELEMENT: "[" SD-ID *(SP SD-PARAM) "]"; names are PRINTUSASCII but for = SP ] ", 1 to 32 of them.
SD_ELEMENT = re.compile(r'\[([!#-<>-\\^-~]{1,32})((?: [!#-<>-\\^-~]{1,32}="(?:[^"\\]|\\.)*")*)\]', re.DOTALL)
SD_PARAM = re.compile(r'([!#-<>-\\^-~]{1,32})="((?:[^"\\]|\\.)*)"', re.DOTALL)
SD_ESCAPE = re.compile(r'\\(["\\\]])')
# RFC 3164's TIMESTAMP (a space pads a one-digit day), or an RFC 3339 one, then a space.
RFC3164_STAMP = re.compile(
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([ \d]\d) (\d\d):(\d\d):(\d\d) ", re.ASCII
)
RFC3339_STAMP = re.compile(RFC3339.pattern + " ", re.ASCII)
# The first word is a tag already (no HOSTNAME): it ends with ":" (after its optional [PID]).
TAG_FIRST = re.compile(r"[^\s:\[\]]{1,48}(?:\[[^\s\]]{1,128}\])?:")
# TAG[PID] then ":" (and a space) or a space, then MSG.
TAG = re.compile(r"([^\s:\[\]]{1,48})(?:\[([^\s\]]{1,128})\])?(?:: ?| |$)")
HOSTNAME = re.compile(r"(\S{1,255})(?: |$)")
# SysLogHandler's ident form: TAG[PID]: (the [PID] required, so that "Error: ..." stays a message).
IDENT = re.compile(r"([^\s:\[\]]{1,48})\[([^\s\]]{1,128})\]: ?")

_utc_cache: dict[str, str | None] = {}
SD_CACHE_SIZE = 1024  # distinct STRUCTURED-DATA texts whose JSON is kept; then it starts over
SD_CACHED_CHARS = 512  # longer ones (rarely repeated) are not kept
_sd_cache: dict[str, str] = {}
_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def is_syslog(text: str) -> bool:
    """Whether ``parse`` gives fields for the text (it opens with a valid ``<PRI>``), without parsing it."""
    pri = PRI.match(text)
    return pri is not None and int(pri.group(1)) <= MAX_PRI


def parse(text: str, received: float) -> Fields | None:
    """The columns of one syslog message (COLUMNS order; None is NULL), or None when it is not one.
    ``received`` (epoch seconds) dates an RFC 3164 timestamp."""
    pri = PRI.match(text)
    if pri is None:
        return None
    value = int(pri.group(1))
    if value > MAX_PRI:
        return None
    facility, severity = str(value >> 3), str(value & 7)
    start = pri.end()
    fields = _rfc5424(text, start, facility, severity)
    if fields is None:
        fields = _rfc3164(text, start, facility, severity, received)
    return fields


def _rfc5424(text: str, start: int, facility: str, severity: str) -> Fields | None:
    head = RFC5424.match(text, start)
    if head is None:
        return None
    stamp, hostname, app_name, procid, msgid = head.groups()
    if stamp == NILVALUE:
        ts_utc = None
    else:
        ts_utc = utc_of_rfc3339(stamp)
        if ts_utc is None:
            return None
    pos = head.end()
    if text.startswith(NILVALUE, pos):
        sd = None
        pos += 1
    else:
        sd_start = pos
        elements: dict[str, dict[str, str | list[str]]] = {}
        while True:
            element = SD_ELEMENT.match(text, pos)
            if element is None:
                break
            elements.setdefault(element.group(1), {})
            pos = element.end()
        if not elements:
            return None
        # A shipper sends the same STRUCTURED-DATA again and again (rsyslog's and logger's timeQuality):
        # its JSON is made once.
        raw_sd = text[sd_start:pos]
        sd = _sd_cache.get(raw_sd)
        if sd is None:
            sd = _sd_json(raw_sd)
            if len(raw_sd) <= SD_CACHED_CHARS:
                if len(_sd_cache) >= SD_CACHE_SIZE:
                    _sd_cache.clear()
                _sd_cache[raw_sd] = sd
    if pos == len(text):
        message = None
    elif text[pos] == " ":
        message = text[pos + 1 :]
        if message.startswith(BOM):
            message = message[1:]
    else:
        return None  # SD not followed by SP MSG: not RFC 5424
    return (
        facility,
        severity,
        None if stamp == NILVALUE else stamp,
        ts_utc,
        None if hostname == NILVALUE else hostname,
        None if app_name == NILVALUE else app_name,
        None if procid == NILVALUE else procid,
        None if msgid == NILVALUE else msgid,
        sd,
        message,
    )


def _sd_json(raw_sd: str) -> str:
    """The JSON object of a STRUCTURED-DATA already matched by SD_ELEMENT (escapes decoded; a name given
    twice in an element: the list of its values)."""
    elements: dict[str, dict[str, str | list[str]]] = {}
    for element in SD_ELEMENT.finditer(raw_sd):
        params = elements.setdefault(element.group(1), {})
        for name, raw in SD_PARAM.findall(element.group(2)):
            value = SD_ESCAPE.sub(r"\1", raw) if "\\" in raw else raw
            had = params.get(name)
            if had is None:
                params[name] = value
            elif isinstance(had, list):
                had.append(value)
            else:
                params[name] = [had, value]
    return _to_json(elements)


def _rfc3164(text: str, start: int, facility: str, severity: str, received: float) -> Fields:
    ts_text = ts_utc = hostname = app_name = procid = None
    stamp = RFC3164_STAMP.match(text, start)
    if stamp is not None:
        ts_text = stamp.group(0)[:-1]
        ts_utc = utc_of_rfc3164(stamp, received)
    else:
        stamp = RFC3339_STAMP.match(text, start)
        if stamp is not None:
            ts_text = stamp.group(0)[:-1]
            ts_utc = utc_of_rfc3339(ts_text)
            if ts_utc is None:
                stamp = None  # no date: the whole rest is the message
                ts_text = None
    if stamp is None:
        pos = start
        ident = IDENT.match(text, pos)
        if ident is not None:
            app_name, procid = ident.groups()
            pos = ident.end()
    else:
        pos = stamp.end()
        if TAG_FIRST.match(text, pos) is None:
            host = HOSTNAME.match(text, pos)
            if host is not None:
                hostname = host.group(1)
                pos = host.end()
        tag = TAG.match(text, pos)
        if tag is not None and tag.end() > pos:
            app_name, procid = tag.groups()
            pos = tag.end()
    return (facility, severity, ts_text, ts_utc, hostname, app_name, procid, None, None, text[pos:])


def utc_of_rfc3339(stamp: str) -> str | None:
    """An RFC 3339 timestamp as DATETIME(6) text in UTC, or None when it is no valid one."""
    match = RFC3339.fullmatch(stamp)
    if match is None:
        return None
    year, month, day, hour, minute, sec, fraction, zone = match.groups()
    key = f"{year}{month}{day}{hour}{minute}{sec}{zone}"
    second = _utc_cache.get(key, "")
    if second == "":
        second = _rfc3339_second(int(year), int(month), int(day), int(hour), int(minute), int(sec), zone)
        _remember(key, second)
    if second is None:
        return None
    return f"{second}.{(fraction or '')[:MICRO_DIGITS].ljust(MICRO_DIGITS, '0')}"


def _rfc3339_second(year: int, month: int, day: int, hour: int, minute: int, sec: int, zone: str) -> str | None:
    leap = sec == LEAP_SECOND
    try:
        when = datetime(year, month, day, hour, minute, sec - 1 if leap else sec)
    except ValueError:
        return None
    if leap:
        when += timedelta(seconds=1)
    if zone != "Z":
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        when = when - offset if zone[0] == "+" else when + offset
    return when.strftime("%Y-%m-%d %H:%M:%S") if MIN_YEAR <= when.year <= MAX_YEAR else None


def utc_of_rfc3164(stamp: re.Match[str], received: float) -> str | None:
    """An RFC 3164 timestamp (read as UTC, its year inferred from ``received``: see the module's
    docstring) as DATETIME(6) text, or None when it is no date (say, Feb 30)."""
    now = time.gmtime(received)
    key = f"{stamp.group(0)}{now.tm_year}-{now.tm_mon}"
    second = _utc_cache.get(key, "")
    if second == "":
        month_name, day, hour, minute, sec = stamp.groups()
        month = MONTHS[month_name]
        year = now.tm_year
        if month == DECEMBER and now.tm_mon == JANUARY:
            year -= 1
        elif month == JANUARY and now.tm_mon == DECEMBER:
            year += 1
        leap = int(sec) == LEAP_SECOND
        try:
            when = datetime(year, month, int(day), int(hour), int(minute), int(sec) - 1 if leap else int(sec))
            second = (when + timedelta(seconds=1) if leap else when).strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            second = None
        _remember(key, second)
    return None if second is None else second + ".000000"


def _remember(key: str, second: str | None) -> None:
    if len(_utc_cache) >= UTC_CACHE_SIZE:
        _utc_cache.clear()
    _utc_cache[key] = second
