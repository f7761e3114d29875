"""The scheduler: one handler per client verb (run, kill, adjust, status, list, history, estimate); the queue
(queue.Queue) decides what starts when, and hands tasks to the executor.

Admission weighs tasks (admission.Admission), earlier runs fill in estimates (learning.Learning), chains,
retries and sweeps are looked up by workflows.Workflows, and the supervisor watches what runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from babysit import __version__
from babysit.common.config import Config
from babysit.core import history, report
from babysit.core.capacity import refusal, requested_room, room, shortfall
from babysit.core.protocol import (
    DRAINED, CapacityExceeded, CapsUnavailable, ExecutorUnavailable, InvalidArgument, KillReason, NotRunning, QueueFull,
    State,
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
from babysit.daemon.learning import Learning
from babysit.daemon.ledger import Ledger
from babysit.daemon.queue import Queue
from babysit.daemon.supervisor import Supervisor
from babysit.daemon.workflows import Workflows
from babysit.executors.base import Executor

log = logging.getLogger("babysitd")
LIST_ALL_MAX = 1000  # `List(all)`: the newest runs, live ones included (a reply of a few MB at most)
HISTORY_MAX = 1000  # `History`: at most this many runs, whatever limit is asked


class Scheduler:
    def __init__(self, ledger: Ledger, executor: Executor, supervisor: Supervisor, learning: Learning,
                 workflows: Workflows, queue: Queue, settings: Config, advice: list[str]) -> None:
        self.ledger = ledger
        self.executor = executor
        self.supervisor = supervisor
        self.learning = learning
        self.workflows = workflows
        self.queue = queue
        self.admission = queue.admission
        self.config = settings
        self.advice = advice + executor.advice  # what does not hold here, with the fix: `run` goes on

    # --- verbs that change things -----------------------------------------------------------------

    async def run(self, wire: Mapping[str, Any], force: bool) -> str:
        """Validate and admit a task (or a sweep's members): start it if it fits now, queue it with force or
        when it waits for other tasks, refuse it otherwise."""
        self.check_executor("the task is not submitted")
        spec, _ = self.learning.spec(wire)
        caps = derive_caps(spec, self.executor.host)
        check_cwd(spec.cwd)
        if self.executor.caps_missing:
            raise CapsUnavailable("; ".join(self.executor.caps_missing))
        async with self.queue.deciding:
            await self.executor.refresh()
            earlier = self.ledger.store.by_request(spec.request_id) if spec.request_id else None
            if earlier:
                log.info("Run of %s retried by its client: request %s was already taken", spec.name, spec.request_id)
                return earlier.spec.workflow.group or earlier.name
            spec = self.workflows.bind(spec)
            specs = self.workflows.members(spec, wire) if spec.workflow.group else [spec]
            if len(self.ledger.tasks) + len(specs) > self.config.max_live_tasks:
                raise QueueFull(f"{len(self.ledger.tasks)} tasks are queued or running; {len(specs)} more would be "
                                "more than babysit keeps (max_live_tasks); wait for some to end, or kill queued ones")
            decision = self.admission.decide(spec.estimates,
                                             self.queue.ahead_of(spec.priority))
            self.workflows.check_name(spec.name, specs)  # a live name is the first thing to fix
            if not decision.admit and not force and not spec.workflow.after:  # a dependent waits anyway
                raise CapacityExceeded(json.dumps(refusal(spec.name, decision, spec.estimates_from)))
            tasks = self.ledger.add_all(specs, caps)
            if not self.admission.hands_over(decision) or spec.workflow.after or self.queue.draining:
                log.info("queued %s: %s", spec.name, decision.reason or (
                    "admission is drained" if self.queue.draining else "it waits for other tasks"))
            await self.queue.drain_now()
        return spec.workflow.group or tasks[0].name

    async def kill(self, name: str) -> None:
        """Graceful stop of a running task, or removal of a queued one; of every live member, for a sweep."""
        if await self.each_member(name, lambda member: self.kill(member.name)):
            return
        task = self.ledger.live(name)
        if task.in_babysits_queue:
            await self.queue.finish(task, Outcome(State.KILLED, kill_reason=KillReason.USER))
        else:
            await self.supervisor.stop(task, KillReason.USER)

    async def adjust(self, name: str, changes: Mapping[str, Any]) -> None:
        """New estimates for a queued or running task (every live member of a sweep); a running unit's caps
        change live."""
        if await self.each_member(name, lambda member: self.adjust(member.name, changes)):
            return
        task = self.ledger.live(name)
        fixed = sorted(set(changes) - set(ADJUSTABLE_FIELDS))
        if fixed:
            raise InvalidArgument(f"Adjust changes only {', '.join(ADJUSTABLE_FIELDS)}; not {', '.join(fixed)}")
        host = self.executor.host
        spec = spec_from_wire({**spec_to_wire(task.spec), **changes, "name": name}, host)
        spec = replace(spec, workflow=replace(task.spec.workflow, learn=tuple(
            key for key in task.spec.workflow.learn if key not in changes)))  # the caller's own now
        if not set(changes) & set(history.ESTIMATE_KEYS):
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
        adjusted = self.ledger.update(task, spec=spec, caps=caps)  # a kill or an end meanwhile stays
        if adjusted is None:
            raise NotRunning(f"task {name!r} ended while it was being adjusted")
        if adjusted.state == State.RUNNING and self.supervisor.watching(adjusted.id):
            self.supervisor.arm(adjusted)
        await self.queue.drain()

    async def hold(self, name: str, held: bool) -> None:
        """Keep a queued task (every queued member, for a sweep) from being admitted, or let it go again."""
        if await self.each_member(name, lambda member: self.hold(member.name, held),
                                  lambda member: member.state == State.QUEUED):
            return
        task = self.ledger.live(name)
        if task.state != State.QUEUED:
            raise InvalidArgument(f"{name} is {task.state}: only a queued task can be held or released")
        task = self.ledger.save(task.with_(held=held))
        await self.executor.hold(task, held)
        log.info("%s %s", "held" if held else "released", name)
        if not held:
            await self.queue.drain()

    async def pause(self, name: str, paused: bool) -> None:
        """Freeze a running task (every running member, for a sweep), or thaw it."""
        if await self.each_member(name, lambda member: self.pause(member.name, paused), lambda member: (
                member.state == State.RUNNING and (member.paused_at is None) == paused)):
            return
        task = self.ledger.live(name)
        if task.kill_requested:
            raise InvalidArgument(f"{name} is being stopped ({task.kill_requested}): it cannot be paused or resumed")
        if task.state != State.RUNNING:
            raise InvalidArgument(f"{name} is {task.state}: only a running task can be paused or resumed")
        if (task.paused_at is not None) == paused:
            raise InvalidArgument(f"{name} is {'already' if paused else 'not'} paused")
        await (self.supervisor.pause(task) if paused else self.supervisor.resume(task))

    async def each_member(self, name: str, act: Callable[[Task], Awaitable[None]],
                          which: Callable[[Task], bool] = lambda member: True) -> bool:
        """A verb given a sweep's name acts on each live member `which` picks; whether `name` is a sweep's."""
        members = self.workflows.live_members(name)
        for member in members:
            if which(member):
                await act(member)
        return bool(members)

    async def drain(self, on: bool) -> None:
        """Stop admitting queued tasks (running ones go on), or admit them again."""
        self.queue.drain_admission(on)
        if not on:
            await self.queue.drain()
        self.ledger.capacity_changed()

    # --- verbs that only tell -----------------------------------------------------------------------

    def ping(self) -> str:
        return __version__

    def status(self, name: str) -> dict[str, Any]:
        """Everything known about a name's latest run, its usage over time included; a sweep's roll-up."""
        members = self.workflows.sweep(name)
        if members:
            return self.workflows.summary(name, members, time.time())
        ((task, now_known),) = self.describe([self.ledger.latest(name)])
        return report.status(task, time.time()) | now_known | {"timeline": self.supervisor.timeline(task).as_dict(
            gpus=bool(task.spec.estimates.gpus))}

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
        plan = self.queue.plan()
        position = {task.name: i for i, task in enumerate(plan.ready)}
        host, free, held, gpus = self.admission.room_now()
        available = room(host, free, held, gpus or ())
        room_now = available.as_dict()
        described = []
        for task in tasks:
            now_known: dict[str, Any] = {}
            if task.state == State.RUNNING:
                now_known["silent_s"] = self.supervisor.silent_s(task)
            elif task.state == State.QUEUED:
                ahead = position.get(task.name, 0)
                e = task.spec.estimates
                devices = e.gpus if gpus is not None else 0  # a cluster's GPUs are its scheduler's to weigh
                requested = requested_room(self.executor.host, e.mem_bytes, e.cpu_cores, devices, e.gpu_mem_bytes)
                its_room = room(host, free, held, gpus or (), e.gpu_mem_bytes) if devices else available
                now_known = {"queue_position": ahead + 1,
                             "waiting_for": plan.waiting.get(task.id) or (
                                 DRAINED if self.queue.draining and task.in_babysits_queue else None)
                             or self.executor.waiting_for(task)
                             or shortfall(requested, its_room, ahead) or "its turn",
                             "available": room_now}
            described.append((task, now_known))
        return described

    def events(self, name: str) -> list[dict[str, Any]]:
        """The events of a name's latest run and its earlier attempts; of every member, for a sweep."""
        runs = self.workflows.sweep(name) or [self.ledger.latest(name)]
        return [event for run in runs for event in self.ledger.store.events(run)]

    @property
    def warnings(self) -> list[str]:
        unwritable = [f"{self.ledger.unwritable}: results are kept in memory until the store takes writes again, "
                      "and no new task starts meanwhile"] if self.ledger.unwritable else []
        unreachable = [f"{self.executor.trouble}: new runs are refused and queued ones wait until it answers; "
                       "finished runs can still be seen"] if self.executor.trouble else []
        drained = ["admission is drained: queued and new tasks wait until `babysit undrain` (running ones go on)"
                   ] if self.queue.draining else []
        return self.executor.caps_missing + unwritable + unreachable + drained + self.advice

    def capacity(self) -> dict[str, Any]:
        return self.admission.report(self.warnings) | {"draining": self.queue.draining,
                                                       "gpu_note": self.executor.gpu_note}

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


def check_cwd(cwd: str) -> None:
    """Refuse a working directory the task could not start in, before any unit exists."""
    path = Path(cwd).expanduser()  # "~" is the user's home, as systemd reads it
    if not path.exists():
        raise InvalidArgument(f"cwd {cwd}: no such directory")
    if not path.is_dir():
        raise InvalidArgument(f"cwd {cwd}: not a directory")
    if not os.access(path, os.X_OK):
        raise InvalidArgument(f"cwd {cwd}: permission denied (this user cannot enter it)")
