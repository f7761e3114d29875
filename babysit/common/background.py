"""Coroutines run beside the event loop, each kept referenced until it ends (asyncio holds only weak ones)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterator
from typing import Any

log = logging.getLogger("babysitd")


class Background:
    def __init__(self) -> None:
        self.running: set[asyncio.Task[None]] = set()

    def run(self, work: Coroutine[Any, Any, None], doing: str) -> None:
        """Run `work` beside the loop, and log it if it fails."""
        running = asyncio.get_running_loop().create_task(work)
        self.running.add(running)

        def done(finished: asyncio.Task[None]) -> None:
            self.running.discard(finished)
            if not finished.cancelled() and finished.exception():
                log.error("error while %s", doing, exc_info=finished.exception())

        running.add_done_callback(done)


@contextlib.contextmanager
def carry_on(doing: str) -> Iterator[None]:
    """One step of a loop that must go on: an error in it is logged, and the loop tries again next time."""
    try:
        yield
    except Exception:
        log.exception("error while %s; the supervision goes on", doing)
