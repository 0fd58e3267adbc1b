"""Which entity an event is about decides what it is handled in order with."""
from __future__ import annotations

import uuid

from labfleet.shared.dispatch import ordering_key
from labfleet.shared.events.bench import BenchPing
from labfleet.shared.events.build import BuildRejected
from labfleet.shared.events.health import HealthChanged


def test_events_of_one_entity_share_a_key_and_others_are_their_own() -> None:
    build = uuid.uuid4()
    rejected = [BuildRejected.model_validate(
        {"build_id": str(build), "error": {"code": "no_server", "message": "none fits"}})
        for _ in range(2)]
    assert ordering_key(rejected[0]) == ordering_key(rejected[1]) == str(build)
    resource = uuid.uuid4()
    changed = HealthChanged.model_validate(
        {"resource_id": str(resource), "kind": "build_server", "previous": "online",
         "status": "offline"})
    assert ordering_key(changed) == str(resource)
    pings = [BenchPing(seq=i) for i in range(2)]  # about no entity: each its own key
    assert ordering_key(pings[0]) == str(pings[0].event_id) != ordering_key(pings[1])
