"""Encryption of credentials at rest (Fernet: AES-128-CBC + HMAC-SHA256).

The key comes from ``LABFLEET_CREDENTIAL_KEY``; ``labfleet up`` generates one into the
data directory (mode 0600) on first start.  There is no default key.
"""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from .settings import Settings


class CredentialKeyMissing(RuntimeError):
    pass


class SecretBox:
    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode())

    def seal(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def open(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken:
            raise CredentialKeyMissing(
                "a stored credential cannot be decrypted with LABFLEET_CREDENTIAL_KEY: the key "
                "changed since it was stored; restore the old key or re-enter the credential"
            ) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        if settings.credential_key is None:
            raise CredentialKeyMissing(
                "LABFLEET_CREDENTIAL_KEY is not set: generate one with "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'` "
                "(labfleet up does this for you in its data directory)"
            )
        return cls(settings.credential_key.get_secret_value())


def ensure_key_file(path: Path) -> str:
    """Read the key file, creating it (0600) with a fresh key when absent."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key
