"""workers.syslog.parse and workers.syslog.rows without a database: the RFCs' own examples, the edge cases,
the messages real shippers sent (tests/fixtures/syslog/), and the rows they become in a LOAD file and an
INSERT."""

from __future__ import annotations

import calendar
import datetime as dt
import json

import pymysql.converters
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.syslog_fixtures import EXPECTED, messages
from workers.ingest.batch import Rows
from workers.syslog.parse import COLUMNS, is_syslog, parse
from workers.syslog.rows import SyslogShape

pytestmark = pytest.mark.timeout(30)

RECEIVED = calendar.timegm((2026, 6, 15, 12, 0, 0))  # a June arrival: RFC 3164 stamps are of 2026
BOM = "\ufeff"


def fields(text: str, received: float = RECEIVED) -> dict[str, str | None]:
    parsed = parse(text, received)
    assert parsed is not None, text
    return dict(zip(COLUMNS, parsed, strict=True))


# -- RFC 5424, section 6.5 --------------------------------------------------------------------------------


def test_rfc5424_example_1_no_structured_data_and_a_bom():
    got = fields(
        "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - "
        f"{BOM}'su root' failed for lonvick on /dev/pts/8"
    )
    assert got == {
        "facility": "4",
        "severity": "2",
        "ts_text": "2003-10-11T22:14:15.003Z",
        "ts_utc": "2003-10-11 22:14:15.003000",
        "hostname": "mymachine.example.com",
        "app_name": "su",
        "procid": None,
        "msgid": "ID47",
        "structured_data": None,
        "message": "'su root' failed for lonvick on /dev/pts/8",
    }


def test_rfc5424_example_2_an_offset_and_microseconds():
    got = fields("<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts.")
    assert (got["facility"], got["severity"]) == ("20", "5")
    assert got["ts_text"] == "2003-08-24T05:14:15.000003-07:00"
    assert got["ts_utc"] == "2003-08-24 12:14:15.000003"
    assert (got["hostname"], got["app_name"], got["procid"], got["msgid"]) == ("192.0.2.1", "myproc", "8710", None)
    assert got["message"] == "%% It's time to make the do-nuts."


def test_rfc5424_example_3_structured_data_and_a_message():
    got = fields(
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
        '[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"] '
        f"{BOM}An application event log entry..."
    )
    assert json.loads(got["structured_data"] or "") == {
        "exampleSDID@32473": {"iut": "3", "eventSource": "Application", "eventID": "1011"}
    }
    assert got["message"] == "An application event log entry..."
    assert (got["app_name"], got["msgid"]) == ("evntslog", "ID47")


def test_rfc5424_example_4_two_elements_and_no_message():
    got = fields(
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
        '[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]'
    )
    assert json.loads(got["structured_data"] or "") == {
        "exampleSDID@32473": {"iut": "3", "eventSource": "Application", "eventID": "1011"},
        "examplePriority@32473": {"class": "high"},
    }
    assert got["message"] is None


# -- RFC 5424 edge cases ----------------------------------------------------------------------------------


def test_nilvalues_everywhere_are_null():
    assert fields("<13>1 - - - - - -") == dict.fromkeys(COLUMNS) | {"facility": "1", "severity": "5"}
    assert fields("<13>1 - - - - - - msg")["message"] == "msg"


def test_pri_bounds():
    assert fields("<0>1 - - - - - - x")[("facility")] == "0"
    assert (fields("<191>1 - - - - - - x")["facility"], fields("<191>1 - - - - - - x")["severity"]) == ("23", "7")
    fullwidth = "<\uff11\uff13>x"  # digits, but not ASCII ones
    for bad in ("<192>1 - - - - - - x", "<999>x", "<>x", "<01>x", "<1a>x", "no pri at all", "", "<-1>x", fullwidth):
        assert parse(bad, RECEIVED) is None, bad
        assert not is_syslog(bad)
    assert is_syslog("<0>") and is_syslog("<191>x")


def test_escapes_in_param_values_are_decoded():
    got = fields(r'<13>1 - h a - - [id@1 a="x\]y" b="q\"q" c="back\\slash" d="kept\n"] m')
    assert json.loads(got["structured_data"] or "") == {
        "id@1": {"a": "x]y", "b": 'q"q', "c": "back\\slash", "d": "kept\\n"}
    }
    assert got["message"] == "m"


def test_a_param_given_twice_keeps_both_values_in_order():
    got = fields('<13>1 - h a - - [id@1 ip="1.1.1.1" ip="2.2.2.2" ip="3.3.3.3"] m')
    assert json.loads(got["structured_data"] or "") == {"id@1": {"ip": ["1.1.1.1", "2.2.2.2", "3.3.3.3"]}}


def test_an_element_without_params_and_brackets_in_the_message():
    got = fields("<13>1 - h a - - [origin] [not sd] ] x")
    assert json.loads(got["structured_data"] or "") == {"origin": {}}
    assert got["message"] == "[not sd] ] x"


def test_timestamps_offsets_fractions_and_a_leap_second():
    assert fields("<13>1 2003-10-11T22:14:15+05:30 h a - - -")["ts_utc"] == "2003-10-11 16:44:15.000000"
    assert fields("<13>1 2003-12-31T23:30:00.5-01:00 h a - - -")["ts_utc"] == "2004-01-01 00:30:00.500000"
    # More than 6 digits of fraction: DATETIME(6) keeps 6 (truncated), the text keeps all.
    nine = fields("<13>1 2003-10-11T22:14:15.123456789Z h a - - -")
    assert (nine["ts_text"], nine["ts_utc"]) == ("2003-10-11T22:14:15.123456789Z", "2003-10-11 22:14:15.123456")
    # A leap second is the first instant of the next minute (here, of the next year).
    leap = fields("<13>1 2016-12-31T23:59:60.25Z h a - - -")
    assert (leap["ts_text"], leap["ts_utc"]) == ("2016-12-31T23:59:60.25Z", "2017-01-01 00:00:00.250000")


def test_timestamps_in_other_digits_are_no_timestamps():
    arabic = "<13>1 \u0662\u0660\u0660\u0663-10-11T22:14:15Z h a - - - m"
    assert fields(arabic)["ts_text"] is None and fields(arabic)["hostname"] is None
    assert fields("<13>Oct 1\u0661 22:14:15 h t: m")["ts_text"] is None


def test_a_bad_header_is_not_rfc5424_but_keeps_its_pri():
    # No date (Feb 30), a missing field, an over-long APP-NAME: read as a bare <PRI> message.
    for text in (
        "<13>1 2003-02-30T00:00:00Z h a - - - m",
        "<13>1 2003-10-11T22:14:15Z h a - -",
        f"<13>1 - h {'a' * 49} - - - m",
        "<13>1 - h a - - [unterminated x",
    ):
        got = fields(text)
        assert (got["facility"], got["severity"], got["hostname"], got["structured_data"]) == ("1", "5", None, None)
        assert got["message"] == text[len("<13>") :]


# -- RFC 3164, section 5.4, and its variants ------------------------------------------------------------


def test_rfc3164_example_1():
    got = fields("<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8")
    assert got == {
        "facility": "4",
        "severity": "2",
        "ts_text": "Oct 11 22:14:15",
        "ts_utc": "2026-10-11 22:14:15.000000",
        "hostname": "mymachine",
        "app_name": "su",
        "procid": None,
        "msgid": None,
        "structured_data": None,
        "message": "'su root' failed for lonvick on /dev/pts/8",
    }


def test_rfc3164_example_2_without_pri_is_no_syslog_message():
    # RFC 3164 has a relay add <13> and a header; prefork stores it raw with NULL fields (or rejects it).
    assert parse("Use the BFG!", RECEIVED) is None


def test_rfc3164_example_3_and_a_padded_day():
    got = fields("<165>Aug 24 05:34:00 CST 1987 mymachine myproc[10]: %% It's time to make the do-nuts.")
    # As the RFC says a relay reads it: "CST" is the HOSTNAME; the rest is the content.
    assert (got["ts_text"], got["hostname"], got["app_name"]) == ("Aug 24 05:34:00", "CST", "1987")
    assert got["message"] == "mymachine myproc[10]: %% It's time to make the do-nuts."
    padded = fields("<13>Feb  5 17:32:18 10.0.0.99 myproc[10]: Use the BFG!")
    assert (padded["ts_utc"], padded["hostname"], padded["app_name"], padded["procid"]) == (
        "2026-02-05 17:32:18.000000",
        "10.0.0.99",
        "myproc",
        "10",
    )
    assert padded["message"] == "Use the BFG!"


def test_rfc3164_example_4_an_unknown_timestamp_is_a_bare_message():
    text = "<0>1990 Oct 22 10:52:01 TZ-6 scapegoat.dmz.example.org 10.1.2.3 sched[0]: That's All Folks!"
    got = fields(text)
    assert (got["facility"], got["severity"], got["ts_text"], got["hostname"]) == ("0", "0", None, None)
    assert got["message"] == text[len("<0>") :]


def test_rfc3164_year_rollover():
    jan_2027 = calendar.timegm((2027, 1, 1, 0, 0, 5))
    dec_2026 = calendar.timegm((2026, 12, 31, 23, 59, 58))
    assert fields("<13>Dec 31 23:59:59 h t: m", jan_2027)["ts_utc"] == "2026-12-31 23:59:59.000000"
    assert fields("<13>Jan  1 00:00:01 h t: m", dec_2026)["ts_utc"] == "2027-01-01 00:00:01.000000"
    assert fields("<13>Jan  1 00:00:01 h t: m", jan_2027)["ts_utc"] == "2027-01-01 00:00:01.000000"
    # No such date in the year: the text is kept, the UTC value is NULL.
    feb29 = fields("<13>Feb 29 10:00:00 h t: m", RECEIVED)
    assert (feb29["ts_text"], feb29["ts_utc"], feb29["hostname"]) == ("Feb 29 10:00:00", None, "h")


def test_rfc3164_forms_without_host_or_colon():
    # glibc's and logger's local form: no HOSTNAME, the first word is the tag.
    local = fields("<13>Oct 11 22:14:15 cron[42]: job done")
    assert (local["hostname"], local["app_name"], local["procid"], local["message"]) == (None, "cron", "42", "job done")
    # rsyslog relays an RFC 5424 APP-NAME as a tag without a colon.
    bare = fields("<13>2026-12-06T14:11:28.348021+00:00 vm relayed hello there")
    assert (bare["hostname"], bare["app_name"], bare["message"]) == ("vm", "relayed", "hello there")
    assert bare["ts_utc"] == "2026-12-06 14:11:28.348021"
    # Only a header: no message.
    assert fields("<13>Oct 11 22:14:15 host")["message"] == ""


def test_python_sysloghandler_forms_and_a_nul_kept_as_sent():
    """SysLogHandler's NUL terminator is the framing's (server.framing = syslog takes it off): a NUL that
    reaches the parser is part of the message and stored as sent (before, trailing NULs were dropped)."""
    assert fields("<14>plain words: no ident") == dict.fromkeys(COLUMNS) | {
        "facility": "1",
        "severity": "6",
        "message": "plain words: no ident",
    }
    got = fields("<14>app[7]: with an ident\x00\x00")
    assert (got["app_name"], got["procid"], got["message"]) == ("app", "7", "with an ident\x00\x00")


# -- the shippers' own messages ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_captured_shipper_messages(name: str):
    sent = messages(name)
    assert len(sent) == len(EXPECTED[name])
    for text, expected in zip(sent, EXPECTED[name], strict=True):
        got = fields(text, calendar.timegm((2026, 12, 6, 14, 30, 0)))
        facility, severity, hostname, app_name, procid, msgid, sd, message = expected
        assert (got["facility"], got["severity"]) == (str(facility), str(severity)), text
        assert (got["hostname"], got["app_name"], got["procid"], got["msgid"]) == (hostname, app_name, procid, msgid)
        assert (json.loads(got["structured_data"]) if got["structured_data"] else None) == sd, text
        assert got["message"] == message, text
        if got["ts_text"] is not None:
            assert (got["ts_utc"] or "").startswith("2026-12-06 14:"), text  # captured then, all in UTC


# -- rows -----------------------------------------------------------------------------------------------------


def test_rows_in_a_load_file_escape_every_field_and_null_is_backslash_n():
    shape = SyslogShape()
    texts = ['<13>1 - h\\x a - - [i q="a\\"b"] tab\there', "not syslog\t\\", "<14>clean"]
    fields_of = shape.load_fields(Rows(texts, [(RECEIVED, "127.0.0.1:5", 3)]))
    first = fields_of[0].split("\t")
    assert len(first) == len(shape.columns)
    assert first[:3] == ["1", "5", "\\N"]
    assert first[4] == "h\\\\x"
    assert first[8] == '{"i":{"q":"a\\\\"b"}}'  # JSON's \" as the LOAD file escapes its backslash
    assert first[9:] == ["tab\\there", '<13>1 - h\\\\x a - - [i q="a\\\\"b"] tab\\there']
    assert fields_of[1].split("\t") == ["\\N"] * len(COLUMNS) + ["not syslog\\t\\\\"]
    assert fields_of[2].split("\t") == ["1", "6"] + ["\\N"] * 7 + ["clean", "<14>clean"]


def test_rows_as_sql_values():
    def escape(value: object) -> str:
        return str(pymysql.converters.escape_item(value, "utf8mb4"))

    shape = SyslogShape()
    values = shape.sql_values(escape, Rows(["<14>it's", "junk"], [(RECEIVED, "a", 1), (RECEIVED, "b", 1)]))
    assert values[0] == "'1','6',NULL,NULL,NULL,NULL,NULL,NULL,NULL,'it\\'s','<14>it\\'s'"
    assert values[1] == ",".join(["NULL"] * len(COLUMNS) + ["'junk'"])


# -- properties ---------------------------------------------------------------------------------------------

PRINTUSASCII = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
SD_NAME = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters='= ]"'), min_size=1, max_size=32
)
NOT_NIL = PRINTUSASCII.filter(lambda v: v != "-")


def sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


@settings(max_examples=300, deadline=None)
@given(
    pri=st.integers(0, 191),
    when=st.datetimes(min_value=dt.datetime(1001, 1, 2), max_value=dt.datetime(9998, 12, 30)),
    offset=st.integers(-23 * 60 - 59, 23 * 60 + 59),
    header=st.tuples(NOT_NIL, NOT_NIL, NOT_NIL, NOT_NIL),
    sd=st.dictionaries(SD_NAME, st.dictionaries(SD_NAME, st.text(max_size=20), max_size=3), max_size=3),
    message=st.none() | st.text(max_size=50).filter(lambda m: "\n" not in m and not m.startswith("\ufeff")),
)
def test_any_rfc5424_message_is_read_back(pri, when, offset, header, sd, message):
    """A message built from any fields within the RFC's bounds gives those fields back."""
    zone = "Z" if offset == 0 else f"{'+' if offset > 0 else '-'}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S") + (f".{when.microsecond:06d}" if when.microsecond else "") + zone
    hostname, app_name, procid, msgid = header
    sd_text = "".join(
        f"[{sd_id}" + "".join(f' {k}="{sd_escape(v)}"' for k, v in params.items()) + "]" for sd_id, params in sd.items()
    )
    text = f"<{pri}>1 {stamp} {hostname} {app_name[:48]} {procid} {msgid} {sd_text or '-'}"
    if message is not None:
        text += " " + message
    got = fields(text)
    utc = when - dt.timedelta(minutes=offset)
    assert got["ts_text"] == stamp
    assert got["ts_utc"] == (utc.strftime("%Y-%m-%d %H:%M:%S.%f") if 1000 <= utc.year <= 9999 else None)
    assert (got["facility"], got["severity"]) == (str(pri // 8), str(pri % 8))
    assert (got["hostname"], got["app_name"], got["procid"], got["msgid"]) == (hostname, app_name[:48], procid, msgid)
    assert (json.loads(got["structured_data"]) if got["structured_data"] else {}) == sd
    assert got["message"] == message


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80) | st.builds(lambda p, t: f"<{p}>{t}", st.integers(0, 300), st.text(max_size=80)))
def test_any_text_parses_or_is_no_syslog_message_and_never_raises(text):
    parsed = parse(text, RECEIVED)
    assert (parsed is not None) == is_syslog(text)
    if parsed is not None:
        assert len(parsed) == len(COLUMNS)
        assert all(value is None or isinstance(value, str) for value in parsed)
        if parsed[COLUMNS.index("structured_data")] is not None:
            json.loads(parsed[COLUMNS.index("structured_data")] or "")
