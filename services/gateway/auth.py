"""Who is asking: the one place that checks credentials.

API calls present ``Authorization: Bearer lf_tok_…``; pages carry a signed, HttpOnly,
SameSite=Lax session cookie holding a session secret.  Both are looked up by row id and
compared by hash in constant time (``domain.credentials``).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from datetime import timedelta

from fastapi import Request

from .adapters.accounts import Accounts, User
from .domain.credentials import BearerSecret, hash_password, parse_bearer, verify_password
from .domain.errors import unauthorized

log = logging.getLogger(__name__)

SESSION_COOKIE = "labfleet_session"
SESSION_KEY = "sid"
SESSION_TTL = timedelta(days=7)


async def user_from_bearer(accounts: Accounts, header: str | None) -> User:
    if not header:
        raise unauthorized("this call needs an API token",
                           hint="send `Authorization: Bearer <token>`; create one with "
                                "POST /api/v1/tokens, or use the admin token written to "
                                "<data_dir>/admin-credentials on first start")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise unauthorized("the Authorization header is not a bearer token",
                           hint="send `Authorization: Bearer <token>`")
    bearer = parse_bearer(value, "tok")
    user = await accounts.user_for_token(bearer) if bearer else None
    if user is None:
        raise unauthorized("the API token is not valid (unknown, revoked or expired)",
                           hint="create a new token with POST /api/v1/tokens")
    return user


async def user_from_session(accounts: Accounts, request: Request) -> User | None:
    text = request.session.get(SESSION_KEY)
    if not isinstance(text, str):
        return None
    bearer = parse_bearer(text, "ses")
    return await accounts.user_for_session(bearer) if bearer else None


@functools.cache
def dummy_password_hash() -> str:
    """A hash no password matches, checked for unknown users so that they cost as much
    as known ones (otherwise the answer's delay tells which user names exist)."""
    return hash_password(secrets.token_urlsafe(32))


async def log_in(accounts: Accounts, request: Request, username: str, password: str
                 ) -> User | None:
    found = await accounts.password_hash(username) if username else None
    hashed = found[1] if found is not None else dummy_password_hash()
    # scrypt is deliberately slow: keep it off the event loop
    matches = await asyncio.to_thread(verify_password, password, hashed)
    if found is None or not matches:
        return None
    user = found[0]
    session = await accounts.create_session(user, SESSION_TTL)
    request.session.clear()
    request.session[SESSION_KEY] = session.text
    return user


async def log_out(accounts: Accounts, request: Request) -> None:
    text = request.session.get(SESSION_KEY)
    bearer: BearerSecret | None = parse_bearer(text, "ses") if isinstance(text, str) else None
    if bearer is not None:
        await accounts.end_session(bearer)
    request.session.clear()
