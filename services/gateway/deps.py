"""Dependencies of the routes, as ``Annotated`` aliases."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from labfleet.shared.bus import Bus

from .adapters.accounts import User
from .auth import user_from_bearer, user_from_session
from .context import Gateway


class LoginRequired(Exception):
    """A page was asked for without a session: the app redirects to ``/login``."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def get_bus(gw: GatewayDep) -> Bus:
    return gw.bus


BusDep = Annotated[Bus, Depends(get_bus)]


async def current_user(gw: GatewayDep,
                       authorization: Annotated[str | None, Header()] = None) -> User:
    return await user_from_bearer(gw.accounts, authorization)


CurrentUser = Annotated[User, Depends(current_user)]


async def page_user(gw: GatewayDep, request: Request) -> User:
    user = await user_from_session(gw.accounts, request)
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    return user


PageUser = Annotated[User, Depends(page_user)]
