"""babysitd: the scheduler. One handler per client verb, one per process transition (spawn, finish, stop).

Everything it learns about units comes from systemd's PropertiesChanged signals; the only periodic work is
sampling usage, which systemd does not push.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from dbus_fast.errors import DBusError

from babysit import __version__, accounting, config, failpoints, history, journal, policy, report, store
from babysit import bus as session_bus
from babysit.capacity import Decision, Reservation, capacity_report, decide, refusal, requested_room, room, shortfall
from babysit.cgroup import CgroupFiles, Layout, OomNotifier, missing_controllers, oom_notifier, read_sample
from babysit.host import free_mem_bytes, meminfo, read_host
from babysit.outcome import UnitEnd, classify, final_usage, has_ended, oom_evidence, tells_the_exit
from babysit.protocol import (
    SLICE, UNIT_PREFIX, BabysitError, CapacityExceeded, CapsUnavailable, InvalidArgument, KillReason, NameInUse, NoSuchTask,
    NotRunning, State, log_command, unit_name,
)
from babysit.quantities import format_duration
from babysit.systemd import SERVICE, UNIT, Systemd, UnitChange, unit_path
from babysit.task import (
    RUNTIME_BACKSTOP_MARGIN_S, Caps, Host, Outcome, Spread, Task, TaskSpec, Usage, derive_caps, limits,
    spec_from_wire, spec_to_wire, validate_name,
)
from babysit.timeline import Timeline
from babysit.unit import (
    USEC, Described, cap_properties, description, parse_description, start_properties, unit_command,
)

log = logging.getLogger("babysitd")
ACTIVE_STATES = ("activating", "active", "deactivating", "reloading")
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
    """A running task's unit, as its signals have shown it so far."""

    task_id: int
    props: dict[str, Any] = field(default_factory=dict)
    seen_active: bool = False
    cpu_mark: tuple[float, int] | None = None  # (monotonic time, CPU ns) of the window's start
    last_output_at: float = 0.0  # epoch seconds of its newest line that babysit has seen (or its start)
    output_asked_at: float = -1e9  # when journald was last asked about it (monotonic)
    timeout_timer: asyncio.TimerHandle | None = None  # its kill_timeout
    stall_timer: asyncio.TimerHandle | None = None  # its next stall check

    policy: policy.Memory = field(default_factory=policy.Memory)
    oom_kills: int = 0  # cgroup v1 evidence of the OOM killer, as last sampled
    failcnt: int = 0
    oom: OomNotifier | None = None  # cgroup v1: armed once the unit's cgroup exists
    files: CgroupFiles = field(default_factory=CgroupFiles)  # the figures the sampler reads
    next_sample_at: float = 0.0  # monotonic; see policy.sample_interval
    timeline: Timeline = field(default_factory=Timeline)
    timeline_saved_at: float = 0.0  # monotonic

    def disarm(self) -> None:
        for timer in (self.timeout_timer, self.stall_timer):
            if timer:
                timer.cancel()

    def close(self) -> None:
        """Nothing of it runs or stays open any more: its unit is over."""
        self.disarm()
        self.files.close()


class Daemon:
    def __init__(self, systemd: Systemd, db: store.Store, host: Host, layout: Layout, settings: config.Config,
                 manager_cgroup: str, caps_missing: list[str], advice: list[str], ends_dir: Path) -> None:
        self.systemd = systemd
        self.store = db
        self.host = host
        self.layout = layout
        self.config = settings
        self.manager_cgroup = manager_cgroup
        self.caps_missing = caps_missing  # why caps cannot be applied, with the fix: `run` refuses then
        self.advice = advice  # what else does not hold here, with the fix: `run` goes on
        self.publisher: Publisher | None = None
        # by name: queued and running tasks, and finished ones until their unit is released
        self.tasks: dict[str, Task] = {t.name: t for t in db.live()}
        self.watches: dict[str, Watch] = {}  # unit object path -> watch
        self._finishing: set[int] = set()
        self._admission = asyncio.Lock()  # one decision at a time, so two tasks never take the same room
        self._drain_requested = False  # a burst of task ends drains the queue once, not once per end
        self._ends_since_prune = 0  # see prune
        self._background: set[asyncio.Task[None]] = set()
        self.external_pressure = False  # reported once per episode
        self.pressure_since: float | None = None  # monotonic start of the current low-memory episode
        self.ends_dir = ends_dir  # where units leave their final accounting (see babysit.accounting)
        ends_dir.mkdir(parents=True, exist_ok=True)
        self.record_script = accounting.install_script(ends_dir)
        self.stdbuf = shutil.which("stdbuf")  # coreutils: line-buffered output for native loggers
        self.last_output = journal.LastOutput()
        if not self.stdbuf:
            advice.append("coreutils' stdbuf is missing, so the output of C/C++ programs in tasks stays "
                          "block-buffered and may look like a stall; fix: install coreutils")

    # --- start-up ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe first, then take the snapshot, so no unit change falls in between (see bleak)."""
        for task in list(self.tasks.values()):
            if task.state == State.QUEUED:
                await self.recover_spawn(task)
            self.publish(self.tasks[task.name])  # its object exists before a waiter looks, so changes signal
        for task in self.tasks.values():
            if task.state == State.RUNNING:
                self.watches[unit_path(unit_name(task.name))] = Watch(task.id)
        await self.systemd.subscribe(self.on_unit_change)
        await self.take_up_unrecorded_units()
        for task in list(self.tasks.values()):
            if task.state == State.RUNNING:
                await self.adopt(task)
        await self.release_orphans()
        self.prune()
        await self.drain()  # queued tasks survive restarts, and start once they fit

    async def recover_spawn(self, task: Task) -> None:
        """A queued task that has a unit or an end record: the last daemon died around its start."""
        unit = unit_name(task.name)
        if await self.systemd.get_unit(unit) is None:
            if self.record_of(task).exists():  # it ran and ended while no daemon watched: never run it again
                self.save(task.with_(state=State.RUNNING))  # adopt() reads how it ended; its start is not known
                log.info("recovered %s: it ran and ended while no daemon watched", task.name)
            return
        props = await self.systemd.properties(unit, UNIT)
        described = parse_description(props.get("Description", ""))
        if described is None or described.run_id != task.id:
            await self.release(unit, props.get("ActiveState", ""))  # an older run's, whose result is stored
            return
        started = props.get("ActiveEnterTimestamp", 0) / 1e6 or time.time()
        self.save(task.with_(state=State.RUNNING, started_at=started))
        log.info("recovered %s: its unit was started just before the last daemon stopped", task.name)

    async def take_up_unrecorded_units(self) -> None:
        """Task units that babysit's records do not know (the database was lost or damaged): their
        Description says whose run they are and with which estimates, so they are watched again."""
        live = {unit_name(t.name) for t in self.tasks.values()}
        for unit, active, _sub in await self.systemd.list_units(f"{UNIT_PREFIX}*.service"):
            if unit in live or active == "inactive":
                continue
            props = await self.unit_properties(unit)
            described = parse_description(props.get("Description", ""))
            if described is None or unit != unit_name(described.name):
                continue
            recorded = self.store.name_of(described.run_id)
            if recorded == described.name:
                continue  # a finished run of ours whose unit was not released yet: release_orphans does that
            try:
                # keep the run's id unless a newer record took it (its unit's Description names the id)
                task = self.store.add_running(self.spec_of_unit(described, props), self.caps_of_unit(described, props),
                                              None if recorded else described.run_id,
                                              props.get("ActiveEnterTimestamp", 0) / USEC or time.time())
            except BabysitError as e:
                log.warning("cannot take up %s, which babysit has no record of: %s", unit, e)
                continue
            self.tasks[task.name] = task
            self.watches[unit_path(unit)] = Watch(task.id)
            self.publish(task)
            log.warning("took up %s (run #%d), which babysit had no record of", unit, task.id)

    def spec_of_unit(self, described: Described, props: Mapping[str, Any]) -> TaskSpec:
        """A task's spec, read back from its unit: the command, directory and environment systemd has."""
        command = next((unit_command(argv) for _path, argv, *_ in props.get("ExecStart", [])), "")
        f = described.fields
        wire = {"name": described.name, "command": command, "cwd": props.get("WorkingDirectory") or "~",
                "env": dict(v.split("=", 1) for v in props.get("Environment", []) if "=" in v),
                "estimated_time": f.get("time_s"), "kill_timeout": f.get("kill_timeout_s"),
                "observability_interval": f.get("observability_interval_s"),
                "estimated_mem_bytes": f.get("mem_bytes"), "estimated_cpu_cores": f.get("cpu_cores"),
                "mem_pct_limit": f.get("mem_pct_limit"), "cpu_pct_limit": f.get("cpu_pct_limit")}
        return spec_from_wire({k: v for k, v in wire.items() if v is not None}, self.host)

    def caps_of_unit(self, described: Described, props: Mapping[str, Any]) -> Caps:
        """The caps systemd enforces on a unit, as they are (the host or the config may have changed)."""
        f = described.fields
        return Caps(mem_limit_bytes=int(self.host.mem_bytes * f.get("mem_pct_limit", 100) / 100),
                    cpu_limit_cores=self.host.cores * f.get("cpu_pct_limit", 100) / 100,
                    memory_max_bytes=int(props.get("MemoryMax", 0)),
                    cpu_quota_pct=props.get("CPUQuotaPerSecUSec", 0) / USEC * 100,
                    runtime_max_s=props.get("RuntimeMaxUSec", 0) / USEC)

    async def adopt(self, task: Task) -> None:
        """Take up a task that was running when the previous daemon stopped."""
        unit = unit_name(task.name)
        if await self.systemd.get_unit(unit) is None:
            self.watches.pop(unit_path(unit), None)
            final = accounting.read(self.record_of(task))
            if final:  # it ended while no daemon ran, and left its accounting behind
                await self.conclude(task, Watch(task.id), {}, final)
                return
            outcome = (Outcome(State.KILLED, kill_reason=task.kill_requested) if task.kill_requested else
                       Outcome(State.UNKNOWN, detail="its unit was gone when babysitd restarted, so how it ended "
                                                     f"is not known; see {log_command(task.name)}"))
            await self.record_end(task, outcome)
            return
        props = await self.unit_properties(unit)
        watch = self.watches.setdefault(unit_path(unit), Watch(task.id))
        watch.timeline = self.store.timeline(task)
        watch.props.update(props)
        watch.seen_active = True  # it ran: a loaded, inactive task unit has ended
        if watch.oom is None and props.get("SubState") == "running":
            self.arm_oom_notifier(task, watch)
        if has_ended(watch.props, started=True):
            await self.finish(task)
            return
        self.arm_deadlines(task, watch)
        log.info("adopted running task %s", task.name)

    async def release_orphans(self) -> None:
        """Task units whose result is stored but that were not released (the daemon died in between)."""
        live = {unit_name(t.name) for t in self.tasks.values()}
        for unit, active, sub in await self.systemd.list_units(f"{UNIT_PREFIX}*.service"):
            if unit not in live and (active == "failed" or sub == "exited"):
                await self.release(unit, active)

    async def unit_properties(self, unit: str) -> dict[str, Any]:
        return {**await self.systemd.properties(unit, UNIT), **await self.systemd.properties(unit, SERVICE)}

    # --- client verbs -----------------------------------------------------------------------------

    async def run(self, wire: Mapping[str, Any], force: bool) -> str:
        """Validate and admit a task: start it if it fits now, queue it with force, refuse it otherwise."""
        spec, _ = self.with_learned_estimates(spec_from_wire(wire, self.host), wire)
        caps = derive_caps(spec, self.host)
        check_cwd(spec.cwd)
        if self.caps_missing:
            raise CapsUnavailable("; ".join(self.caps_missing))
        async with self._admission:
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
            if decision.admit:
                await self.spawn(task)
            else:
                log.info("queued %s: %s", task.name, decision.reason)
        return task.name

    async def kill(self, name: str) -> None:
        """Graceful stop of a running task, or removal of a queued one."""
        task = self.live(name)
        if task.state == State.QUEUED:
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
            # RuntimeMaxSec was fixed at start; the daemon's own timer enforces kill_timeout below it
            longest = task.caps.runtime_max_s - RUNTIME_BACKSTOP_MARGIN_S
            if spec.estimates.kill_timeout_s > longest:
                raise InvalidArgument(f"kill_timeout of a running task can grow to at most {format_duration(longest)} "
                                      "(the systemd backstop set at its start)")
            caps = replace(caps, runtime_max_s=task.caps.runtime_max_s)
            adjusted = task.with_(spec=spec, caps=caps)
            # the Description carries the estimates, for a daemon that has to take the unit up without records
            await self.systemd.set_unit_properties(unit_name(name), cap_properties(caps)
                                                   | {"Description": description(adjusted)})
        task = self.save(task.with_(spec=spec, caps=caps))
        watch = self.watches.get(unit_path(unit_name(name)))
        if task.state == State.RUNNING and watch:
            self.arm_deadlines(task, watch)
        await self.drain()

    def status(self, name: str) -> dict[str, Any]:
        """Everything known about a name's latest run, its usage over time included."""
        ((task, now_known),) = self.describe([self.latest(name)])
        watch = self.watches.get(unit_path(unit_name(name))) if task.state == State.RUNNING else None
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
        available = room(self.host, free_mem_bytes(), self.reservations())
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
                             "waiting_for": shortfall(requested, available, ahead) or "its turn",
                             "available": room_now}
            described.append((task, now_known))
        return described

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.store.events(self.latest(name))

    @property
    def warnings(self) -> list[str]:
        return self.caps_missing + self.advice

    def capacity(self) -> dict[str, Any]:
        return capacity_report(self.host, free_mem_bytes(), self.reservations(),
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

    def reservations(self) -> list[Reservation]:
        return [Reservation(t.name, t.spec.estimates.mem_bytes, t.spec.estimates.cpu_cores, t.usage.mem_bytes)
                for t in self.tasks.values() if t.state == State.RUNNING]

    def queue(self) -> list[Task]:
        return sorted((t for t in self.tasks.values() if t.state == State.QUEUED), key=lambda t: t.id)

    def decide(self, mem_bytes: int, cpu_cores: float, ahead: list[str] | None = None) -> Decision:
        queued = [t.name for t in self.queue()] if ahead is None else ahead
        return decide(self.host, free_mem_bytes(), self.reservations(), mem_bytes, cpu_cores, queued)

    async def drain(self) -> None:
        """Start queued tasks in submission order while the first of them fits (none overtakes another)."""
        async with self._admission:
            for task in self.queue():
                if not self.decide(task.spec.estimates.mem_bytes, task.spec.estimates.cpu_cores, []).admit:
                    break
                await self.spawn(task)
        if self.publisher:
            self.publisher.capacity_changed()

    def request_drain(self) -> None:
        """Drain soon; the requests of a burst of task ends become one drain."""
        if not self._drain_requested:
            self._drain_requested = True
            self.background(self._drain_requested_now(), "draining the queue")

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
        """Start a queued task as its transient unit."""
        unit = unit_name(task.name)
        self.watches[unit_path(unit)] = Watch(task.id)  # before the start: its first signals count
        try:
            cgroup = self.cgroup_of(task)
            stop_post = accounting.stop_post_command(self.record_script, self.record_of(task),
                                                     self.layout.memory_dir(cgroup), self.layout.cpu_files(cgroup))
            await self.systemd.start_transient_unit(unit, start_properties(task, self.config.stop_grace_s, stop_post,
                                                                           self.stdbuf))
        except DBusError as e:
            self.watches.pop(unit_path(unit), None)
            await self.record_end(task, Outcome(State.FAILED, detail=f"systemd refused to start it: {e.text}"))
            return
        task = self.save(task.with_(state=State.RUNNING, started_at=time.time()))
        if watch := self.watches.get(unit_path(unit)):  # unless it is already over
            self.arm_deadlines(task, watch)

    def on_unit_change(self, change: UnitChange) -> None:
        """systemd's signal for one unit: note it, and finish the task once its command is over."""
        watch = self.watches.get(change.path)
        if watch is None:
            return
        watch.props.update(change.changed)
        if change.changed.get("ActiveState") in ACTIVE_STATES:
            watch.seen_active = True
        task = self.by_id(watch.task_id)
        if task and watch.oom is None and change.changed.get("ActiveState") == "active":
            self.arm_oom_notifier(task, watch)
        if task and has_ended(watch.props, watch.seen_active) and task.id not in self._finishing:
            self._finishing.add(task.id)
            self.background(self.finish(task), f"finishing {task.name}")

    def arm_oom_notifier(self, task: Task, watch: Watch) -> None:
        watch.oom = oom_notifier(self.layout, self.cgroup_of(task))
        if watch.oom:
            asyncio.get_running_loop().add_reader(watch.oom.fd, self.on_oom_notice, task.id, watch)

    def on_oom_notice(self, task_id: int, watch: Watch) -> None:
        """The kernel's OOM notification (v1): the cgroup still holds what it had at the limit, so read it now."""
        assert watch.oom is not None
        watch.oom.on_readable()
        task = self.by_id(task_id)
        if task and watch.oom.fired:
            with self.isolated(task, "reading it at its OOM notification"):
                self.sample(task, watch)

    def cgroup_of(self, task: Task) -> str:
        return f"{self.manager_cgroup}/{SLICE}/{unit_name(task.name)}"

    def record_of(self, task: Task) -> Path:
        """Where the unit of this run leaves its final accounting."""
        return self.ends_dir / str(task.id)

    async def finish(self, task: Task) -> None:
        """A task's unit is over: read how it ended, store the result, release the unit."""
        self._finishing.add(task.id)
        try:
            unit = unit_name(task.name)
            watch = self.watches.pop(unit_path(unit), Watch(task.id))
            watch.close()
            final, props = accounting.read(self.record_of(task)), watch.props
            if not tells_the_exit(final):  # then ask systemd all it knows (two big replies: ms the waiter waits)
                with contextlib.suppress(DBusError):  # already unloaded: the signals carried the end
                    props = {**watch.props, **await self.unit_properties(unit)}
            if watch.oom:
                asyncio.get_running_loop().remove_reader(watch.oom.fd)
                watch.oom.on_readable()  # a wake not yet delivered
                watch.oom.close()
            await self.conclude(self.by_id(task.id) or task, watch, props, final)
        finally:
            self._finishing.discard(task.id)

    async def conclude(self, task: Task, watch: Watch, props: Mapping[str, Any],
                       final: accounting.FinalAccounting | None) -> None:
        """Judge how a run ended, from systemd's word and the kernel's final accounting, and store it."""
        peak = max(task.usage.peak_mem_bytes or 0, final.peak_mem_bytes or 0) if final else task.usage.peak_mem_bytes
        evidence = (bool(watch.oom and watch.oom.fired)
                    or oom_evidence(max(watch.oom_kills, final.oom_kills or 0) if final else watch.oom_kills,
                                    max(watch.failcnt, final.mem_failcnt or 0) if final else watch.failcnt,
                                    peak or 0, task.caps.memory_max_bytes))
        outcome = classify(UnitEnd.of(props, final), task.kill_requested, evidence)
        usage = final_usage(task.usage, final, outcome.kill_reason == KillReason.OOM, task.caps.memory_max_bytes)
        await self.record_end(task.with_(usage=usage), outcome, props.get("ActiveState", "") if props else None,
                              watch.timeline if watch.timeline.points else None)

    async def record_end(self, task: Task, outcome: Outcome, unit_state: str | None = None,
                         timeline: Timeline | None = None) -> None:
        """Store the result (with the run's timeline), release the unit if there is one, and only then free
        the name and its room."""
        if outcome.kill_reason in history.KILLING_FIGURE:  # its hint cites how the earlier runs went
            outcome = replace(outcome, history=self.earlier(task, history.KILLING_FIGURE[outcome.kill_reason]))
        task = self.save(task.with_(state=outcome.state, outcome=outcome, finished_at=time.time()), outcome.detail,
                         timeline)
        if unit_state is not None:
            # the name stays taken meanwhile: a new run of it must not meet the old unit
            await self.release(unit_name(task.name), unit_state)
        self.record_of(task).unlink(missing_ok=True)
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

    async def release(self, unit: str, active_state: str) -> None:
        """Let systemd forget a finished unit, so the name can run again."""
        try:
            if active_state == "failed":
                await self.systemd.reset_failed_unit(unit)
            elif active_state != "inactive":
                await self.systemd.stop_unit(unit)
        except DBusError as e:
            log.warning("could not release %s: %s", unit, e.text)

    async def stop(self, task: Task, reason: KillReason) -> None:
        """A graceful stop babysit decided on: remembered first, so a restart still knows why."""
        self.save(task.with_(kill_requested=reason))
        await self.systemd.stop_unit(unit_name(task.name))

    # --- sampling ---------------------------------------------------------------------------------

    async def sample_forever(self) -> None:
        """Each tick: sample every running task, apply the kill policy, then look at host pressure."""
        while True:
            await asyncio.sleep(self.config.tick_s)
            failpoints.check("sample_loop", once=True)
            now, free, threshold = time.monotonic(), free_mem_bytes(), self.pressure_threshold()
            pressure = free < threshold  # then every task's figures must be fresh
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
            await self.check_pressure(free, threshold)

    @contextlib.contextmanager
    def isolated(self, task: Task, doing: str) -> Iterator[None]:
        """An error while handling one task is logged, and the others are still watched."""
        try:
            yield
        except Exception:
            log.exception("error while %s (task %s); the other tasks are still watched", doing, task.name)

    def background(self, work: Coroutine[Any, Any, None], doing: str) -> None:
        """Run `work` beside the loop, keeping a reference, and log it if it fails."""
        running = asyncio.get_running_loop().create_task(work)
        self._background.add(running)

        def done(finished: asyncio.Task[None]) -> None:
            self._background.discard(finished)
            if not finished.cancelled() and finished.exception():
                log.error("error while %s", doing, exc_info=finished.exception())

        running.add_done_callback(done)

    def sample(self, task: Task, watch: Watch) -> Task:
        """Memory now and peak, CPU seconds and cores over the window, from the unit's cgroup."""
        sample = read_sample(self.layout, self.cgroup_of(task), watch.files)
        if sample is None:
            return task
        now = time.monotonic()
        cores = task.usage.cpu_cores
        if watch.cpu_mark is None:
            watch.cpu_mark = (now, sample.cpu_ns)
        elif now - watch.cpu_mark[0] >= self.config.cpu_window_s or not cores:
            elapsed = now - watch.cpu_mark[0]
            if elapsed > 0:
                cores = max(0.0, (sample.cpu_ns - watch.cpu_mark[1]) / 1e9 / elapsed)  # a process may have ended
                watch.cpu_mark = (now, sample.cpu_ns)
        watch.oom_kills, watch.failcnt = sample.oom_kills, sample.mem_failcnt or 0
        usage = Usage(
            mem_bytes=sample.mem_bytes,
            peak_mem_bytes=max(task.usage.peak_mem_bytes or 0, sample.mem_bytes, sample.peak_mem_bytes or 0),
            cpu_seconds=max(task.usage.cpu_seconds or 0.0, sample.cpu_ns / 1e9),
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
        watch = self.watches.get(unit_path(unit_name(task.name))) if task else None
        if task is None or watch is None or task.state != State.RUNNING or task.kill_requested:
            return None
        return task, watch

    def on_timeout(self, task_id: int) -> None:
        if found := self.running_watch(task_id):
            log.info("stopping %s: %s", found[0].name, KillReason.TIMEOUT)
            self.background(self.stop(found[0], KillReason.TIMEOUT), f"stopping {found[0].name}")

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
                self.background(self.stop(task, KillReason.OBSERVABILITY_STALL), f"stopping {task.name}")
                return
        watch.stall_timer = asyncio.get_running_loop().call_later(
            max(0.0, watch.last_output_at + interval - time.time()), self.on_stall_check, task.id)

    def silent_s(self, task: Task, now: float) -> float | None:
        """Seconds since a running task's last line, computed when asked (once a second at most, for long lists)."""
        watch = self.watches.get(unit_path(unit_name(task.name)))
        if watch is None:
            return None
        if time.monotonic() - watch.output_asked_at > 1.0:
            self.note_output(task, watch)
        return round(now - watch.last_output_at, 1)

    def note_output(self, task: Task, watch: Watch) -> None:
        """What journald says of the task's newest line."""
        written = self.last_output.at(task.name)
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
        self.tasks[task.name] = task  # a finished one stays until record_end has released its unit
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


async def check_preconditions(systemd: Systemd, layout: Layout) -> tuple[str, list[str]]:
    """The user manager's cgroup, and what keeps caps from working (each with its fix)."""
    manager_cgroup = await systemd.manager_property("ControlGroup")
    warnings = []
    missing = missing_controllers(layout, manager_cgroup, os.getuid())
    if missing:
        warnings.append(
            f"the user manager has no {'/'.join(missing)} controller delegated, so systemd would ignore "
            "MemoryMax/CPUQuota; fix: a drop-in for user@.service with Delegate=yes (and cgroup v2), "
            "then log in again"
        )
    return manager_cgroup, warnings


class SupervisionEnded(Exception):
    """A loop that watches tasks ended: babysitd exits non-zero, so systemd starts a fresh one."""


async def serve() -> None:
    from babysit.service import BusService  # the D-Bus adapter; the scheduler above does not need it

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # a few cgroup files stay open per running task (cgroup.CgroupFiles): the usual soft limit of 1024
    # descriptors would cap the number of tasks
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    bus = await session_bus.connect()
    systemd = Systemd(bus)
    settings = config.load()
    layout = Layout.of_this_machine()
    manager_cgroup, caps_missing = await check_preconditions(systemd, layout)
    rate_limited = journal.rate_limit_warning(journal.journald_config_texts())
    db, damaged = store.open_or_replace(store.default_path(), time.time())
    advice = [note for note in (rate_limited, damaged) if note]
    daemon = Daemon(systemd, db, read_host(settings), layout, settings, manager_cgroup, caps_missing, advice,
                    store.default_path().parent / "ends")
    for warning in daemon.warnings:
        log.warning("%s", warning)
    service = BusService(bus, daemon)
    daemon.publisher = service
    await daemon.start()
    await service.export()  # the name last: D-Bus activation callers only get a ready daemon
    loop = asyncio.get_running_loop()
    supervision = {loop.create_task(work): name for work, name in (
        (daemon.sample_forever(), "sampling"), (daemon.recheck_forever(), "queue re-check"))}
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("babysitd %s ready (tick %.1fs, host %s bytes / %d cores)", __version__, settings.tick_s,
             daemon.host.mem_bytes, daemon.host.cores)
    stopped, lost_bus = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(bus.wait_for_disconnect())
    done, _ = await asyncio.wait([stopped, lost_bus, *supervision], return_when=asyncio.FIRST_COMPLETED)
    for work in supervision:
        work.cancel()
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
