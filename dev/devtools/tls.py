"""A throwaway certificate authority for the dev broker's SASL_SSL listener, made on the spot.

``openssl`` (always installed where Java and Python are) writes, once, under ``<dir>``:

* ``ca.pem`` / ``ca.key``: a self-signed CA; clients trust ``ca.pem``
  (``STREAMREC_KAFKA_SSL_CA_FILE``);
* ``broker.p12``: the broker's key and certificate (SAN ``IP:127.0.0.1``, ``DNS:localhost``)
  signed by the CA, in a PKCS#12 keystore whose random password is ``keystore.password``;
* ``client.pem`` / ``client.key``: a client certificate signed by the CA, its key encrypted
  with the random ``client-key.password`` (for mutual TLS: ``STREAMREC_KAFKA_SSL_CERT_FILE``,
  ``_KEY_FILE``, ``_KEY_PASSWORD``).

Everything is made in a staging folder and renamed into place, so a half-made set never
counts; keys and passwords are readable by the owner only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from devtools.process import HOST, DevServiceError

DAYS = "825"
PASSWORD_FILES = ("keystore.password", "client-key.password")
CA_SUBJECT = "/CN=streamrec dev CA"
BROKER_EXTENSIONS = f"""\
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:{HOST}, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
CLIENT_EXTENSIONS = """\
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


class DevCertificates:
    """The CA, broker keystore and client certificate in ``directory``; ``ensure()`` makes them."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.ca_file = self.dir / "ca.pem"
        self.keystore = self.dir / "broker.p12"
        self.client_cert = self.dir / "client.pem"
        self.client_key = self.dir / "client.key"
        self._marker = self.dir / ".complete"

    def keystore_password(self) -> str:
        return (self.dir / "keystore.password").read_text().strip()

    @property
    def client_key_password_file(self) -> Path:
        return self.dir / "client-key.password"

    def client_key_password(self) -> str:
        return self.client_key_password_file.read_text().strip()

    def ensure(self) -> bool:
        """Make the set if it does not exist yet; True if it was made now."""
        if self._marker.exists():
            return False
        openssl = shutil.which("openssl")
        if openssl is None:
            raise DevServiceError("kafka: `openssl` is not installed; --secure needs it")
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)  # an interrupted earlier attempt
        staging = Path(tempfile.mkdtemp(prefix="tls-", dir=self.dir.parent))
        try:
            _make(openssl, staging)
            (staging / ".complete").write_text("openssl\n")
            with contextlib.suppress(OSError):  # a concurrent run may have won the race
                staging.rename(self.dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not self._marker.exists():
            raise DevServiceError(f"kafka: TLS files missing in {self.dir} after openssl ran")
        return True


def _make(openssl: str, d: Path) -> None:
    os.chmod(d, 0o700)
    for name in PASSWORD_FILES:
        (d / name).write_text(secrets.token_urlsafe(24) + "\n")
    (d / "broker.ext").write_text(BROKER_EXTENSIONS)
    (d / "client.ext").write_text(CLIENT_EXTENSIONS)
    serial = lambda: f"0x{secrets.token_hex(8)}"  # noqa: E731
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", DAYS, "-subj", CA_SUBJECT,
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key",
         "-out", "broker.csr", "-subj", f"/CN={HOST}"],
        ["x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-set_serial", serial(), "-days", DAYS, "-extfile", "broker.ext", "-out", "broker.pem"],
        ["pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem",
         "-name", "broker", "-out", "broker.p12", "-passout", "file:keystore.password"],
        ["req", "-new", "-newkey", "rsa:2048", "-keyout", "client.key",
         "-passout", "file:client-key.password", "-out", "client.csr",
         "-subj", "/CN=streamrec-dev-client"],
        ["x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-set_serial", serial(), "-days", DAYS, "-extfile", "client.ext", "-out", "client.pem"],
    ]  # fmt: skip
    for args in steps:
        done = subprocess.run(
            [openssl, *args], cwd=d, stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:]
            raise DevServiceError(f"kafka: openssl {args[0]} failed: {' '.join(tail)}")
    for leftover in ("broker.csr", "client.csr", "broker.key", "broker.ext", "client.ext"):
        (d / leftover).unlink()
    for private in ("ca.key", "client.key", "broker.p12", *PASSWORD_FILES):
        os.chmod(d / private, 0o600)
