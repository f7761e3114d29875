"""What babysitd keeps of a running task between two samples: not stored, rebuilt on adoption."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from babysit.common.background import carry_on
from babysit.core import policy
from babysit.core.task import Task
from babysit.core.timeline import Timeline


@dataclass
class Watch:
    task_id: int
    # Its times are on the monotonic clock, which a wall-clock step (NTP, a user's `date -s`) does not move
    # and a suspend does not advance: the task's own time.
    started: float | None = None  # when it started (set when first armed)
    cpu_mark: tuple[float, float] | None = None  # (time, CPU seconds) of the window's start
    last_output_at: float = 0.0  # its newest line that babysit has seen (or its start)
    output_asked_at: float = -1e9  # when its executor was last asked about output
    timeout_timer: asyncio.TimerHandle | None = None  # its kill_timeout
    stall_timer: asyncio.TimerHandle | None = None  # its next stall check
    estimate_timer: asyncio.TimerHandle | None = None  # its time estimate (the elapsed warning)
    warn_timer: asyncio.TimerHandle | None = None  # its --warn_signal, ahead of kill_timeout
    paused_since: float | None = None  # time.monotonic() of its pause: no deadline runs meanwhile
    policy: policy.Memory = field(default_factory=policy.Memory)
    next_sample_at: float = 0.0  # see policy.sample_interval
    timeline: Timeline = field(default_factory=Timeline)
    timeline_saved_at: float = 0.0

    def disarm(self) -> None:
        for timer in (self.timeout_timer, self.stall_timer, self.estimate_timer, self.warn_timer):
            if timer:
                timer.cancel()

    def elapsed_s(self) -> float:
        """How long the task has run, on its own clock."""
        return time.monotonic() - (self.started if self.started is not None else time.monotonic())


def isolated(task: Task, doing: str) -> contextlib.AbstractContextManager[None]:
    """An error while handling one task is logged, and the others are still watched."""
    return carry_on(f"{doing} (task {task.name})")
