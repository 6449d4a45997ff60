"""prefork.tls: the settings of each listener, the checks of certificate files (what the master, a reload and
`prefork check` run), and the one private ssl function it relies on."""

from __future__ import annotations

import ssl

import pytest

from prefork.config.errors import ConfigError
from prefork.config.loader import load_config
from prefork.tls import (
    EXPIRY_WARNING_DAYS,
    TlsSettings,
    cert_info,
    check_files,
    of_config,
    server_context,
    subject_text,
)
from tests.certs import Pki


def test_the_private_decoder_is_still_there(pki: Pki):
    """cert_info uses ssl._ssl._test_decode_cert: if a Python drops it, this says so."""
    decoded = ssl._ssl._test_decode_cert(str(pki.server))  # type: ignore[attr-defined]
    assert {"subject", "notAfter", "subjectAltName"} <= set(decoded)


def test_cert_info(pki: Pki):
    info = cert_info(str(pki.server_chain))  # the first certificate of a chain: the server's
    assert info.subject == "CN=localhost"
    assert 360 < info.days_left() < 366
    soon = cert_info(str(pki.soon))
    assert 4 < soon.days_left() < EXPIRY_WARNING_DAYS
    assert cert_info(str(pki.expired)).expires() == "2020-01-31 00:00:00 UTC"


def test_subject_text_is_rfc_4514():
    subject = ((("countryName", "FR"),), (("organizationName", "A, B"),), (("commonName", "x"), ("userId", "7")))
    assert subject_text(subject) == "CN=x+UID=7,O=A\\, B,C=FR"
    assert subject_text(((("commonName", "a\nb\tc "),),)) == "CN=a\\0Ab\\09c\\ "


def settings(pki: Pki, cert: str = "server", key: str = "server_key", **more: str) -> TlsSettings:
    return TlsSettings(cert=str(getattr(pki, cert)), key=str(getattr(pki, key)), **more)


def test_check_files_accepts_a_good_pair_and_mutual_tls(pki: Pki):
    assert check_files(settings(pki, client_ca=str(pki.ca))).subject == "CN=localhost"
    context = server_context(settings(pki, "server_chain", client_ca=str(pki.ca), min_version="1.3"))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.options & ssl.OP_NO_RENEGOTIATION and context.options & ssl.OP_NO_COMPRESSION


@pytest.mark.parametrize(
    "cert, key, more, expected",
    [
        ("expired", "expired_key", {}, "server.tls_cert: .*expired.pem expired on 2020-01-31"),
        ("server", "other_client_key", {}, "server.tls_key: .*other-client.key is not the key of the certificate"),
        ("server", "ca", {}, "server.tls_key: cannot load the certificate .* with the key .*ca.pem"),
        ("server", "server_key", {"client_ca": "/nonexistent/ca.pem"}, "server.tls_client_ca: cannot read"),
        ("server", "server_key", {"client_ca": "server_key"}, "server.tls_client_ca: cannot load"),
    ],
)
def test_check_files_names_the_key_and_the_reason(pki: Pki, cert, key, more, expected):
    more = {k: str(getattr(pki, v)) if not v.startswith("/") else v for k, v in more.items()}
    with pytest.raises(ConfigError, match=expected):
        check_files(settings(pki, cert, key, **more))


def test_per_listener_values():
    cfg = load_config(
        env={},
        overrides={
            "server.bind": "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3",
            "server.tls_cert": "/a.pem,,/c.pem",
            "server.tls_key": "/a.key,,",
            "server.tls_client_ca": ",,/ca.pem",
            "server.tls_client_names": ",,one  two",
            "server.tls_min_version": "1.3",
        },
    )
    a, plain, c = of_config(cfg)
    assert plain is None
    assert (a.cert, a.key, a.client_ca, a.min_version, a.client_names) == ("/a.pem", "/a.key", "", "1.3", ())
    assert (c.key, c.client_ca, c.client_names) == ("/c.pem", "/ca.pem", ("one", "two"))  # the key in the cert file


def test_a_client_hello_is_told_from_lines():
    """A plaintext listener closes a connection whose first read is a ClientHello, and serves any line."""
    from prefork.protocol.tlsaccept import looks_like_tls

    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    assert looks_like_tls(hello) and looks_like_tls(hello[:6])
    for line in [b"\x16\x03\n", b"\x16\x03\x01\x00\x05x\n", b"\x16\x03\x09\x00\x05\x01\n", b"hello\n", b""]:
        assert not looks_like_tls(line), line
