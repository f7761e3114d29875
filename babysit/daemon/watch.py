"""What babysitd keeps of a running task between two samples: not stored, rebuilt on adoption."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from babysit.core import policy
from babysit.core.task import Task
from babysit.core.timeline import Timeline

log = logging.getLogger("babysitd")


@dataclass
class Watch:
    task_id: int
    cpu_mark: tuple[float, float] | None = None  # (monotonic time, CPU seconds) of the window's start
    last_output_at: float = 0.0  # epoch seconds of its newest line that babysit has seen (or its start)
    output_asked_at: float = -1e9  # when its executor was last asked about output (monotonic)
    timeout_timer: asyncio.TimerHandle | None = None  # its kill_timeout
    stall_timer: asyncio.TimerHandle | None = None  # its next stall check
    policy: policy.Memory = field(default_factory=policy.Memory)
    next_sample_at: float = 0.0  # monotonic; see policy.sample_interval
    timeline: Timeline = field(default_factory=Timeline)
    timeline_saved_at: float = 0.0  # monotonic

    def disarm(self) -> None:
        for timer in (self.timeout_timer, self.stall_timer):
            if timer:
                timer.cancel()


@contextlib.contextmanager
def isolated(task: Task, doing: str) -> Iterator[None]:
    """An error while handling one task is logged, and the others are still watched."""
    try:
        yield
    except Exception:
        log.exception("error while %s (task %s); the other tasks are still watched", doing, task.name)
