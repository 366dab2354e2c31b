"""Ending a child task without swallowing a cancellation meant for the caller.

The agent, the SDK and the authz service each carry this module, word for word: the three
distributions share only `amora-protocol`, which does no IO and holds no asyncio helpers
(ADR 0007). `tests-integration/test_cancellation.py` tests every copy and that they stay equal.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Future[Any], *, quiet: bool = False) -> None:
    """Cancel ``task`` and wait until it has ended.

    ``task.cancel(); with suppress(CancelledError): await task`` also swallows a cancellation
    of the *caller* that arrives during the wait, and the caller then runs on as if nothing
    happened (a reconnect loop that never ends, a shutdown that hangs). Here the task's own
    CancelledError is absorbed, the caller's is raised.

    Args:
        task: The task (or future) to end.
        quiet: Also absorb any exception the task ended with (it is being thrown away).
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        if not quiet:
            raise
