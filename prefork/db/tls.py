"""TLS from the pool to the database: the DSN's ``ssl_*`` options, checked, and the SSLContext they make.

Options (MySQL's own names, as the ``mysql`` client's ``--ssl-mode``, ``--ssl-ca``, ... spell them):

- ``ssl_mode``: ``disabled`` (plaintext), ``required`` (TLS, the server's certificate not checked),
  ``verify_ca`` (TLS, the certificate signed by ``ssl_ca``, or by the system's CAs without it) or
  ``verify_identity`` (as verify_ca, and the certificate names the host the DSN names: each host of a
  multi-host DSN is checked against its own name). Case does not matter.
- ``ssl_ca``: PEM file of the CA(s) to trust instead of the system's;
- ``ssl_cert`` and ``ssl_key``: PEM files of a client certificate and its key (the key may sit in the
  certificate's file; a key without a certificate is refused, as is an encrypted key: no password is
  asked for).

The default is ``disabled`` without any ``ssl_*`` file, ``verify_identity`` with one: naming a CA or a
client certificate turns TLS on with every check, unless ``ssl_mode`` says less. ``required`` with
``ssl_ca`` is refused (the CA would be read and never used), as is any file with ``disabled``. MySQL's
``preferred`` is left out on purpose: TLS an active attacker can strip is no guarantee, and PyMySQL 1.1 and
1.2 treat it differently; ask for ``required`` or better. TLS 1.2 is the oldest version offered.

The files are read when the DSN is parsed (a missing, unreadable or mismatched file is a configuration
error naming the option) and again when a pool is made: one context per pool, shared by its hosts and
connections, so that no connect re-reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DISABLED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY = "disabled", "required", "verify_ca", "verify_identity"
MODES = (DISABLED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY)
FILE_PARAMS = ("ssl_ca", "ssl_cert", "ssl_key")
PARAMS = ("ssl_mode", *FILE_PARAMS)


@dataclass(frozen=True)
class TlsOptions:
    """The TLS settings of a DSN (``mode`` one of MODES; file paths or None)."""

    mode: str = DISABLED
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether connections speak TLS."""
        return self.mode != DISABLED

    def connect_kwargs(self, context: Any = None) -> dict[str, Any]:
        """PyMySQL ``connect`` arguments: ``ssl`` (the context; a new one unless given) or ``ssl_disabled``
        (without it PyMySQL 1.2 tries unverified TLS on its own, 1.1 does not: prefork says which)."""
        if not self.enabled:
            return {"ssl_disabled": True}
        return {"ssl": context if context is not None else self.context()}

    def context(self) -> Any:
        """A new client SSLContext for these options (reads the files; OSError or ssl.SSLError when bad)."""
        import ssl  # looked up now: gevent's module once a worker has monkey-patched

        if self.mode in (VERIFY_CA, VERIFY_IDENTITY):
            context = ssl.create_default_context(cafile=self.ca)  # the system's CAs without ssl_ca
            context.check_hostname = self.mode == VERIFY_IDENTITY
            # As PyMySQL does for its own ssl_ca: Python 3.13's strict X.509 checks refuse the certificates
            # MySQL and MariaDB generate for themselves.
            context.verify_flags &= ~ssl.VERIFY_X509_STRICT
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert:
            context.load_cert_chain(self.cert, self.key, password=_encrypted_key)
        return context


def _encrypted_key() -> str:
    """The password callback of ``load_cert_chain``: without one, OpenSSL would ask for an encrypted key's
    password on the terminal, and a master or ``prefork check`` would wait there."""
    raise ValueError("the key is encrypted, and prefork takes no key password: give it an unencrypted key")


def tls_options(params: dict[str, str], read_files: bool = True) -> TlsOptions:
    """The TLS options among a DSN's query parameters; ValueError naming the option and its value when
    one is bad, options contradict each other, or (``read_files``) a file cannot be read or is no PEM."""
    files = {name: params.get(name) for name in FILE_PARAMS}
    for name, path in files.items():
        if path is not None and not path.strip():
            raise ValueError(f"{name} is empty (a PEM file's path)")
    ca, cert, key = files["ssl_ca"], files["ssl_cert"], files["ssl_key"]
    raw_mode = params.get("ssl_mode")
    if raw_mode is None:
        mode = VERIFY_IDENTITY if any(files.values()) else DISABLED
    else:
        mode = raw_mode.strip().lower()
        if mode not in MODES:
            raise ValueError(f"ssl_mode={raw_mode!r} is not one of {', '.join(MODES)}")
    given = [f"{name}={path!r}" for name, path in files.items() if path]
    if mode == DISABLED and given:
        raise ValueError(f"{', '.join(given)} with ssl_mode={raw_mode!r}: TLS is off, the file would not be used")
    if mode == REQUIRED and ca:
        raise ValueError(
            f"ssl_ca={ca!r} with ssl_mode={raw_mode!r}: required checks no certificate, so the CA would not be "
            "used; say ssl_mode=verify_ca or verify_identity"
        )
    if key and not cert:
        raise ValueError(f"ssl_key={key!r} without ssl_cert: a client key needs its certificate")
    options = TlsOptions(mode, ca, cert, key)
    if read_files and options.enabled:
        _check_files(options)
    return options


def _check_files(options: TlsOptions) -> None:
    """Read each file once, so that a bad one is a configuration error naming its option, rather than a
    connect error at every connect of every worker."""
    import ssl

    for name, path in (("ssl_ca", options.ca), ("ssl_cert", options.cert), ("ssl_key", options.key)):
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"{name}={path!r}: cannot read it ({exc.strerror or exc})") from None
    if options.ca:
        try:
            ssl.create_default_context(cafile=options.ca)
        except ssl.SSLError as exc:
            raise ValueError(f"ssl_ca={options.ca!r}: not a PEM CA certificate ({_reason(exc)})") from None
    if options.cert:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(options.cert, options.key, password=_encrypted_key)
        except (ssl.SSLError, ValueError) as exc:
            files = f"ssl_cert={options.cert!r}" + (f", ssl_key={options.key!r}" if options.key else "")
            if not isinstance(exc, ssl.SSLError):
                raise ValueError(f"{files}: {exc}") from None
            alone = "" if options.key else "; without ssl_key the key must be in the certificate's file"
            raise ValueError(f"{files}: not a certificate and its key ({_reason(exc)}){alone}") from None


def _reason(exc: BaseException) -> str:
    """OpenSSL's words (``[SSL: KEY_VALUES_MISMATCH] key values mismatch``) without the C file and line."""
    message = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    return message.split(" (_ssl.c")[0]
