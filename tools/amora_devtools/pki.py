"""A development PKI: CA, localhost server certificate, device certificates, CRL.

FOR DEVELOPMENT AND TESTS ONLY. Production keys and certificates never come from
this module: its CA key sits unencrypted in a plain directory, and anyone who can
read that directory can mint device identities. Production devices get their
certificates from the Amora device CA (see infra/mosquitto/README.md).

Layout of a PKI directory::

    ca.pem ca.key            the CA (ECDSA P-256, self-signed)
    server.pem server.key    for localhost, 127.0.0.1 and ::1 (serverAuth)
    crl.pem                  the CRL, rewritten (atomically) by `DevPKI.revoke`
    revoked.json             revoked serials, the CRL's source of truth
    clients/                 issued client certificates, ``{cn}-{serial:x}.pem/.key``
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from amora_devtools._errors import PkiError
from amora_devtools._files import private_dir

if TYPE_CHECKING:
    import ssl

__all__ = ["ClientCert", "DevPKI", "device_key_and_csr"]

_CA_DAYS: Final = 3650
_LEAF_DAYS: Final = 365
_CRL_DAYS: Final = 365
# Certificates are backdated a little so a peer whose clock lags still accepts them.
_BACKDATE: Final = dt.timedelta(minutes=5)
_PRIVATE: Final = 0o600


@dataclass(frozen=True, slots=True)
class ClientCert:
    """A client certificate issued by the development CA.

    Attributes:
        common_name: The CN (for a device: its device id, which becomes its MQTT username
            and client id on the device listener).
        cert_file: PEM certificate.
        key_file: PEM private key (unencrypted, mode 0600).
        serial: Serial number, for `DevPKI.revoke`.
    """

    common_name: str
    cert_file: Path
    key_file: Path
    serial: int


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write atomically (a reader such as mosquitto never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    # O_EXCL: a stale temporary file would keep its own (maybe wider) mode while filled.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.chmod(mode)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amora development (not for production)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class DevPKI:
    """A development certificate authority kept in one directory.

    Create one with `DevPKI.create`, reopen it with `DevPKI.load`. Issuing and revoking
    are thread-safe within one process.
    """

    def __init__(self, directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate) -> None:
        """Wrap an existing CA (use `create` or `load`)."""
        self.directory = directory
        self._ca_key = ca_key
        self._ca_cert = ca_cert
        self._lock = threading.Lock()

    # -- files ---------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM): what clients and brokers trust."""
        return self.directory / "ca.pem"

    @property
    def server_cert_file(self) -> Path:
        """The broker's certificate for localhost / 127.0.0.1 / ::1 (PEM)."""
        return self.directory / "server.pem"

    @property
    def server_key_file(self) -> Path:
        """The broker's private key (PEM, mode 0600)."""
        return self.directory / "server.key"

    @property
    def ca_key_file(self) -> Path:
        """The CA's private key (PEM, unencrypted: development only), for services that sign CSRs."""
        return self.directory / "ca.key"

    @property
    def crl_file(self) -> Path:
        """The certificate revocation list (PEM), rewritten by `revoke`."""
        return self.directory / "crl.pem"

    @property
    def _revoked_file(self) -> Path:
        return self.directory / "revoked.json"

    # -- construction --------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path | str, *, common_name: str = "Amora Dev CA") -> Self:
        """Make a new CA, server certificate and empty CRL in ``directory``.

        Args:
            directory: Created if missing; existing PKI files in it are replaced.
            common_name: The CA's CN.
        """
        directory = Path(directory)
        # The CA key and client keys live here: no one else may even list them.
        private_dir(directory / "clients")
        private_dir(directory)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(directory / "ca.key", _key_pem(ca_key), mode=_PRIVATE)
        _write(directory / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM))
        pki = cls(directory, ca_key, ca_cert)
        server_key = ec.generate_private_key(ec.SECP256R1())
        san = x509.SubjectAlternativeName(
            [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]
        )
        server_cert = pki._leaf("localhost", server_key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH, san)
        _write(pki.server_key_file, _key_pem(server_key), mode=_PRIVATE)
        _write(pki.server_cert_file, server_cert.public_bytes(serialization.Encoding.PEM))
        _write(pki._revoked_file, b"[]")
        pki._write_crl([])
        return pki

    @classmethod
    def load(cls, directory: Path | str) -> Self:
        """Reopen a PKI made by `create`.

        Raises:
            PkiError: A file is missing or unreadable.
        """
        directory = Path(directory)
        try:
            ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
            ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        except (OSError, ValueError) as exc:
            raise PkiError(f"no usable development PKI in {directory}: {exc}") from exc
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{directory / 'ca.key'} is not an EC key")
        return cls(directory, ca_key, ca_cert)

    # -- issuing -------------------------------------------------------------------------

    def _leaf(
        self,
        common_name: str,
        public_key: ec.EllipticCurvePublicKey,
        usage: x509.ObjectIdentifier,
        san: x509.SubjectAlternativeName | None = None,
    ) -> x509.Certificate:
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=_LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(self._ca_key, hashes.SHA256())

    def issue_client_cert(self, common_name: str) -> ClientCert:
        """Issue a client certificate (clientAuth) with a fresh key.

        Args:
            common_name: For a device, its device id: the device listener uses the CN as
                the MQTT username and client id.

        Returns:
            The files and serial of the new certificate.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._leaf(common_name, key.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH)
        base = self.directory / "clients" / f"{common_name}-{cert.serial_number:x}"
        cert_file, key_file = base.with_suffix(".pem"), base.with_suffix(".key")
        _write(key_file, _key_pem(key), mode=_PRIVATE)
        _write(cert_file, cert.public_bytes(serialization.Encoding.PEM))
        return ClientCert(common_name, cert_file, key_file, cert.serial_number)

    def sign_csr(self, csr_pem: bytes, *, common_name: str | None = None) -> bytes:
        """Sign a PEM certificate signing request as a client certificate.

        Args:
            csr_pem: The CSR; its signature must verify (proof the requester holds the key).
            common_name: CN to put in the certificate instead of the CSR's own.

        Returns:
            The PEM certificate.

        Raises:
            PkiError: The CSR is malformed, wrongly signed, has no CN (and none was given),
                or is not for an EC P-256 key.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise PkiError(f"malformed CSR: {exc}") from exc
        if not csr.is_signature_valid:
            raise PkiError("CSR signature does not verify")
        if common_name is None:
            names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if not names:
                raise PkiError("CSR has no common name and none was given")
            common_name = str(names[0].value)
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise PkiError("only EC P-256 keys are accepted by the development CA")
        cert = self._leaf(common_name, public_key, ExtendedKeyUsageOID.CLIENT_AUTH)
        return cert.public_bytes(serialization.Encoding.PEM)

    # -- revocation ----------------------------------------------------------------------

    def revoked_serials(self) -> tuple[int, ...]:
        """Serials revoked so far."""
        try:
            return tuple(int(s) for s in json.loads(self._revoked_file.read_text()))
        except (OSError, ValueError) as exc:
            raise PkiError(f"cannot read {self._revoked_file}: {exc}") from exc

    def revoke(self, serial: int) -> None:
        """Revoke a certificate by serial and rewrite `crl_file` (atomically).

        A broker reads the new CRL for new TLS handshakes after it is reloaded
        (`BrokerProcess.reload`); a client already connected stays connected until it is
        disconnected (e.g. by deleting its dynsec client).
        """
        with self._lock:
            serials = list(self.revoked_serials())
            if serial not in serials:
                serials.append(serial)
            _write(self._revoked_file, json.dumps(serials).encode())
            self._write_crl(serials)

    def _write_crl(self, serials: list[int]) -> None:
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._ca_cert.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + dt.timedelta(days=_CRL_DAYS))
        )
        for serial in serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - _BACKDATE).build()
            )
        crl = builder.sign(self._ca_key, hashes.SHA256())
        _write(self.crl_file, crl.public_bytes(serialization.Encoding.PEM))

    # -- helpers for clients -------------------------------------------------------------

    def client_context(self, cert: ClientCert | None = None) -> ssl.SSLContext:
        """A TLS 1.2+ client context trusting this CA, optionally with a client certificate."""
        from amora_devtools._mqtt import client_ssl_context  # noqa: PLC0415 - keeps pki light

        if cert is None:
            return client_ssl_context(self.ca_file)
        return client_ssl_context(self.ca_file, cert_file=cert.cert_file, key_file=cert.key_file)

    def verify(self, cert_pem: bytes) -> x509.Certificate:
        """Check that ``cert_pem`` was issued by this CA; return it.

        Raises:
            PkiError: Not a certificate, or not signed by this CA.
        """
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            cert.verify_directly_issued_by(self._ca_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise PkiError(f"not issued by this development CA: {exc}") from exc
        return cert


def device_key_and_csr(device_id: str) -> tuple[bytes, bytes]:
    """A new EC P-256 device key and a CSR with CN = ``device_id``, both PEM.

    What a player sends when it is registered (``POST /v1/admin/devices``, field ``csr``);
    the authz service answers with the certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(device_id)).sign(key, hashes.SHA256())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)
