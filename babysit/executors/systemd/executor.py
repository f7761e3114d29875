"""The default executor: each run is a transient unit of the user's systemd, under babysit's slice.

Everything it learns about units comes from systemd's PropertiesChanged signals (ends.UnitEnds); usage
is read from the units' cgroups when the daemon asks, and output times from journald.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal as signals
import time
from dataclasses import replace
from pathlib import Path

from dbus_fast.errors import DBusError

from babysit.common import failpoints
from babysit.common.background import carry_on
from babysit.common.config import Config
from babysit.common.host import free_mem_bytes, read_host
from babysit.common.nvml import Nvml
from babysit.core import gpus
from babysit.core.outcome import has_ended
from babysit.core.protocol import UNIT_PREFIX, BabysitError, State, log_command, unit_name
from babysit.core.task import Caps, Outcome, Task
from babysit.executors import output_file
from babysit.executors.base import Capacity, Orphan, Reading, RunEvents, StartRefused
from babysit.executors.systemd import accounting, fence, journal
from babysit.executors.systemd.cgroup import Layout, missing_controllers, processes, read_sample
from babysit.executors.systemd.ends import ACTIVE_STATES, UnitEnds, UnitWatch
from babysit.executors.systemd.manager import UNIT, Systemd
from babysit.executors.systemd.unit import (
    USEC,
    cap_properties,
    caps_of_unit,
    description,
    parse_description,
    spec_of_unit,
    start_properties,
)

log = logging.getLogger("babysitd")


UNREADABLE_JOURNAL = (
    "journald keeps no output this user can read back (Storage=volatile, or no /var/log/journal), so babysit "
    "writes each task's output to {} instead (`babysit log` reads it; `journalctl --user` does not show it); "
    "fix, for the journal: sudo mkdir -p /var/log/journal && sudo systemctl restart systemd-journald, then "
    "systemctl --user restart babysitd")


class SystemdExecutor:
    kind = "systemd"
    queues = False
    pressure_applies = True
    trouble: str | None = None  # the user manager is this process's own bus peer: if it goes, so does babysitd

    def __init__(self, systemd: Systemd, settings: Config, layout: Layout, manager_cgroup: str,
                 caps_missing: list[str], ends_dir: Path) -> None:
        self.systemd = systemd
        self.config = settings
        self.nvml = Nvml()
        self.host = replace(read_host(settings), gpus=self.nvml.read())
        self.gpu_note = gpus.described(self.host.gpus or ()) or self.nvml.why()
        self.private_dev = False  # whether a task's units get a /dev of their own (fence.py): see connect()
        self.layout = layout
        self.caps_missing = caps_missing
        self.advice: list[str] = []
        ends_dir.mkdir(parents=True, exist_ok=True)
        self.ends = UnitEnds(systemd, layout, manager_cgroup, ends_dir)
        self.record_script = accounting.install_script(ends_dir)
        self.stdbuf = shutil.which("stdbuf")  # coreutils: line-buffered output for native loggers
        self.output = journal.LastOutput()
        self.output_dir: Path | None = None  # where the tasks' output goes where journald keeps none to read
        self.not_active: set[int] = set()  # running tasks whose unit the last reconcile() found not active
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
        if not await asyncio.get_running_loop().run_in_executor(None, executor.output.reads_back):
            executor.output_dir = state_dir / "output"
            executor.output_dir.mkdir(exist_ok=True)
            executor.advice.insert(0, UNREADABLE_JOURNAL.format(executor.output_dir))
        elif rate_limited := journal.rate_limit_warning(journal.journald_config_texts()):
            executor.advice.insert(0, rate_limited)
        if executor.host.gpus:
            executor.private_dev = await asyncio.get_running_loop().run_in_executor(None, fence.private_dev_works)
            if not executor.private_dev:
                executor.advice.append(fence.NO_FENCE)
        return executor

    # --- the daemon's requests ----------------------------------------------------------------------

    async def open(self, daemon: RunEvents) -> None:
        """Subscribe first: the daemon's snapshot comes after, so no unit change falls in between (see bleak)."""
        self.ends.events = daemon
        await self.systemd.subscribe(self.ends.on_unit_change)

    def capacity(self) -> Capacity:
        return Capacity(self.host, free_mem_bytes(), gpus=self.nvml.read() if self.host.gpus else ())

    async def refresh(self) -> None:
        """capacity() reads the kernel's figures each time: always fresh."""

    async def start(self, task: Task) -> Task:
        """Start a queued task as its transient unit."""
        self.ends.watch(task, fresh=True)  # before the start: its first signals count
        try:
            cgroup = self.ends.cgroup_of(task)
            stop_post = accounting.stop_post_command(self.record_script, self.ends.record_of(task),
                                                     self.layout.memory_dir(cgroup), self.layout.cpu_files(cgroup))
            output = str(self.output_dir / f"{task.name}-{task.id}.out") if self.output_dir else None
            await self.systemd.start_transient_unit(unit_name(task.name), start_properties(
                task, self.config.stop_grace_s, stop_post, self.stdbuf, output, self.host.gpus or (), self.private_dev))
        except DBusError as e:
            self.ends.forget(task)
            raise StartRefused(f"systemd refused to start it: {e.text}") from None
        return task.with_(state=State.RUNNING, started_at=time.time(), output_file=output)

    async def stop(self, task: Task) -> None:
        await self.systemd.stop_unit(unit_name(task.name))  # KillSignal and TimeoutStopSec are the task's

    async def signal(self, task: Task, signal: str) -> bool:
        try:
            await self.systemd.kill_unit(unit_name(task.name), int(signals.Signals[signal]))
        except DBusError as e:
            log.warning("could not send %s to %s: %s", signal, task.name, e.text)
            return False
        return True

    async def hold(self, task: Task, held: bool) -> None:
        return None  # queued tasks wait in babysit's own queue

    async def pause(self, task: Task, paused: bool) -> str:
        return await pause_unit(self.systemd, unit_name(task.name), paused, task.paused_by)

    async def set_caps(self, task: Task, was: Caps) -> Caps:
        # the Description carries the estimates, for a daemon that has to take the unit up without records
        await self.systemd.set_unit_properties(unit_name(task.name), cap_properties(task.caps)
                                               | {"Description": description(task)})
        return task.caps

    def read(self, task: Task) -> Reading | None:
        """Memory now and peak, and CPU seconds, from the unit's cgroup."""
        watch = self.ends.watching(task)
        if watch is None:
            return None
        sample = read_sample(self.layout, self.ends.cgroup_of(task), watch.files)
        if sample is None:
            return None
        watch.oom_kills, watch.failcnt = sample.oom_kills, sample.mem_failcnt or 0
        if task.output_file:
            output_file.bound(Path(task.output_file))
        return Reading(sample.mem_bytes, sample.peak_mem_bytes, sample.cpu_ns / 1e9, self.gpu_use(task))

    def gpu_use(self, task: Task) -> gpus.GpuUse | None:
        """What the processes of the unit's cgroup hold on the task's GPUs, as NVML shows them."""
        if not task.gpus:
            return None
        return gpus.use(self.nvml.read(), task.gpus, processes(self.layout, self.ends.cgroup_of(task)))

    def waiting_for(self, task: Task) -> str | None:
        return None  # queued tasks wait in babysit's own queue

    def last_output_at(self, task: Task) -> float | None:
        return output_file.written_at(Path(task.output_file)) if task.output_file else self.output.at(task.name)

    async def release(self, task: Task) -> None:
        """Let systemd forget a finished unit, so the name can run again."""
        self.ends.record_of(task).unlink(missing_ok=True)
        if task.output_file:  # the file stays: it is the run's log; the oldest go
            live = {t.output_file for t in self.ends.daemon.running() if t.output_file and t.id != task.id}
            output_file.prune(Path(task.output_file).parent, live)
        active_state = self.ends.ended_states.pop(task.id, None)
        if active_state is not None:
            await self.release_unit(unit_name(task.name), active_state)

    async def supervise(self) -> None:
        """systemd pushes every change (see open); now and then the running tasks are also checked against
        their units (one ListUnits call), so that a missed end signal leaves no task running for ever."""
        while True:
            await asyncio.sleep(self.config.reconcile_s)
            with carry_on("checking the running tasks against their units"):
                failpoints.check("reconcile", once=True)
                await self.reconcile()

    async def reconcile(self) -> None:
        """Running tasks whose unit is no longer active in two checks in a row are judged as adopt() does:
        from the unit, or its final accounting, or as `unknown` with the reason (two, so that an end whose
        signal is on its way is not judged twice)."""
        active = {unit for unit, state, _sub in await self.systemd.list_units(f"{UNIT_PREFIX}*.service")
                  if state in ACTIVE_STATES}
        ended = {t.id: t for t in self.ends.daemon.running()
                 if unit_name(t.name) not in active and t.id not in self.ends.finishing}
        for task_id in ended.keys() & self.not_active:
            task = ended[task_id]
            log.warning("no end was heard of %s, whose unit is no longer active: judging it now", task.name)
            await self.adopt(task)
        self.not_active = set(ended) - self.not_active

    async def close(self) -> None:
        self.output.close()

    # --- a restarted daemon ---------------------------------------------------------------------------

    async def recover_queued(self, task: Task) -> Task:
        """A queued task that has a unit or an end record: the last daemon died around its start."""
        unit = unit_name(task.name)
        if await self.systemd.get_unit(unit) is None:
            if self.ends.record_of(task).exists():  # it ran and ended while no daemon watched: never again
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

    async def unrecorded(self, known: set[str]) -> list[Orphan]:
        """Task units that babysit's records do not know (the database was lost or damaged): their
        Description says whose run they are and with which estimates."""
        found = []
        for unit, active, _sub in await self.systemd.list_units(f"{UNIT_PREFIX}*.service"):
            if unit in {unit_name(name) for name in known} or active == "inactive":
                continue
            props = await self.systemd.unit_properties(unit)
            described = parse_description(props.get("Description", ""))
            if described is None or unit != unit_name(described.name):
                continue
            try:
                spec = spec_of_unit(described, props, self.host)
            except BabysitError as e:
                log.warning("cannot take up %s, which babysit has no record of: %s", unit, e)
                continue
            found.append(Orphan(spec, caps_of_unit(described, props, self.host), described.run_id,
                                props.get("ActiveEnterTimestamp", 0) / USEC or time.time()))
        return found

    async def adopt(self, task: Task) -> None:
        """Take up a task that was running when the previous daemon stopped."""
        unit = unit_name(task.name)
        if await self.systemd.get_unit(unit) is None:
            self.ends.forget(task)
            final = accounting.read(self.ends.record_of(task))
            if final:  # it ended while no daemon ran, and left its accounting behind
                await self.ends.conclude(task, UnitWatch(task.id), {}, final)
                return
            outcome = (Outcome(State.KILLED, kill_reason=task.kill_requested) if task.kill_requested else
                       Outcome(State.UNKNOWN, detail="its unit was gone when babysitd restarted, so how it ended "
                                                     f"is not known; see {log_command(task.name)}"))
            await self.ends.daemon.ended(task.id, outcome, task.usage)
            return
        props = await self.systemd.unit_properties(unit)
        watch = self.ends.watch(task)
        watch.props.update(props)
        watch.seen_active = True  # it ran: a loaded, inactive task unit has ended
        if watch.oom is None and props.get("SubState") == "running":
            self.ends.arm_oom_notifier(task, watch)
        if has_ended(watch.props, started=True):
            await self.ends.finish(task)
            return
        log.info("adopted running task %s", task.name)

    async def tidy(self, known: set[str]) -> None:
        """Task units whose result is stored but that were not released (the daemon died in between)."""
        live = {unit_name(name) for name in known}
        for unit, active, sub in await self.systemd.list_units(f"{UNIT_PREFIX}*.service"):
            if unit not in live and (active == "failed" or sub == "exited"):
                await self.release_unit(unit, active)

    async def release_unit(self, unit: str, active_state: str) -> None:
        try:
            if active_state == "failed":
                await self.systemd.reset_failed_unit(unit)
            elif active_state != "inactive":
                await self.systemd.stop_unit(unit)
        except DBusError as e:
            log.warning("could not release %s: %s", unit, e.text)
        with contextlib.suppress(DBusError):  # (not referenced: started by an earlier babysitd, or unloaded)
            await self.systemd.unref_unit(unit)


async def pause_unit(systemd: Systemd, unit: str, paused: bool, paused_by: str) -> str:
    """FreezeUnit; where systemd cannot freeze (cgroup v1 has no freezer for it), SIGSTOP to every process,
    as pueue pauses (a process may notice: its children's SIGCHLD, a terminal's job control). Thawing undoes
    what `paused_by` says pausing did."""
    if not paused:
        if paused_by == "freeze":
            await systemd.freeze_unit(unit, False)
        else:
            await systemd.kill_unit(unit, signals.SIGCONT)
        return ""
    try:
        await systemd.freeze_unit(unit, True)
        return "freeze"
    except DBusError as e:
        log.info("systemd cannot freeze %s (%s): pausing it with SIGSTOP", unit, e.text)
    await systemd.kill_unit(unit, signals.SIGSTOP)
    return "SIGSTOP"
