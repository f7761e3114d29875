"""The queue: which queued tasks may start now and in what order, their hand-over to the executor, and
what follows a run's end. One decision at a time (`deciding`), so two tasks never take the same room."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from babysit.common import failpoints
from babysit.common.background import Background, carry_on
from babysit.common.config import Config
from babysit.core.capacity import assignment
from babysit.core.protocol import BabysitError, KillReason, State
from babysit.core.task import Outcome, Task
from babysit.core.timeline import Timeline
from babysit.daemon.admission import Admission, Snapshot, reservation
from babysit.daemon.endings import Endings
from babysit.daemon.handover import HandOver
from babysit.daemon.ledger import Ledger
from babysit.daemon.supervisor import Supervisor
from babysit.daemon.workflows import Plan, Workflows
from babysit.executors.base import Executor, StartDeferred, StartRefused

log = logging.getLogger("babysitd")
DRAINING = "draining"  # the store's setting


class Queue:
    def __init__(self, ledger: Ledger, executor: Executor, supervisor: Supervisor, workflows: Workflows,
                 endings: Endings, settings: Config) -> None:
        self.ledger = ledger
        self.executor = executor
        self.supervisor = supervisor
        self.workflows = workflows
        self.endings = endings
        self.config = settings
        # the queued tasks that go first are those free to start now (not waiting for others)
        self.admission = Admission(ledger, executor, lambda: [t.name for t in self.plan().ready])
        self.deciding = asyncio.Lock()
        self._drain_requested = False  # a burst of task ends drains the queue once, not once per end
        self.handover = HandOver(ledger, executor, self.spawn)
        self.background = Background()
        self.draining = ledger.store.settings.get(DRAINING) is not None  # `babysit drain`, kept across restarts

    def drain_admission(self, on: bool) -> None:
        """`babysit drain`: admit no queued task (running ones go on) until `babysit undrain`."""
        self.ledger.setting(DRAINING, "1" if on else None)
        self.draining = on
        log.info("admission %s", "drained: queued tasks wait" if on else "goes on")

    def ahead_of(self, priority: int) -> list[str]:
        """The queued tasks free to start that a new task of this priority waits behind."""
        return [t.name for t in self.plan().ready if t.spec.priority >= priority]

    async def drain(self) -> None:
        """Hand queued tasks to the executor in submission order while the first of them fits (none
        overtakes another); an executor with its own queue (Slurm) takes every one, after the decision.
        A task waiting for others, or for its sweep's limit, makes way; one whose dependency failed ends."""
        async with self.deciding:
            failpoints.check("drain", once=True)
            await self.drain_now()

    async def drain_now(self) -> None:
        """drain(), under the admission lock."""
        handed: list[Task] = []
        plan = self.plan()
        for task, outcome in plan.broken:
            if task.in_babysits_queue:
                await self.finish(task, outcome)
            elif not task.kill_requested:  # the executor holds it (a Slurm job waiting on its dependency)
                await self.supervisor.stop(task, KillReason.DEPENDENCY)
        # the room is read once for the whole drain, each task started joining what is held: a sweep of
        # thousands must not weigh each of its members against all the others again
        room = self.admission.room_now()
        for task in [] if self.draining else plan.ready:
            if task.id in self.handover.pending:  # the executor's soon
                continue
            try:
                if not await self.hand_over(task, handed, room):
                    break
            except BabysitError as e:  # one task's values must never stop the queue, nor babysitd's start
                log.error("%s cannot start: %s", task.name, e)
                await self.finish(task, Outcome(State.FAILED, detail=f"babysit could not start it: {e}"))
        self.handover.give(handed)
        self.ledger.capacity_changed()

    async def hand_over(self, task: Task, handed: list[Task], room: Snapshot) -> bool:
        """Start a ready task if it fits in `room` (or, for an executor with its own queue, add it to
        `handed`); whether the next one may be looked at."""
        if not self.executor.queues:  # (a sweep goes to Slurm as one array job, its estimates the first's)
            task = self.workflows.relearn(task)
        decision = self.admission.decide(task.spec.estimates, [], room)
        if self.executor.trouble or not self.admission.hands_over(decision):
            return False
        if decision.requested.gpus and not self.executor.queues:  # its own devices, chosen now
            task = self.ledger.save(task.with_(gpus=assignment(decision)))
        if self.executor.queues:  # which holds it back by its own dependencies, on the runs of now
            handed.append(self.workflows.rebind(task))
            return True
        await self.spawn(task)
        started = self.ledger.by_id(task.id)
        if started is not None and started.state == State.RUNNING and room[2] is not None:
            room[2].append(reservation(started))
        return True

    def plan(self) -> Plan:
        """What each queued task may do now (workflows.Plan)."""
        return self.workflows.plan(self.ledger.queue())

    def request_drain(self) -> None:
        """Drain soon; the requests of a burst of task ends become one drain."""
        if not self._drain_requested:
            self._drain_requested = True
            self.background.run(self._drain_as_requested(), "draining the queue")

    async def _drain_as_requested(self) -> None:
        self._drain_requested = False  # a request made while this drain runs gets a drain of its own
        await self.drain()

    async def recheck_forever(self) -> None:
        """Memory freed outside babysit sends no signal: look at the queue now and then as well."""
        while True:
            await asyncio.sleep(self.config.recheck_s)
            if self.ledger.queue():
                with carry_on("draining the queue"):
                    await self.drain()

    # --- a task's way in and out ----------------------------------------------------------------------

    async def spawn(self, task: Task) -> None:
        """Hand a queued task to its executor, which starts it now or queues it itself."""
        self.supervisor.watch(task.id)  # before the start: a run can end before start() returns
        try:
            started = await self.executor.start(task)
        except StartRefused as e:
            self.supervisor.unwatch(task.id)
            await self.finish(task, Outcome(State.FAILED, detail=str(e)))
            return
        except StartDeferred as e:
            self.supervisor.unwatch(task.id)
            log.warning("%s stays queued: %s", task.name, e)
            return
        failpoints.crash("started", task.name)  # a daemon killed here: the unit runs, its record says queued
        if not self.supervisor.watching(task.id):  # already over
            return
        if self.ledger.by_id(task.id) is None:  # killed while its executor took it: what started must not stay
            self.supervisor.unwatch(task.id)
            log.info("stopping %s: it was killed while it was being started", task.name)
            await self.executor.stop(started)
            return
        task = self.ledger.save(started)
        if task.state == State.RUNNING:
            self.supervisor.arm(task)
        elif self.executor.queues:  # a job now: tasks to run after it can be handed over, to wait on it there
            self.request_drain()

    async def finish(self, task: Task, outcome: Outcome, timeline: Timeline | None = None) -> None:
        """A run is over: record its end, then look at the queue, since its room is free now."""
        if outcome.kill_reason == KillReason.DEPENDENCY and not outcome.detail:  # its executor held it
            outcome = replace(outcome, detail=self.workflows.broken_detail(task))
        await self.endings.record(task, outcome, timeline)
        self.request_drain()
