"""``/api/v1/alerts``, ``/api/v1/alert-rules``, ``/api/v1/alert-targets`` (answered by the alerter).

Rules and targets are data the alerter owns; these routes only carry a person's request
over NATS.  A webhook target's secret goes in, and never comes back out.
"""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status
from labfleet.shared.events.alert import (
    AcknowledgeAlert,
    AlertListReply,
    AlertReply,
    AlertStatus,
    AlertView,
    DeleteAlertRule,
    DeleteAlertTarget,
    GetAlert,
    ListAlertRules,
    ListAlerts,
    ListAlertTargets,
    RuleListReply,
    RuleReply,
    RuleSpec,
    RuleView,
    SaveAlertRule,
    SaveAlertTarget,
    TargetListReply,
    TargetReply,
    TargetSpec,
    TargetView,
)

from ..adapters.commands import ask_ok
from ..context import Gateway
from ..deps import CurrentUser, GatewayDep

router = APIRouter(tags=["alerts"])


async def list_alerts(gw: Gateway, statuses: list[AlertStatus], limit: int = 200
                      ) -> AlertListReply:
    return await ask_ok(gw.bus, ListAlerts(statuses=statuses, limit=limit), AlertListReply)


async def acknowledge(gw: Gateway, alert_id: uuid.UUID, username: str) -> AlertView:
    reply = await ask_ok(gw.bus, AcknowledgeAlert(alert_id=alert_id, by=username), AlertReply)
    assert reply.alert is not None
    return reply.alert


@router.get("/alerts", response_model=list[AlertView])
async def alerts(gw: GatewayDep, _: CurrentUser,
                 status_: Annotated[list[AlertStatus] | None, Query(alias="status")] = None,
                 limit: Annotated[int, Query(ge=1, le=2000)] = 200) -> list[AlertView]:
    """Standing alerts first (newest first), then resolved ones; ``status`` narrows."""
    return (await list_alerts(gw, status_ or [], limit)).alerts


@router.get("/alerts/{alert_id}", response_model=AlertReply)
async def alert(alert_id: uuid.UUID, gw: GatewayDep, _: CurrentUser) -> AlertReply:
    """The alert with each of its deliveries (attempts, status, last error)."""
    return await ask_ok(gw.bus, GetAlert(alert_id=alert_id), AlertReply)


@router.post("/alerts/{alert_id}/acknowledge", response_model=AlertView)
async def acknowledge_alert(alert_id: uuid.UUID, gw: GatewayDep, user: CurrentUser
                            ) -> AlertView:
    return await acknowledge(gw, alert_id, user.username)


@router.get("/alert-rules", response_model=list[RuleView])
async def rules(gw: GatewayDep, _: CurrentUser) -> list[RuleView]:
    return (await ask_ok(gw.bus, ListAlertRules(), RuleListReply)).rules


@router.post("/alert-rules", response_model=RuleView, status_code=status.HTTP_201_CREATED)
async def create_rule(body: RuleSpec, gw: GatewayDep, _: CurrentUser) -> RuleView:
    reply = await ask_ok(gw.bus, SaveAlertRule(rule=body), RuleReply)
    assert reply.rule is not None
    return reply.rule


@router.put("/alert-rules/{rule_id}", response_model=RuleView)
async def replace_rule(rule_id: uuid.UUID, body: RuleSpec, gw: GatewayDep, _: CurrentUser
                       ) -> RuleView:
    reply = await ask_ok(gw.bus, SaveAlertRule(rule_id=rule_id, rule=body), RuleReply)
    assert reply.rule is not None
    return reply.rule


@router.delete("/alert-rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_rule(rule_id: uuid.UUID, gw: GatewayDep, _: CurrentUser) -> None:
    await ask_ok(gw.bus, DeleteAlertRule(rule_id=rule_id), RuleReply)


@router.get("/alert-targets", response_model=list[TargetView])
async def targets(gw: GatewayDep, _: CurrentUser) -> list[TargetView]:
    return (await ask_ok(gw.bus, ListAlertTargets(), TargetListReply)).targets


@router.post("/alert-targets", response_model=TargetView, status_code=status.HTTP_201_CREATED)
async def create_target(body: TargetSpec, gw: GatewayDep, _: CurrentUser) -> TargetView:
    reply = await ask_ok(gw.bus, SaveAlertTarget(target=body), TargetReply)
    assert reply.target is not None
    return reply.target


@router.put("/alert-targets/{target_id}", response_model=TargetView)
async def replace_target(target_id: uuid.UUID, body: TargetSpec, gw: GatewayDep,
                         _: CurrentUser) -> TargetView:
    reply = await ask_ok(gw.bus, SaveAlertTarget(target_id=target_id, target=body),
                         TargetReply)
    assert reply.target is not None
    return reply.target


@router.delete("/alert-targets/{target_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_target(target_id: uuid.UUID, gw: GatewayDep, _: CurrentUser) -> None:
    await ask_ok(gw.bus, DeleteAlertTarget(target_id=target_id), TargetReply)
