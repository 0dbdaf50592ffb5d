"""Secrets at rest: Fernet encryption under keys derived from ``HOOKGATE_SECRET_KEY``.

Several comma-separated keys allow rotation: the first encrypts, every one decrypts. The first
must be at least ``MIN_KEY_LENGTH`` characters: a short key can be guessed from any one stored
ciphertext, offline. Older keys are only read, to be rotated away, so they are taken as they are.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

MIN_KEY_LENGTH = 32
_MAKE_ONE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


class SecretBox:
    def __init__(self, secret_key: str) -> None:
        keys = [k.strip() for k in secret_key.split(",") if k.strip()]
        if not keys:
            raise ValueError(f"HOOKGATE_SECRET_KEY is empty: set it to a long random string ({_MAKE_ONE})")
        if len(keys[0]) < MIN_KEY_LENGTH:
            raise ValueError(
                f"HOOKGATE_SECRET_KEY's first key has {len(keys[0])} characters: it needs at least {MIN_KEY_LENGTH} random "
                f"ones ({_MAKE_ONE}); to move away from a short key, put the new key first and keep the old one after a comma"
            )
        self._fernet = MultiFernet([Fernet(self._derive(k)) for k in keys])

    @staticmethod
    def _derive(key: str) -> bytes:
        return base64.urlsafe_b64encode(hashlib.sha256(b"hookgate-secrets:" + key.encode()).digest())

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def reencrypt(self, ciphertext: bytes) -> bytes:
        """The same secret under the first key (its original timestamp kept): key rotation's last step."""
        try:
            return self._fernet.rotate(ciphertext)
        except InvalidToken:
            raise ValueError("a stored secret cannot be decrypted with HOOKGATE_SECRET_KEY") from None

    def decrypt(self, ciphertext: bytes, ttl: int | None = None) -> str:
        """The plaintext; with ``ttl``, only of a ciphertext made within that many seconds."""
        try:
            return self._fernet.decrypt(ciphertext, ttl=ttl).decode()
        except InvalidToken:
            raise ValueError("a stored secret cannot be decrypted with HOOKGATE_SECRET_KEY") from None


def new_token(nbytes: int = 24) -> str:
    """A url-safe random token (``nbytes`` of entropy)."""
    return secrets.token_urlsafe(nbytes)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time string equality."""
    return hmac.compare_digest(a.encode(), b.encode())
