"""The record of a run's end: its result and timeline in one commit, then its executor lets go of it,
and only then are its name and its room free; then its next attempt, where it is retried."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from babysit.common import failpoints
from babysit.common.config import Config
from babysit.core import history
from babysit.core.task import Outcome, Task, derive_caps
from babysit.core.timeline import Timeline
from babysit.daemon.learning import Learning
from babysit.daemon.ledger import Ledger
from babysit.daemon.workflows import Workflows
from babysit.executors.base import Executor

log = logging.getLogger("babysitd")
PRUNE_EVERY = 100  # finished runs between two prunings of the history (and one at start)


class Endings:
    def __init__(self, ledger: Ledger, executor: Executor, learning: Learning, workflows: Workflows,
                 settings: Config) -> None:
        self.ledger = ledger
        self.executor = executor
        self.learning = learning
        self.workflows = workflows
        self.config = settings
        self.since_prune = 0

    async def record(self, task: Task, outcome: Outcome, timeline: Timeline | None = None) -> None:
        """Store the result (with the run's timeline), let the executor release the run, then free the name;
        queue the next attempt under it at once, where the run is retried (its result says so)."""
        if outcome.kill_reason in history.KILLING_FIGURE:
            # the hint cites how the earlier runs went, so the query comes before the commit that the
            # waiter's result comes from: one indexed query (History of a name: ~1 ms with 10000 runs
            # stored), paid only by kills that cite a figure
            outcome = replace(outcome,
                              history=self.learning.earlier(task, history.KILLING_FIGURE[outcome.kill_reason]))
        outcome, again = self.workflows.retry(task, outcome)  # from what the hint, with its history, says
        following = (again, derive_caps(again, self.executor.host)) if again else None
        if again:
            log.info("%s: %s", task.name, outcome.retry)
        # the end and its next attempt are one commit: no end promises an attempt that does not exist
        task = self.ledger.end(task.with_(state=outcome.state, outcome=outcome, finished_at=time.time()),
                               outcome.detail, timeline, following)
        failpoints.crash("ended", task.name)  # a daemon killed here: the end (and its retry) stored, the name taken
        await self.executor.release(task)  # the name stays taken meanwhile: a new run must not meet the old one
        self.since_prune += 1
        if self.since_prune >= PRUNE_EVERY:
            self.prune()
        self.ledger.forget(task)  # and the next attempt, if there is one, takes the name in the same turn

    def prune(self) -> None:
        """Keep the history bounded (config history_max_runs and history_max_days); not while the store takes
        no writes (the next end prunes instead)."""
        if self.ledger.pending:
            return
        self.since_prune = 0
        # the runs still live, and those their dependencies and retries name, stay whatever their age
        live = list(self.ledger.tasks.values()) + list(self.ledger.following.values())
        needed = {t.id for t in live} | {d.run_id for t in live for d in t.spec.workflow.after} | {
            t.spec.workflow.first_run for t in live}
        gone = self.ledger.store.prune(int(self.config.history_max_runs), self.config.history_max_days * 86400,
                                       time.time(), needed)
        if gone:
            log.info("forgot %d finished runs beyond the history's bounds", gone)
