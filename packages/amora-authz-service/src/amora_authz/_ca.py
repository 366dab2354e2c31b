"""The device CA: answers a device's CSR with a client certificate, and writes the CRL.

The certificate's subject is set here (``CN = device id``) whatever the CSR asked for:
the broker's device listener uses the CN as username and client id, so a device
must not be able to choose it. The CRL lists every revoked certificate from the
database and is rewritten whole; brokers pick it up on reload (SIGHUP).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from amora_authz._errors import ConfigError, InvalidInputError
from amora_authz._keyfiles import read_private

if TYPE_CHECKING:
    from collections.abc import Iterable

    from amora_authz._store import Certificate

__all__ = ["DeviceCA", "IssuedCertificate"]

_CA_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)


class IssuedCertificate:
    """A certificate just issued to a device."""

    __slots__ = ("not_after_ms", "pem", "serial")

    def __init__(self, *, pem: bytes, serial: int, not_after_ms: int) -> None:
        """Hold the PEM, serial and expiry."""
        self.pem = pem
        self.serial = serial
        self.not_after_ms = not_after_ms


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


class DeviceCA:
    """Signs device client certificates and the device CRL with the device CA key."""

    def __init__(
        self,
        cert: x509.Certificate,
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
        *,
        crl_file: Path | None,
        validity_days: int = 365,
    ) -> None:
        """Create the CA from a loaded certificate and key.

        Args:
            cert: the CA certificate.
            key: its private key.
            crl_file: where to write the CRL (None: do not write one).
            validity_days: lifetime of issued device certificates.
        """
        self.cert = cert
        self._key = key
        self.crl_file = crl_file
        self.validity_days = validity_days

    @classmethod
    def load(cls, cert_file: Path, key_file: Path, *, crl_file: Path | None, validity_days: int = 365) -> DeviceCA:
        """Load the CA certificate and key from PEM files.

        Raises:
            ConfigError: a file is missing or does not hold a usable CA.
        """
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            key = serialization.load_pem_private_key(read_private(key_file, "device CA key"), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the device CA: {exc}") from exc
        if not isinstance(key, _CA_KEY_TYPES):
            raise ConfigError("the device CA key must be RSA, EC or Ed25519")
        return cls(cert, key, crl_file=crl_file, validity_days=validity_days)

    def _hash(self) -> hashes.SHA256 | None:
        return None if isinstance(self._key, ed25519.Ed25519PrivateKey) else hashes.SHA256()

    def sign_csr(self, csr_pem: bytes, *, device_id: str, now: dt.datetime) -> IssuedCertificate:
        """Issue a client certificate for ``device_id`` from a CSR.

        Raises:
            InvalidInputError: the CSR is not PEM, its signature is wrong, or its key is
                of a type the broker cannot use.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise InvalidInputError(f"the CSR is not valid PEM: {exc}", code="invalid_csr") from exc
        if not csr.is_signature_valid:
            raise InvalidInputError("the CSR signature does not verify", code="invalid_csr")
        public_key = csr.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise InvalidInputError("the CSR key must be RSA or EC", code="invalid_csr")
        if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < 2048:
            raise InvalidInputError("RSA keys must have at least 2048 bits", code="invalid_csr")
        serial = int.from_bytes(secrets.token_bytes(16), "big") >> 1
        not_before = now - dt.timedelta(minutes=5)
        not_after = now + dt.timedelta(days=self.validity_days)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, self._hash())
        )
        return IssuedCertificate(
            pem=cert.public_bytes(serialization.Encoding.PEM),
            serial=serial,
            not_after_ms=_ms(not_after),
        )

    def build_crl(self, revoked: Iterable[Certificate], *, now: dt.datetime) -> bytes:
        """Return a PEM CRL listing ``revoked``."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=7))
        )
        for cert in revoked:
            at = dt.datetime.fromtimestamp((cert.revoked_at_ms or 0) / 1000, tz=dt.UTC)
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial).revocation_date(at).build()
            )
        crl = builder.sign(self._key, self._hash())
        return crl.public_bytes(serialization.Encoding.PEM)

    def write_crl(self, revoked: Iterable[Certificate], *, now: dt.datetime) -> bytes:
        """Build the CRL and replace ``crl_file`` atomically (when configured).

        Returns:
            The PEM written.
        """
        pem = self.build_crl(revoked, now=now)
        if self.crl_file is not None:
            folder = self.crl_file.parent
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".crl-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(pem)
                # The broker runs as another user and only needs to read it.
                Path(tmp).chmod(0o644)
                Path(tmp).replace(self.crl_file)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return pem
