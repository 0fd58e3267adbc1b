"""The delivery worker: sends what the outbox of deliveries holds, retries, records.

Deliveries are rows written in the same transaction as the alert they tell of; the worker
claims due rows under a lease (so another replica, or this one after a restart, takes
over a delivery whose worker died), sends the alert's *current* state, and records the
outcome: delivered, a retry time by the back-off schedule, or failed after the last
attempt.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from labfleet.shared.events.alert import TargetKind

from .adapters import repository as repo
from .adapters.email import DeliveryFailed, SmtpSender
from .adapters.webhook import WebhookSender
from .deps import AlerterDeps
from .domain.delivery import gives_up, retry_delay
from .domain.notifications import WebhookPayload, email_body, email_subject

log = logging.getLogger(__name__)


class DeliveryWorker:
    def __init__(self, deps: AlerterDeps, email: SmtpSender, webhook: WebhookSender) -> None:
        self.deps = deps
        self.email = email
        self.webhook = webhook
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alerter-deliveries")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.webhook.close()

    async def _run(self) -> None:
        queued = self.deps.deliveries_queued
        while True:
            try:
                claimed = await repo.claim_due(self.deps.db, self.deps.config.delivery_lease_s)
                await asyncio.gather(*(self.deliver(c) for c in claimed))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the database may be back in a moment
                log.exception("delivery round failed; trying again")
                claimed = []
            if claimed:
                continue
            queued.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queued.wait(), self.deps.config.poll_s)

    async def deliver(self, claimed: repo.Claimed) -> None:
        db, config = self.deps.db, self.deps.config
        alert = await repo.get_alert(db, claimed.alert_id)
        target = await repo.target(db, claimed.target_id)
        if alert is None or target is None or not target.view.enabled:
            await repo.finish_delivery(db, claimed, "skipped", "target disabled or removed")
            return
        if await repo.last_delivered_event(db, claimed.alert_id,
                                           claimed.target_id) == claimed.event:
            # e.g. resolved and raised again before the next message was due: nothing new
            await repo.finish_delivery(db, claimed, "skipped", "already told of this state")
            return
        try:
            if target.view.kind is TargetKind.EMAIL:
                await self.email.send(target.view.addresses, email_subject(claimed.event, alert),
                                      email_body(claimed.event, alert, config.dashboard_url))
            else:
                secret = None
                if target.sealed_secret is not None:
                    if self.deps.box is None:
                        raise DeliveryFailed("the webhook secret cannot be opened: "
                                             "LABFLEET_CREDENTIAL_KEY is not set")
                    secret = self.deps.box.open(target.sealed_secret)
                payload = WebhookPayload(event=claimed.event, delivery_id=claimed.delivery_id,
                                         sent_at=datetime.now(UTC), alert=alert,
                                         dashboard_url=config.dashboard_url)
                await self.webhook.send(target.view.url or "", payload, secret)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded and retried
            error = str(exc) if isinstance(exc, DeliveryFailed) else f"{type(exc).__name__}: {exc}"
            attempts = claimed.attempts + 1
            if gives_up(attempts, config.max_delivery_attempts):
                await repo.finish_delivery(db, claimed, "failed", error)
                log.error("delivery given up", extra={"delivery_id": claimed.delivery_id,
                                                      "target": target.view.name,
                                                      "attempts": attempts, "error": error})
                return
            delay = retry_delay(attempts, config.delivery_backoff_s)
            await repo.retry_delivery(db, claimed, error, delay)
            log.warning("delivery failed, retrying", extra={
                "delivery_id": claimed.delivery_id, "target": target.view.name,
                "attempt": attempts, "retry_in_s": delay, "error": error})
            return
        await repo.finish_delivery(db, claimed, "delivered")
        log.info("alert delivered", extra={"delivery_id": claimed.delivery_id,
                                           "target": target.view.name, "event": claimed.event,
                                           "alert_id": str(claimed.alert_id)})
