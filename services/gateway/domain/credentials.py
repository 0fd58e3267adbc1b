"""Passwords and bearer secrets: how they are made, stored and checked.

A bearer secret (API token or session) is ``lf_<kind>_<row id hex>_<secret>``: the row id
finds the stored record, and only ``sha256(secret)`` is kept, compared in constant time,
so the database never holds anything a caller could present.  Passwords are hashed with
scrypt (memory-hard, in the standard library), parameters stored beside the hash so they
can be raised later without invalidating old hashes.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
SECRET_BYTES = 32


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
                  ) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(_unb64(digest)))
    except ValueError:
        return False
    return hmac.compare_digest(got, _unb64(digest))


def new_password() -> str:
    return secrets.token_urlsafe(18)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class BearerSecret:
    """A presented or freshly made secret, split into the row it names and its secret."""

    kind: str  # "tok" (API token) or "ses" (browser session)
    row_id: uuid.UUID
    secret: str

    @property
    def text(self) -> str:
        return f"lf_{self.kind}_{self.row_id.hex}_{self.secret}"

    @property
    def secret_hash(self) -> str:
        return hash_secret(self.secret)

    def matches(self, stored_hash: str) -> bool:
        return hmac.compare_digest(self.secret_hash, stored_hash)


def new_bearer(kind: str) -> BearerSecret:
    return BearerSecret(kind=kind, row_id=uuid.uuid4(),
                        secret=_b64(secrets.token_bytes(SECRET_BYTES)))


def parse_bearer(text: str, kind: str) -> BearerSecret | None:
    """The parts of ``text`` if it has the shape of a ``kind`` secret, else None."""
    parts = text.strip().split("_", 3)
    if len(parts) != 4 or parts[0] != "lf" or parts[1] != kind:
        return None
    try:
        row_id = uuid.UUID(hex=parts[2])
    except ValueError:
        return None
    if not parts[3]:
        return None
    return BearerSecret(kind=kind, row_id=row_id, secret=parts[3])
