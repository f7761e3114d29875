"""babysitd assembled: its parts, what it does at start, and what its executor tells it.

    Ledger      the live tasks; every change stored, then published
    Scheduler   the client verbs
    Queue       admission, what starts when, the hand-over to the executor
    Supervisor  samples what runs, applies the kill policy, deadlines and host pressure
    Learning    estimates from earlier runs          Endings   the record of a run's end (and its retry)
    Workflows   chains, retries and sweeps

The executor reports each run's transitions here (executors.base.RunEvents); the D-Bus face
(service.BusService) calls the scheduler's verbs and publishes what the ledger changes.
"""

from __future__ import annotations

import logging

from babysit.common.config import Config
from babysit.core.protocol import BabysitError, State
from babysit.core.task import Outcome, Task, Usage
from babysit.daemon.endings import Endings
from babysit.daemon.learning import Learning
from babysit.daemon.ledger import Ledger
from babysit.daemon.queue import Queue
from babysit.daemon.scheduler import Scheduler
from babysit.daemon.store import Store
from babysit.daemon.supervisor import Supervisor
from babysit.daemon.workflows import Workflows
from babysit.executors.base import Executor

log = logging.getLogger("babysitd")


class Babysitd:
    def __init__(self, executor: Executor, db: Store, settings: Config, advice: list[str]) -> None:
        self.executor = executor
        self.ledger = Ledger(db)
        self.supervisor = Supervisor(self.ledger, executor, settings)
        learning = Learning(db, executor)
        workflows = Workflows(self.ledger, learning, executor)
        self.endings = Endings(self.ledger, executor, learning, workflows, settings)
        queue = Queue(self.ledger, executor, self.supervisor, workflows, self.endings, settings)
        self.scheduler = Scheduler(self.ledger, executor, self.supervisor, learning, workflows, queue, settings, advice)

    # --- start-up -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen to the executor first, then take the snapshot, so no change falls in between (see bleak)."""
        await self.executor.open(self)
        for task in list(self.ledger.tasks.values()):
            if task.state == State.QUEUED:
                recovered = await self.executor.recover_queued(task)
                if recovered != task:
                    self.ledger.save(recovered)
            self.ledger.publish(self.ledger.tasks[task.name])  # its object exists before a waiter looks
        await self.take_up_unrecorded()
        for task in self.ledger.running():
            self.supervisor.adopt(task)
            await self.executor.adopt(task)  # which says so if it ended meanwhile
        await self.executor.tidy(set(self.ledger.tasks))
        self.endings.prune()
        await self.scheduler.queue.drain()  # queued tasks survive restarts, and start once they fit

    async def take_up_unrecorded(self) -> None:
        """Runs going on that babysit's records do not know (the database was lost or damaged): recorded
        and watched again, where the executor can describe them."""
        store = self.ledger.store
        for orphan in await self.executor.unrecorded(set(self.ledger.tasks)):
            recorded = store.name_of(orphan.run_id)
            if recorded == orphan.spec.name:
                continue  # a finished run of ours not yet let go of: the executor's tidy() does that
            try:
                # keep the run's id unless a newer record took it
                task = store.add_running(orphan.spec, orphan.caps, None if recorded else orphan.run_id,
                                         orphan.started_at)
            except BabysitError as e:
                log.warning("cannot take up run #%d of %s, which babysit has no record of: %s", orphan.run_id,
                            orphan.spec.name, e)
                continue
            self.ledger.track(task)
            log.warning("took up %s (run #%d), which babysit had no record of", task.name, task.id)

    # --- what the executor reports (executors.base.RunEvents) -----------------------------------------

    def task(self, task_id: int) -> Task | None:
        """The current record of a live run."""
        return self.ledger.by_id(task_id)

    def running(self) -> list[Task]:
        return self.ledger.running()

    def named(self, name: str) -> Task | None:
        return self.ledger.tasks.get(name)

    def members(self, task: Task) -> list[Task]:
        w = task.spec.workflow
        found = [t for t in self.ledger.queue() if t.in_babysits_queue and t.spec.workflow.attempt == 1
                 and not t.held and (t.spec.workflow.group, t.spec.workflow.sweep) == (w.group, w.sweep)]
        return sorted(found, key=lambda t: t.spec.workflow.index or 0)

    def started(self, task_id: int, at: float, gpus: tuple[str, ...] = ()) -> None:
        """A run left the executor's own queue (on these GPUs)."""
        task = self.ledger.by_id(task_id)
        if task and task.state == State.QUEUED:  # (a restart may have caught it queued: no watch yet)
            self.supervisor.arm(self.ledger.save(task.with_(state=State.RUNNING, started_at=at, gpus=gpus)))

    def sample_now(self, task_id: int) -> None:
        self.supervisor.sample_now(task_id)

    async def ended(self, task_id: int, outcome: Outcome, usage: Usage) -> None:
        """A run is over, as its executor judged it: its result is stored with the run's timeline."""
        task = self.ledger.by_id(task_id)
        if task is None:
            return
        watch = self.supervisor.unwatch(task_id)
        timeline = watch.timeline if watch and watch.timeline.points else None
        await self.scheduler.queue.finish(task.with_(usage=usage), outcome, timeline)
