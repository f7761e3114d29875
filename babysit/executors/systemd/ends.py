"""Each task unit as systemd's signals show it, and its end: judged from systemd's word and the kernel's
final accounting (core.outcome decides), then reported to the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbus_fast.errors import DBusError

from babysit.common import failpoints
from babysit.common.background import Background
from babysit.core.outcome import (
    FinalAccounting,
    UnitEnd,
    classify,
    final_usage,
    has_ended,
    oom_evidence,
    tells_the_exit,
)
from babysit.core.protocol import SLICE, KillReason, unit_name
from babysit.core.task import Task
from babysit.executors.base import Reporting
from babysit.executors.systemd import accounting
from babysit.executors.systemd.cgroup import CgroupFiles, Layout, OomNotifier, oom_notifier
from babysit.executors.systemd.manager import Systemd, UnitChange, unit_path

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


class UnitEnds(Reporting):
    def __init__(self, systemd: Systemd, layout: Layout, manager_cgroup: str, ends_dir: Path) -> None:
        self.systemd = systemd
        self.layout = layout
        self.manager_cgroup = manager_cgroup
        self.ends_dir = ends_dir  # where units leave their final accounting (see accounting)
        self.units: dict[str, UnitWatch] = {}  # unit object path -> watch
        self.finishing: set[int] = set()
        self.ended_states: dict[int, str] = {}  # run id -> its unit's last ActiveState, until released
        self.background = Background()

    def watch(self, task: Task, fresh: bool = False) -> UnitWatch:
        """The unit's watch; `fresh` for a run about to start (whatever an earlier run of the name left)."""
        path = unit_path(unit_name(task.name))
        if fresh:
            self.units[path] = UnitWatch(task.id)
        return self.units.setdefault(path, UnitWatch(task.id))

    def watching(self, task: Task) -> UnitWatch | None:
        return self.units.get(unit_path(unit_name(task.name)))

    def forget(self, task: Task) -> None:
        self.units.pop(unit_path(unit_name(task.name)), None)

    def cgroup_of(self, task: Task) -> str:
        return f"{self.manager_cgroup}/{SLICE}/{unit_name(task.name)}"

    def record_of(self, task: Task) -> Path:
        """Where the unit of this run leaves its final accounting."""
        return self.ends_dir / str(task.id)

    def on_unit_change(self, change: UnitChange) -> None:
        """systemd's signal for one unit: note it, and finish the task once its command is over."""
        watch = self.units.get(change.path)
        if watch is None:
            return
        task = self.daemon.task(watch.task_id)
        if task and failpoints.armed("lose_unit_signals", task.name):
            return  # a test's fault: this unit's signals never arrive
        watch.props.update(change.changed)
        if change.changed.get("ActiveState") in ACTIVE_STATES:
            watch.seen_active = True
        if task and watch.oom is None and change.changed.get("ActiveState") == "active":
            self.arm_oom_notifier(task, watch)
        if task and has_ended(watch.props, watch.seen_active) and task.id not in self.finishing:
            self.finishing.add(task.id)
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
            self.daemon.sample_now(task_id)

    async def finish(self, task: Task) -> None:
        """A task's unit is over: read how it ended, and hand the result to the daemon."""
        self.finishing.add(task.id)
        try:
            unit = unit_name(task.name)
            watch = self.units.pop(unit_path(unit), UnitWatch(task.id))
            watch.files.close()
            final, props = accounting.read(self.record_of(task)), watch.props
            if not tells_the_exit(final):  # then ask systemd all it knows (two big replies: ms the waiter waits)
                with contextlib.suppress(DBusError):  # already unloaded: the signals carried the end
                    props = {**watch.props, **await self.systemd.unit_properties(unit)}
            if watch.oom:
                asyncio.get_running_loop().remove_reader(watch.oom.fd)
                watch.oom.on_readable()  # a wake not yet delivered
                watch.oom.close()
            await self.conclude(self.daemon.task(task.id) or task, watch, props, final)
        finally:
            self.finishing.discard(task.id)

    async def conclude(self, task: Task, watch: UnitWatch, props: Mapping[str, Any],
                       final: FinalAccounting | None) -> None:
        """Judge how a run ended, from systemd's word and the kernel's final accounting."""
        peak = max(task.usage.peak_mem_bytes or 0, final.peak_mem_bytes or 0) if final else task.usage.peak_mem_bytes
        evidence = (bool(watch.oom and watch.oom.fired)
                    or oom_evidence(max(watch.oom_kills, final.oom_kills or 0) if final else watch.oom_kills,
                                    max(watch.failcnt, final.mem_failcnt or 0) if final else watch.failcnt,
                                    peak or 0, task.caps.memory_max_bytes))
        outcome = classify(UnitEnd.of(props, final), task.kill_requested, evidence)
        usage = final_usage(task.usage, final, outcome.kill_reason == KillReason.OOM, task.caps.memory_max_bytes)
        if props:
            self.ended_states[task.id] = props.get("ActiveState", "")
        await self.daemon.ended(task.id, outcome, usage)
