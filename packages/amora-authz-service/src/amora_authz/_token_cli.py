"""``amora-authz broker-token-key``: make the broker token key and export its public half.

Token mode (``[broker] credentials = "token"``) signs each session's broker password with an
EC P-256 key; every broker's ``amora_auth`` plugin loads the public key
(``plugin_opt_public_keys``). These commands need no configuration: ``generate`` writes a new
private key 0600 from the first byte (never over an existing file: a lost key logs everyone
out), ``public`` writes the PEM the plugin loads. Both print the key id the tokens carry.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from amora_authz._brokertoken import generate_private_pem, key_id, load_private_key, public_pem
from amora_authz._errors import ConfigError
from amora_authz._keyfiles import read_private, write_private

if TYPE_CHECKING:
    import argparse

__all__ = ["add_token_key_parser", "run_token_key"]


def add_token_key_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``broker-token-key generate|public`` to the CLI."""
    parser = sub.add_parser(
        "broker-token-key",
        help="make the broker token key (token mode) and export its public key for the brokers",
        description=__doc__,
    )
    actions = parser.add_subparsers(dest="key_action", required=True)
    generate = actions.add_parser(
        "generate",
        help="write a new EC P-256 private key (mode 0600; refuses to overwrite); prints its key id",
    )
    generate.add_argument("--out", type=Path, required=True, help="where to write the private key (PEM)")
    public = actions.add_parser(
        "public",
        help="write the public key the brokers' amora_auth plugin loads (plugin_opt_public_keys); prints its key id",
    )
    public.add_argument("--key", type=Path, required=True, help="the private key file (from `generate`)")
    public.add_argument("--out", type=Path, help="where to write the public key (PEM; default: standard output)")


def run_token_key(args: argparse.Namespace) -> None:
    """Run ``broker-token-key generate`` or ``public``.

    Raises:
        ConfigError: the output exists (generate), the folder cannot be written, or the key
            file is accessible by others, unreadable or not an EC P-256 key; each names the fix.
    """
    if args.key_action == "generate":
        out: Path = args.out
        if out.exists() or out.is_symlink():
            raise ConfigError(
                f"{out} exists: a new key would log every token-mode session out; "
                "choose another path, or delete the file first if you mean to replace it"
            )
        pem = generate_private_pem()
        try:
            write_private(out, pem)
        except OSError as exc:
            raise ConfigError(f"cannot write {out}: {exc.strerror}: choose a writable folder") from exc
        print(key_id(load_private_key(pem, out).public_key()))  # noqa: T201 - the key id alone on stdout
        hint = f"amora-authz broker-token-key public --key {out} --out PUB"
        print(f"wrote {out} (mode 0600); the brokers load its public key: {hint}", file=sys.stderr)  # noqa: T201
        return
    key = load_private_key(read_private(args.key, "broker token key"), args.key)
    pem = public_pem(key)
    if args.out is None:
        sys.stdout.write(pem.decode("ascii"))
        return
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
        tmp.write_bytes(pem)
        tmp.replace(args.out)
    except OSError as exc:
        raise ConfigError(f"cannot write {args.out}: {exc.strerror}: choose a writable folder") from exc
    print(key_id(key.public_key()))  # noqa: T201 - the key id alone on stdout
