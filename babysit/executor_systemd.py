"""The default executor: each run is a transient unit of the user's systemd, under babysit's slice.

Everything it learns about units comes from systemd's PropertiesChanged signals; usage is read from the
units' cgroups when the scheduler asks, and output times from journald.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbus_fast.errors import DBusError

from babysit import accounting, journal
from babysit.background import Background
from babysit.cgroup import CgroupFiles, Layout, OomNotifier, missing_controllers, oom_notifier, read_sample
from babysit.config import Config
from babysit.executor import Capacity, Orphan, Reading, Reporting, StartRefused, Supervisor
from babysit.host import free_mem_bytes, read_host
from babysit.outcome import UnitEnd, classify, final_usage, has_ended, oom_evidence, tells_the_exit
from babysit.protocol import SLICE, UNIT_PREFIX, BabysitError, KillReason, State, log_command, unit_name
from babysit.systemd import SERVICE, UNIT, Systemd, UnitChange, unit_path
from babysit.task import Caps, Outcome, Task, TaskSpec, spec_from_wire
from babysit.unit import USEC, Described, cap_properties, description, parse_description, start_properties, unit_command

log = logging.getLogger("babysitd")
ACTIVE_STATES = ("activating", "active", "deactivating", "reloading")


@dataclass
class UnitWatch:
    """A running task's unit, as its signals have shown it so far."""

    task_id: int
    props: dict[str, Any] = field(default_factory=dict)
    seen_active: bool = False
    oom_kills: int = 0  # cgroup v1 evidence of the OOM killer, as last sampled
    failcnt: int = 0
    oom: OomNotifier | None = None  # cgroup v1: armed once the unit's cgroup exists
    files: CgroupFiles = field(default_factory=CgroupFiles)  # the figures the sampler reads


class SystemdExecutor(Reporting):
    kind = "systemd"
    queues = False
    pressure_applies = True

    def __init__(self, systemd: Systemd, settings: Config, layout: Layout, manager_cgroup: str,
                 caps_missing: list[str], ends_dir: Path) -> None:
        self.systemd = systemd
        self.config = settings
        self.host = read_host(settings)
        self.layout = layout
        self.manager_cgroup = manager_cgroup
        self.caps_missing = caps_missing
        self.advice: list[str] = []
        self.units: dict[str, UnitWatch] = {}  # unit object path -> watch
        self._finishing: set[int] = set()
        self.background = Background()
        self._ended_states: dict[int, str] = {}  # run id -> its unit's last ActiveState, until released
        self.ends_dir = ends_dir  # where units leave their final accounting (see babysit.accounting)
        ends_dir.mkdir(parents=True, exist_ok=True)
        self.record_script = accounting.install_script(ends_dir)
        self.stdbuf = shutil.which("stdbuf")  # coreutils: line-buffered output for native loggers
        self.output = journal.LastOutput()
        if not self.stdbuf:
            self.advice.append("coreutils' stdbuf is missing, so the output of C/C++ programs in tasks stays "
                               "block-buffered and may look like a stall; fix: install coreutils")

    @classmethod
    async def connect(cls, systemd: Systemd, settings: Config, state_dir: Path) -> SystemdExecutor:
        """The executor of this user's manager, with what keeps caps from working (each with its fix)."""
        layout = Layout.of_this_machine()
        manager_cgroup = await systemd.manager_property("ControlGroup")
        caps_missing = []
        missing = missing_controllers(layout, manager_cgroup, os.getuid())
        if missing:
            caps_missing.append(
                f"the user manager has no {'/'.join(missing)} controller delegated, so systemd would ignore "
                "MemoryMax/CPUQuota; fix: a drop-in for user@.service with Delegate=yes (and cgroup v2), "
                "then log in again"
            )
        executor = cls(systemd, settings, layout, manager_cgroup, caps_missing, state_dir / "ends")
        if rate_limited := journal.rate_limit_warning(journal.journald_config_texts()):
            executor.advice.insert(0, rate_limited)
        return executor

    # --- the scheduler's requests -------------------------------------------------------------------

    async def open(self, supervisor: Supervisor) -> None:
        """Subscribe first: the scheduler's snapshot comes after, so no unit change falls in between (see bleak)."""
        self.supervisor = supervisor
        await self.systemd.subscribe(self.on_unit_change)

    def capacity(self) -> Capacity:
        return Capacity(self.host, free_mem_bytes())

    async def refresh(self) -> None:
        """capacity() reads the kernel's figures each time: always fresh."""

    async def start(self, task: Task) -> Task:
        """Start a queued task as its transient unit."""
        unit = unit_name(task.name)
        self.units[unit_path(unit)] = UnitWatch(task.id)  # before the start: its first signals count
        try:
            cgroup = self.cgroup_of(task)
            stop_post = accounting.stop_post_command(self.record_script, self.record_of(task),
                                                     self.layout.memory_dir(cgroup), self.layout.cpu_files(cgroup))
            await self.systemd.start_transient_unit(unit, start_properties(task, self.config.stop_grace_s, stop_post,
                                                                           self.stdbuf))
        except DBusError as e:
            self.units.pop(unit_path(unit), None)
            raise StartRefused(f"systemd refused to start it: {e.text}") from None
        return task.with_(state=State.RUNNING, started_at=time.time())

    async def stop(self, task: Task) -> None:
        await self.systemd.stop_unit(unit_name(task.name))

    async def set_caps(self, task: Task, was: Caps) -> Caps:
        # the Description carries the estimates, for a daemon that has to take the unit up without records
        await self.systemd.set_unit_properties(unit_name(task.name), cap_properties(task.caps)
                                               | {"Description": description(task)})
        return task.caps

    def read(self, task: Task) -> Reading | None:
        """Memory now and peak, and CPU seconds, from the unit's cgroup."""
        watch = self.units.get(unit_path(unit_name(task.name)))
        if watch is None:
            return None
        sample = read_sample(self.layout, self.cgroup_of(task), watch.files)
        if sample is None:
            return None
        watch.oom_kills, watch.failcnt = sample.oom_kills, sample.mem_failcnt or 0
        return Reading(sample.mem_bytes, sample.peak_mem_bytes, sample.cpu_ns / 1e9)

    def waiting_for(self, task: Task) -> str | None:
        return None  # queued tasks wait in babysit's own queue

    def last_output_at(self, task: Task) -> float | None:
        return self.output.at(task.name)

    async def release(self, task: Task) -> None:
        """Let systemd forget a finished unit, so the name can run again."""
        self.record_of(task).unlink(missing_ok=True)
        active_state = self._ended_states.pop(task.id, None)
        if active_state is not None:
            await self.release_unit(unit_name(task.name), active_state)

    async def supervise(self) -> None:
        """systemd pushes every change (see open): nothing to do but wait."""
        await asyncio.get_running_loop().create_future()

    async def close(self) -> None:
        self.output.close()

    # --- a restarted daemon ---------------------------------------------------------------------------

    async def recover_queued(self, task: Task) -> Task:
        """A queued task that has a unit or an end record: the last daemon died around its start."""
        unit = unit_name(task.name)
        if await self.systemd.get_unit(unit) is None:
            if self.record_of(task).exists():  # it ran and ended while no daemon watched: never run it again
                log.info("recovered %s: it ran and ended while no daemon watched", task.name)
                return task.with_(state=State.RUNNING)  # adopt() reads how it ended; its start is not known
            return task
        props = await self.systemd.properties(unit, UNIT)
        described = parse_description(props.get("Description", ""))
        if described is None or described.run_id != task.id:
            await self.release_unit(unit, props.get("ActiveState", ""))  # an older run's, whose result is stored
            return task
        log.info("recovered %s: its unit was started just before the last daemon stopped", task.name)
        return task.with_(state=State.RUNNING, started_at=props.get("ActiveEnterTimestamp", 0) / USEC or time.time())

    async def orphans(self, known: set[str]) -> list[Orphan]:
        """Task units that babysit's records do not know (the database was lost or damaged): their
        Description says whose run they are and with which estimates."""
        found = []
        for unit, active, _sub in await self.systemd.list_units(f"{UNIT_PREFIX}*.service"):
            if unit in {unit_name(name) for name in known} or active == "inactive":
                continue
            props = await self.unit_properties(unit)
            described = parse_description(props.get("Description", ""))
            if described is None or unit != unit_name(described.name):
                continue
            try:
                spec = self.spec_of_unit(described, props)
            except BabysitError as e:
                log.warning("cannot take up %s, which babysit has no record of: %s", unit, e)
                continue
            found.append(Orphan(spec, self.caps_of_unit(described, props), described.run_id,
                                props.get("ActiveEnterTimestamp", 0) / USEC or time.time()))
        return found

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
            self.units.pop(unit_path(unit), None)
            final = accounting.read(self.record_of(task))
            if final:  # it ended while no daemon ran, and left its accounting behind
                await self.conclude(task, UnitWatch(task.id), {}, final)
                return
            outcome = (Outcome(State.KILLED, kill_reason=task.kill_requested) if task.kill_requested else
                       Outcome(State.UNKNOWN, detail="its unit was gone when babysitd restarted, so how it ended "
                                                     f"is not known; see {log_command(task.name)}"))
            await self.scheduler.ended(task.id, outcome, task.usage)
            return
        props = await self.unit_properties(unit)
        watch = self.units.setdefault(unit_path(unit), UnitWatch(task.id))
        watch.props.update(props)
        watch.seen_active = True  # it ran: a loaded, inactive task unit has ended
        if watch.oom is None and props.get("SubState") == "running":
            self.arm_oom_notifier(task, watch)
        if has_ended(watch.props, started=True):
            await self.finish(task)
            return
        log.info("adopted running task %s", task.name)

    async def tidy(self, known: set[str]) -> None:
        """Task units whose result is stored but that were not released (the daemon died in between)."""
        live = {unit_name(name) for name in known}
        for unit, active, sub in await self.systemd.list_units(f"{UNIT_PREFIX}*.service"):
            if unit not in live and (active == "failed" or sub == "exited"):
                await self.release_unit(unit, active)

    # --- systemd's signals and a unit's end -----------------------------------------------------------

    def on_unit_change(self, change: UnitChange) -> None:
        """systemd's signal for one unit: note it, and finish the task once its command is over."""
        watch = self.units.get(change.path)
        if watch is None:
            return
        watch.props.update(change.changed)
        if change.changed.get("ActiveState") in ACTIVE_STATES:
            watch.seen_active = True
        task = self.scheduler.task(watch.task_id)
        if task and watch.oom is None and change.changed.get("ActiveState") == "active":
            self.arm_oom_notifier(task, watch)
        if task and has_ended(watch.props, watch.seen_active) and task.id not in self._finishing:
            self._finishing.add(task.id)
            self.background.run(self.finish(task), f"finishing {task.name}")

    def arm_oom_notifier(self, task: Task, watch: UnitWatch) -> None:
        watch.oom = oom_notifier(self.layout, self.cgroup_of(task))
        if watch.oom:
            asyncio.get_running_loop().add_reader(watch.oom.fd, self.on_oom_notice, task.id, watch)

    def on_oom_notice(self, task_id: int, watch: UnitWatch) -> None:
        """The kernel's OOM notification (v1): the cgroup still holds what it had at the limit, so read it now."""
        assert watch.oom is not None
        watch.oom.on_readable()
        if watch.oom.fired:
            self.scheduler.sample_now(task_id)

    async def finish(self, task: Task) -> None:
        """A task's unit is over: read how it ended, and hand the result to the scheduler."""
        self._finishing.add(task.id)
        try:
            unit = unit_name(task.name)
            watch = self.units.pop(unit_path(unit), UnitWatch(task.id))
            watch.files.close()
            final, props = accounting.read(self.record_of(task)), watch.props
            if not tells_the_exit(final):  # then ask systemd all it knows (two big replies: ms the waiter waits)
                with contextlib.suppress(DBusError):  # already unloaded: the signals carried the end
                    props = {**watch.props, **await self.unit_properties(unit)}
            if watch.oom:
                asyncio.get_running_loop().remove_reader(watch.oom.fd)
                watch.oom.on_readable()  # a wake not yet delivered
                watch.oom.close()
            await self.conclude(self.scheduler.task(task.id) or task, watch, props, final)
        finally:
            self._finishing.discard(task.id)

    async def conclude(self, task: Task, watch: UnitWatch, props: Mapping[str, Any],
                       final: accounting.FinalAccounting | None) -> None:
        """Judge how a run ended, from systemd's word and the kernel's final accounting."""
        peak = max(task.usage.peak_mem_bytes or 0, final.peak_mem_bytes or 0) if final else task.usage.peak_mem_bytes
        evidence = (bool(watch.oom and watch.oom.fired)
                    or oom_evidence(max(watch.oom_kills, final.oom_kills or 0) if final else watch.oom_kills,
                                    max(watch.failcnt, final.mem_failcnt or 0) if final else watch.failcnt,
                                    peak or 0, task.caps.memory_max_bytes))
        outcome = classify(UnitEnd.of(props, final), task.kill_requested, evidence)
        usage = final_usage(task.usage, final, outcome.kill_reason == KillReason.OOM, task.caps.memory_max_bytes)
        if props:
            self._ended_states[task.id] = props.get("ActiveState", "")
        await self.scheduler.ended(task.id, outcome, usage)

    # --- units ------------------------------------------------------------------------------------------

    async def release_unit(self, unit: str, active_state: str) -> None:
        try:
            if active_state == "failed":
                await self.systemd.reset_failed_unit(unit)
            elif active_state != "inactive":
                await self.systemd.stop_unit(unit)
        except DBusError as e:
            log.warning("could not release %s: %s", unit, e.text)

    async def unit_properties(self, unit: str) -> dict[str, Any]:
        return {**await self.systemd.properties(unit, UNIT), **await self.systemd.properties(unit, SERVICE)}

    def cgroup_of(self, task: Task) -> str:
        return f"{self.manager_cgroup}/{SLICE}/{unit_name(task.name)}"

    def record_of(self, task: Task) -> Path:
        """Where the unit of this run leaves its final accounting."""
        return self.ends_dir / str(task.id)

