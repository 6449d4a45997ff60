"""Real certificates for the TLS tests, made with the ``openssl`` command line as an operator would.

``make_pki(directory)`` writes, under ``directory``:

- ``ca.pem`` / ``ca.key``: the test CA; ``other-ca.pem``: a second CA nobody trusts.
- ``server.pem`` / ``server.key``: signed by the CA for ``localhost``, ``127.0.0.1`` and ``::1`` (and any
  extra names given: ``DNS:name``, ``IP:address`` or a bare DNS name), valid for a year;
  ``server-chain.pem`` is the same certificate followed by the CA's.
- ``client.pem`` / ``client.key``: a client certificate (CN ``client1``, SAN ``DNS:client1.example``).
- ``other-client.pem`` / ``other-client.key``: a client certificate signed by the other CA.
- ``expired.pem`` / ``expired.key``: signed by the CA for the server's names, valid only in January 2020.
- ``soon.pem`` / ``soon.key``: signed by the CA, expiring in 5 days.

Keys are EC P-256: quick to make, accepted by every client used here. A missing ``openssl`` fails loudly
with the package to install.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pki:
    """Paths of what ``make_pki`` wrote."""

    dir: Path

    def __getattr__(self, name: str) -> Path:
        # pki.ca, pki.server_key, pki.other_client ... -> dir/"ca.pem", dir/"server.key", dir/"other-client.pem"
        stem, _, kind = name.rpartition("_") if name.endswith("_key") else (name, "", "pem")
        return self.dir / f"{stem.replace('_', '-')}.{'key' if kind == 'key' else 'pem'}"


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is missing; install it with: sudo apt-get install openssl", pytrace=False)
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr.strip()}")


def _key(directory: Path, name: str) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key", cwd=directory)


def _ca(directory: Path, name: str, subject: str) -> None:
    _key(directory, name)
    _openssl(
        "req", "-x509", "-new", "-key", f"{name}.key", "-out", f"{name}.pem", "-days", "3650", "-subj", subject,
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip


def _signed(directory: Path, name: str, ca: str, subject: str, sans: str, usage: str, dates: tuple[str, str]) -> None:
    """A certificate for ``name`` signed by ``ca`` through ``openssl ca``, which alone among the 3.0 tools takes
    explicit start and end dates (an expired certificate needs them)."""
    _key(directory, name)
    _openssl("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=directory)
    (directory / f"{name}.ext").write_text(
        f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
        f"subjectAltName={sans}\n"
    )
    db = directory / f"{ca}.db"
    if not db.exists():
        db.mkdir()
        (db / "index.txt").write_text("")
        (db / "serial").write_text("1000\n")
    (directory / f"{ca}.cnf").write_text(
        "[ca]\ndefault_ca = here\n[here]\n"
        f"database = {db}/index.txt\nserial = {db}/serial\nnew_certs_dir = {db}\n"
        "default_md = sha256\npolicy = anything\nunique_subject = no\ncopy_extensions = none\n"
        "[anything]\ncommonName = supplied\n"
    )
    _openssl(
        "ca", "-batch", "-config", f"{ca}.cnf", "-cert", f"{ca}.pem", "-keyfile", f"{ca}.key", "-in", f"{name}.csr",
        "-out", f"{name}.pem", "-notext", "-extfile", f"{name}.ext", "-startdate", dates[0], "-enddate", dates[1],
        cwd=directory,
    )  # fmt: skip


def _date(days_from_now: int) -> str:
    import datetime

    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days_from_now)
    return moment.strftime("%Y%m%d%H%M%SZ")


def make_pki(directory: Path, server_names: tuple[str, ...] = ()) -> Pki:
    """Write the test CA, server and client certificates under ``directory`` (see the module's docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    _ca(directory, "ca", "/CN=prefork test CA")
    _ca(directory, "other-ca", "/CN=someone else's CA")
    extra = (n if n.startswith(("DNS:", "IP:")) else f"DNS:{n}" for n in server_names)
    names = ["DNS:localhost", "IP:127.0.0.1", "IP:::1", *extra]
    server_sans = ",".join(names)
    year = (_date(-1), _date(365))
    _signed(directory, "server", "ca", "/CN=localhost", server_sans, "serverAuth", year)
    _signed(directory, "client", "ca", "/CN=client1", "DNS:client1.example", "clientAuth", year)
    _signed(directory, "other-client", "other-ca", "/CN=intruder", "DNS:intruder.example", "clientAuth", year)
    january_2020 = ("20200101000000Z", "20200131000000Z")
    _signed(directory, "expired", "ca", "/CN=localhost", server_sans, "serverAuth", january_2020)
    _signed(directory, "soon", "ca", "/CN=localhost", server_sans, "serverAuth", (_date(-1), _date(5)))
    chain = (directory / "server.pem").read_text() + (directory / "ca.pem").read_text()
    (directory / "server-chain.pem").write_text(chain)
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return Pki(directory)
