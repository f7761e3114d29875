"""A running task's deadlines as exact timers: its kill_timeout, and the check for a stall.

No work is done between two deadlines. At the stall deadline the executor says when the task last wrote
a line (journald, or a Slurm job's file); the task is stopped, or checked again one interval after it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from babysit.common.background import Background
from babysit.core import policy, report
from babysit.core.protocol import KillReason, State
from babysit.core.quantities import format_duration
from babysit.core.task import Task
from babysit.daemon.ledger import Ledger
from babysit.daemon.watch import Watch, isolated
from babysit.executors.base import Executor

log = logging.getLogger("babysitd")
PAST = 0.001  # the elapsed warning fires this long after the estimate, so it is past it
Stop = Callable[[Task, KillReason], Coroutine[Any, Any, None]]  # the supervisor's stop
Send = Callable[[Task, str, str], Coroutine[Any, Any, None]]  # the supervisor's send: a warning signal
WARNED_AHEAD = "kill_timeout in "  # how a warning before the kill_timeout stop is recorded
BACKSTOP_LEAD_S = 5.0  # babysit's own stop comes this long before its executor's backstop would


class Deadlines:
    def __init__(self, ledger: Ledger, executor: Executor, watches: dict[int, Watch], stop: Stop,
                 send: Send) -> None:
        self.ledger = ledger
        self.executor = executor
        self.watches = watches  # the supervisor's, by run id
        self.stop = stop
        self.send = send
        self.background = Background()

    def arm(self, task: Task, watch: Watch) -> None:
        """The task's kill_timeout, the passing of its time estimate, and its next stall check.

        All on the monotonic clock (asyncio's own): a wall-clock step neither ends a task early nor lets a
        silent one run on, and a suspend is not silence. The start is placed on that clock once, from how
        long ago it started (a restarted babysitd knows only that), less the time it spent paused.

        Its pauses do not move the executor's backstop (systemd cannot move RuntimeMaxSec on a running
        unit), so babysit stops the task itself just before the backstop would (the same signal and grace,
        but thawed first, and said why): the only deadline of a paused task, and the latest its kill_timeout
        can fall after long pauses.
        """
        watch.disarm()
        loop, now, e = asyncio.get_running_loop(), time.monotonic(), task.spec.estimates
        running_s = max(0.0, time.time() - (task.started_at or time.time()))
        backstop = now - running_s + task.caps.runtime_max_s - BACKSTOP_LEAD_S
        if watch.started is None:  # (its pauses do not count: resume moves the start by each)
            watch.started = now - max(0.0, running_s - task.paused_s)
        if task.paused_at is not None:  # nothing else is due while it is paused: resume arms it again
            if watch.paused_since is None:
                watch.paused_since = now - max(0.0, time.time() - task.paused_at)
            watch.timeout_timer = loop.call_later(max(0.0, backstop - now), self.on_timeout, task.id)
            return
        watch.last_output_at = max(watch.last_output_at, watch.started)
        stop_at = min(watch.started + e.kill_timeout_s, backstop)
        watch.timeout_timer = loop.call_later(max(0.0, stop_at - now), self.on_timeout, task.id)
        if "elapsed" not in watch.policy.warned:
            watch.estimate_timer = loop.call_later(max(0.0, watch.started + e.time_s - now) + PAST,
                                                   self.on_estimate_passed, task.id)
        watch.stall_timer = loop.call_later(max(0.0, watch.last_output_at + e.observability_interval_s - now),
                                            self.on_stall_check, task.id)
        warn_at = task.spec.stopping.warn_at(stop_at - watch.started)
        if warn_at is not None and not any(s.why.startswith(WARNED_AHEAD) for s in task.signals):
            watch.warn_timer = loop.call_later(max(0.0, watch.started + warn_at - now), self.on_warn, task.id)

    def still_due(self, task_id: int) -> tuple[Task, Watch] | None:
        """The task and its watch, while a deadline still applies to it (running, and no stop asked yet)."""
        task = self.ledger.by_id(task_id)
        watch = self.watches.get(task_id)
        if task is None or watch is None or task.state != State.RUNNING or task.kill_requested:
            return None
        return task, watch

    def on_timeout(self, task_id: int) -> None:
        if found := self.still_due(task_id):
            self.stop_soon(found[0], KillReason.TIMEOUT)

    def on_warn(self, task_id: int) -> None:
        """--warn_signal's time: its kill_timeout stop is that far off."""
        if found := self.still_due(task_id):
            task, stopping = found[0], found[0].spec.stopping
            self.background.run(self.send(task, stopping.warn_signal,
                                          f"{WARNED_AHEAD}{format_duration(stopping.warn_before_s)}"),
                                f"warning {task.name}")

    def on_estimate_passed(self, task_id: int) -> None:
        """The time estimate has passed: the elapsed warning, at once (not at the next sample)."""
        found = self.still_due(task_id)
        if found is None:
            return
        task, watch = found
        estimate, elapsed = task.spec.estimates.time_s, watch.elapsed_s()
        if elapsed <= estimate:  # asyncio may run a timer a clock tick early: the warning is for *past* it
            watch.estimate_timer = asyncio.get_running_loop().call_later(estimate - elapsed + PAST,
                                                                         self.on_estimate_passed, task.id)
            return
        with isolated(task, "warning that it runs past its estimate"):
            self.warn(task, watch, policy.RunawayRisk("elapsed", math.ceil(elapsed * 1000) / 1000, estimate))

    def on_stall_check(self, task_id: int) -> None:
        """At the stall deadline, ask when the task last wrote; stop it, or check again later."""
        found = self.still_due(task_id)
        if found is None:
            return
        task, watch = found
        interval = task.spec.estimates.observability_interval_s
        with isolated(task, "checking it for a stall"):
            self.note_output(task, watch)
            if policy.stalled(watch.last_output_at, time.monotonic(), interval):
                self.stop_soon(task, KillReason.OBSERVABILITY_STALL)
                return
        watch.stall_timer = asyncio.get_running_loop().call_later(
            max(0.0, watch.last_output_at + interval - time.monotonic()), self.on_stall_check, task.id)

    def warn(self, task: Task, watch: Watch, risk: policy.RunawayRisk) -> None:
        """A runaway_risk event: an estimate exceeded, told once per dimension."""
        watch.policy = replace(watch.policy, warned=watch.policy.warned | {risk.dim})
        self.ledger.runaway_risk(task, report.risk_event(task, risk.dim, risk.actual, risk.estimate, risk.ratio,
                                                         time.time()))

    def stop_soon(self, task: Task, reason: KillReason) -> None:
        log.info("stopping %s: %s", task.name, reason)
        self.background.run(self.stop(task, reason), f"stopping {task.name}")

    def silent_s(self, task: Task) -> float | None:
        """Seconds since a running task's last line, asked when wanted (once a second at most, for long lists)."""
        watch = self.watches.get(task.id)
        if watch is None:
            return None
        if time.monotonic() - watch.output_asked_at > 1.0:
            self.note_output(task, watch)
        return round(time.monotonic() - watch.last_output_at, 1)

    def note_output(self, task: Task, watch: Watch) -> None:
        """What the executor says of the task's newest line."""
        written = self.executor.last_output_at(task)
        watch.output_asked_at = time.monotonic()
        if written:
            watch.last_output_at = max(watch.last_output_at, written)
