"""Every protocol Struct is ``gc=False``, and structurally cannot be part of a reference cycle.

An object the cyclic collector does not track must never be in a cycle, or the cycle leaks.
A Struct instance can only be in one if it can reach a mutable container or an arbitrary
object that could point back at it. So each field's declared type must be an immutable
scalar, bytes, an enum member, a literal, a tuple of allowed types, a union of them, or
another ``gc=False`` Struct whose fields pass the same check.
"""

from __future__ import annotations

import gc
import importlib
import inspect
import pkgutil

import msgspec
import msgspec.inspect as mi
import pytest

import amora_protocol
from amora_protocol import DeviceState, Header, MessageType, PlaybackStatus, Song

_SCALARS = (mi.NoneType, mi.BoolType, mi.IntType, mi.FloatType, mi.StrType, mi.BytesType, mi.EnumType, mi.LiteralType)


def _protocol_structs() -> list[type[msgspec.Struct]]:
    """Every Struct class defined in amora_protocol's modules, private ones included."""
    found: dict[str, type[msgspec.Struct]] = {}
    for info in pkgutil.iter_modules(amora_protocol.__path__, "amora_protocol."):
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, msgspec.Struct) and value.__module__ == module.__name__:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[name] for name in sorted(found)]


def _cycle_free(t: mi.Type, path: str, seen: set[type]) -> list[str]:  # noqa: PLR0911 - one answer per kind of type
    """The places under ``t`` that could hold a reference back to a Struct (empty: none)."""
    if isinstance(t, _SCALARS):
        return []
    if isinstance(t, mi.UnionType):
        return [p for member in t.types for p in _cycle_free(member, path, seen)]
    if isinstance(t, mi.VarTupleType):
        return _cycle_free(t.item_type, f"{path}[...]", seen)
    if isinstance(t, mi.TupleType):
        return [p for i, item in enumerate(t.item_types) for p in _cycle_free(item, f"{path}[{i}]", seen)]
    if isinstance(t, mi.StructType):
        if t.cls.__struct_config__.gc:
            return [f"{path}: {t.cls.__qualname__} is tracked by the collector (gc=True)"]
        if t.cls in seen:
            return []
        seen.add(t.cls)
        return [p for f in t.fields for p in _cycle_free(f.type, f"{path}.{f.name}", seen)]
    return [f"{path}: {type(t).__name__} may hold a reference back"]


STRUCTS = _protocol_structs()


def test_the_walk_finds_the_protocol_structs() -> None:
    names = {s.__qualname__ for s in STRUCTS}
    assert {"DeviceState", "Command", "Header", "Grant", "SessionList", "SessionResponse", "SetVolume"} <= names


@pytest.mark.parametrize("struct", STRUCTS, ids=lambda s: s.__qualname__)
def test_struct_is_untracked_and_cannot_form_a_cycle(struct: type[msgspec.Struct]) -> None:
    assert struct.__struct_config__.gc is False, f"{struct.__qualname__}: add gc=False (or explain why not)"
    assert _cycle_free(mi.type_info(struct), struct.__qualname__, set()) == []


@pytest.mark.parametrize(
    ("field_type", "bad"),
    [(list[int], True), (dict[str, int], True), (object, True), (tuple[int, ...], False), (bytes | None, False)],
)
def test_the_check_refuses_containers_that_could_point_back(field_type: object, bad: bool) -> None:
    probe = msgspec.defstruct("Probe", [("x", field_type)], gc=False, frozen=True)
    assert bool(_cycle_free(mi.type_info(probe), "Probe", set())) is bad


def test_the_check_refuses_a_nested_tracked_struct() -> None:
    inner = msgspec.defstruct("Inner", [("x", int)], frozen=True)
    outer = msgspec.defstruct("Outer", [("inner", inner)], gc=False, frozen=True)
    assert _cycle_free(mi.type_info(outer), "Outer", set()) == [
        "Outer.inner: Inner is tracked by the collector (gc=True)"
    ]


def test_decoded_values_are_not_tracked() -> None:
    state = DeviceState(device_id="dev-1", version=3, status=PlaybackStatus.PLAY, sampled_at_ms=1, song=Song(file="a"))
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=DeviceState)
    header = msgspec.msgpack.decode(
        msgspec.msgpack.encode(Header(v=1, type=MessageType.STATE, sender="dev-1", kid="k", epoch=1, seq=1, ts_ms=1)),
        type=Header,
    )
    assert decoded == state
    assert not gc.is_tracked(state)
    assert not gc.is_tracked(decoded)
    assert not gc.is_tracked(decoded.options)
    assert not gc.is_tracked(header)
