"""DSN parsing and redaction: the password never shows."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from prefork.config.errors import ConfigError
from prefork.config.loader import load_config
from prefork.db.dsn import DSNError, parse_dsn


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
        "u:topsecret@h/db",  # no scheme at all
        "mysql:/u:topsecret@h/db",  # a slash short
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
        ("mysql://u:sekret@a:0/x", "out of range"),
        ("mysql://u:sekret@a,b:x/t", "'x' is not a number"),
        ("mysql://u:sekret@a,b:-1/t", "'-1' is not a number"),
        ("mysql://u:sekret@::1/t", "must be in brackets"),
        ("mysql://u:sekret@[::1/t", "written \\[address\\]"),
        ("mysql://u:sekret@[::1]x/t", "written \\[address\\]"),
        ("mysql://u:sekret@[db.example]:3306/t", "not an IPv6 address"),
        ("mysql://u:sekret@:3306/t", "no host name before the port"),
        ("mysql://u:sekret@a, /t", "an empty host"),
    ],
)
def test_bad_host_lists(raw, expected):
    with pytest.raises(DSNError, match=expected) as info:
        parse_dsn(raw)
    assert "sekret" not in str(info.value)


# ---- the host list read by hand: the same on every Python (Debian 12's 3.11.2 urlsplit rejects [v6] lists) ----


@pytest.mark.parametrize(
    "hostlist, hosts",
    [
        ("[::1]", (("::1", 3306),)),
        ("[::1]:3307", (("::1", 3307),)),
        ("[::1]:", (("::1", 3306),)),  # an empty port is the default one
        ("db:", (("db", 3306),)),
        ("[2001:db8::7]:3310,db2,[::1]", (("2001:db8::7", 3310), ("db2", 3306), ("::1", 3306))),
        ("[fe80::1%25eth0]:3307", (("fe80::1%eth0", 3307),)),  # a zone, percent-encoded as in URLs
        (" a:1 , b ", (("a", 1), ("b", 3306))),
    ],
)
def test_host_list_forms(hostlist, hosts):
    dsn = parse_dsn(f"mysql://u:pw@{hostlist}/db")
    assert dsn.hosts == hosts and dsn.database == "db"
    assert parse_dsn(str(dsn).replace("***", "pw")) == dsn  # the redacted form reads back the same


@pytest.mark.parametrize(
    "userinfo, user, password",
    [
        ("app:s%40c%3Ar%2Fet", "app", "s@c:r/et"),  # percent-encoded
        ("app:s@c:r/et", "app", "s@c:r/et"),  # as typed: the host list starts after the last "@"
        ("app:p%3Fw", "app", "p?w"),
        ("app:", "app", ""),
        ("d%C3%A9v%40corp:pw", "d\u00e9v@corp", "pw"),
        ("app", "app", ""),
    ],
)
def test_user_and_password_forms(userinfo, user, password):
    dsn = parse_dsn(f"mysql://{userinfo}@[::1]:3307,db2/shop?read_timeout=5")
    kw = dsn.connect_kwargs(0)
    assert (kw["user"], kw["password"], kw["host"], kw["port"], kw["database"]) == (user, password, "::1", 3307, "shop")
    assert dsn.failover == (("db2", 3306),) and kw["read_timeout"] == 5.0
    if password:
        assert password not in str(dsn) and password not in repr(dsn)


def test_no_user_no_database_and_a_unix_socket():
    dsn = parse_dsn("mysql:///?unix_socket=/run/mysqld/mysql%40d.sock")
    kw = dsn.connect_kwargs()
    assert (kw["user"], kw["database"], kw["host"], kw["unix_socket"]) == (
        "root",
        None,
        "localhost",
        "/run/mysqld/mysql@d.sock",
    )
    assert parse_dsn("MySQL://db").hosts == (("db", 3306),)


@pytest.mark.parametrize("raw", ["mysql://app:s3cr3tpw@db:99999/x", "mysql://app:s3cr3tpw@[::1]:port/x"])
def test_a_bad_port_names_pool_dsn_and_hides_the_password(raw):
    with pytest.raises(ConfigError) as info:
        load_config(env={}, overrides={"pool.dsn": raw})
    message = str(info.value)
    assert "pool.dsn" in message and "s3cr3tpw" not in message and "app:***@" in message, message


# ---- TLS options (prefork.db.tls) ----


def test_without_tls_options_the_pool_speaks_plaintext_whatever_the_driver_release():
    kw = parse_dsn("mysql://u:pw@db/x").connect_kwargs()
    assert kw["ssl_disabled"] is True and "ssl" not in kw  # PyMySQL 1.2 alone would try unverified TLS


@pytest.mark.parametrize(
    "options, mode, verified, names_checked",
    [
        ("ssl_mode=required", "required", False, False),
        ("ssl_mode=REQUIRED", "required", False, False),  # MySQL's client spells them in capitals
        ("ssl_mode=verify_ca&ssl_ca={ca}", "verify_ca", True, False),
        ("ssl_mode=verify_identity&ssl_ca={ca}", "verify_identity", True, True),
        ("ssl_ca={ca}", "verify_identity", True, True),  # a CA and no mode: every check
        ("ssl_cert={client}&ssl_key={client_key}", "verify_identity", True, True),  # the system's CAs
        ("ssl_mode=required&ssl_cert={client}&ssl_key={client_key}", "required", False, False),
    ],
)
def test_tls_modes_make_the_context_they_say(pki, options, mode, verified, names_checked):
    dsn = parse_dsn("mysql://u:pw@db/x?" + options.format(ca=pki.ca, client=pki.client, client_key=pki.client_key))
    assert dsn.tls.mode == mode
    kw = dsn.connect_kwargs()
    context = kw["ssl"]
    assert isinstance(context, ssl.SSLContext) and "ssl_disabled" not in kw
    assert (context.verify_mode == ssl.CERT_REQUIRED, context.check_hostname) == (verified, names_checked)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_the_hosts_of_a_dsn_share_one_context_and_the_paths_show(pki):
    raw = f"mysql://u:pw@db1,db2:3307/x?ssl_mode=verify_ca&ssl_ca={pki.ca}"
    dsn = parse_dsn(raw)
    targets = dsn.targets()
    assert [t["host"] for t in targets] == ["db1", "db2"] and targets[0]["ssl"] is targets[1]["ssl"]
    assert str(dsn) == raw.replace(":pw@", ":***@").replace("db1,", "db1:3306,")
    assert parse_dsn(str(dsn).replace("***", "pw")) == dsn


def _encrypted_pair(directory: Path) -> tuple[Path, Path]:
    """A certificate and its password-protected key (OpenSSL would ask for the password on the terminal)."""
    key, cert = directory / "encrypted.key", directory / "encrypted.pem"
    if not cert.exists():
        for args in (
            ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-aes256", "-pass", "pass:pw"],
            ["req", "-x509", "-new", "-key", str(key), "-passin", "pass:pw", "-days", "1", "-subj", "/CN=x"],
        ):
            out = ["-out", str(key if args[0] == "genpkey" else cert)]
            subprocess.run(["openssl", *args, *out], check=True, capture_output=True, timeout=30)
    return cert, key


def _bad_tls_dsns(pki) -> list[tuple[str, list[str]]]:
    """(query, what the error must name) of each bad combination."""
    encrypted = _encrypted_pair(pki.dir)
    return [
        ("ssl_mode=preferred", ["ssl_mode='preferred'", "disabled, required, verify_ca, verify_identity"]),
        ("ssl_mode=on", ["ssl_mode='on'"]),
        ("ssl_ca=", ["ssl_ca is empty"]),
        (f"ssl_mode=disabled&ssl_ca={pki.ca}", [f"ssl_ca='{pki.ca}'", "ssl_mode='disabled'", "TLS is off"]),
        (f"ssl_mode=required&ssl_ca={pki.ca}", [f"ssl_ca='{pki.ca}'", "ssl_mode='required'", "verify_ca"]),
        (f"ssl_key={pki.client_key}", [f"ssl_key='{pki.client_key}'", "without ssl_cert"]),
        (f"ssl_ca={pki.dir}/absent.pem", [f"ssl_ca='{pki.dir}/absent.pem'", "No such file or directory"]),
        (f"ssl_ca={pki.dir}", [f"ssl_ca='{pki.dir}'", "cannot read it", "Is a directory"]),
        (f"ssl_ca={pki.dir}/ca.db/serial", ["ssl_ca=", "not a PEM CA certificate"]),
        (f"ssl_cert={pki.client}&ssl_key={pki.server_key}", [f"ssl_key='{pki.server_key}'", "key values mismatch"]),
        (f"ssl_cert={pki.client}", [f"ssl_cert='{pki.client}'", "without ssl_key the key must be in"]),  # no key in it
        (f"ssl_cert={encrypted[0]}&ssl_key={encrypted[1]}", [f"ssl_key='{encrypted[1]}'", "the key is encrypted"]),
    ]


def test_bad_tls_options_name_pool_dsn_the_option_and_its_value(pki):
    for options, named in _bad_tls_dsns(pki):
        raw = f"mysql://app:s3cr3tpw@db/x?{options}"
        with pytest.raises(DSNError):
            parse_dsn(raw)
        with pytest.raises(ConfigError) as info:
            load_config(env={}, overrides={"pool.dsn": raw})
        message = str(info.value)
        assert "pool.dsn" in message and "s3cr3tpw" not in message, message
        for part in named:
            assert part in message, (part, message)
