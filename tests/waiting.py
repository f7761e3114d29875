"""Waiting on conditions with a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
INTERVAL = 0.05


def wait_for(predicate: Callable[[], T], timeout: float, what: str = "condition") -> T:
    """Return the first truthy value of `predicate`, checked every INTERVAL s, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(INTERVAL)


async def wait_event(awaitable: Awaitable[T], timeout: float, what: str = "event") -> T:
    """Await a signal-driven future or event with a deadline."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
