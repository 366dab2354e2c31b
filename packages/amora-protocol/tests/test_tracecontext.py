"""Trace context in MQTT user properties: the shipped vectors, and a round trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

import amora_protocol as ap

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).resolve().parent.parent / "vectors" / "trace_context.json").read_text()
)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    found = ap.trace_context([(k, v) for k, v in vector["user_properties"]])
    expected = vector["expect"]
    assert (None if found is None else msgspec.structs.asdict(found)) == expected


def test_round_trip_through_properties() -> None:
    context = ap.TraceContext(
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736", parent_id="00f067aa0ba902b7", sampled=True, tracestate="k=v"
    )
    properties = ap.trace_properties(context)
    assert properties == [
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", "k=v"),
    ]
    assert ap.trace_context(properties) == context
