"""`cdc weaver`: manage the key that encrypts Weaver's data-source connection configs.

Keys are never taken from argv (visible in `ps`): the current key comes from
CDC_WEAVER_SECRET_KEY, a new one from a named environment variable or stdin.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from cdc.domain.stores import crypto
from cdc.domain.stores.datasources import check_key, rotate_key
from cdc.errors import ConfigError
from cdc.pg import db
from cdc.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `weaver` command group."""
    p = sub.add_parser("weaver", help="Weaver data-source encryption keys")
    cmds = p.add_subparsers(dest="weaver_command", required=True)
    cmds.add_parser("gen-key", help="print a new random key").set_defaults(func=gen_key)
    rot = cmds.add_parser(
        "rotate-key", help="re-encrypt every connection_config under a new key, in one transaction"
    )
    rot.add_argument(
        "--new-key-env", metavar="VAR",
        help="environment variable holding the new key (default: read it from stdin)",
    )
    rot.set_defaults(func=rotate)
    cmds.add_parser(
        "check-key", help="check that CDC_WEAVER_SECRET_KEY opens every connection_config"
    ).set_defaults(func=check)


def gen_key(args: argparse.Namespace, settings: Settings) -> int:
    """Print a fresh key for CDC_WEAVER_SECRET_KEY."""
    print(crypto.generate_key())
    return 0


def _new_key(env_var: str | None) -> crypto.Cipher:
    if env_var:
        value = os.environ.get(env_var)
        if not value:
            raise ConfigError(f"--new-key-env {env_var}: that variable is not set or empty")
        return crypto.Cipher.from_secret(value, setting=env_var)
    value = getpass.getpass("new key: ") if sys.stdin.isatty() else sys.stdin.readline()
    if not value.strip():
        raise ConfigError("no new key given on stdin", hint="or pass --new-key-env VAR")
    return crypto.Cipher.from_secret(value, setting="the new key")


def rotate(args: argparse.Namespace, settings: Settings) -> int:
    """Re-encrypt every data source's connection_config under the new key."""
    old = crypto.Cipher.from_secret(settings.weaver_secret_key)
    new = _new_key(args.new_key_env)
    with db.connect(settings.database_url) as conn:
        done = rotate_key(conn, old, new)
    print(
        f"re-encrypted {done.rotated} connection_config(s) under key id {new.key_id.hex()}"
        f" ({done.unchanged} already used it); now set CDC_WEAVER_SECRET_KEY to the new key"
    )
    return 0


def check(args: argparse.Namespace, settings: Settings) -> int:
    """Report which key id seals each row; exit 1 if the configured key misses any."""
    cipher = crypto.Cipher.from_secret(settings.weaver_secret_key)
    with db.connect(settings.database_url) as conn:
        found = check_key(conn, cipher)
    for e in found.failed:
        print(f"cdc: {e}", file=sys.stderr)
    for hex_id, n in sorted(found.by_key.items()):
        mark = " (configured)" if hex_id == cipher.key_id.hex() else ""
        print(f"key id {hex_id}{mark}: {n} data source(s)")
    print(f"{found.total - len(found.failed)} of {found.total} open with CDC_WEAVER_SECRET_KEY")
    return 1 if found.failed else 0
