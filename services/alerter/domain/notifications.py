"""What an email or a webhook says about an alert, and how a webhook is signed.

A webhook body is the JSON of :class:`WebhookPayload`; the header
``X-Labfleet-Signature: sha256=<hex>`` is HMAC-SHA256 of the exact body bytes under the
target's secret, and ``X-Labfleet-Delivery`` names the delivery (the same on a retry, so a
receiver can drop duplicates).
"""
from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from labfleet.shared.events.alert import AlertView
from pydantic import BaseModel

SIGNATURE_HEADER = "X-Labfleet-Signature"
DELIVERY_HEADER = "X-Labfleet-Delivery"
EVENT_HEADER = "X-Labfleet-Event"


class WebhookPayload(BaseModel):
    #: ``raised`` or ``resolved``
    event: str
    delivery_id: int
    sent_at: datetime
    alert: AlertView
    dashboard_url: str = ""


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, body), signature)


def email_subject(event: str, alert: AlertView) -> str:
    tag = "RESOLVED" if event == "resolved" else alert.severity.value.upper()
    return f"[labfleet {tag}] {alert.title}"


def email_body(event: str, alert: AlertView, dashboard_url: str = "") -> str:
    lines = [
        f"{alert.title}",
        "",
        f"Status:     {'resolved' if event == 'resolved' else alert.status.value}",
        f"Severity:   {alert.severity.value}",
        f"Condition:  {alert.condition.value}",
        f"Rule:       {alert.rule_name}",
    ]
    if alert.resource_name or alert.resource_id:
        lines.append(f"Resource:   {alert.resource_name or alert.resource_id}"
                     f" ({alert.resource_kind or 'unknown kind'})")
    lines.append(f"{alert.subject_type.value.capitalize() + ':':<12}{alert.subject_id}")
    lines.append(f"Raised:     {alert.first_raised_at:%Y-%m-%d %H:%M:%S %Z}"
                 + (f" ({alert.count} times)" if alert.count > 1 else ""))
    if alert.resolved_at is not None:
        lines.append(f"Resolved:   {alert.resolved_at:%Y-%m-%d %H:%M:%S %Z}"
                     + (f" — {alert.resolution}" if alert.resolution else ""))
    if alert.detail:
        lines += ["", alert.detail]
    if dashboard_url:
        lines += ["", f"Open alerts: {dashboard_url}"]
    return "\n".join(lines) + "\n"
