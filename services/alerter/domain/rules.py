"""Which rules make an alert of a raised condition."""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from labfleet.shared.events.alert import AlertCondition, Severity

from .signals import Signal


@dataclass(frozen=True)
class Rule:
    rule_id: uuid.UUID
    name: str
    conditions: frozenset[AlertCondition] = frozenset()
    min_severity: Severity = Severity.INFO
    resource_kind: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    enabled: bool = True
    target_ids: tuple[uuid.UUID, ...] = ()


def rule_matches(rule: Rule, signal: Signal, resource_labels: Mapping[str, str]) -> bool:
    if not rule.enabled:
        return False
    if rule.conditions and signal.condition not in rule.conditions:
        return False
    if signal.severity.rank < rule.min_severity.rank:
        return False
    if rule.resource_kind is not None and rule.resource_kind != signal.resource_kind:
        return False
    return all(resource_labels.get(k) == v for k, v in rule.labels.items())


def matching_rules(rules: Iterable[Rule], signal: Signal,
                   resource_labels: Mapping[str, str]) -> list[Rule]:
    return [r for r in rules if rule_matches(r, signal, resource_labels)]
