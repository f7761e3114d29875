"""babysitd: the scheduler. One handler per client verb, one per process transition (spawn, finish, stop).

Everything it learns about units comes from systemd's PropertiesChanged signals; the only periodic work is
sampling usage, which systemd does not push.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from dbus_fast import BusType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from babysit import __version__, config, journal, policy, report, store
from babysit.capacity import Decision, Reservation, capacity_report, decide, refusal
from babysit.cgroup import Layout, OomNotifier, missing_controllers, oom_notifier, read_sample
from babysit.host import free_mem_bytes, meminfo, read_host
from babysit.outcome import UnitEnd, classify, has_ended, oom_evidence
from babysit.protocol import (
    SLICE, UNIT_PREFIX, CapacityExceeded, CapsUnavailable, InvalidArgument, KillReason, NameInUse, NoSuchTask,
    NotRunning, State, log_command, unit_name,
)
from babysit.quantities import format_duration
from babysit.systemd import SERVICE, UNIT, Systemd, UnitChange, unit_path
from babysit.task import (
    RUNTIME_BACKSTOP_MARGIN_S, Host, Outcome, Task, Usage, derive_caps, spec_from_wire, spec_to_wire,
)
from babysit.unit import cap_properties, description, start_properties

log = logging.getLogger("babysitd")
ACTIVE_STATES = ("activating", "active", "deactivating", "reloading")


class Publisher(Protocol):
    """Where task changes go out (the D-Bus service)."""

    def task_changed(self, task: Task) -> None: ...
    def task_finished(self, task: Task) -> None: ...
    def capacity_changed(self, capacity: dict[str, Any]) -> None: ...
    def runaway_risk(self, task: Task, event: dict[str, Any]) -> None: ...


@dataclass
class Watch:
    """A running task's unit, as its signals have shown it so far."""

    task_id: int
    props: dict[str, Any] = field(default_factory=dict)
    seen_active: bool = False
    cpu_mark: tuple[float, int] | None = None  # (monotonic time, CPU ns) of the window's start
    last_output: float = field(default_factory=time.monotonic)
    policy: policy.Memory = field(default_factory=policy.Memory)
    oom_kills: int = 0  # cgroup v1 evidence of the OOM killer, as last sampled
    failcnt: int = 0
    oom: OomNotifier | None = None  # cgroup v1: armed once the unit's cgroup exists


class Daemon:
    def __init__(self, systemd: Systemd, db: store.Store, host: Host, layout: Layout, settings: config.Config,
                 manager_cgroup: str, caps_missing: list[str], advice: list[str]) -> None:
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
        self.external_pressure = False  # reported once per episode

    # --- start-up ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe first, then take the snapshot, so no unit change falls in between (see bleak)."""
        for task in list(self.tasks.values()):
            if task.state == State.QUEUED and await self.systemd.get_unit(unit_name(task.name)):
                await self.recover_spawn(task)
            self.publish(self.tasks[task.name])  # its object exists before a waiter looks, so changes signal
        for task in self.tasks.values():
            if task.state == State.RUNNING:
                self.watches[unit_path(unit_name(task.name))] = Watch(task.id)
        await self.systemd.subscribe(self.on_unit_change)
        for task in list(self.tasks.values()):
            if task.state == State.RUNNING:
                await self.adopt(task)
        await self.release_orphans()
        await self.drain()  # queued tasks survive restarts, and start once they fit

    async def recover_spawn(self, task: Task) -> None:
        """A queued task whose name has a unit: the last daemon died around its start, or before a release."""
        unit = unit_name(task.name)
        props = await self.systemd.properties(unit, UNIT)
        if props.get("Description") != description(task):
            await self.release(unit, props.get("ActiveState", ""))  # an older run's, whose result is stored
            return
        started = props.get("ActiveEnterTimestamp", 0) / 1e6 or time.time()
        self.save(task.with_(state=State.RUNNING, started_at=started))
        log.info("recovered %s: its unit was started just before the last daemon stopped", task.name)

    async def adopt(self, task: Task) -> None:
        """Take up a task that was running when the previous daemon stopped."""
        unit = unit_name(task.name)
        if await self.systemd.get_unit(unit) is None:
            self.watches.pop(unit_path(unit), None)
            outcome = (Outcome(State.KILLED, kill_reason=task.kill_requested) if task.kill_requested else
                       Outcome(State.UNKNOWN, detail="its unit was gone when babysitd restarted, so how it ended "
                                                     f"is not known; see {log_command(task.name)}"))
            await self.record_end(task, outcome)
            return
        props = await self.unit_properties(unit)
        watch = self.watches.setdefault(unit_path(unit), Watch(task.id))
        watch.props.update(props)
        watch.seen_active = True  # it ran: a loaded, inactive task unit has ended
        if watch.oom is None and props.get("SubState") == "running":
            self.arm_oom_notifier(task, watch)
        if has_ended(watch.props, started=True):
            await self.finish(task)
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
        spec = spec_from_wire(wire, self.host)
        caps = derive_caps(spec, self.host)
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
                raise CapacityExceeded(json.dumps(refusal(spec.name, decision)))
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
        caps = derive_caps(spec, self.host)
        if task.state == State.RUNNING:
            # RuntimeMaxSec was fixed at start; the daemon's own timer enforces kill_timeout below it
            longest = task.caps.runtime_max_s - RUNTIME_BACKSTOP_MARGIN_S
            if spec.estimates.kill_timeout_s > longest:
                raise InvalidArgument(f"kill_timeout of a running task can grow to at most {format_duration(longest)} "
                                      "(the systemd backstop set at its start)")
            caps = replace(caps, runtime_max_s=task.caps.runtime_max_s)
            await self.systemd.set_unit_properties(unit_name(name), cap_properties(caps))
        self.save(task.with_(spec=spec, caps=caps))
        await self.drain()

    def status(self, name: str) -> dict[str, Any]:
        return self.describe(self.latest(name), time.time())

    def list(self, include_terminal: bool) -> list[dict[str, Any]]:
        tasks = self.store.history() if include_terminal else list(self.tasks.values())
        now = time.time()
        return [self.describe(t, now) for t in tasks]

    def describe(self, task: Task, now: float) -> dict[str, Any]:
        """A task's status; a queued one also says its place in the queue and what it waits for."""
        described = report.status(task, now)
        if task.state == State.QUEUED:
            queue = self.queue()
            ahead = [t.name for t in queue[: queue.index(task)]] if task in queue else []
            decision = self.decide(task.spec.estimates.mem_bytes, task.spec.estimates.cpu_cores, ahead)
            described |= {"queue_position": len(ahead) + 1, "waiting_for": decision.reason or "its turn",
                          "available": decision.available.as_dict()}
        return described

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.store.events(self.latest(name))

    @property
    def warnings(self) -> list[str]:
        return self.caps_missing + self.advice

    def capacity(self) -> dict[str, Any]:
        return capacity_report(self.host, free_mem_bytes(), self.reservations(),
                               [t.name for t in self.queue()]) | {"warnings": self.warnings}

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
            self.publisher.capacity_changed(self.capacity())

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
            await self.systemd.start_transient_unit(unit, start_properties(task, self.config.stop_grace_s))
        except DBusError as e:
            self.watches.pop(unit_path(unit), None)
            await self.record_end(task, Outcome(State.FAILED, detail=f"systemd refused to start it: {e.text}"))
            return
        self.save(task.with_(state=State.RUNNING, started_at=time.time()))

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
            asyncio.get_running_loop().create_task(self.finish(task))

    def arm_oom_notifier(self, task: Task, watch: Watch) -> None:
        watch.oom = oom_notifier(self.layout, self.cgroup_of(task))
        if watch.oom:
            asyncio.get_running_loop().add_reader(watch.oom.fd, watch.oom.on_readable)

    def cgroup_of(self, task: Task) -> str:
        return f"{self.manager_cgroup}/{SLICE}/{unit_name(task.name)}"

    async def finish(self, task: Task) -> None:
        """A task's unit is over: read how it ended, store the result, release the unit."""
        self._finishing.add(task.id)
        unit = unit_name(task.name)
        watch = self.watches.pop(unit_path(unit), Watch(task.id))
        self.sample(task, watch)
        try:
            props = {**watch.props, **await self.unit_properties(unit)}
        except DBusError:
            props = watch.props  # already unloaded: the signals carried the end
        task = self.by_id(task.id) or task
        if watch.oom:
            asyncio.get_running_loop().remove_reader(watch.oom.fd)
            watch.oom.on_readable()  # a wake not yet delivered
            watch.oom.close()
        evidence = (bool(watch.oom and watch.oom.fired)
                    or oom_evidence(watch.oom_kills, watch.failcnt, task.usage.peak_mem_bytes, task.caps.memory_max_bytes))
        outcome = classify(UnitEnd.from_properties(props), task.kill_requested, evidence)
        await self.record_end(self.by_id(task.id) or task, outcome, props.get("ActiveState", ""))
        self._finishing.discard(task.id)

    async def record_end(self, task: Task, outcome: Outcome, unit_state: str | None = None) -> None:
        """Store the result, release the unit if there is one, and only then free the name and its room."""
        task = self.save(task.with_(state=outcome.state, outcome=outcome, finished_at=time.time()), outcome.detail)
        if unit_state is not None:
            # the name stays taken meanwhile: a new run of it must not meet the old unit
            await self.release(unit_name(task.name), unit_state)
        self.tasks.pop(task.name, None)
        if self.publisher:
            self.publisher.task_finished(task)
        asyncio.get_running_loop().create_task(self.drain())  # its room is free now

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
            for watch in list(self.watches.values()):
                task = self.by_id(watch.task_id)
                if task and task.state == State.RUNNING:
                    task = self.sample(task, watch)
                    await self.police(task, watch)
            await self.check_pressure()

    def sample(self, task: Task, watch: Watch) -> Task:
        """Memory now and peak, CPU seconds and cores over the window, from the unit's cgroup."""
        sample = read_sample(self.layout, self.cgroup_of(task))
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
            peak_mem_bytes=max(task.usage.peak_mem_bytes, sample.mem_bytes, sample.peak_mem_bytes or 0),
            cpu_seconds=max(task.usage.cpu_seconds, sample.cpu_ns / 1e9),
            cpu_cores=cores,
            silent_s=now - watch.last_output,
        )
        if usage != task.usage:
            task = task.with_(usage=usage)
            self.tasks[task.name] = task
            self.store.save_usage(task)
            self.publish(task)
        return task

    async def police(self, task: Task, watch: Watch) -> None:
        """Warnings for estimates first exceeded; a stop when the policy says so."""
        if task.kill_requested or task.started_at is None:
            return
        u = task.usage
        observation = policy.Observation(time.monotonic(), time.time() - task.started_at, u.mem_bytes, u.cpu_cores,
                                         u.silent_s)
        verdict = policy.evaluate(observation, task.spec.estimates, watch.policy, self.config.tolerance_s)
        watch.policy = verdict.memory
        for risk in verdict.risks:
            event = report.risk_event(task, risk.dim, risk.actual, risk.estimate, risk.ratio, time.time())
            self.store.add_event(task, "runaway_risk", {k: v for k, v in event.items() if k != "event"}, time.time())
            if self.publisher:
                self.publisher.runaway_risk(task, event)
        if verdict.kill == KillReason.OBSERVABILITY_STALL and await self.printed_lately(task, watch):
            return
        if verdict.kill:
            log.info("stopping %s: %s", task.name, verdict.kill)
            await self.stop(task, verdict.kill)

    async def printed_lately(self, task: Task, watch: Watch) -> bool:
        """Before a stall kill, ask journald itself: the follower can miss lines (journald restarting)."""
        written = await journal.last_line_at(unit_name(task.name))
        silent = time.time() - written if written else None
        if silent is None or silent >= task.spec.estimates.observability_interval_s:
            return False
        log.warning("%s printed %.1fs ago, which the journal follower missed; not a stall", task.name, silent)
        watch.last_output = time.monotonic() - silent
        return True

    def on_output(self, unit: str) -> None:
        """A task printed a line (from the journal follower)."""
        watch = self.watches.get(unit_path(unit))
        if watch:
            watch.last_output = time.monotonic()

    def pressure_threshold(self) -> int:
        if self.config.pressure_free_bytes:
            return self.config.pressure_free_bytes
        return int(meminfo()["MemTotal"] * self.config.pressure_free_pct / 100)

    async def check_pressure(self) -> None:
        """Low free memory: stop babysit's own culprits, or note pressure that comes from elsewhere."""
        running = [t for t in self.tasks.values() if t.state == State.RUNNING and not t.kill_requested]
        loads = [policy.Load(t.name, t.usage.mem_bytes, t.spec.estimates.mem_bytes) for t in running]
        verdict = policy.pressure_victims(loads, free_mem_bytes(), self.pressure_threshold())
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
        for name in verdict.victims:
            log.warning("host memory pressure (%d bytes short): stopping %s", verdict.shortfall_bytes, name)
            await self.stop(self.tasks[name], KillReason.PRESSURE)

    # --- bookkeeping ------------------------------------------------------------------------------

    def by_id(self, task_id: int) -> Task | None:
        return next((t for t in self.tasks.values() if t.id == task_id), None)

    def save(self, task: Task, detail: str = "") -> Task:
        self.store.save(task, time.time(), detail)
        self.tasks[task.name] = task  # a finished one stays until record_end has released its unit
        self.publish(task)
        return task

    def publish(self, task: Task) -> None:
        if self.publisher:
            self.publisher.task_changed(task)


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


async def serve() -> None:
    from babysit.service import BusService  # the D-Bus adapter; the scheduler above does not need it

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    bus = await MessageBus(bus_type=BusType.SESSION).connect()
    systemd = Systemd(bus)
    settings = config.load()
    layout = Layout.of_this_machine()
    manager_cgroup, caps_missing = await check_preconditions(systemd, layout)
    rate_limited = journal.rate_limit_warning(journal.journald_config_texts())
    advice = [rate_limited] if rate_limited else []
    for warning in caps_missing + advice:
        log.warning("%s", warning)
    daemon = Daemon(systemd, store.Store(store.default_path()), read_host(settings), layout, settings,
                    manager_cgroup, caps_missing, advice)
    service = BusService(bus, daemon)
    daemon.publisher = service
    await daemon.start()
    await service.export()  # the name last: D-Bus activation callers only get a ready daemon
    background = [asyncio.get_running_loop().create_task(work) for work in
                  (daemon.sample_forever(), daemon.recheck_forever(), journal.follow(daemon.on_output))]
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    log.info("babysitd %s ready (tick %.1fs, host %s bytes / %d cores)", __version__, settings.tick_s,
             daemon.host.mem_bytes, daemon.host.cores)
    await asyncio.wait([asyncio.ensure_future(stop.wait()), asyncio.ensure_future(bus.wait_for_disconnect())],
                       return_when=asyncio.FIRST_COMPLETED)
    for work in background:
        work.cancel()
    bus.disconnect()


def main() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    main()
