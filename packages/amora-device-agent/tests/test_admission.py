"""The verification path's own guards: session lists, retained commands, the refusal budget."""

from __future__ import annotations

import msgspec

from amora_agent._admission import RefusalBudget
from amora_agent._mqtt import InboundMessage
from amora_protocol import (
    ChangeVolume,
    Codec,
    CommandStatus,
    RejectReason,
    SessionList,
    SigningKey,
    commands_topic,
    issue_session_list,
    sessions_topic,
    unauthenticated_id,
)

NOW = 1_800_000_000_000


def inbound(topic: str, payload: bytes, *, retain: bool = False, correlation: bytes | None = None) -> InboundMessage:
    return InboundMessage(
        topic=topic,
        payload=payload,
        qos=1,
        retain=retain,
        content_type=Codec.MSGPACK.value,
        correlation_data=correlation,
        response_topic=None,
    )


def session_list(authz_key: SigningKey, *sessions: str, issued_at_ms: int = NOW, device_id: str = "player-1") -> bytes:
    return issue_session_list(SessionList(device_id=device_id, issued_at_ms=issued_at_ms, sessions=sessions), authz_key)


async def test_a_session_missing_from_the_list_is_refused_as_revoked(make_offline_agent, make_app, authz_key) -> None:
    agent = make_offline_agent()
    kept, dropped = make_app(("player-1",)), make_app(("player-1",))
    agent._on_message(inbound(sessions_topic("player-1"), session_list(authz_key, kept.session_id, dropped.session_id)))
    _, payload = dropped.command("player-1", ChangeVolume(delta=1))
    assert (await agent._handle_command(inbound(commands_topic("player-1"), payload))).status is CommandStatus.SUCCEEDED
    # The authz service logs `dropped` out: a newer list without it.
    agent._on_message(
        inbound(sessions_topic("player-1"), session_list(authz_key, kept.session_id, issued_at_ms=NOW + 1))
    )
    command, payload = dropped.command("player-1", ChangeVolume(delta=1))
    answer = await agent._handle_command(inbound(commands_topic("player-1"), payload))
    assert (answer.command_id, answer.status, answer.reason) == (
        command.id,
        CommandStatus.REJECTED,
        RejectReason.UNAUTHORIZED,
    )
    assert answer.message.startswith(f"revoked: session {dropped.session_id!r}")
    _, payload = kept.command("player-1", ChangeVolume(delta=1))
    assert (await agent._handle_command(inbound(commands_topic("player-1"), payload))).status is CommandStatus.SUCCEEDED


async def test_only_a_newer_list_signed_by_authz_for_this_device_replaces_the_list(
    make_offline_agent, make_app, authz_key
) -> None:
    agent = make_offline_agent()
    app = make_app(("player-1",))
    agent._on_message(inbound(sessions_topic("player-1"), session_list(authz_key, issued_at_ms=NOW + 10)))
    assert agent.session_list.issued_at_ms == NOW + 10
    refused = [
        session_list(authz_key, app.session_id, issued_at_ms=NOW + 5),  # older: a stale retained copy
        session_list(authz_key, app.session_id, issued_at_ms=NOW + 10),  # same age
        session_list(SigningKey.generate(), app.session_id, issued_at_ms=NOW + 20),  # not authz
        session_list(authz_key, app.session_id, issued_at_ms=NOW + 20, device_id="player-2"),  # another device
        b"\x93garbage",
    ]
    for payload in refused:
        agent._on_message(inbound(sessions_topic("player-1"), payload))
    assert agent.session_list.issued_at_ms == NOW + 10
    assert agent.take_usage()["session_lists_refused"] == 3
    _, payload = app.command("player-1", ChangeVolume(delta=1))
    answer = await agent._handle_command(inbound(commands_topic("player-1"), payload))
    assert (answer.status, answer.reason) == (CommandStatus.REJECTED, RejectReason.UNAUTHORIZED)
    assert answer.message.startswith("revoked:")


async def test_retained_and_empty_commands_never_reach_the_queue(make_offline_agent, make_app) -> None:
    agent = make_offline_agent()
    _, payload = make_app(("player-1",)).command("player-1", ChangeVolume(delta=1))
    agent._on_message(inbound(commands_topic("player-1"), payload, retain=True))
    agent._on_message(inbound(commands_topic("player-1"), b""))  # authz clearing a retained one
    assert agent._commands.empty()
    assert agent.take_usage() == {"retained_commands_dropped": 1}
    agent._on_message(inbound(commands_topic("player-1"), payload))
    assert agent._commands.qsize() == 1


async def test_unauthenticated_refusals_are_answered_within_a_budget(make_offline_agent, make_app) -> None:
    agent = make_offline_agent()
    app = make_app(("player-1",))
    answered = 0
    for n in range(200):
        _, payload = app.command("player-1", ChangeVolume(delta=1))
        forged = payload[:-1] + bytes([payload[-1] ^ 1])  # same claimed sender, bad signature
        response = await agent._handle_command(inbound(commands_topic("player-1"), forged, correlation=b"c%d" % n))
        if response is not None:
            assert response.command_id == unauthenticated_id(forged)
            answered += 1
    # One claimed sender gets its burst, then about one answer a second (the loop takes less).
    assert 5 <= answered <= 7
    assert agent.take_usage()["commands_unanswered"] == 200 - answered


async def test_authenticated_refusals_are_always_answered_by_their_id(make_offline_agent, make_app) -> None:
    agent = make_offline_agent()
    app = make_app(("player-1",), grant_ttl_ms=-1_000)  # the grant expired a second ago
    for _ in range(50):
        command, payload = app.command("player-1", ChangeVolume(delta=1))
        response = await agent._handle_command(inbound(commands_topic("player-1"), payload))
        assert (response.command_id, response.reason) == (command.id, RejectReason.EXPIRED)


def test_refusal_budget_bounds_each_sender_and_all_together() -> None:
    now = [0.0]
    budget = RefusalBudget(per_sender_rate=1.0, per_sender_burst=2, total_rate=3.0, total_burst=4, clock=lambda: now[0])
    assert [budget.take("a") for _ in range(3)] == [True, True, False]
    # Made-up senders: each has a fresh bucket, the global one stops them.
    assert [budget.take(f"s{i}") for i in range(4)] == [True, True, False, False]
    now[0] += 1.0  # one second refills one per sender, three in all
    assert budget.take("a")
    assert not budget.take("a")
    assert [budget.take(f"t{i}") for i in range(3)] == [True, True, False]


def test_refusal_budget_forgets_senders_least_recently_used_first() -> None:
    budget = RefusalBudget(per_sender_burst=1, total_rate=1e9, total_burst=1e9, max_senders=2, clock=lambda: 0.0)
    assert budget.take("a")
    assert not budget.take("a")
    assert budget.take("b")
    assert budget.take("c")  # "a" is forgotten: it starts with a full bucket again
    assert budget.take("a")
    assert len(msgspec.json.encode(list(budget._senders))) < 100


async def test_wait_session_list_returns_once_the_list_holds(make_offline_agent, make_app, authz_key) -> None:
    import asyncio  # noqa: PLC0415

    agent = make_offline_agent()
    app = make_app(("player-1",))
    waiter = asyncio.create_task(agent.wait_session_list(lambda s: s is not None and s.allows(app.session_id)))
    agent._on_message(inbound(sessions_topic("player-1"), session_list(authz_key, issued_at_ms=NOW)))
    await asyncio.sleep(0)
    assert not waiter.done()  # a list without the session
    agent._on_message(
        inbound(sessions_topic("player-1"), session_list(authz_key, app.session_id, issued_at_ms=NOW + 1))
    )
    await asyncio.wait_for(waiter, 5)
    assert agent.session_list is not None
    assert agent.session_list.allows(app.session_id)


async def test_a_grant_newer_than_the_list_waits_for_the_list_that_names_it(
    make_offline_agent, make_app, authz_key
) -> None:
    # A command can overtake, through another connection, the list the authz service
    # published for its brand-new session: it waits for that list instead of being refused.
    import asyncio  # noqa: PLC0415

    from amora_protocol import now_ms  # noqa: PLC0415

    agent = make_offline_agent()
    old, new, gone = make_app(("player-1",)), make_app(("player-1",)), make_app(("player-1",))
    agent._on_message(
        inbound(sessions_topic("player-1"), session_list(authz_key, old.session_id, issued_at_ms=now_ms() - 60_000))
    )
    _, payload = new.command("player-1", ChangeVolume(delta=1))
    handling = asyncio.create_task(agent._handle_command(inbound(commands_topic("player-1"), payload)))
    await asyncio.sleep(0)
    assert not handling.done()  # held for the newer list, not refused
    latest = now_ms() + 1_000
    agent._on_message(
        inbound(
            sessions_topic("player-1"), session_list(authz_key, old.session_id, new.session_id, issued_at_ms=latest)
        )
    )
    assert (await asyncio.wait_for(handling, 5)).status is CommandStatus.SUCCEEDED

    # A grant older than the list in force and missing from it was ended: refused at once.
    command, payload = gone.command("player-1", ChangeVolume(delta=1))
    answer = await agent._handle_command(inbound(commands_topic("player-1"), payload))
    assert (answer.command_id, answer.status, answer.reason) == (
        command.id,
        CommandStatus.REJECTED,
        RejectReason.UNAUTHORIZED,
    )
