"""The supervisor: watches running tasks. Each tick it samples their usage, keeps their timelines and
applies the kill policy; their deadlines are timers (deadlines.Deadlines), and host memory pressure is
looked at once a tick (pressure.Pressure). Every stop babysit decides on goes through `stop`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from babysit.common import failpoints
from babysit.common.background import carry_on
from babysit.common.config import Config
from babysit.core import policy
from babysit.core.gpus import GpuUse
from babysit.core.protocol import KillReason, State
from babysit.core.quantities import format_duration
from babysit.core.stopping import Sent
from babysit.core.task import Task, Usage
from babysit.core.timeline import Timeline
from babysit.daemon.deadlines import Deadlines
from babysit.daemon.ledger import Ledger
from babysit.daemon.pressure import Pressure
from babysit.daemon.watch import Watch, isolated
from babysit.executors.base import Executor

log = logging.getLogger("babysitd")
TIMELINE_SAVE_S = 60.0  # a running task's usage series is stored at least this often (and at its end)


class Supervisor:
    def __init__(self, ledger: Ledger, executor: Executor, settings: Config) -> None:
        self.ledger = ledger
        self.executor = executor
        self.config = settings
        self.watches: dict[int, Watch] = {}  # running tasks' by run id
        self.deadlines = Deadlines(ledger, executor, self.watches, self.stop, self.send)
        self.pressure = Pressure(ledger, settings, self.stop)

    # --- which tasks are watched ---------------------------------------------------------------------

    def watch(self, task_id: int) -> Watch:
        """The run's watch, made before its start: a run can end before its executor's start returns."""
        return self.watches.setdefault(task_id, Watch(task_id))

    def watching(self, task_id: int) -> bool:
        return task_id in self.watches

    def unwatch(self, task_id: int) -> Watch | None:
        """Stop watching a run that ended; its watch, with the run's timeline."""
        watch = self.watches.pop(task_id, None)
        if watch:
            watch.disarm()
        return watch

    def arm(self, task: Task) -> None:
        """A run has started: its deadlines run from its start."""
        self.deadlines.arm(task, self.watch(task.id))

    def adopt(self, task: Task) -> None:
        """Watch a run the previous daemon started, with the timeline it stored."""
        self.watch(task.id).timeline = self.ledger.store.timeline(task)
        self.arm(task)

    def timeline(self, task: Task) -> Timeline:
        """A run's usage over time: the live one of a running task, else the stored one."""
        watch = self.watches.get(task.id) if task.state == State.RUNNING else None
        return watch.timeline if watch else self.ledger.store.timeline(task)

    def silent_s(self, task: Task) -> float | None:
        """Seconds since a running task's last line (None: not watched)."""
        return self.deadlines.silent_s(task)

    async def stop(self, task: Task, reason: KillReason) -> None:
        """A graceful stop babysit decided on: remembered first, so a restart still knows why."""
        now = self.ledger.by_id(task.id)
        if now is None or now.state.terminal:  # it ended meanwhile
            return
        task = now
        if not task.kill_requested:  # the first reason stays: a second stop only asks again
            sent = (Sent.stop(task.spec.stopping.signal, time.time(), reason),) if task.state == State.RUNNING else ()
            task = self.ledger.save(task.with_(kill_requested=reason, signals=task.signals + sent))
        if task.paused_at is not None:  # a frozen process could not act on its stop signal
            with carry_on(f"thawing {task.name} to stop it"):
                task = await self.thaw(task)
        await self.executor.stop(task)

    async def pause(self, task: Task) -> Task:
        """Freeze a running task; its deadlines and 2x windows stand still until it is resumed."""
        how = await self.executor.pause(task, True)
        paused = self.ledger.update(task, paused_at=time.time(), paused_by=how)
        if paused is None:  # it ended meanwhile
            return task
        watch = self.watch(task.id)
        watch.paused_since = time.monotonic()
        log.info("paused %s (%s)", task.name, how)
        self.arm(paused)
        return paused

    async def resume(self, task: Task) -> Task:
        """Thaw a paused task: its deadlines go on from where they stood, its 2x windows start afresh."""
        task = await self.thaw(task)
        watch = self.watch(task.id)
        watch.policy = replace(watch.policy, over_2x_since={})
        self.arm(task)
        return task

    async def thaw(self, task: Task) -> Task:
        """Thaw a paused task and count its pause; its clocks move past the pause."""
        await self.executor.pause(task, False)
        watch = self.watch(task.id)
        paused = time.monotonic() - watch.paused_since if watch.paused_since is not None else 0.0
        if watch.started is not None:
            watch.started += paused
        watch.last_output_at += paused
        watch.paused_since = None
        log.info("thawed %s after %.1fs paused", task.name, paused)
        return self.ledger.update(task, paused_at=None, paused_by="", paused_s=task.paused_s + paused) or task

    async def send(self, task: Task, signal: str, why: str) -> None:
        """A warning signal to a running task, kept in its record (its terminal JSON lists it)."""
        if not await self.executor.signal(task, signal):
            return
        log.info("sent %s to %s: %s", signal, task.name, why)
        now = self.ledger.by_id(task.id)
        if now is not None:  # (an end recorded meanwhile stays as it is)
            self.ledger.update(now, signals=now.signals + (Sent(signal, time.time(), why),))

    # --- each tick ----------------------------------------------------------------------------------

    async def sample_forever(self) -> None:
        """Each tick: write what the store did not take yet (if anything), sample every running task that is
        due and apply the kill policy, then look at host pressure."""
        while True:
            await asyncio.sleep(self.config.tick_s)
            failpoints.check("sample_loop", once=True)
            with carry_on("writing the changes kept for the store"):
                self.ledger.retry()
            now = time.monotonic()
            free, threshold = self.executor.capacity().free_mem_bytes, self.pressure.threshold()
            pressure = self.executor.pressure_applies and free < threshold  # then every figure must be fresh
            for watch in list(self.watches.values()):
                task = self.ledger.by_id(watch.task_id)
                if task and task.state == State.RUNNING and (pressure or now >= watch.next_sample_at):
                    with isolated(task, "sampling it"):
                        failpoints.check("sample_task", task.name)
                        task = self.sample(task, watch)
                        await self.police(task, watch)
                        watch.next_sample_at = now + policy.sample_interval(
                            task.usage.mem_bytes, task.usage.cpu_cores, task.spec.estimates, self.config.tick_s,
                            self.config.tolerance_s) - self.config.tick_s / 2  # due on the tick nearest to it
            if self.executor.pressure_applies:
                with carry_on("looking at host memory pressure"):
                    failpoints.check("pressure_check", once=True)
                    await self.pressure.check(free, threshold)

    def sample_now(self, task_id: int) -> None:
        """Read a run's usage at once (the kernel's OOM notice: the cgroup still holds what it had at the limit)."""
        task, watch = self.ledger.by_id(task_id), self.watches.get(task_id)
        if task and watch:
            with isolated(task, "reading it at its OOM notification"):
                self.sample(task, watch)

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
            **gpu_usage(task.usage, sample.gpu),
        )
        if usage != task.usage:  # a quiet task costs no write and no signal
            task = task.with_(usage=usage)
            self.ledger.track(task)
        self.add_to_timeline(task, watch, sample.mem_bytes, cores, sample.gpu.mem_bytes if sample.gpu else 0)
        return task

    def add_to_timeline(self, task: Task, watch: Watch, mem_bytes: int, cpu_cores: float, gpu_mem_bytes: int) -> None:
        """One sample into the run's bounded series; stored now and then, so a restart loses little of it."""
        if task.started_at is None or watch.started is None:
            return
        at_s = watch.elapsed_s()
        new_point = watch.timeline.needs_point(at_s)
        if new_point:  # once per point, the executor says whether the task printed meanwhile (microseconds)
            self.deadlines.note_output(task, watch)
        last_output_s = watch.last_output_at - watch.started if watch.last_output_at > watch.started else None
        watch.timeline = watch.timeline.add(at_s, mem_bytes, cpu_cores, last_output_s, gpu_mem_bytes)
        if new_point and time.monotonic() - watch.timeline_saved_at >= TIMELINE_SAVE_S:
            self.ledger.save_timeline(task, watch.timeline)
            watch.timeline_saved_at = time.monotonic()

    async def police(self, task: Task, watch: Watch) -> None:
        """Warnings for estimates first exceeded; a stop when the policy says so."""
        if task.kill_requested or task.started_at is None or task.paused_at is not None:
            return
        u = task.usage
        observation = policy.Observation(time.monotonic(), u.mem_bytes, u.cpu_cores, u.gpu_mem_bytes)
        verdict = policy.evaluate(observation, task.spec.estimates, watch.policy, self.config.tolerance_s)
        watch.policy = verdict.memory
        for risk in verdict.risks:
            self.deadlines.warn(task, watch, risk)
        warn_signal = task.spec.stopping.warn_signal
        for dim in verdict.opened if warn_signal else ():
            await self.send(task, warn_signal, f"{dim} at 2x its estimate: stopped in "
                                               f"{format_duration(self.config.tolerance_s)} unless it drops")
        if verdict.kill:
            log.info("stopping %s: %s", task.name, verdict.kill)
            await self.stop(task, verdict.kill)


def gpu_usage(was: Usage, now: GpuUse | None) -> dict[str, Any]:
    """A task's GPU figures from a reading, its peak kept (none for a task without GPUs)."""
    if now is None:
        return {}
    return {"gpu_mem_bytes": now.mem_bytes, "peak_gpu_mem_bytes": max(was.peak_gpu_mem_bytes or 0, now.mem_bytes),
            "gpu_utilization_pct": now.utilization_pct}
