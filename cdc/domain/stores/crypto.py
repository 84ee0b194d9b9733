"""Encryption at rest for Weaver's connection_config: AES-256-GCM done in Python.

The key never travels to PostgreSQL, so statement logging cannot capture it. A sealed
value is `FORMAT (1 byte) | key id (4 bytes) | nonce (12 bytes) | ciphertext+tag`; the key
id is an HMAC of the key (it reveals nothing about it) and tells which key sealed a row,
so a wrong or rotated key is named instead of failing as "bad data". The header and the
caller's associated data (the row's identity) are authenticated: a value copied into
another row does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from cdc.errors import ConfigError, DecryptError

FORMAT = 1
KEY_BYTES = 32
NONCE_BYTES = 12
HEADER_BYTES = 1 + 4
KEY_SETTING = "CDC_WEAVER_SECRET_KEY"
KEY_HINT = "generate one with `cdc weaver gen-key` (32 random bytes, base64)"


def generate_key() -> str:
    """Return a new random key, base64-encoded, for CDC_WEAVER_SECRET_KEY."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def parse_key(text: str, *, setting: str = KEY_SETTING) -> bytes:
    """Decode a base64 or hex key of 32 bytes; never echo it in an error."""
    text = text.strip()
    raw: bytes | None = None
    if len(text) == 2 * KEY_BYTES:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            padded = text + "=" * (-len(text) % 4)
            raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != KEY_BYTES:
        raise ConfigError(
            f"{setting} must be {KEY_BYTES} random bytes, base64- or hex-encoded", hint=KEY_HINT
        )
    return raw


class Cipher:
    """Seal and open small secrets with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ConfigError(f"an encryption key must be {KEY_BYTES} bytes", hint=KEY_HINT)
        self._aead = AESGCM(key)
        self.key_id = hmac.new(key, b"axiom-cdc weaver key id", hashlib.sha256).digest()[:4]

    @classmethod
    def from_secret(cls, secret: SecretStr | str | None, *, setting: str = KEY_SETTING) -> Cipher:
        """Build a cipher from a settings value; a missing or malformed key is a ConfigError."""
        if secret is None:
            raise ConfigError(f"{setting} is not set", hint=KEY_HINT)
        text = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        return cls(parse_key(text, setting=setting))

    def __repr__(self) -> str:
        return f"Cipher(key_id={self.key_id.hex()})"

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        """Encrypt `plaintext` bound to `aad` under a fresh random nonce."""
        header = bytes([FORMAT]) + self.key_id
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + self._aead.encrypt(nonce, plaintext, header + aad)

    def open(self, sealed: bytes, *, aad: bytes, what: str = "value") -> bytes:
        """Decrypt a sealed value; anything wrong is a DecryptError and no plaintext."""
        sealed = bytes(sealed)
        found = sealed_key_id(sealed)
        if found is None:
            raise DecryptError(f"{what} is not a sealed value of a known format")
        if found != self.key_id:
            raise DecryptError(
                f"{what} was encrypted under key id {found.hex()}, but the configured key "
                f"has key id {self.key_id.hex()}",
                hint=f"set {KEY_SETTING} to the key in use (or finish `cdc weaver rotate-key`)",
            )
        header, nonce = sealed[:HEADER_BYTES], sealed[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[HEADER_BYTES + NONCE_BYTES :], header + aad)
        except InvalidTag:
            raise DecryptError(
                f"{what} failed authentication: it was altered, moved from another row, "
                "or sealed by a different key with a colliding key id"
            ) from None


def sealed_key_id(sealed: bytes) -> bytes | None:
    """Return the key id in a sealed value's header, or None if it is not one."""
    if len(sealed) < HEADER_BYTES + NONCE_BYTES + 16 or sealed[0] != FORMAT:
        return None
    return bytes(sealed[1:HEADER_BYTES])
