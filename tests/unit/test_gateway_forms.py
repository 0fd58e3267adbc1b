"""The registration forms' shared reading of their fields and of a refusal."""
from __future__ import annotations

import asyncio
from typing import Any

from labfleet.gateway.domain.errors import ApiError
from labfleet.gateway.models import BuildServerCreate
from labfleet.gateway.routes.forms import form_labels, form_secret, split_list, submit_registration
from labfleet.gateway.routes.pages_servers import FORM_FIELDS, form_to_model

FILLED = {"hostname": "b1", "address": "10.0.0.5", "ssh_port": "2222", "username": "lab",
          "auth": "key", "private_key": "KEY", "password": "pw", "labels": "rack=3\nrow = a",
          "build_configs": "tinyconfig, defconfig\nbsp", "architectures": ["arm64"]}


def submitted(register: Any, values: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(submit_registration(register, values, FORM_FIELDS))


def test_lists_and_labels_take_lines_or_commas() -> None:
    assert split_list(" a, b\n\nc ,") == ["a", "b", "c"]
    assert form_labels(FILLED) == {"rack": "3", "row": "a"}
    assert form_labels({}) == {}


def test_only_the_chosen_way_to_log_in_is_sent() -> None:
    assert form_secret(FILLED) == {"password": None, "private_key": "KEY"}
    assert form_secret({**FILLED, "auth": "password"}) == {"password": "pw", "private_key": None}
    assert form_secret({"auth": "password", "password": ""}) == {"password": None,
                                                                 "private_key": None}


def test_the_form_becomes_the_api_model() -> None:
    model = form_to_model(FILLED)
    assert model.ssh_port == 2222 and model.build_configs == ["tinyconfig", "defconfig", "bsp"]
    assert model.private_key is not None and model.private_key.get_secret_value() == "KEY"
    assert model.password is None and model.labels == {"rack": "3", "row": "a"}


def test_an_accepted_form_starts_empty_again() -> None:
    async def register() -> str:
        return "registered-b1"

    form = submitted(register, FILLED)
    assert form == {"values": {"ssh_port": "22", "auth": "key"}, "errors": {},
                    "registered": "registered-b1"}


def test_a_field_the_model_refuses_is_named_and_secrets_are_not_echoed() -> None:
    async def register() -> None:
        form_to_model({**FILLED, "ssh_port": "70000"})

    form = submitted(register, FILLED)
    assert set(form["errors"]) == {"ssh_port"}
    assert "65535" in form["errors"]["ssh_port"]
    assert form["registered"] is None
    assert "password" not in form["values"] and "private_key" not in form["values"]
    assert form["values"]["hostname"] == "b1"


def test_a_refusal_about_no_field_of_the_form_goes_on_top() -> None:
    async def register() -> None:
        BuildServerCreate.model_validate({**form_to_model(FILLED).model_dump(), "x": 1})

    form = submitted(register, FILLED)
    assert list(form["errors"]) == ["_form"]


def test_a_refused_key_login_is_shown_at_the_key() -> None:
    async def register() -> None:
        raise ApiError(422, "ssh_auth_failed", "authentication failed for lab@10.0.0.5",
                       hint="check the key", field="password")

    form = submitted(register, FILLED)
    assert form["errors"] == {
        "private_key": "authentication failed for lab@10.0.0.5 — check the key"}
    with_password = submitted(register, {**FILLED, "auth": "password"})
    assert list(with_password["errors"]) == ["password"]
