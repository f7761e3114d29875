"""Handing tasks to an executor that keeps a queue of its own (Slurm): one at a time, in order, outside the
admission lock. A submission (sbatch) may wait a minute for a slow controller; it must hold up no decision
and no client."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

from babysit.common.background import Background
from babysit.core.task import Task
from babysit.daemon.ledger import Ledger
from babysit.executors.base import Executor


class HandOver:
    def __init__(self, ledger: Ledger, executor: Executor, spawn: Callable[[Task], Awaitable[None]]) -> None:
        self.ledger = ledger
        self.executor = executor
        self.spawn = spawn  # the scheduler's: the executor's start, and what its answer means
        self.waiting: deque[int] = deque()  # run ids, in submission order
        self.pending: set[int] = set()  # those waiting, and the one being handed over now
        self.background = Background()
        self.busy = False

    def give(self, tasks: list[Task]) -> None:
        """Hand these over soon, after those given earlier."""
        self.pending.update(task.id for task in tasks)
        self.waiting.extend(task.id for task in tasks)
        if tasks and not self.busy:
            self.busy = True
            self.background.run(self.hand_over_waiting(), "handing tasks to the executor")

    async def hand_over_waiting(self) -> None:
        try:
            while self.waiting:
                task_id = self.waiting.popleft()
                task = self.ledger.by_id(task_id)  # it may have been killed meanwhile
                try:
                    if task and task.in_babysits_queue and not self.executor.trouble:
                        await self.spawn(task)
                finally:
                    self.pending.discard(task_id)  # one left out (trouble) is given again by a later drain
        finally:
            self.busy = False
