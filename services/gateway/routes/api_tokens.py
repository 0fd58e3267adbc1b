"""``/api/v1/tokens``: API tokens of the calling user (the secret is shown once)."""
from __future__ import annotations

import uuid
from datetime import timedelta

from fastapi import APIRouter, Response, status

from ..deps import CurrentUser, GatewayDep
from ..domain.errors import ApiError
from ..models import TokenCreate, TokenCreated, TokenPublic

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TokenCreated)
async def create(body: TokenCreate, gw: GatewayDep, user: CurrentUser) -> TokenCreated:
    ttl = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    record, bearer = await gw.accounts.create_token(user, body.name, ttl)
    return TokenCreated(id=record.id, name=record.name, created_at=record.created_at,
                        expires_at=record.expires_at, last_used_at=None, token=bearer.text)


@router.get("", response_model=list[TokenPublic])
async def list_tokens(gw: GatewayDep, user: CurrentUser) -> list[TokenPublic]:
    return [TokenPublic(id=t.id, name=t.name, created_at=t.created_at, expires_at=t.expires_at,
                        last_used_at=t.last_used_at) for t in await gw.accounts.list_tokens(user)]


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke(token_id: uuid.UUID, gw: GatewayDep, user: CurrentUser) -> Response:
    if not await gw.accounts.revoke_token(user, token_id):
        raise ApiError(404, "not_found", f"you have no active token with the id {token_id}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
