"""Each package's ``cancel_and_wait``: a cancellation of the caller is never swallowed.

``task.cancel(); with suppress(CancelledError): await task`` also ate a cancellation meant
for the caller when it arrived during the wait: the agent's connection task then went on
reconnecting after the agent was told to stop, and its shutdown never ended. The three
distributions each carry the helper (they share nothing but the protocol, which does no IO).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from amora_agent._tasks import cancel_and_wait as agent_cancel
from amora_authz._tasks import cancel_and_wait as authz_cancel
from amora_sync._tasks import cancel_and_wait as sdk_cancel

Helper = Callable[..., Awaitable[None]]
HELPERS = pytest.mark.parametrize(
    "cancel_and_wait", [agent_cancel, authz_cancel, sdk_cancel], ids=["agent", "authz", "sdk"]
)


def _slow_to_stop(cleaning: asyncio.Event, release: asyncio.Event) -> Callable[[], Coroutine[Any, Any, None]]:
    async def child() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaning.set()
            await release.wait()  # cleanup that takes a while (closing a socket, say)
            raise

    return child


@HELPERS
async def test_the_callers_cancellation_during_the_wait_is_raised(cancel_and_wait: Helper) -> None:
    cleaning, release = asyncio.Event(), asyncio.Event()
    went_on = False

    async def caller() -> None:
        nonlocal went_on
        child = asyncio.create_task(_slow_to_stop(cleaning, release)())
        await asyncio.sleep(0)  # let the child start
        await cancel_and_wait(child)
        went_on = True  # a swallowed cancellation would get here

    task = asyncio.create_task(caller())
    await cleaning.wait()
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not went_on


@HELPERS
async def test_the_childs_own_cancellation_is_absorbed(cancel_and_wait: Helper) -> None:
    cleaning, release = asyncio.Event(), asyncio.Event()
    release.set()
    child = asyncio.create_task(_slow_to_stop(cleaning, release)())
    await asyncio.sleep(0)
    await cancel_and_wait(child)  # returns: only the child was cancelled
    assert child.cancelled()


@HELPERS
async def test_an_error_the_child_ends_with_is_raised_unless_quiet(cancel_and_wait: Helper) -> None:
    async def failing() -> Any:
        try:
            await asyncio.Event().wait()
        finally:
            raise OSError("socket already gone")

    child = asyncio.create_task(failing())
    await asyncio.sleep(0)
    with pytest.raises(OSError, match="socket already gone"):
        await cancel_and_wait(child)
    quiet = asyncio.create_task(failing())
    await asyncio.sleep(0)
    await cancel_and_wait(quiet, quiet=True)
    assert isinstance(quiet.exception(), OSError)


def test_the_three_copies_stay_the_same() -> None:
    import inspect

    import amora_agent._tasks
    import amora_authz._tasks
    import amora_sync._tasks

    sources = {inspect.getsource(m) for m in (amora_agent._tasks, amora_authz._tasks, amora_sync._tasks)}
    assert len(sources) == 1, "the three _tasks.py copies differ: change them together"
