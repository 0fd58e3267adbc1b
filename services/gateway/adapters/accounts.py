"""Users, API tokens and sessions in the gateway's own schema."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from labfleet.shared.db import Database

from ..domain.credentials import BearerSecret, hash_password, new_bearer


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    username: str


@dataclass(frozen=True)
class TokenRecord:
    id: uuid.UUID
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class Accounts:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ---- users ------------------------------------------------------------------

    async def count_users(self) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM users"))

    async def create_user(self, username: str, password: str) -> User:
        """Raises ``asyncpg.UniqueViolationError`` when the name is taken."""
        user = User(id=uuid.uuid4(), username=username)
        hashed = hash_password(password)
        await self.db.execute(
            "INSERT INTO users (id, username, password_hash) VALUES ($1, $2, $3)",
            user.id, username, hashed)
        return user

    async def password_hash(self, username: str) -> tuple[User, str] | None:
        row = await self.db.fetchrow(
            "SELECT id, username, password_hash FROM users WHERE username = $1 AND NOT disabled",
            username)
        if row is None:
            return None
        return User(row["id"], row["username"]), row["password_hash"]

    # ---- API tokens -------------------------------------------------------------

    async def create_token(self, user: User, name: str, ttl: timedelta | None = None
                           ) -> tuple[TokenRecord, BearerSecret]:
        bearer = new_bearer("tok")
        expires = datetime.now(UTC) + ttl if ttl else None
        row = await self.db.fetchrow(
            "INSERT INTO api_tokens (id, user_id, name, token_hash, expires_at) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING created_at",
            bearer.row_id, user.id, name, bearer.secret_hash, expires)
        assert row is not None
        return TokenRecord(bearer.row_id, name, row["created_at"], expires, None), bearer

    async def user_for_token(self, bearer: BearerSecret) -> User | None:
        row = await self.db.fetchrow(
            "SELECT t.token_hash, u.id, u.username FROM api_tokens t JOIN users u "
            "ON u.id = t.user_id WHERE t.id = $1 AND t.revoked_at IS NULL AND NOT u.disabled "
            "AND (t.expires_at IS NULL OR t.expires_at > now())", bearer.row_id)
        if row is None or not bearer.matches(row["token_hash"]):
            return None
        await self.db.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = $1 "
                              "AND (last_used_at IS NULL OR last_used_at < now() - "
                              "interval '1 minute')", bearer.row_id)
        return User(row["id"], row["username"])

    async def list_tokens(self, user: User) -> list[TokenRecord]:
        rows = await self.db.fetch(
            "SELECT id, name, created_at, expires_at, last_used_at FROM api_tokens "
            "WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at", user.id)
        return [TokenRecord(r["id"], r["name"], r["created_at"], r["expires_at"],
                            r["last_used_at"]) for r in rows]

    async def revoke_token(self, user: User, token_id: uuid.UUID) -> bool:
        done = await self.db.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND user_id = $2 "
            "AND revoked_at IS NULL", token_id, user.id)
        return done.endswith(" 1")

    # ---- browser sessions -------------------------------------------------------

    async def create_session(self, user: User, ttl: timedelta) -> BearerSecret:
        bearer = new_bearer("ses")
        await self.db.execute(
            "INSERT INTO sessions (id, user_id, secret_hash, expires_at) VALUES ($1, $2, $3, $4)",
            bearer.row_id, user.id, bearer.secret_hash, datetime.now(UTC) + ttl)
        await self.db.execute("DELETE FROM sessions WHERE expires_at < now()")
        return bearer

    async def user_for_session(self, bearer: BearerSecret) -> User | None:
        row = await self.db.fetchrow(
            "SELECT s.secret_hash, u.id, u.username FROM sessions s JOIN users u "
            "ON u.id = s.user_id WHERE s.id = $1 AND s.expires_at > now() AND NOT u.disabled",
            bearer.row_id)
        if row is None or not bearer.matches(row["secret_hash"]):
            return None
        return User(row["id"], row["username"])

    async def end_session(self, bearer: BearerSecret) -> None:
        await self.db.execute("DELETE FROM sessions WHERE id = $1", bearer.row_id)


__all__ = ["Accounts", "TokenRecord", "User"]
