"""What babysitd keeps of a running task between two samples: not stored, rebuilt on adoption."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from babysit.common.background import carry_on
from babysit.core import policy
from babysit.core.task import Task
from babysit.core.timeline import Timeline


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


def isolated(task: Task, doing: str) -> contextlib.AbstractContextManager[None]:
    """An error while handling one task is logged, and the others are still watched."""
    return carry_on(f"{doing} (task {task.name})")
