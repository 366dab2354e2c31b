"""The agent's own log names why the broker would not have it (real broker, real CRL)."""

import asyncio

import pytest
import structlog

from amora_agent import AgentOptions, SimulatedPlayer

pytestmark = [pytest.mark.services]


async def test_a_revoked_certificate_is_named_in_the_agents_log(broker, live_device, dev_pki) -> None:
    device = live_device(broker)
    dev_pki.revoke(device.cert.serial)
    broker.reload()
    options = AgentOptions(durable=False, backoff_initial_s=0.05, backoff_max_s=0.2)
    with structlog.testing.capture_logs() as logs:
        async with device.agent(SimulatedPlayer(), options=options) as agent:
            async with asyncio.timeout(15):
                # capture_logs offers a list, no event: poll it, bounded by the timeout.
                while not any(e["event"] == "mqtt connect failed" for e in logs):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert agent.broker is None
    failed = [e for e in logs if e["event"] == "mqtt connect failed"]
    # The broker only resets the socket after a CRL hit: the agent says what that means, at
    # once (not after its connect timeout, which a TimeoutError would show).
    assert "revoked" in failed[0]["reason"]
    assert "TimeoutError" not in failed[0]["error"]
