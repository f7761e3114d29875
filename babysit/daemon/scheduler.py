"""The scheduler: one handler per client verb (run, kill, adjust, status, list, history, estimate), the
queue and its drain, and the hand-over of a task to its executor.

Admission weighs tasks (admission.Admission), earlier runs fill in estimates (learning.Learning), the
supervisor watches what runs, and a run's end is recorded by endings.Endings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from babysit import __version__
from babysit.common import failpoints
from babysit.common.background import Background, carry_on
from babysit.common.config import Config
from babysit.core import history, report
from babysit.core.capacity import refusal, requested_room, room, shortfall
from babysit.core.protocol import (
    CapacityExceeded, CapsUnavailable, ExecutorUnavailable, InvalidArgument, KillReason, NameInUse, QueueFull, State,
)
from babysit.core.quantities import format_duration
from babysit.core.task import (
    ADJUSTABLE_FIELDS,
    RUNTIME_BACKSTOP_MARGIN_S,
    Outcome,
    Task,
    derive_caps,
    spec_from_wire,
    spec_to_wire,
    validate_name,
)
from babysit.core.timeline import Timeline
from babysit.daemon.admission import Admission
from babysit.daemon.endings import Endings
from babysit.daemon.handover import HandOver
from babysit.daemon.learning import Learning
from babysit.daemon.ledger import Ledger
from babysit.daemon.supervisor import Supervisor
from babysit.executors.base import Executor, StartDeferred, StartRefused

log = logging.getLogger("babysitd")
LIST_ALL_MAX = 1000  # `List(all)`: the newest runs, live ones included (a reply of a few MB at most)
HISTORY_MAX = 1000  # `History`: at most this many runs, whatever limit is asked


class Scheduler:
    def __init__(self, ledger: Ledger, executor: Executor, supervisor: Supervisor, learning: Learning,
                 endings: Endings, settings: Config, advice: list[str]) -> None:
        self.ledger = ledger
        self.executor = executor
        self.supervisor = supervisor
        self.learning = learning
        self.endings = endings
        self.config = settings
        self.admission = Admission(ledger, executor)
        self.advice = advice + executor.advice  # what does not hold here, with the fix: `run` goes on
        self._deciding = asyncio.Lock()  # one decision at a time, so two tasks never take the same room
        self._drain_requested = False  # a burst of task ends drains the queue once, not once per end
        self.handover = HandOver(ledger, executor, self.spawn)
        self.background = Background()

    # --- verbs that change things -----------------------------------------------------------------

    async def run(self, wire: Mapping[str, Any], force: bool) -> str:
        """Validate and admit a task: start it if it fits now, queue it with force, refuse it otherwise."""
        self.check_executor("the task is not submitted")
        spec, _ = self.learning.spec(wire)
        caps = derive_caps(spec, self.executor.host)
        check_cwd(spec.cwd)
        if self.executor.caps_missing:
            raise CapsUnavailable("; ".join(self.executor.caps_missing))
        async with self._deciding:
            await self.executor.refresh()
            earlier = self.ledger.store.by_request(spec.request_id) if spec.request_id else None
            if earlier:
                log.info("Run of %s retried by its client: request %s was already taken", spec.name, spec.request_id)
                return earlier.name
            if len(self.ledger.tasks) >= self.config.max_live_tasks:
                raise QueueFull(f"{len(self.ledger.tasks)} tasks are queued or running, as many as babysit keeps "
                                f"(max_live_tasks); wait for some to end, or kill queued ones")
            decision = self.admission.decide(spec.estimates.mem_bytes, spec.estimates.cpu_cores)
            if not decision.admit and not force:
                if spec.name in self.ledger.tasks:  # a live name is the first thing to fix
                    raise NameInUse.of(spec.name)
                raise CapacityExceeded(json.dumps(refusal(spec.name, decision, spec.estimates_from)))
            task = self.ledger.add(spec, caps)
            if not self.admission.hands_over(decision):
                log.info("queued %s: %s", task.name, decision.reason)
            elif self.executor.queues:
                self.handover.give([task])  # after the answer: a submission (sbatch) may take long
            else:
                await self.spawn(task)
        return task.name

    async def kill(self, name: str) -> None:
        """Graceful stop of a running task, or removal of a queued one."""
        task = self.ledger.live(name)
        if task.in_babysits_queue:
            await self.finish(task, Outcome(State.KILLED, kill_reason=KillReason.USER))
        else:
            await self.supervisor.stop(task, KillReason.USER)

    async def adjust(self, name: str, changes: Mapping[str, Any]) -> None:
        """New estimates for a queued or running task; a running unit's caps change live."""
        task = self.ledger.live(name)
        fixed = sorted(set(changes) - set(ADJUSTABLE_FIELDS))
        if fixed:
            raise InvalidArgument(f"Adjust changes only {', '.join(ADJUSTABLE_FIELDS)}; not {', '.join(fixed)}")
        host = self.executor.host
        spec = spec_from_wire({**spec_to_wire(task.spec), **changes, "name": name}, host)
        if not set(changes) & set(history.ESTIMATE_KEYS):  # else the estimates are the caller's own now
            spec = replace(spec, estimates_from=task.spec.estimates_from)
        caps = derive_caps(spec, host)
        if task.state == State.RUNNING:
            # the executor's backstop was fixed at start; the daemon's own timer enforces kill_timeout below it
            longest = task.caps.runtime_max_s - RUNTIME_BACKSTOP_MARGIN_S
            if spec.estimates.kill_timeout_s > longest:
                raise InvalidArgument(f"kill_timeout of a running task can grow to at most {format_duration(longest)} "
                                      f"(the {self.executor.kind} backstop set at its start)")
            caps = replace(caps, runtime_max_s=task.caps.runtime_max_s)
            caps = await self.executor.set_caps(task.with_(spec=spec, caps=caps), task.caps)
        task = self.ledger.save(task.with_(spec=spec, caps=caps))
        if task.state == State.RUNNING and self.supervisor.watching(task.id):
            self.supervisor.arm(task)
        await self.drain()

    # --- verbs that only tell -----------------------------------------------------------------------

    def ping(self) -> str:
        return __version__

    def status(self, name: str) -> dict[str, Any]:
        """Everything known about a name's latest run, its usage over time included."""
        ((task, now_known),) = self.describe([self.ledger.latest(name)])
        return report.status(task, time.time()) | now_known | {"timeline": self.supervisor.timeline(task).as_dict()}

    async def list_tasks(self, include_terminal: bool,
                         batch: int = 50) -> AsyncIterator[list[tuple[Task, dict[str, Any]]]]:
        """Tasks with what `describe` adds, in batches, letting other clients in between: a long history is
        a long reply."""
        batches = (self.ledger.store.history(batch, newest=LIST_ALL_MAX) if include_terminal
                   else [list(self.ledger.tasks.values())])
        for tasks in batches:
            yield self.describe(tasks)
            await asyncio.sleep(0)

    def describe(self, tasks: list[Task]) -> list[tuple[Task, dict[str, Any]]]:
        """What each task's status adds to its record: how long a running one has been silent, a queued
        one's place in the queue and what it waits for.

        The queue, reservations and free memory are read once for all of them: a List of a long queue
        must not hold up the loop.
        """
        position = {task.name: i for i, task in enumerate(self.ledger.queue())}
        available = room(*self.admission.room_now())
        room_now = available.as_dict()
        described = []
        for task in tasks:
            now_known: dict[str, Any] = {}
            if task.state == State.RUNNING:
                now_known["silent_s"] = self.supervisor.silent_s(task)
            elif task.state == State.QUEUED:
                ahead = position.get(task.name, 0)
                e = task.spec.estimates
                requested = requested_room(self.executor.host, e.mem_bytes, e.cpu_cores)
                now_known = {"queue_position": ahead + 1,
                             "waiting_for": self.executor.waiting_for(task) or shortfall(requested, available, ahead)
                             or "its turn",
                             "available": room_now}
            described.append((task, now_known))
        return described

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.ledger.store.events(self.ledger.latest(name))

    @property
    def warnings(self) -> list[str]:
        unwritable = [f"{self.ledger.unwritable}: results are kept in memory until the store takes writes again, "
                      "and no new task starts meanwhile"] if self.ledger.unwritable else []
        unreachable = [f"{self.executor.trouble}: new runs are refused and queued ones wait until it answers; "
                       "finished runs can still be seen"] if self.executor.trouble else []
        return self.executor.caps_missing + unwritable + unreachable + self.advice

    def capacity(self) -> dict[str, Any]:
        return self.admission.report(self.warnings)

    def history(self, name: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` finished runs of a name ("" for every name), oldest first."""
        if name:
            validate_name(name)
        return [report.history_entry(run)
                for run in self.ledger.store.finished(name or None, min(limit, HISTORY_MAX))]

    def estimate(self, wire: Mapping[str, Any]) -> dict[str, Any]:
        """The estimates `run` would use for this spec, and where they come from; nothing is run."""
        self.check_executor("nothing can be estimated against it")
        return report.estimate(*self.learning.spec(wire))

    def check_executor(self, so: str) -> None:
        """Refuse a request that needs where tasks run while it cannot be reached (it is asked again each tick)."""
        if self.executor.trouble:
            raise ExecutorUnavailable(f"{self.executor.trouble}; {so} (try again once it answers)")

    # --- the queue ------------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Hand queued tasks to the executor in submission order while the first of them fits (none
        overtakes another); an executor with its own queue (Slurm) takes every one, after the decision."""
        handed: list[Task] = []
        async with self._deciding:
            failpoints.check("drain", once=True)
            for task in self.ledger.queue():
                if not task.in_babysits_queue or task.id in self.handover.pending:  # the executor has it, or soon will
                    continue
                e = task.spec.estimates
                if self.executor.trouble or not self.admission.hands_over(
                        self.admission.decide(e.mem_bytes, e.cpu_cores, [])):
                    break
                if self.executor.queues:
                    handed.append(task)
                else:
                    await self.spawn(task)
        self.handover.give(handed)
        self.ledger.capacity_changed()

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
        if not self.supervisor.watching(task.id):  # already over
            return
        if self.ledger.by_id(task.id) is None:  # killed while its executor took it: what started must not stay
            self.supervisor.unwatch(task.id)
            log.info("stopping %s: it was killed while it was being started", task.name)
            await self.executor.stop(started)
            return
        task = started
        task = self.ledger.save(task)
        if task.state == State.RUNNING:
            self.supervisor.arm(task)

    async def finish(self, task: Task, outcome: Outcome, timeline: Timeline | None = None) -> None:
        """A run is over: record its end, then look at the queue, since its room is free now."""
        await self.endings.record(task, outcome, timeline)
        self.request_drain()


def check_cwd(cwd: str) -> None:
    """Refuse a working directory the task could not start in, before any unit exists."""
    path = Path(cwd).expanduser()  # "~" is the user's home, as systemd reads it
    if not path.exists():
        raise InvalidArgument(f"cwd {cwd}: no such directory")
    if not path.is_dir():
        raise InvalidArgument(f"cwd {cwd}: not a directory")
    if not os.access(path, os.X_OK):
        raise InvalidArgument(f"cwd {cwd}: permission denied (this user cannot enter it)")
