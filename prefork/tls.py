"""TLS on the listeners (``server.tls_*``): the settings of each listener, the server context built from them,
and the checks of the certificate files that the master, ``prefork check`` and a reload run.

Each ``server.tls_*`` key has one value for all listeners or one per ``server.bind`` address, comma separated;
a listener whose ``server.tls_cert`` is empty is plaintext. Its key is ``server.tls_key``, or, when that is
empty, the certificate file itself (one PEM holding the chain and the key, as HAProxy takes it). A
``server.tls_client_ca`` requires a client certificate signed by it (mutual TLS); ``server.tls_client_names``
further keeps to the listed subjects (the certificate's CN or one of its DNS names).

The master (stdlib ``ssl``, no gevent) checks the files at start, at each SIGHUP and in ``prefork check``:
readable, a certificate and a key that match, not expired (an expired certificate refuses the start or the
reload), with a warning when it expires within ``EXPIRY_WARNING_DAYS``. The worker builds its contexts with
``server_context`` before it drops privileges, so a root-only key works (the same call, in a patched process,
makes gevent's context). Nothing here touches a socket.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass, replace
from typing import Any

from prefork.config.errors import ConfigError

log = logging.getLogger("prefork.tls")

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
EXPIRY_WARNING_DAYS = 14
# Per-listener keys that mean nothing on a plaintext listener: set without server.tls_cert they are a mistake.
NEEDS_CERT = ("server.tls_key", "server.tls_client_ca", "server.tls_client_names")


@dataclass(frozen=True)
class TlsSettings:
    """The TLS settings of one listener (its server.tls_* values)."""

    cert: str
    key: str  # the certificate file when server.tls_key is empty
    client_ca: str = ""  # set: a client certificate signed by it is required
    min_version: str = "1.2"
    ciphers: str = ""  # an OpenSSL cipher string; empty: OpenSSL's defaults
    client_names: tuple[str, ...] = ()  # allowed client CNs / DNS names; empty: any the CA signed


@dataclass(frozen=True)
class CertInfo:
    """What the checks found of a listener's certificate."""

    path: str
    subject: str
    not_after: float  # seconds since the epoch

    def days_left(self, now: float | None = None) -> float:
        """Days until it expires (negative once expired)."""
        return (self.not_after - (time.time() if now is None else now)) / 86400

    def expires(self) -> str:
        """The expiry date, UTC, as ``2027-12-06 16:14:18 UTC``."""
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.not_after))


def check_ciphers(text: str) -> str:
    """``server.tls_ciphers``: a cipher string OpenSSL takes (ValueError otherwise), or empty."""
    text = text.strip()
    if text:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(text)
        except ssl.SSLError:
            raise ValueError(f"OpenSSL takes no cipher of {text!r}") from None
    return text


def listener_settings(values: dict[str, tuple[Any, ...]], count: int) -> tuple[TlsSettings | None, ...]:
    """The TLS settings of each of ``count`` listeners (server.bind's order) from the per-listener values of
    the ``server.tls_*`` keys (``{"server.tls_cert": (...), ...}``, one value each or one per listener);
    None for a plaintext listener. ConfigError for a key that needs a certificate set without one."""
    result: list[TlsSettings | None] = []
    for i in range(count):

        def at(name: str, i: int = i) -> Any:
            given = values[name]
            return given[i if len(given) > 1 else 0]

        cert = at("server.tls_cert")
        if not cert:
            for name in NEEDS_CERT:
                if at(name):
                    raise ConfigError(f"{name}: {at(name)!r} is set for a listener without server.tls_cert", name)
            result.append(None)
            continue
        names = tuple(at("server.tls_client_names").split())
        if names and not at("server.tls_client_ca"):
            raise ConfigError(
                "server.tls_client_names: allowed client names need server.tls_client_ca (mutual TLS)",
                "server.tls_client_names",
            )
        result.append(
            TlsSettings(
                cert=cert,
                key=at("server.tls_key") or cert,
                client_ca=at("server.tls_client_ca"),
                min_version=at("server.tls_min_version"),
                ciphers=at("server.tls_ciphers"),
                client_names=names,
            )
        )
    return tuple(result)


def of_config(cfg: Any) -> tuple[TlsSettings | None, ...]:
    """The TLS settings of each server.bind address of a Config (prefork.config.loader.Config)."""
    s = cfg.server
    values = {
        "server.tls_cert": s.tls_cert,
        "server.tls_key": s.tls_key,
        "server.tls_client_ca": s.tls_client_ca,
        "server.tls_min_version": s.tls_min_version,
        "server.tls_ciphers": s.tls_ciphers,
        "server.tls_client_names": s.tls_client_names,
    }
    return listener_settings(values, len(s.bind))


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """The server context of a listener. ``ssl.SSLContext`` is looked up at call time: in a worker, patched
    by gevent, it is gevent's, whose sockets wait cooperatively."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[settings.min_version]
    # Renegotiation is a client's way to make the server redo the costly part at will; compression leaks
    # secrets (CRIME). Neither is of use to a line protocol.
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    if settings.ciphers:
        ctx.set_ciphers(settings.ciphers)
    ctx.load_cert_chain(settings.cert, settings.key, password=_no_password)
    if settings.client_ca:
        ctx.load_verify_locations(cafile=settings.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _no_password() -> bytes:
    # A key with a passphrase would make OpenSSL ask for it on the terminal: refuse it instead.
    return b""


def check_files(settings: TlsSettings, now: float | None = None) -> CertInfo:
    """Check a listener's files as the workers will load them; ConfigError naming the key, the file and
    the reason for one unreadable, not PEM, not matching its key or expired."""
    for name, path in (("server.tls_cert", settings.cert), ("server.tls_key", settings.key)):
        _readable(name, path)
    if settings.client_ca:
        _readable("server.tls_client_ca", settings.client_ca)
    info = cert_info(settings.cert)
    if info.days_left(now) < 0:
        raise ConfigError(f"server.tls_cert: {settings.cert} expired on {info.expires()}", "server.tls_cert")
    try:
        server_context(replace(settings, client_ca=""))
    except ssl.SSLError as exc:
        raise _load_error(settings, exc) from None
    if settings.client_ca:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=settings.client_ca)
        except ssl.SSLError as exc:
            why = f"cannot load {settings.client_ca} (PEM CA certificates): {exc.reason or exc}"
            raise ConfigError(f"server.tls_client_ca: {why}", "server.tls_client_ca") from None
    return info


def _readable(name: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror or exc}", name) from None


def _load_error(settings: TlsSettings, exc: ssl.SSLError) -> ConfigError:
    reason = exc.reason or str(exc)
    if reason == "KEY_VALUES_MISMATCH":
        name = "server.tls_key"
        message = f"{settings.key} is not the key of the certificate {settings.cert}"
    else:
        name = "server.tls_key" if settings.key != settings.cert else "server.tls_cert"
        message = f"cannot load the certificate {settings.cert} with the key {settings.key}: {reason}"
    return ConfigError(f"{name}: {message}", name)


def cert_info(path: str) -> CertInfo:
    """The subject and expiry of the first certificate of a PEM file; ConfigError if there is none.

    The stdlib decodes a certificate only through ``ssl._ssl._test_decode_cert`` (private, but there since
    Python 3.0; tests/test_tls_files.py fails loudly if it goes)."""
    try:
        decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"server.tls_cert: {path} holds no PEM certificate ({exc})", "server.tls_cert") from None
    return CertInfo(path, subject_text(decoded.get("subject", ())), ssl.cert_time_to_seconds(decoded["notAfter"]))


_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "domainComponent": "DC",
    "userId": "UID",
}


def subject_text(subject: Any) -> str:
    """A subject as ``ssl`` decodes it (RDNs of (name, value) pairs), written as RFC 4514 does: the most
    specific RDN first, ``CN=client1,O=Example``."""
    parts = []
    for rdn in reversed(subject):
        parts.append("+".join(f"{_SHORT.get(name, name)}={_escaped(value)}" for name, value in rdn))
    return ",".join(parts)


def _escaped(value: str) -> str:
    out = "".join(map(_escaped_char, value))
    if out.startswith(("#", " ")):
        out = "\\" + out
    return out[:-1] + "\\ " if out.endswith(" ") else out


def _escaped_char(c: str) -> str:
    if c in ',+"\\<>;=':
        return "\\" + c
    if c < " " or c == "\x7f":  # as a hex pair: a subject never holds a line break or a tab (it may be stored)
        return f"\\{ord(c):02X}"
    return c


def common_name(subject: Any) -> str:
    """The (last) CN of a decoded subject, or empty."""
    found = ""
    for rdn in subject:
        for name, value in rdn:
            if name == "commonName":
                found = value
    return found


def check_config(cfg: Any) -> list[tuple[str, CertInfo]]:
    """Check the files of every TLS listener of a Config: (its server.bind address, what its certificate
    says) each; ConfigError for the first bad one. Expiring soon is each caller's to say."""
    found = []
    for address, settings in zip(cfg.server.bind, of_config(cfg), strict=True):
        if settings is not None:
            found.append((str(address), check_files(settings)))
    return found


def warn_expiring(found: list[tuple[str, CertInfo]]) -> None:
    """Log a warning for each listener whose certificate expires within EXPIRY_WARNING_DAYS."""
    for address, info in found:
        if info.days_left() < EXPIRY_WARNING_DAYS:
            log.warning(
                "TLS certificate of %s (%s, %s) expires in %.1f days, on %s",
                address, info.path, info.subject, info.days_left(), info.expires(),
            )  # fmt: skip
