"""``amora-agent keygen`` and ``amora-agent enrol``: a player's keys, CSR and certificate.

``keygen`` makes what the configuration names (``keys.signing_key_file``,
``keys.encryption_key_file``, ``tls.key_file``) where it is missing, and a CSR for
``device_id`` next to the TLS key (``<key_file>.csr``). Private files are created with mode
0600 from the first byte (``O_CREAT | O_EXCL`` with the mode, never written then chmod-ed),
in directories created 0700; existing keys are kept, so both commands can be run again.

``enrol --claim`` then posts the public keys and the CSR with a one-time claim from the
admin to the authz service (``POST /v1/enrol``) and writes the certificate it answers with
to ``tls.cert_file``: the player is registered and can ``run``.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from amora_agent._errors import AgentError, ConfigError
from amora_protocol import EncryptionKey, SigningKey

if TYPE_CHECKING:
    from amora_agent._config import AgentConfig

__all__ = ["EnrolmentError", "Identity", "enrol", "keygen"]

_TIMEOUT_S: Final = 30.0


class EnrolmentError(AgentError):
    """The authz service refused the enrolment, or could not be reached.

    Attributes:
        status: the HTTP status (None when there was no answer).
        code: the service's error code (``claim_used``, ``claim_expired``...), if any.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        """Create the error."""
        super().__init__(message)
        self.status = status
        self.code = code


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """A player's public identity: the body of the admin API's device registration."""

    device_id: str
    signing_key: str
    encryption_key: str
    csr: str


def _private_dir(path: Path) -> None:
    """Create ``path`` (and parents) 0700 if missing; an existing directory is left as it is."""
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True)


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``; never replaces an existing file."""
    _private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _read_or_make(path: Path, make: bytes) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        _write_private(path, make)
        return make
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def keygen(config: AgentConfig) -> Identity:
    """Make the keys and CSR the configuration names, keeping those that exist.

    Returns:
        The identity to register (public keys as base64 of raw bytes, CSR as PEM).

    Raises:
        ConfigError: no ``keys.encryption_key_file`` in the configuration, a key file that
            cannot be read or written, or one that is not a key of its kind.
    """
    if config.keys.encryption_key_file is None:
        raise ConfigError("enrolment needs keys.encryption_key_file in the configuration", key="keys")
    try:
        signing = SigningKey.from_pem(_read_or_make(Path(config.keys.signing_key_file), SigningKey.generate().to_pem()))
        encryption = EncryptionKey.from_pem(
            _read_or_make(Path(config.keys.encryption_key_file), EncryptionKey.generate().to_pem())
        )
        fresh_tls = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tls_key = serialization.load_pem_private_key(_read_or_make(Path(config.tls.key_file), fresh_tls), None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"a key file of this player is not a usable key: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot write the player's keys: {exc}") from exc
    if not isinstance(tls_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{config.tls.key_file} is not an EC private key", key="tls.key_file")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, config.device_id)]))
        .sign(tls_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    csr_path = Path(config.tls.key_file + ".csr")
    csr_path.unlink(missing_ok=True)
    _write_private(csr_path, csr)
    return Identity(
        device_id=config.device_id,
        signing_key=base64.b64encode(signing.public_key.raw).decode(),
        encryption_key=base64.b64encode(encryption.public_key.raw).decode(),
        csr=csr.decode(),
    )


def enrol(config: AgentConfig, *, claim: str, authz_url: str) -> str:
    """Register this player with a claim and write its certificate to ``tls.cert_file``.

    Returns:
        The certificate's serial number (decimal).

    Raises:
        ConfigError: see `keygen`.
        EnrolmentError: refused (the service's reason: claim used, expired...) or unreachable.
    """
    identity = keygen(config)
    body = json.dumps({**msgspec.structs.asdict(identity), "claim": claim}).encode()
    url = authz_url.rstrip("/") + "/v1/enrol"
    if not url.startswith(("https://", "http://")):
        raise ConfigError(f"--authz-url must be an http(s) URL, not {authz_url!r}")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:  # noqa: S310
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())
            code, message = str(error.get("code")), str(error.get("message"))
        except (ValueError, AttributeError):
            code, message = None, exc.reason
        raise EnrolmentError(f"enrolment refused ({exc.code} {code}): {message}", status=exc.code, code=code) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise EnrolmentError(f"cannot reach the authz service at {url}: {exc}") from exc
    certificate = answer.get("certificate") if isinstance(answer, dict) else None
    if not isinstance(certificate, str):
        raise EnrolmentError(f"the authz service at {url} answered without a certificate")
    cert_path = Path(config.tls.cert_file)
    _private_dir(cert_path.parent)
    temporary = cert_path.with_name(cert_path.name + ".new")
    temporary.write_text(certificate)
    temporary.replace(cert_path)  # never a half-written certificate
    return str(answer.get("serial"))
