"""422 answers are JSON with each invalid field's path, not a Python repr."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from amora_authz._validation import field_errors
from amora_authz.testing import RunningService as Running
from amora_authz.testing import dev_settings, serve

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async with serve(dev_settings(tmp_path)) as svc:
        yield svc


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"device_id": 5, "signing_key": "x", "encryption_key": "y"}, "body.device_id", "Expected `str`, got `int`"),
        ({"signing_key": "x"}, "body.device_id", "Object missing required field `device_id`"),
        (["a list"], "body", "Expected `object`, got `array`"),
    ],
)
async def test_a_bad_body_names_the_field(running: Running, body: Any, field: str, message: str) -> None:
    answer = await running.http.post("/v1/admin/devices", json=body, headers=await running.auth("admin"))
    assert answer.status_code == 422
    document = answer.json()
    assert document["code"] == "invalid_input"
    assert document["errors"] == [{"field": field, "message": message}]
    assert document["message"] == f"invalid request: {field}: {message}"
    assert "'source'" not in document["message"]  # no Python repr


async def test_a_bad_query_parameter_names_it(running: Running) -> None:
    answer = await running.http.get("/v1/admin/devices", params={"limit": "ten"}, headers=await running.auth("admin"))
    assert answer.status_code == 422
    assert answer.json()["errors"] == [{"field": "query.limit", "message": "Expected `int`, got `str`"}]


def test_a_nested_field_keeps_its_path() -> None:
    extra = [{"message": "Expected `int`, got `str` - at `$.broker.port`", "key": "data", "source": "body"}]
    assert [(e.field, e.message) for e in field_errors(extra)] == [("body.broker.port", "Expected `int`, got `str`")]
    assert field_errors("not a list") == []
