"""Webhooks: an HTTP POST of JSON, signed with the target's secret (see domain.notifications)."""
from __future__ import annotations

import httpx

from ..domain.notifications import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WebhookPayload,
    sign,
)
from .email import DeliveryFailed


class WebhookSender:
    def __init__(self, timeout_s: float) -> None:
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def close(self) -> None:
        await self._client.aclose()

    async def send(self, url: str, payload: WebhookPayload, secret: str | None) -> None:
        body = payload.model_dump_json().encode()
        headers = {"Content-Type": "application/json", "User-Agent": "labfleet-alerter",
                   DELIVERY_HEADER: str(payload.delivery_id), EVENT_HEADER: payload.event}
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, body)
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"POST {url} failed: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 300:
            raise DeliveryFailed(f"POST {url} answered HTTP {response.status_code}: "
                                 f"{response.text[:200]}")
