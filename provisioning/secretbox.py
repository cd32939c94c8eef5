"""Secrets the store must keep readable (TOTP seeds) encrypted at rest.

A TOTP seed cannot be hashed: sign-in recomputes codes from it. So the store
keeps it sealed with AES-256-GCM (``cryptography``'s AESGCM: an authenticated
cipher, a random 96-bit nonce per value) under a key that is *not* in the
store: a copy of the database (a dump, a backup, a replica) does not give the
second factors away.

The key, 32 bytes, comes from (first match):

1. ``SWITCHBOARD_SECRET_KEY``: the key as URL-safe base64 (the text of a
   ``secret.key`` file made by a first start), for nodes that share a store: every node needs the
   same key, and an environment variable (a secret manager, a unit file) is
   how one gives it to all of them;
2. ``<data dir>/secret.key``: the same text, created on first use with mode
   0600 (created exclusively: two processes starting together agree on one).

A sealed value is ``sb1:<key id>:<base64 nonce + ciphertext>``; the key id
(8 hex digits of the key's SHA-256) tells "sealed with another key" apart
from "tampered with". The associated data binds a value to its row
(``totp:<extension>``): a sealed seed copied to another user's row does not
open.

Rotation: there is one key at a time and no re-encryption command yet. A new
key makes every enrolled seed unreadable (sign-in with a code fails, the log
names the key id); those users are re-enrolled (an admin disables their TOTP;
``[system] require_2fa`` then sends them through enrolment). Keep the key
file with the backups of the data dir, apart from the database's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_ENV", "KEY_FILE", "SecretBox", "SecretBoxError", "new_key_text"]

KEY_ENV = "SWITCHBOARD_SECRET_KEY"
KEY_FILE = "secret.key"
PREFIX = "sb1"
_NONCE = 12


class SecretBoxError(ValueError):
    """A sealed value that does not open (another key, or altered), or a bad key."""


def new_key_text() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _parse_key(text: str, where: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode())
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise SecretBoxError(f"{where}: the key must be 32 bytes as URL-safe base64 "
                             f"(44 characters, as a first start writes to {KEY_FILE})")
    return key


def _key_from_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _parse_key(path.read_text(), str(path))
    with os.fdopen(fd, "w") as out:
        out.write(new_key_text() + "\n")
    return _parse_key(path.read_text(), str(path))


class SecretBox:
    """Seal and open short secrets with the data dir's (or the environment's) key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise SecretBoxError("the key must be 32 bytes")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(key).hexdigest()[:8]

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> SecretBox:
        env = os.environ.get(KEY_ENV)
        if env:
            return cls(_parse_key(env, KEY_ENV))
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(_key_from_file(data_dir / KEY_FILE))

    @staticmethod
    def is_sealed(value: str) -> bool:
        return value.startswith(PREFIX + ":")

    def seal(self, plain: str, context: str) -> str:
        nonce = secrets.token_bytes(_NONCE)
        sealed = self._aead.encrypt(nonce, plain.encode(), context.encode())
        return f"{PREFIX}:{self.key_id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def open(self, value: str, context: str) -> str:
        """The plain text; a value stored before sealing (no prefix) is returned as is."""
        if not self.is_sealed(value):
            return value
        _, key_id, body = value.split(":", 2)
        if key_id != self.key_id:
            raise SecretBoxError(f"sealed with key {key_id}, this process has key "
                                 f"{self.key_id} (see {KEY_ENV} / {KEY_FILE})")
        try:
            raw = base64.urlsafe_b64decode(body.encode())
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], context.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag):
            raise SecretBoxError(f"a sealed value for {context} does not open "
                                 "(altered, or moved from another row)") from None
