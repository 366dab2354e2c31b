"""Private key files: refused when others may read them, created 0600 from the first byte.

The grant-signing key, the session secret, the device CA key, the development issuer's
key and the broker token key each give whoever reads them the power to mint grants, broker
passwords, device certificates, user tokens or broker tokens. Like ssh, the service refuses to start when such a file is
readable by group or others, and it writes the ones it generates with mode 0600 from the
first byte (never written and then chmod-ed) inside a 0700 folder.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Final

from amora_authz._errors import ConfigError

if TYPE_CHECKING:
    from amora_authz._config import Settings

__all__ = ["check_key_files", "check_private_file", "read_private", "write_private"]

_PRIVATE_FILE: Final = 0o600
_PRIVATE_DIR: Final = 0o700


def check_private_file(path: Path, what: str) -> None:
    """Refuse ``path`` when its mode lets group or others at it (group read allowed when root owns it).

    Raises:
        ConfigError: naming the file and the fix (``chmod 600``).
    """
    try:
        info = path.stat()
    except OSError:
        return  # reading it reports the problem, with the path
    mode = info.st_mode
    # As PostgreSQL allows for its key file: a file owned by root may also be readable by
    # its group (0640, 0440). That is how Kubernetes delivers secret volumes to a non-root
    # container (root-owned, group set to the pod's fsGroup); nobody but root can widen it.
    allowed = 0o037 if info.st_uid == 0 else 0o077
    if mode & allowed:
        octal = f"{stat.S_IMODE(mode):04o}"
        raise ConfigError(f"the {what} {path} is accessible by group or others (mode {octal}): run `chmod 600 {path}`")


def read_private(path: Path, what: str) -> bytes:
    """Read a private key file after `check_private_file`.

    Raises:
        ConfigError: the file is accessible by others, or cannot be read.
    """
    check_private_file(path, what)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from exc


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the first byte (its folder 0700 when made here)."""
    path.parent.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _PRIVATE_FILE)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)


def check_key_files(settings: Settings) -> None:
    """Check every private key file ``settings`` names (or the service generated) before serving.

    Raises:
        ConfigError: one of them is accessible by group or others.
    """
    state = Path(settings.state_dir)
    files = [(Path(name), "grant-signing key") for name in settings.signing_key_files]
    files = files or [(state / "grant-signing-key.pem", "grant-signing key")]
    files.append((Path(settings.session_secret_file or state / "session-secret"), "session secret"))
    if settings.device_ca_key:
        files.append((Path(settings.device_ca_key), "device CA key"))
    if settings.dev_issuer.enabled:
        files.append((state / "dev-issuer-key.json", "development issuer key"))
    if settings.broker.tokens and settings.broker.token_key_file:
        files.append((Path(settings.broker.token_key_file), "broker token key"))
    for path, what in files:
        check_private_file(path, what)
