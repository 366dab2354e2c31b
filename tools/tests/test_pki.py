from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from amora_devtools import DevPKI, PkiError

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return DevPKI.create(tmp_path_factory.mktemp("pki"))


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_server_certificate_names_localhost_and_loopback(pki):
    cert = _cert(pki.server_cert_file)
    cert.verify_directly_issued_by(_cert(pki.ca_file))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_private_keys_are_private(pki):
    assert pki.server_key_file.stat().st_mode & 0o077 == 0
    assert (pki.directory / "ca.key").stat().st_mode & 0o077 == 0


def test_client_certificate_carries_the_device_id_as_cn(pki):
    issued = pki.issue_client_cert("player-7")
    cert = _cert(issued.cert_file)
    cert.verify_directly_issued_by(_cert(pki.ca_file))
    assert _cn(cert) == "player-7"
    assert cert.serial_number == issued.serial
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    key = serialization.load_pem_private_key(issued.key_file.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == cert.public_key()
    assert issued.key_file.stat().st_mode & 0o077 == 0


def test_revoke_puts_the_serial_in_a_signed_crl(pki):
    issued = pki.issue_client_cert("player-8")
    other = pki.issue_client_cert("player-9")
    pki.revoke(issued.serial)
    pki.revoke(issued.serial)  # idempotent
    crl = x509.load_pem_x509_crl(pki.crl_file.read_bytes())
    ca_key = _cert(pki.ca_file).public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(ca_key)
    assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(other.serial) is None
    assert pki.revoked_serials().count(issued.serial) == 1


def test_load_reopens_the_same_ca(pki):
    again = DevPKI.load(pki.directory)
    issued = again.issue_client_cert("player-10")
    _cert(issued.cert_file).verify_directly_issued_by(_cert(pki.ca_file))
    assert pki.verify(issued.cert_file.read_bytes()).serial_number == issued.serial


def test_load_of_a_directory_without_pki_fails_clearly(tmp_path):
    with pytest.raises(PkiError, match="no usable development PKI"):
        DevPKI.load(tmp_path)


def _csr(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM)


def test_sign_csr_keeps_the_requesters_key(pki):
    key, csr = _csr("player-11")
    cert = x509.load_pem_x509_certificate(pki.sign_csr(csr))
    assert _cn(cert) == "player-11"
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(_cert(pki.ca_file))


def test_sign_csr_can_override_the_common_name(pki):
    _, csr = _csr("whatever")
    cert = x509.load_pem_x509_certificate(pki.sign_csr(csr, common_name="player-12"))
    assert _cn(cert) == "player-12"


def test_sign_csr_refuses_garbage_and_unsupported_keys(pki):
    with pytest.raises(PkiError, match="malformed"):
        pki.sign_csr(b"not a csr")
    ed_key = ed25519.Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p")]))
        .sign(ed_key, None)
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(PkiError, match="EC P-256"):
        pki.sign_csr(csr)


def test_verify_rejects_a_certificate_from_another_ca(pki, tmp_path):
    stranger = DevPKI.create(tmp_path / "other").issue_client_cert("player-1")
    with pytest.raises(PkiError):
        pki.verify(stranger.cert_file.read_bytes())
