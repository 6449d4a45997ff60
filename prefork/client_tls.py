"""TLS for ``prefork.client``: the context a client connects with, and what a failed handshake means.

A client with TLS verifies the server's certificate against ``tls_ca`` (PEM; default: the system's trust
store) and its name against ``server_name`` (default: the host connected to; an IP address is checked
against the certificate's IP SANs), offers ``tls_cert``/``tls_key`` when the server asks for a client
certificate, and speaks TLS 1.2 or later.

A failure that another attempt cannot mend (the certificate does not verify, the server refuses the client
certificate, no protocol version in common, a plaintext server) is ``fatal_tls_error``'s one line, naming the
server and the reason; anything else (a reset mid-handshake while the server restarts) is retried like a
refused TCP connection.
"""

from __future__ import annotations

import ssl

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

# OpenSSL's reasons for a handshake the server ended, in words (the rest are shown as OpenSSL names them).
_REFUSALS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate (tls_cert / --tls-cert)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused the client certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the server refused the client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the client certificate's CA",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server refused the client certificate: it has expired",
    "TLSV1_ALERT_ACCESS_DENIED": "the server refused the client certificate",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": (
        "the server refused the handshake (it may require a client certificate, or share no cipher)"
    ),
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common (this client speaks TLS 1.2 and later)",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common (this client speaks TLS 1.2 and later)",
    "WRONG_VERSION_NUMBER": "the server does not speak TLS here (a plaintext port?)",
}
# Verification results with a hint of the option that mends them (OpenSSL's X509_V_ERR_* numbers).
_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH = 62, 64
_UNTRUSTED = {18, 19, 20, 21}  # self-signed (in the chain), no local issuer, cannot verify the leaf


def client_context(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """A context that verifies servers against ``ca_file`` (None: the system's trust store) and offers
    ``cert_file``/``key_file`` (the key may be in ``cert_file``); ValueError naming the file that will not
    load."""
    if key_file is not None and cert_file is None:
        raise ValueError("tls_key / --tls-key: a client key without its certificate (tls_cert / --tls-cert)")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"tls_ca / --tls-ca: cannot load {ca_file}: {_reason(exc)}") from exc
    context.minimum_version = MINIMUM_VERSION
    # A TLS 1.2 renegotiation the server starts would make a write wait for a read; the client has no use
    # for one (TLS 1.3 has none).
    context.options |= ssl.OP_NO_RENEGOTIATION
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            pair = cert_file if key_file is None else f"{cert_file} and {key_file}"
            raise ValueError(
                f"tls_cert / --tls-cert: cannot load the client certificate {pair}: {_reason(exc)}"
            ) from exc
    return context


def fatal_tls_error(exc: OSError, where: str, server_name: str) -> str | None:
    """The one-line reason a connection to ``where`` (verified as ``server_name``) cannot succeed however
    often it is tried, or None when ``exc`` may pass (a reset, an EOF, a timeout)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        name = "" if server_name == where.rpartition(":")[0].strip("[]") else f" as {server_name}"
        hint = ""
        if exc.verify_code in (_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH):
            hint = " (give the name to verify: server_name / --tls-server-name)"
        elif exc.verify_code in _UNTRUSTED:
            hint = " (give the CA that signed it: tls_ca / --tls-ca)"
        return f"TLS: cannot verify the certificate of {where}{name}: {exc.verify_message}{hint}"
    if not isinstance(exc, ssl.SSLError) or isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return None
    reason = exc.reason or ""
    if reason in _REFUSALS:
        return f"TLS with {where} failed: {_REFUSALS[reason]} [{reason}]"
    if "ALERT" in reason:  # any other alert from the server: it will send it again
        return f"TLS with {where} failed: the server sent {reason}"
    return None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
