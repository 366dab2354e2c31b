"""Faults on the real brokers (SIGSTOP / SIGKILL of a harness mosquitto) and the answers
that say what a device could not do: hung broker, failover, failback, resent commands,
``busy``, ``clock-skew``, and the authz service's rate limit.
"""

from __future__ import annotations

import asyncio

import pytest
from sdk_waits import next_state, stopped

from amora_protocol import CommandStatus, Pause, Ping, RejectReason, SetVolume
from amora_sync import (
    AmoraClient,
    ClockSkewError,
    CommandRejectedError,
    CommandTimeoutError,
    ConnectionState,
    DeviceBusyError,
    RateLimitedError,
    ReconnectPolicy,
)
from amora_sync._session import retry_after_seconds

pytestmark = pytest.mark.services

WAIT = 15.0
# Quick liveness checks and failback, so that the tests take seconds (defaults: 1.5 s, 2 s, 30 s).
FAST = ReconnectPolicy(
    initial_delay=0.05,
    max_delay=0.5,
    connect_timeout=5,
    liveness_interval=0.5,
    liveness_timeout=1.0,
    failback_interval=0.5,
)


async def wait_connected_to(client, port: int) -> list[str]:
    """Wait until connected to `port`; return the errors reported on the way."""
    errors: list[str] = []
    async with asyncio.timeout(WAIT):
        async for info in client.connection_changes():
            if info.error:
                errors.append(info.error)
            if info.state is ConnectionState.CONNECTED and info.endpoint.port == port:
                return errors
    raise AssertionError("the client closed")


async def test_a_hung_primary_is_left_for_the_standby_and_the_client_fails_back(pair_stack):
    primary, standby = pair_stack.brokers
    device = pair_stack.devices["player-1"]
    await device.connect(standby)  # the device stays reachable throughout
    async with pair_stack.client(reconnect=FAST) as client, client.watch("player-1") as events:
        assert client.connection.endpoint.port == primary.app_port
        with stopped(primary):
            # gmqtt's keepalive (2 x 30 s) and a graceful TLS close (30 s) are far beyond WAIT:
            # only the liveness probe and a close that never blocks get the client out in time.
            errors = await wait_connected_to(client, standby.app_port)
            assert any("did not answer" in e for e in errors), errors  # the probe found it hung
            during = device.publish_state(volume=21)
            assert await next_state(events, version=during.version) == during
        # Resumed: the client moves back to the preferred broker by itself.
        await wait_connected_to(client, primary.app_port)
        await primary_bridged(standby)
        after = device.publish_state(volume=22)
        assert await next_state(events, version=after.version) == after
        assert (await client.command("player-1", Ping(), timeout=WAIT)).status is CommandStatus.SUCCEEDED


async def primary_bridged(standby) -> None:
    # The standby's bridge to the primary reconnects on its own schedule after the stop.
    await asyncio.to_thread(standby.wait_bridged)


@pytest.mark.parametrize("outcome", [CommandStatus.SUCCEEDED, CommandStatus.REJECTED])
async def test_a_command_whose_answer_was_lost_is_resent_after_failover_and_runs_once(pair_stack, outcome):
    primary, standby = pair_stack.brokers
    device = pair_stack.devices["player-1"]
    device.answer = outcome
    device.reject_reason = RejectReason.VERSION_MISMATCH if outcome is CommandStatus.REJECTED else None
    device.answers_to_lose = 1  # it runs the command, the answer never arrives
    await device.connect(standby)
    async with pair_stack.client(reconnect=FAST) as client:
        assert client.connection.endpoint.port == primary.app_port
        task = asyncio.create_task(client.command("player-1", SetVolume(volume=33), timeout=WAIT))
        await device.wait_command()
        primary.kill()  # the link changes while the command waits for its answer
        if outcome is CommandStatus.SUCCEEDED:
            response = await task
            assert response.status is CommandStatus.SUCCEEDED
        else:
            with pytest.raises(CommandRejectedError) as caught:
                await task
            response = caught.value.response
            assert caught.value.reason == "version-mismatch"
        # The same id came again after the failover; it ran once; the answer is the original
        # outcome. More than one resend is allowed: on a loaded machine the duplicate's answer can
        # take longer than the resend interval, and what must hold is that the command ran once.
        assert response.duplicate
        command_id = response.command_id
        assert device.seen_ids.count(command_id) >= 2
        assert [c.id for c in device.commands] == [command_id]
        assert client.connection.endpoint.port == standby.app_port


async def test_a_busy_device_is_a_device_busy_error(stack):
    device = stack.devices["player-1"]
    device.answer = CommandStatus.REJECTED
    device.reject_reason = RejectReason.BUSY
    device.retry_after_ms = 1500
    await device.connect(stack.broker)
    async with stack.client() as client:
        with pytest.raises(DeviceBusyError) as caught:
            await client.command("player-1", Pause())
        assert caught.value.retry_after == 1.5
        assert caught.value.reason == "busy"
        assert "try again in 1.5 s" in str(caught.value)


async def test_a_busy_answer_by_payload_digest_is_a_device_busy_error_not_a_timeout(stack):
    device = stack.devices["player-1"]
    device.busy_by_digest = True  # as the agent with a full command queue
    device.retry_after_ms = 2000
    await device.connect(stack.broker)
    async with stack.client(resend_interval=60) as client:
        try:
            await client.command("player-1", Pause(), timeout=5)
        except DeviceBusyError as exc:
            caught = exc
        except CommandTimeoutError:
            pytest.fail("the busy answer by digest was not matched to its command")
        else:
            pytest.fail("a busy device did not refuse")
    assert caught.retry_after == 2.0
    assert caught.response.command_id.startswith("unauthenticated:")
    assert device.commands == []


async def test_an_unanswered_command_is_resent_when_the_device_comes_online_and_runs_once(stack):
    device = stack.devices["player-1"]
    device.commands_to_ignore = 1  # the first copy is lost, as to a broker without its session
    await device.connect(stack.broker)
    # No periodic resend within the test: only the online status can bring the second copy.
    async with stack.client(resend_interval=600) as client:
        task = asyncio.create_task(client.command("player-1", SetVolume(volume=40), timeout=WAIT))
        await device.wait_ignored()
        sent = client.stats.commands_sent
        await device.publish_status(online=True)  # as after the device's own failover
        response = await task
    assert response.status is CommandStatus.SUCCEEDED
    assert not response.duplicate
    assert client.stats.commands_sent == sent + 1
    assert device.ignored == [response.command_id]
    assert [c.id for c in device.commands] == [response.command_id]


async def test_an_unanswered_command_is_resent_every_resend_interval(stack):
    device = stack.devices["player-1"]
    device.commands_to_ignore = 2
    await device.connect(stack.broker)
    async with stack.client(resend_interval=0.5) as client:
        response = await client.command("player-1", SetVolume(volume=41), timeout=WAIT)
    assert response.status is CommandStatus.SUCCEEDED
    assert device.ignored == [response.command_id] * 2
    assert [c.id for c in device.commands] == [response.command_id]


def test_a_resend_interval_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="resend_interval must be a positive"):
        AmoraClient("http://127.0.0.1:1", lambda: "token", resend_interval=0)


@pytest.mark.parametrize(
    ("device_ahead_s", "authz_ahead_s", "culprit", "says"),
    [
        (45, 0, "device", "the device's clock is off"),
        (-45, 0, "device", "the device's clock is off"),
        # The device and the authz service agree, 45 s ahead of this app: the app is behind.
        (45, 45, "app", "so this app's clock is off"),
    ],
)
async def test_a_clock_skew_rejection_says_whose_clock_is_off(stack, device_ahead_s, authz_ahead_s, culprit, says):
    device = stack.devices["player-1"]
    device.clock_offset_ms = device_ahead_s * 1000
    stack.authz.clock_offset_s = authz_ahead_s
    await device.connect(stack.broker)
    async with stack.client() as client:
        with pytest.raises(ClockSkewError) as caught:
            await client.command("player-1", Pause())
    error = caught.value
    assert error.reason == "clock-skew"
    assert error.culprit == culprit
    assert error.offset_ms is not None
    assert abs(error.offset_ms - device_ahead_s * 1000) < 5_000  # measured by the device, transit included
    assert says in str(error)
    assert error.app_offset_ms is not None
    assert abs(error.app_offset_ms - authz_ahead_s * 1000) <= 2_000  # an HTTP Date has whole seconds
    assert device.commands == []  # refused, never ran


async def test_session_creation_waits_as_the_authz_service_says_with_retry_after(stack):
    stack.authz.rate_limited = 2
    stack.authz.retry_after = "1"
    async with stack.client() as client:
        assert client.connected
    assert stack.authz.calls.count("POST /v1/sessions") == 3


async def test_a_rate_limit_longer_than_the_client_waits_is_a_clear_error(stack):
    stack.authz.rate_limited = 1
    stack.authz.retry_after = "120"
    with pytest.raises(RateLimitedError) as caught:
        async with stack.client(rate_limit_wait=5):
            pass
    assert caught.value.retry_after == 120
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limited"
    assert "rate_limit_wait" in str(caught.value)
    assert stack.authz.calls.count("POST /v1/sessions") == 1  # it did not sit out 120 s


def test_retry_after_in_seconds_or_as_an_http_date():
    assert retry_after_seconds("7", now_ms=0) == 7
    assert retry_after_seconds("Thu, 01 Jan 1970 00:00:30 GMT", now_ms=10_000) == 20
    assert retry_after_seconds("Thu, 01 Jan 1970 00:00:30 GMT", now_ms=60_000) == 0
    assert retry_after_seconds("soon", now_ms=0) is None
    assert retry_after_seconds(None, now_ms=0) is None
