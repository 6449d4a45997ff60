"""DSN parsing and redaction: the password never shows."""

from __future__ import annotations

import pytest

from prefork.dsn import DSNError, parse_dsn


def test_full_dsn_to_connect_kwargs():
    dsn = parse_dsn("mysql://app:s%40cret@db.example:3307/shop?charset=utf8mb4&read_timeout=5")
    kw = dsn.connect_kwargs()
    assert (kw["host"], kw["port"], kw["user"], kw["password"], kw["database"]) == (
        "db.example",
        3307,
        "app",
        "s@cret",
        "shop",
    )
    assert kw["read_timeout"] == 5.0 and kw["write_timeout"] == 60.0 and kw["connect_timeout"] == 10.0
    assert kw["autocommit"] is False


def test_defaults_and_unix_socket():
    dsn = parse_dsn("mysql://root@localhost/test?unix_socket=/run/mysqld/mysqld.sock")
    kw = dsn.connect_kwargs()
    assert kw["unix_socket"] == "/run/mysqld/mysqld.sock" and kw["port"] == 3306 and kw["password"] == ""


def test_password_is_redacted_everywhere():
    dsn = parse_dsn("mysql://app:topsecret@db:3306/shop")
    for text in (str(dsn), repr(dsn), dsn.redacted, f"{dsn}"):
        assert "topsecret" not in text and "***" in text


@pytest.mark.parametrize(
    "bad",
    [
        "postgres://u:topsecret@h/db",
        "mysql://u:topsecret@h:notaport/db",
        "mysql://u:topsecret@h/db?bogus=1",
        "mysql://u:topsecret@h/db?read_timeout=-1",
        "mysql://u:topsecret@/db",
    ],
)
def test_errors_never_show_the_password(bad):
    with pytest.raises(DSNError) as info:
        parse_dsn(bad)
    assert "topsecret" not in str(info.value) and "bad DSN" in str(info.value)


def test_several_hosts_in_order():
    dsn = parse_dsn("mysql://app:pw@127.0.0.11:3307,127.0.0.12,[::1]:3309/test?connect_timeout=2")
    assert dsn.hosts == (("127.0.0.11", 3307), ("127.0.0.12", 3306), ("::1", 3309))
    assert (dsn.host, dsn.port) == ("127.0.0.11", 3307)  # the first, as for one host
    assert [dsn.connect_kwargs(i)["host"] for i in range(3)] == ["127.0.0.11", "127.0.0.12", "::1"]
    assert all(dsn.connect_kwargs(i)["connect_timeout"] == 2.0 for i in range(3))
    assert str(dsn) == "mysql://app:***@127.0.0.11:3307,127.0.0.12:3306,[::1]:3309/test?connect_timeout=2"
    assert parse_dsn(str(dsn).replace("***", "pw")) == dsn


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("mysql://u:sekret@a,,b/x", "an empty host"),
        ("mysql://u:sekret@a:1,b:99999/x", "out of range"),
        ("mysql://u:sekret@a,b:x/t", "could not be cast"),
    ],
)
def test_bad_host_lists(raw, expected):
    with pytest.raises(DSNError, match=expected) as info:
        parse_dsn(raw)
    assert "sekret" not in str(info.value)
