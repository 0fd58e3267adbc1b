"""Alert domain: rules, notification targets, alerts and their deliveries (owner: alerter).

The alerter turns health and failure events into alerts.  An alert is deduplicated by
(rule, condition, subject) while it is not resolved: a repeated raise bumps its ``count``
instead of making a new one.  Facts: ``alert.raised`` (new, or reopened after a quick
resolve), ``alert.repeated``, ``alert.acknowledged``, ``alert.resolved``.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from .envelope import Command, Event, Reply
from .fields import Name, PlainString


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return ("info", "warning", "critical").index(self.value)


class AlertCondition(StrEnum):
    """What an alert is about; rules select alerts by these names."""

    HOST_UNREACHABLE = "host_unreachable"
    HOST_KEY_CHANGED = "host_key_changed"
    DISK_LOW = "disk_low"
    BUILD_FAILED = "build_failed"
    BUILD_REJECTED = "build_rejected"
    BOOT_FAILED = "boot_failed"


class AlertStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class SubjectType(StrEnum):
    """What the alert is about: a resource (host, board), a build or an environment."""

    RESOURCE = "resource"
    BUILD = "build"
    ENVIRONMENT = "environment"


class TargetKind(StrEnum):
    EMAIL = "email"
    WEBHOOK = "webhook"


class AlertView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    alert_id: uuid.UUID
    rule_id: uuid.UUID
    rule_name: str
    condition: AlertCondition
    severity: Severity
    status: AlertStatus
    subject_type: SubjectType
    subject_id: uuid.UUID
    #: the host or board involved (for a build: its server), when known
    resource_id: uuid.UUID | None = None
    resource_kind: str | None = None
    resource_name: str | None = None
    title: str
    detail: str = ""
    #: how many times the condition was raised while this alert stood
    count: int = 1
    first_raised_at: datetime
    last_raised_at: datetime
    #: when the event that raised it happened (for the raise latency)
    occurred_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolution: str | None = None


class AlertRaised(Event):
    subject: ClassVar[str] = "alert.raised"
    alert: AlertView
    #: an alert resolved a short while ago came back (a flapping condition)
    reopened: bool = False


class AlertRepeated(Event):
    subject: ClassVar[str] = "alert.repeated"
    alert: AlertView


class AlertAcknowledged(Event):
    subject: ClassVar[str] = "alert.acknowledged"
    alert: AlertView


class AlertResolved(Event):
    subject: ClassVar[str] = "alert.resolved"
    alert: AlertView


# ---- rules and targets -----------------------------------------------------------------


class RuleSpec(BaseModel):
    """What an admin writes: which alerts a rule makes, and where they are sent."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(max_length=100)
    #: conditions this rule raises alerts for; empty means every condition
    conditions: list[AlertCondition] = Field(default_factory=list)
    #: the least severity an alert needs to be made by this rule
    min_severity: Severity = Severity.INFO
    #: only resources of this kind (``build_server``, ``qemu_host``, ``board`` …); None = any
    resource_kind: PlainString | None = None
    #: only resources carrying all these labels
    labels: dict[Name, PlainString] = Field(default_factory=dict)
    enabled: bool = True
    #: names or ids of notification targets (email, webhook); the dashboard always shows it
    targets: list[Name] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _stripped(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be blank")
        return v


class RuleView(RuleSpec):
    model_config = ConfigDict(extra="ignore")

    rule_id: uuid.UUID
    created_at: datetime | None = None


class TargetSpec(BaseModel):
    """An email recipient list or a webhook URL; the webhook's secret signs each POST."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(max_length=100)
    kind: TargetKind
    #: email: recipient addresses; webhook: one http(s) URL
    addresses: list[Name] = Field(default_factory=list)
    url: PlainString | None = None
    #: webhook HMAC-SHA256 key; stored encrypted, never shown again
    secret: SecretStr | None = None
    enabled: bool = True


class TargetView(BaseModel):
    """A target as others may see it: no secret, only whether one is set."""

    model_config = ConfigDict(extra="ignore")

    target_id: uuid.UUID
    name: str
    kind: TargetKind
    addresses: list[str] = Field(default_factory=list)
    url: str | None = None
    has_secret: bool = False
    enabled: bool = True


class DeliveryView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    delivery_id: int
    alert_id: uuid.UUID
    target_id: uuid.UUID
    target_name: str
    kind: TargetKind
    #: which fact is delivered: ``raised`` or ``resolved``
    event: str
    #: pending, delivered, failed (gave up) or skipped (superseded by a later state)
    status: str
    attempts: int
    last_error: str | None = None
    created_at: datetime
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None


# ---- commands ---------------------------------------------------------------------------


class ListAlerts(Command):
    subject: ClassVar[str] = "alert.cmd.list"
    #: statuses to include; empty means all
    statuses: list[AlertStatus] = Field(default_factory=list)
    limit: int = Field(default=200, ge=1, le=2000)


class AlertListReply(Reply):
    alerts: list[AlertView] = Field(default_factory=list)
    #: alerts not resolved (open or acknowledged) — the badge
    open_count: int = 0


class GetAlert(Command):
    subject: ClassVar[str] = "alert.cmd.get"
    alert_id: uuid.UUID


class AcknowledgeAlert(Command):
    subject: ClassVar[str] = "alert.cmd.acknowledge"
    alert_id: uuid.UUID
    by: str = ""


class AlertReply(Reply):
    alert: AlertView | None = None
    deliveries: list[DeliveryView] = Field(default_factory=list)


class ListAlertRules(Command):
    subject: ClassVar[str] = "alert.cmd.rules"


class RuleListReply(Reply):
    rules: list[RuleView] = Field(default_factory=list)


class SaveAlertRule(Command):
    """Create a rule (``rule_id`` None) or replace an existing one."""

    subject: ClassVar[str] = "alert.cmd.save_rule"
    rule_id: uuid.UUID | None = None
    rule: RuleSpec


class DeleteAlertRule(Command):
    subject: ClassVar[str] = "alert.cmd.delete_rule"
    rule_id: uuid.UUID


class RuleReply(Reply):
    rule: RuleView | None = None


class ListAlertTargets(Command):
    subject: ClassVar[str] = "alert.cmd.targets"


class TargetListReply(Reply):
    targets: list[TargetView] = Field(default_factory=list)


class SaveAlertTarget(Command):
    """Create a target (``target_id`` None) or replace one; a None secret keeps the old."""

    subject: ClassVar[str] = "alert.cmd.save_target"
    target_id: uuid.UUID | None = None
    target: TargetSpec


class DeleteAlertTarget(Command):
    subject: ClassVar[str] = "alert.cmd.delete_target"
    target_id: uuid.UUID


class TargetReply(Reply):
    target: TargetView | None = None
