"""What earlier runs tell: estimates the caller left out, and how a killing figure ranged before."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from babysit.core import history
from babysit.core.task import Host, Spread, Task, TaskSpec, estimates_from_wire, limits, spec_from_wire
from babysit.daemon.store import Store
from babysit.executors.base import Executor

log = logging.getLogger("babysitd")


class Learning:
    def __init__(self, db: Store, executor: Executor) -> None:
        self.store = db
        self.executor = executor  # its host is what caps are shares of (a cluster's is known once it answers)

    @property
    def host(self) -> Host:
        return self.executor.host

    def spec(self, wire: Mapping[str, Any]) -> tuple[TaskSpec, int]:
        """A validated spec from a `Run` dictionary, with the estimates the caller left out taken from earlier
        runs of the same task where there are any; and how many earlier runs they come from."""
        spec = spec_from_wire(wire, self.host)
        missing = [key for key in history.ESTIMATE_KEYS if key not in wire
                   and (key != "estimated_gpu_mem_bytes" or spec.estimates.gpus)]
        learned = self.learn(spec) if missing else None
        taken = {key: value for key, value in learned.wire().items() if key in missing} if learned else {}
        if not learned or not taken:
            return spec, 0
        # the rest of the spec stands as validated; the estimates follow the learnt figures (a default
        # kill_timeout is twice the learnt time)
        estimates = estimates_from_wire({**wire, **taken}, self.host, spec.mem_pct_limit, spec.cpu_pct_limit)
        return replace(spec, estimates=estimates, estimates_from=learned.said(list(taken))), learned.runs

    def learn(self, spec: TaskSpec) -> history.Learned | None:
        """What earlier runs of a task like this one suggest as its estimates."""
        kin = self.kin(spec)
        largest = max((g.total_bytes for g in self.host.gpus or ()), default=None)
        return history.learn(kin, *limits(spec, self.host), largest) if kin else None

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
