"""Keeping a session across app restarts: what is stored, where, and how it is checked.

An app that restarts (an update, a crash, a regional outage) can resume its session instead
of logging in afresh: it connects at once with the stored broker credential, so a restart
writes nothing to the broker (mosquitto 2.0 rewrites its whole account file per change;
``docs/decisions/0013-logins-resume-and-reconcile-cost.md``). The record holds the session's private keys,
so it is written with mode 0600 from the first byte, in a 0700 directory, and refused when
group or others can read it. Each record carries an HMAC keyed from the session's own
signing key: a record edited or damaged by anyone who cannot read it is refused (someone
who can read it holds the session anyway). A loaded record is also checked against itself:
the grant must verify under the stored authz keys and name this session, its keys and the
current token's user.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import msgspec

from amora_protocol import EncryptionKey, ProtocolError, SigningKey, open_grant

if TYPE_CHECKING:
    from amora_protocol import KeyRing

__all__ = [
    "FileSessionStore",
    "RecordError",
    "SessionStore",
    "StoredSession",
    "check_grant_matches",
    "decode_record",
    "encode_record",
    "token_subject",
]

_VERSION = 1
_MAC_DOMAIN = b"amora-sync-session-store-v1\x00"
_PRIVATE_MODE = 0o600
_PRIVATE_DIR_MODE = 0o700


@runtime_checkable
class SessionStore(Protocol):
    """Where a client keeps its session between runs (a file, a keychain, ...).

    Implementations store opaque bytes; they must keep them private to the app's user
    (they hold the session's private keys). Errors raised are reported and the client then
    logs in afresh.
    """

    def load(self) -> bytes | None:
        """Return the stored record, or None when there is none."""
        ...

    def save(self, data: bytes) -> None:
        """Replace the stored record with ``data``."""
        ...

    def clear(self) -> None:
        """Forget the stored record (no error when there is none)."""
        ...


class FileSessionStore:
    """A session record in one file, mode 0600 from the first byte, replaced atomically.

    The directory is created with mode 0700 when missing. A file that group or others can
    read or write is refused (as ssh refuses such a key), naming the file and the fix.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Use ``path`` (nothing is read or written yet)."""
        self.path = Path(path)

    def load(self) -> bytes | None:
        """Return the file's bytes, None when it does not exist.

        Raises:
            PermissionError: group or others may access the file (the message says how to fix it).
            OSError: it cannot be read.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as file:
            mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
            if mode & 0o077:
                msg = (
                    f"the session file {self.path} is accessible by group or others (mode {mode:o}); "
                    f"it holds private keys: chmod 600 {self.path}, or delete it to log in afresh"
                )
                raise PermissionError(msg)
            return file.read()

    def save(self, data: bytes) -> None:
        """Write ``data`` to a new 0600 file beside the target, then rename it over the target.

        Raises:
            OSError: the directory cannot be created or written.
        """
        folder = self.path.parent
        folder.mkdir(mode=_PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        temporary = folder / f".{self.path.name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_MODE)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            temporary.replace(self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise

    def clear(self) -> None:
        """Delete the file (no error when it does not exist)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __repr__(self) -> str:
        """Name the file."""
        return f"FileSessionStore({str(self.path)!r})"


class StoredSession(msgspec.Struct, frozen=True, kw_only=True):
    """What a record holds once its integrity is checked.

    Attributes:
        authz_url: The service that issued the session.
        signing_key: The session's Ed25519 key.
        encryption_key: The session's X25519 key.
        session_body: The service's session answer, as it sent it.
    """

    authz_url: str
    signing_key: SigningKey
    encryption_key: EncryptionKey
    session_body: bytes


class _Record(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    authz_url: str
    signing_key: str
    encryption_key: str
    session: str
    mac: str = ""


class RecordError(ValueError):
    """A stored record cannot be used; the message says why."""


def _mac(record: _Record, signing_key: bytes) -> str:
    key = hmac.new(signing_key, _MAC_DOMAIN, hashlib.sha256).digest()
    unsigned = msgspec.json.encode(msgspec.structs.replace(record, mac=""))
    return base64.b64encode(hmac.new(key, unsigned, hashlib.sha256).digest()).decode()


def encode_record(stored: StoredSession) -> bytes:
    """The bytes a store keeps for ``stored`` (JSON with an integrity tag)."""
    record = _Record(
        version=_VERSION,
        authz_url=stored.authz_url,
        signing_key=base64.b64encode(stored.signing_key.to_raw()).decode(),
        encryption_key=base64.b64encode(stored.encryption_key.to_raw()).decode(),
        session=stored.session_body.decode(),
    )
    return msgspec.json.encode(msgspec.structs.replace(record, mac=_mac(record, stored.signing_key.to_raw())))


def decode_record(data: bytes) -> StoredSession:
    """Check and decode a stored record.

    Raises:
        RecordError: unreadable, another format version, or the integrity tag does not
            match (the record was changed since it was written).
    """
    try:
        record = msgspec.json.decode(data, type=_Record)
        if record.version != _VERSION:
            msg = f"format version {record.version} (this SDK reads {_VERSION})"
            raise RecordError(msg)
        raw_signing = base64.b64decode(record.signing_key, validate=True)
        raw_encryption = base64.b64decode(record.encryption_key, validate=True)
        signing_key = SigningKey.from_raw(raw_signing)
        encryption_key = EncryptionKey.from_raw(raw_encryption)
    except (msgspec.DecodeError, binascii.Error, ProtocolError, UnicodeDecodeError) as exc:
        msg = f"unreadable record: {exc}"
        raise RecordError(msg) from exc
    if not hmac.compare_digest(record.mac, _mac(record, raw_signing)):
        msg = "its integrity check failed: the record was changed after it was written"
        raise RecordError(msg)
    return StoredSession(
        authz_url=record.authz_url,
        signing_key=signing_key,
        encryption_key=encryption_key,
        session_body=record.session.encode(),
    )


def check_grant_matches(
    grant: bytes,
    *,
    authz_keys: KeyRing,
    session_id: str,
    signing_key: SigningKey,
    subject: str | None,
) -> None:
    """Check that a stored grant is the service's, for this session, key and user.

    Raises:
        RecordError: it is not (the message says which part differs).
    """
    try:
        opened = open_grant(grant, authz_keys)
    except ProtocolError as exc:
        msg = f"its grant does not verify under the stored authz keys: {exc}"
        raise RecordError(msg) from exc
    if opened.session_id != session_id or opened.signing_key != signing_key.public_key.raw:
        msg = "its grant names another session or key"
        raise RecordError(msg)
    if subject is not None and opened.subject != subject:
        msg = f"it belongs to user {opened.subject!r}, not to the current token's user {subject!r}"
        raise RecordError(msg)


def token_subject(token: str) -> str | None:
    """The ``sub`` claim of a compact JWT, unverified (None when it is not a readable JWT).

    Only to tell whose stored session this is: the service checks the token itself.
    """
    parts = token.split(".")
    if len(parts) != 3:  # header.payload.signature
        return None
    try:
        payload = msgspec.json.decode(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return None
    sub = payload.get("sub") if isinstance(payload, dict) else None
    return sub if isinstance(sub, str) and sub else None
