"""babysitd: the scheduler. One handler per client verb, one per process transition (spawn, finish, stop).

Where runs execute is its executor's business (babysit.executor): systemd units on this host, or Slurm
jobs. The scheduler's only periodic work is sampling usage, which nothing pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from babysit import __version__, config, failpoints, history, policy, report, store
from babysit import bus as session_bus
from babysit.background import Background
from babysit.capacity import Decision, Reservation, capacity_report, decide, refusal, requested_room, room, shortfall
from babysit.executor import Executor, StartRefused
from babysit.host import meminfo
from babysit.protocol import (
    BabysitError, CapacityExceeded, CapsUnavailable, InvalidArgument, KillReason, NameInUse, NoSuchTask, NotRunning,
    State,
)
from babysit.quantities import format_duration
from babysit.task import (
    RUNTIME_BACKSTOP_MARGIN_S, Host, Outcome, Spread, Task, TaskSpec, Usage, derive_caps, limits, spec_from_wire,
    spec_to_wire, validate_name,
)
from babysit.timeline import Timeline

if TYPE_CHECKING:
    from dbus_fast.aio import MessageBus

log = logging.getLogger("babysitd")
PRUNE_EVERY = 100  # finished runs between two prunings of the history (and one at start)
TIMELINE_SAVE_S = 60.0  # a running task's usage series is stored at least this often (and at its end)


class Publisher(Protocol):
    """Where task changes go out (the D-Bus service)."""

    def task_changed(self, task: Task) -> None: ...
    def task_finished(self, task: Task) -> None: ...
    def capacity_changed(self) -> None: ...
    def runaway_risk(self, task: Task, event: dict[str, Any]) -> None: ...


@dataclass
class Watch:
    """What the scheduler keeps of a running task between two samples."""

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


class Daemon:
    def __init__(self, executor: Executor, db: store.Store, settings: config.Config, advice: list[str]) -> None:
        self.executor = executor
        self.store = db
        self.config = settings
        self.advice = advice + executor.advice  # what does not hold here, with the fix: `run` goes on
        self.publisher: Publisher | None = None
        # by name: queued and running tasks, and finished ones until their executor has let go of them
        self.tasks: dict[str, Task] = {t.name: t for t in db.live()}
        self.watches: dict[int, Watch] = {}  # running tasks' by run id
        self._admission = asyncio.Lock()  # one decision at a time, so two tasks never take the same room
        self._drain_requested = False  # a burst of task ends drains the queue once, not once per end
        self._ends_since_prune = 0  # see prune
        self.background = Background()
        self.external_pressure = False  # reported once per episode
        self.pressure_since: float | None = None  # monotonic start of the current low-memory episode

    @property
    def host(self) -> Host:
        return self.executor.host

    # --- start-up ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen to the executor first, then take the snapshot, so no change falls in between (see bleak)."""
        await self.executor.open(self)
        for task in list(self.tasks.values()):
            if task.state == State.QUEUED:
                recovered = await self.executor.recover_queued(task)
                if recovered != task:
                    self.save(recovered)
            self.publish(self.tasks[task.name])  # its object exists before a waiter looks, so changes signal
        await self.take_up_orphans()
        for task in list(self.tasks.values()):
            if task.state == State.RUNNING:
                await self.adopt(task)
        await self.executor.tidy(set(self.tasks))
        self.prune()
        await self.drain()  # queued tasks survive restarts, and start once they fit

    async def take_up_orphans(self) -> None:
        """Runs the executor has that babysit's records do not know (the database was lost or damaged): they
        are recorded and watched again."""
        for orphan in await self.executor.orphans(set(self.tasks)):
            recorded = self.store.name_of(orphan.run_id)
            if recorded == orphan.spec.name:
                continue  # a finished run of ours not yet let go of: the executor's tidy() does that
            try:
                # keep the run's id unless a newer record took it
                task = self.store.add_running(orphan.spec, orphan.caps, None if recorded else orphan.run_id,
                                              orphan.started_at)
            except BabysitError as e:
                log.warning("cannot take up run #%d of %s, which babysit has no record of: %s", orphan.run_id,
                            orphan.spec.name, e)
                continue
            self.tasks[task.name] = task
            self.publish(task)
            log.warning("took up %s (run #%d), which babysit had no record of", task.name, task.id)

    async def adopt(self, task: Task) -> None:
        """Take up a task that was running when the previous daemon stopped."""
        watch = self.watches.setdefault(task.id, Watch(task.id))
        watch.timeline = self.store.timeline(task)
        self.arm_deadlines(task, watch)
        await self.executor.adopt(task)  # which says so if it ended meanwhile

    # --- client verbs -----------------------------------------------------------------------------

    async def run(self, wire: Mapping[str, Any], force: bool) -> str:
        """Validate and admit a task: start it if it fits now, queue it with force, refuse it otherwise."""
        spec, _ = self.with_learned_estimates(spec_from_wire(wire, self.host), wire)
        caps = derive_caps(spec, self.host)
        check_cwd(spec.cwd)
        if self.executor.caps_missing:
            raise CapsUnavailable("; ".join(self.executor.caps_missing))
        async with self._admission:
            await self.executor.refresh()
            earlier = self.store.by_request(spec.request_id) if spec.request_id else None
            if earlier:
                log.info("Run of %s retried by its client: request %s was already taken", spec.name, spec.request_id)
                return earlier.name
            decision = self.decide(spec.estimates.mem_bytes, spec.estimates.cpu_cores)
            if not decision.admit and not force:
                if spec.name in self.tasks:  # a live name is the first thing to fix
                    raise NameInUse.of(spec.name)
                raise CapacityExceeded(json.dumps(refusal(spec.name, decision, spec.estimates_from)))
            task = self.store.add(spec, caps, time.time())
            self.tasks[task.name] = task
            self.publish(task)
            if decision.admit or self.executor.queues:
                await self.spawn(task)
            else:
                log.info("queued %s: %s", task.name, decision.reason)
        return task.name

    async def kill(self, name: str) -> None:
        """Graceful stop of a running task, or removal of a queued one."""
        task = self.live(name)
        if task.state == State.QUEUED and task.job is None:  # not handed to its executor yet
            await self.record_end(task, Outcome(State.KILLED, kill_reason=KillReason.USER))
        else:
            await self.stop(task, KillReason.USER)

    async def adjust(self, name: str, changes: Mapping[str, Any]) -> None:
        """New estimates for a queued or running task; a running unit's caps change live."""
        task = self.live(name)
        spec = spec_from_wire({**spec_to_wire(task.spec), **changes, "name": name}, self.host)
        if not set(changes) & set(history.ESTIMATE_KEYS):  # else the estimates are the caller's own now
            spec = replace(spec, estimates_from=task.spec.estimates_from)
        caps = derive_caps(spec, self.host)
        if task.state == State.RUNNING:
            # the executor's backstop was fixed at start; the daemon's own timer enforces kill_timeout below it
            longest = task.caps.runtime_max_s - RUNTIME_BACKSTOP_MARGIN_S
            if spec.estimates.kill_timeout_s > longest:
                raise InvalidArgument(f"kill_timeout of a running task can grow to at most {format_duration(longest)} "
                                      f"(the {self.executor.kind} backstop set at its start)")
            caps = replace(caps, runtime_max_s=task.caps.runtime_max_s)
            caps = await self.executor.set_caps(task.with_(spec=spec, caps=caps), task.caps)
        task = self.save(task.with_(spec=spec, caps=caps))
        watch = self.watches.get(task.id)
        if task.state == State.RUNNING and watch:
            self.arm_deadlines(task, watch)
        await self.drain()

    def status(self, name: str) -> dict[str, Any]:
        """Everything known about a name's latest run, its usage over time included."""
        ((task, now_known),) = self.describe([self.latest(name)])
        watch = self.watches.get(task.id) if task.state == State.RUNNING else None
        timeline = watch.timeline if watch else self.store.timeline(task)
        return report.status(task, time.time()) | now_known | {"timeline": timeline.as_dict()}

    async def list(self, include_terminal: bool, batch: int = 50) -> AsyncIterator[list[tuple[Task, dict[str, Any]]]]:
        """Tasks with what `describe` adds, in batches, letting other clients in between: a long history is
        a long reply."""
        batches = self.store.history(batch) if include_terminal else [list(self.tasks.values())]
        for tasks in batches:
            yield self.describe(tasks)
            await asyncio.sleep(0)

    def describe(self, tasks: list[Task]) -> list[tuple[Task, dict[str, Any]]]:
        """What each task's status adds to its record: how long a running one has been silent, a queued
        one's place in the queue and what it waits for.

        The queue, reservations and free memory are read once for all of them: a List of a long queue
        must not hold up the loop.
        """
        now = time.time()
        position = {task.name: i for i, task in enumerate(self.queue())}
        available = room(*self.room_now())
        room_now = available.as_dict()
        described = []
        for task in tasks:
            now_known: dict[str, Any] = {}
            if task.state == State.RUNNING:
                now_known["silent_s"] = self.silent_s(task, now)
            elif task.state == State.QUEUED:
                ahead = position.get(task.name, 0)
                requested = requested_room(self.host, task.spec.estimates.mem_bytes, task.spec.estimates.cpu_cores)
                now_known = {"queue_position": ahead + 1,
                             "waiting_for": self.executor.waiting_for(task) or shortfall(requested, available, ahead)
                             or "its turn",
                             "available": room_now}
            described.append((task, now_known))
        return described

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.store.events(self.latest(name))

    @property
    def warnings(self) -> list[str]:
        return self.executor.caps_missing + self.advice

    def capacity(self) -> dict[str, Any]:
        return capacity_report(*self.room_now(),
                               [t.name for t in self.queue()]) | {"warnings": self.warnings}

    # --- history: what earlier runs tell ----------------------------------------------------------

    def with_learned_estimates(self, spec: TaskSpec, wire: Mapping[str, Any]) -> tuple[TaskSpec, int]:
        """The estimates the caller left out, from earlier runs of the same task where there are any; and how
        many earlier runs they come from."""
        missing = [key for key in history.ESTIMATE_KEYS if key not in wire]
        learned = self.learn(spec) if missing else None
        taken = [key for key in missing if learned and key in learned.wire()]
        if not learned or not taken:
            return spec, 0
        relearned = spec_from_wire({**wire, **{key: learned.wire()[key] for key in taken}}, self.host)
        return replace(relearned, estimates_from=learned.said(taken)), learned.runs

    def estimate(self, wire: Mapping[str, Any]) -> dict[str, Any]:
        """The estimates `run` would use for this spec, and where they come from; nothing is run."""
        spec, runs = self.with_learned_estimates(spec_from_wire(wire, self.host), wire)
        return report.estimate(spec, runs)

    def history(self, name: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` finished runs of a name ("" for every name), oldest first."""
        if name:
            validate_name(name)
        return [report.history_entry(run) for run in self.store.finished(name or None, limit)]

    def learn(self, spec: TaskSpec) -> history.Learned | None:
        """What earlier runs of a task like this one suggest as its estimates (`babysit estimate`)."""
        kin = self.kin(spec)
        return history.learn(kin, *limits(spec, self.host)) if kin else None

    def kin(self, spec: TaskSpec) -> history.Kin | None:
        candidates = self.store.completed_like(spec.name, history.name_stem(spec.name), spec.command, spec.cwd,
                                               each=history.LAST_RUNS * 5)
        return history.kin(spec.name, spec.command, spec.cwd, candidates)

    def earlier(self, task: Task, figure: Callable[[history.PastRun], float | None]) -> Spread | None:
        """How one figure ranged over the earlier completed runs of the task's kin."""
        try:
            return history.spread(self.kin(task.spec), figure)
        except Exception:  # a hint's extra words must never cost a run its result
            log.exception("could not look up the earlier runs of %s", task.name)
            return None

    # --- admission ---------------------------------------------------------------------------------

    def room_now(self) -> tuple[Host, int, list[Reservation]]:
        """What admission weighs a task against: the room, the free memory, and what running tasks hold."""
        capacity = self.executor.capacity()
        return (capacity.host, capacity.free_mem_bytes,
                [*capacity.held, *(self.reservations() if capacity.counts_running else [])])

    def reservations(self) -> list[Reservation]:
        return [Reservation(t.name, t.spec.estimates.mem_bytes, t.spec.estimates.cpu_cores, t.usage.mem_bytes)
                for t in self.tasks.values() if t.state == State.RUNNING]

    def queue(self) -> list[Task]:
        return sorted((t for t in self.tasks.values() if t.state == State.QUEUED), key=lambda t: t.id)

    def decide(self, mem_bytes: int, cpu_cores: float, ahead: list[str] | None = None) -> Decision:
        queued = [t.name for t in self.queue()] if ahead is None else ahead
        return decide(*self.room_now(), mem_bytes, cpu_cores, queued)

    async def drain(self) -> None:
        """Start queued tasks in submission order while the first of them fits (none overtakes another).

        An executor with its own queue (Slurm) gets every task at once: babysit's holds only those a
        restart caught before they were handed over.
        """
        async with self._admission:
            for task in self.queue():
                if self.executor.queues:
                    if task.job is None:
                        await self.spawn(task)
                    continue
                if not self.decide(task.spec.estimates.mem_bytes, task.spec.estimates.cpu_cores, []).admit:
                    break
                await self.spawn(task)
        if self.publisher:
            self.publisher.capacity_changed()

    def request_drain(self) -> None:
        """Drain soon; the requests of a burst of task ends become one drain."""
        if not self._drain_requested:
            self._drain_requested = True
            self.background.run(self._drain_requested_now(), "draining the queue")

    async def _drain_requested_now(self) -> None:
        self._drain_requested = False  # a request made while this drain runs gets a drain of its own
        await self.drain()

    async def recheck_forever(self) -> None:
        """Memory freed outside babysit sends no signal: look at the queue now and then as well."""
        while True:
            await asyncio.sleep(self.config.recheck_s)
            if self.queue():
                await self.drain()

    def ping(self) -> str:
        return __version__

    def latest(self, name: str) -> Task:
        task = self.tasks.get(name) or self.store.latest(name)
        if task is None:
            raise NoSuchTask(f"no task named {name!r}")
        return task

    def live(self, name: str) -> Task:
        task = self.latest(name)
        if task.state.terminal:
            raise NotRunning(f"task {name!r} is already {task.state}")
        return task

    # --- process transitions ----------------------------------------------------------------------

    async def spawn(self, task: Task) -> None:
        """Hand a queued task to its executor, which starts it now or queues it itself."""
        self.watches[task.id] = Watch(task.id)  # before the start: a run can end before start() returns
        try:
            task = await self.executor.start(task)
        except StartRefused as e:
            self.watches.pop(task.id, None)
            await self.record_end(task, Outcome(State.FAILED, detail=str(e)))
            return
        if task.id not in self.watches:  # already over
            return
        task = self.save(task)
        if task.state == State.RUNNING:
            self.arm_deadlines(task, self.watches[task.id])

    def task(self, task_id: int) -> Task | None:
        """The current record of a live run (for the executor)."""
        return self.by_id(task_id)

    def started(self, task_id: int, at: float) -> None:
        """A run left the executor's own queue."""
        task = self.by_id(task_id)
        if task and task.state == State.QUEUED:  # (a restart may have caught it queued: no watch yet)
            watch = self.watches.setdefault(task_id, Watch(task_id))
            self.arm_deadlines(self.save(task.with_(state=State.RUNNING, started_at=at)), watch)

    def sample_now(self, task_id: int) -> None:
        """The kernel's OOM notice (v1): the cgroup still holds what it had at the limit, so read it now."""
        task, watch = self.by_id(task_id), self.watches.get(task_id)
        if task and watch:
            with self.isolated(task, "reading it at its OOM notification"):
                self.sample(task, watch)

    async def ended(self, task_id: int, outcome: Outcome, usage: Usage) -> None:
        """A run is over, as its executor judged it: store the result with the run's timeline."""
        task = self.by_id(task_id)
        if task is None:
            return
        watch = self.watches.pop(task_id, None)
        if watch:
            watch.disarm()
        timeline = watch.timeline if watch and watch.timeline.points else None
        await self.record_end(task.with_(usage=usage), outcome, timeline)

    async def record_end(self, task: Task, outcome: Outcome, timeline: Timeline | None = None) -> None:
        """Store the result (with the run's timeline), let the executor release the run, and only then free
        the name and its room."""
        if outcome.kill_reason in history.KILLING_FIGURE:  # its hint cites how the earlier runs went
            outcome = replace(outcome, history=self.earlier(task, history.KILLING_FIGURE[outcome.kill_reason]))
        task = self.save(task.with_(state=outcome.state, outcome=outcome, finished_at=time.time()), outcome.detail,
                         timeline)
        await self.executor.release(task)  # the name stays taken meanwhile: a new run must not meet the old one
        self.tasks.pop(task.name, None)
        self._ends_since_prune += 1
        if self._ends_since_prune >= PRUNE_EVERY:
            self.prune()
        if self.publisher:
            self.publisher.task_finished(task)
        self.request_drain()  # its room is free now

    def prune(self) -> None:
        """Keep the history bounded (config history_max_runs and history_max_days)."""
        self._ends_since_prune = 0
        gone = self.store.prune(int(self.config.history_max_runs), self.config.history_max_days * 86400, time.time())
        if gone:
            log.info("forgot %d finished runs beyond the history's bounds", gone)

    async def stop(self, task: Task, reason: KillReason) -> None:
        """A graceful stop babysit decided on: remembered first, so a restart still knows why."""
        self.save(task.with_(kill_requested=reason))
        await self.executor.stop(task)

    # --- sampling ---------------------------------------------------------------------------------

    async def sample_forever(self) -> None:
        """Each tick: sample every running task, apply the kill policy, then look at host pressure."""
        while True:
            await asyncio.sleep(self.config.tick_s)
            failpoints.check("sample_loop", once=True)
            now = time.monotonic()
            free, threshold = self.executor.capacity().free_mem_bytes, self.pressure_threshold()
            pressure = self.executor.pressure_applies and free < threshold  # then every figure must be fresh
            for watch in list(self.watches.values()):
                task = self.by_id(watch.task_id)
                if task and task.state == State.RUNNING and (pressure or now >= watch.next_sample_at):
                    with self.isolated(task, "sampling it"):
                        failpoints.check("sample_task", task.name)
                        task = self.sample(task, watch)
                        await self.police(task, watch)
                        watch.next_sample_at = now + policy.sample_interval(
                            task.usage.mem_bytes, task.usage.cpu_cores, task.spec.estimates, self.config.tick_s,
                            self.config.tolerance_s) - self.config.tick_s / 2  # due on the tick nearest to it
            if self.executor.pressure_applies:
                await self.check_pressure(free, threshold)

    @contextlib.contextmanager
    def isolated(self, task: Task, doing: str) -> Iterator[None]:
        """An error while handling one task is logged, and the others are still watched."""
        try:
            yield
        except Exception:
            log.exception("error while %s (task %s); the other tasks are still watched", doing, task.name)

    def sample(self, task: Task, watch: Watch) -> Task:
        """Memory now and peak, CPU seconds and cores over the window, as the executor reads them."""
        sample = self.executor.read(task)
        if sample is None:
            return task
        now = time.monotonic()
        cores = task.usage.cpu_cores
        if watch.cpu_mark is None:
            watch.cpu_mark = (now, sample.cpu_seconds)
        elif now - watch.cpu_mark[0] >= self.config.cpu_window_s or not cores:
            elapsed = now - watch.cpu_mark[0]
            if elapsed > 0:
                cores = max(0.0, (sample.cpu_seconds - watch.cpu_mark[1]) / elapsed)  # a process may have ended
                watch.cpu_mark = (now, sample.cpu_seconds)
        usage = Usage(
            mem_bytes=sample.mem_bytes,
            peak_mem_bytes=max(task.usage.peak_mem_bytes or 0, sample.mem_bytes, sample.peak_mem_bytes or 0),
            cpu_seconds=max(task.usage.cpu_seconds or 0.0, sample.cpu_seconds),
            cpu_cores=cores,
        )
        if usage != task.usage:  # a quiet task costs no write and no signal
            task = task.with_(usage=usage)
            self.tasks[task.name] = task
            self.publish(task)
        self.add_to_timeline(task, watch, sample.mem_bytes, cores)
        return task

    def add_to_timeline(self, task: Task, watch: Watch, mem_bytes: int, cpu_cores: float) -> None:
        """One sample into the run's bounded series; stored now and then, so a restart loses little of it."""
        if task.started_at is None:
            return
        at_s = time.time() - task.started_at
        new_point = watch.timeline.needs_point(at_s)
        if new_point:  # once per point, journald says whether the task printed meanwhile (microseconds)
            self.note_output(task, watch)
        last_output_s = watch.last_output_at - task.started_at if watch.last_output_at > task.started_at else None
        watch.timeline = watch.timeline.add(at_s, mem_bytes, cpu_cores, last_output_s)
        if new_point and time.monotonic() - watch.timeline_saved_at >= TIMELINE_SAVE_S:
            self.store.save_timeline(task, watch.timeline)
            watch.timeline_saved_at = time.monotonic()

    async def police(self, task: Task, watch: Watch) -> None:
        """Warnings for estimates first exceeded; a stop when the policy says so."""
        if task.kill_requested or task.started_at is None:
            return
        u = task.usage
        observation = policy.Observation(time.monotonic(), time.time() - task.started_at, u.mem_bytes, u.cpu_cores)
        verdict = policy.evaluate(observation, task.spec.estimates, watch.policy, self.config.tolerance_s)
        watch.policy = verdict.memory
        for risk in verdict.risks:
            event = report.risk_event(task, risk.dim, risk.actual, risk.estimate, risk.ratio, time.time())
            self.store.add_event(task, "runaway_risk", {k: v for k, v in event.items() if k != "event"}, time.time())
            if self.publisher:
                self.publisher.runaway_risk(task, event)
        if verdict.kill:
            log.info("stopping %s: %s", task.name, verdict.kill)
            await self.stop(task, verdict.kill)

    # --- deadlines: kill_timeout and stalls, as timers ----------------------------------------------

    def arm_deadlines(self, task: Task, watch: Watch) -> None:
        """The task's kill_timeout and its next stall check: exact timers, and no work in between."""
        watch.disarm()
        loop, now, e = asyncio.get_running_loop(), time.time(), task.spec.estimates
        started = task.started_at or now
        watch.last_output_at = max(watch.last_output_at, started)
        watch.timeout_timer = loop.call_later(max(0.0, started + e.kill_timeout_s - now), self.on_timeout, task.id)
        watch.stall_timer = loop.call_later(max(0.0, watch.last_output_at + e.observability_interval_s - now),
                                            self.on_stall_check, task.id)

    def running_watch(self, task_id: int) -> tuple[Task, Watch] | None:
        task = self.by_id(task_id)
        watch = self.watches.get(task_id)
        if task is None or watch is None or task.state != State.RUNNING or task.kill_requested:
            return None
        return task, watch

    def on_timeout(self, task_id: int) -> None:
        if found := self.running_watch(task_id):
            log.info("stopping %s: %s", found[0].name, KillReason.TIMEOUT)
            self.background.run(self.stop(found[0], KillReason.TIMEOUT), f"stopping {found[0].name}")

    def on_stall_check(self, task_id: int) -> None:
        """At the stall deadline, ask journald when the task last wrote; stop it, or check again later."""
        found = self.running_watch(task_id)
        if found is None:
            return
        task, watch = found
        with self.isolated(task, "checking it for a stall"):
            self.note_output(task, watch)
            interval = task.spec.estimates.observability_interval_s
            if policy.stalled(watch.last_output_at, time.time(), interval):
                log.info("stopping %s: %s", task.name, KillReason.OBSERVABILITY_STALL)
                self.background.run(self.stop(task, KillReason.OBSERVABILITY_STALL), f"stopping {task.name}")
                return
        watch.stall_timer = asyncio.get_running_loop().call_later(
            max(0.0, watch.last_output_at + interval - time.time()), self.on_stall_check, task.id)

    def silent_s(self, task: Task, now: float) -> float | None:
        """Seconds since a running task's last line, computed when asked (once a second at most, for long lists)."""
        watch = self.watches.get(task.id)
        if watch is None:
            return None
        if time.monotonic() - watch.output_asked_at > 1.0:
            self.note_output(task, watch)
        return round(now - watch.last_output_at, 1)

    def note_output(self, task: Task, watch: Watch) -> None:
        """What the executor says of the task's newest line."""
        written = self.executor.last_output_at(task)
        watch.output_asked_at = time.monotonic()
        if written:
            watch.last_output_at = max(watch.last_output_at, written)

    def pressure_threshold(self) -> int:
        if self.config.pressure_free_bytes:
            return self.config.pressure_free_bytes
        return int(meminfo()["MemTotal"] * self.config.pressure_free_pct / 100)

    async def check_pressure(self, free: int, threshold: int) -> None:
        """Low free memory: stop babysit's own culprits, or note pressure that comes from elsewhere."""
        running = [t for t in self.tasks.values() if t.state == State.RUNNING and not t.kill_requested]
        loads = [policy.Load(t.name, t.usage.mem_bytes, t.spec.estimates.mem_bytes) for t in running]
        stopping = sum(t.usage.mem_bytes for t in self.tasks.values()
                       if t.state == State.RUNNING and t.kill_requested)
        now = time.monotonic()
        if free >= threshold:
            self.pressure_since = None
        elif self.pressure_since is None:
            self.pressure_since = now
        sustained = self.pressure_since is not None and now - self.pressure_since >= self.config.pressure_grace_s
        verdict = policy.pressure_victims(loads, free, threshold, sustained, stopping)
        if verdict.external:
            if not self.external_pressure:
                log.warning("host memory pressure from outside babysit (%d bytes short); nothing stopped",
                            verdict.shortfall_bytes)
                for task in running:
                    self.store.add_event(task, "external_pressure", {"name": task.name, "at": report.timestamp(
                        time.time()), "shortfall_bytes": verdict.shortfall_bytes}, time.time())
            self.external_pressure = True
            return
        self.external_pressure = False
        if verdict.victims:
            # the grace starts again: whether well-behaved tasks must go too is judged on what the host
            # looks like once these stops have freed their memory, not on the episode they end (in CI, a
            # runaway's stop and memory taken outside meanwhile once cost a 3 MiB bystander its run)
            self.pressure_since = now
        for name in verdict.victims:
            log.warning("host memory pressure (%d bytes short): stopping %s", verdict.shortfall_bytes, name)
            await self.stop(self.tasks[name], KillReason.PRESSURE)

    # --- bookkeeping ------------------------------------------------------------------------------

    def by_id(self, task_id: int) -> Task | None:
        return next((t for t in self.tasks.values() if t.id == task_id), None)

    def save(self, task: Task, detail: str = "", timeline: Timeline | None = None) -> Task:
        self.store.save(task, time.time(), detail, timeline)
        self.tasks[task.name] = task  # a finished one stays until its executor let go of it
        self.publish(task)
        return task

    def publish(self, task: Task) -> None:
        if self.publisher:
            self.publisher.task_changed(task)


def check_cwd(cwd: str) -> None:
    """Refuse a working directory the task could not start in, before any unit exists."""
    path = Path(cwd).expanduser()  # "~" is the user's home, as systemd reads it
    if not path.exists():
        raise InvalidArgument(f"cwd {cwd}: no such directory")
    if not path.is_dir():
        raise InvalidArgument(f"cwd {cwd}: not a directory")
    if not os.access(path, os.X_OK):
        raise InvalidArgument(f"cwd {cwd}: permission denied (this user cannot enter it)")


class SupervisionEnded(Exception):
    """A loop that watches tasks ended: babysitd exits non-zero, so systemd starts a fresh one."""


async def open_executor(bus: MessageBus, settings: config.Config) -> Executor:
    """The executor the config names (the adapters are imported here: the scheduler needs none of them)."""
    state_dir = store.default_path().parent
    if settings.executor == "slurm":
        from babysit.executor_slurm import SlurmExecutor

        return await SlurmExecutor.connect(settings, state_dir)
    from babysit.executor_systemd import SystemdExecutor
    from babysit.systemd import Systemd

    return await SystemdExecutor.connect(Systemd(bus), settings, state_dir)


async def serve() -> None:
    from babysit.service import BusService  # the D-Bus adapter; the scheduler above does not need it

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # a few cgroup files stay open per running task (cgroup.CgroupFiles): the usual soft limit of 1024
    # descriptors would cap the number of tasks
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    bus = await session_bus.connect()
    settings = config.load()
    executor = await open_executor(bus, settings)
    db, damaged = store.open_or_replace(store.default_path(), time.time())
    daemon = Daemon(executor, db, settings, [damaged] if damaged else [])
    for warning in daemon.warnings:
        log.warning("%s", warning)
    service = BusService(bus, daemon)
    daemon.publisher = service
    await daemon.start()
    await service.export()  # the name last: D-Bus activation callers only get a ready daemon
    loop = asyncio.get_running_loop()
    supervision = {loop.create_task(work): name for work, name in (
        (daemon.sample_forever(), "sampling"), (daemon.recheck_forever(), "queue re-check"),
        (executor.supervise(), f"{executor.kind} supervision"))}
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("babysitd %s ready (tick %.1fs, host %s bytes / %d cores)", __version__, settings.tick_s,
             daemon.host.mem_bytes, daemon.host.cores)
    stopped, lost_bus = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(bus.wait_for_disconnect())
    done, _ = await asyncio.wait([stopped, lost_bus, *supervision], return_when=asyncio.FIRST_COMPLETED)
    for work in supervision:
        work.cancel()
    await executor.close()
    bus.disconnect()
    ended = [supervision[work] for work in done if work in supervision]
    if ended:
        failure = next(iter(done)).exception() if len(done) == 1 else None
        log.critical("the %s loop ended (%r): exiting so that systemd starts babysitd afresh", ended[0], failure)
        raise SupervisionEnded(ended[0])
    if lost_bus in done and not stopped.done():
        log.critical("lost the session bus connection (%r): exiting so that systemd restarts babysitd",
                     lost_bus.exception() if not lost_bus.cancelled() else None)
        raise SupervisionEnded("bus")


def main() -> None:
    try:
        asyncio.run(serve())
    except SupervisionEnded:
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
