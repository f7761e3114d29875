"""A model of the scheduler, checked after every step (issue 32).

Hypothesis drives random mixes of verbs (run with chains on tasks and sweeps, retries, `%N` sweeps and
priorities; kill, adjust, hold/release, pause/resume, drain/undrain), executor events (ends of every
kind, stops taking effect), store faults (locked) and babysitd restarts and SIGKILLs at fault points, on
the fake executor (tests/model/fake.py). After every step, and as each run starts, the invariants below
hold; at the end every run is let finish and every accepted name must have exactly one final result.

CI runs a fixed budget (BABYSIT_MODEL_EXAMPLES, 60 by default); a long exploration:

    BABYSIT_MODEL_EXAMPLES=5000 .venv/bin/pytest tests/model/test_model.py

Every failing example it finds stays as a plain test in test_daemon.py.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from babysit.core.protocol import BabysitError, State
from babysit.core.task import Task
from babysit.core.workflow import Condition
from tests.model.fake import Life

EXAMPLES = int(os.environ.get("BABYSIT_MODEL_EXAMPLES", "60"))
TASKS = ("a", "b", "c", "d")
SWEEPS = ("s", "t")
HOWS = ("completed", "failed", "oom")


class Scheduler(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.TemporaryDirectory()
        self.life = Life(Path(self.dir.name) / "state.db", recheck_s=3600)
        self.life.world.on_start = self.check_start
        self.accepted: set[str] = set()  # names `run` took, tasks' and sweeps'
        self.lock: sqlite3.Connection | None = None  # another process holding the store's write lock
        self.do(self.life.start())

    def do(self, work: Any) -> Any:
        return self.loop.run_until_complete(work)

    def verb(self, call: Callable[[], Any]) -> None:
        """A client's request: a refusal is an answer; anything else escaping is a bug."""
        async def request() -> None:
            try:
                await call()
            except BabysitError:
                pass
        self.do(self.life.call(request))

    @property
    def ledger(self) -> Any:
        return self.life.up.ledger

    # --- verbs ----------------------------------------------------------------------------------------

    @rule(name=st.sampled_from(TASKS), after=st.lists(st.tuples(st.sampled_from(TASKS + SWEEPS), st.booleans()),
                                                      max_size=2),
          retries=st.integers(0, 2), priority=st.integers(-1, 1), cores=st.sampled_from([1, 2]),
          gpus=st.integers(0, 2))
    def run(self, name: str, after: list[tuple[str, bool]], retries: int, priority: int, cores: int,
            gpus: int) -> None:
        self.submit({"name": name, "retries": retries, "priority": priority, "estimated_cpu_cores": cores,
                     **({"gpus": gpus, "estimated_gpu_mem_bytes": "4G"} if gpus else {}), **self.chain(after)})

    @rule(name=st.sampled_from(SWEEPS), size=st.integers(1, 4), limit=st.integers(0, 2),
          after=st.lists(st.tuples(st.sampled_from(TASKS + SWEEPS), st.booleans()), max_size=1),
          retries=st.integers(0, 1))
    def sweep(self, name: str, size: int, limit: int, after: list[tuple[str, bool]], retries: int) -> None:
        self.submit({"name": name, "array": f"1-{size}" + (f"%{limit}" if limit else ""), "retries": retries,
                     **self.chain(after)})

    def chain(self, after: list[tuple[str, bool]]) -> dict[str, Any]:
        return {"after": ",".join(f"{n}:any" if any_ else n for n, any_ in after)} if after else {}

    def submit(self, fields: dict[str, Any]) -> None:
        wire = {"command": f"work {fields['name']}", "estimated_time": "1h", "estimated_mem_bytes": "256M",
                "estimated_cpu_cores": 1, **fields}

        async def run() -> None:
            try:
                await self.life.up.scheduler.run(wire, True)
            except BabysitError:
                return
            self.accepted.add(fields["name"])
        self.do(self.life.call(run))

    @rule(name=st.sampled_from(TASKS + SWEEPS))
    def kill(self, name: str) -> None:
        self.verb(lambda: self.life.up.scheduler.kill(name))

    @rule(name=st.sampled_from(TASKS + SWEEPS), priority=st.integers(-1, 1), time=st.sampled_from(["30m", "2h"]))
    def adjust(self, name: str, priority: int, time: str) -> None:
        self.verb(lambda: self.life.up.scheduler.adjust(name, {"priority": priority, "estimated_time": time}))

    @rule(name=st.sampled_from(TASKS + SWEEPS), held=st.booleans())
    def hold(self, name: str, held: bool) -> None:
        self.verb(lambda: self.life.up.scheduler.hold(name, held))

    @rule(name=st.sampled_from(TASKS + SWEEPS), paused=st.booleans())
    def pause(self, name: str, paused: bool) -> None:
        self.verb(lambda: self.life.up.scheduler.pause(name, paused))

    @rule(on=st.booleans())
    def drain(self, on: bool) -> None:
        self.verb(lambda: self.life.up.scheduler.drain(on))

    # --- what the executor and the host do ------------------------------------------------------------

    @rule(pick=st.integers(0, 100), how=st.sampled_from(HOWS))
    def end(self, pick: int, how: str) -> None:
        """A running unit ends: completed, failed, or killed by the kernel."""
        live = sorted(self.life.world.live_units())
        if live:
            self.do(self.life.end(live[pick % len(live)], how))

    @rule()
    def stops_take_effect(self) -> None:
        for run_id, unit in sorted(self.life.world.live_units().items()):
            if unit.stopping and self.life.daemon:
                self.do(self.life.end(run_id, "failed"))

    @rule(pick=st.integers(0, 100), how=st.sampled_from(HOWS), verb=st.sampled_from(["kill", "adjust", "pause"]))
    def verb_as_it_ends(self, pick: int, how: str, verb: str) -> None:
        """A verb and the run's end at once: the verb's awaits let the end in between."""
        live = sorted(self.life.world.live_units())
        if not live:
            return
        run_id = live[pick % len(live)]
        task = self.ledger.by_id(run_id)
        if task is None:
            return
        s = self.life.up.scheduler
        call = {"kill": lambda: s.kill(task.name), "adjust": lambda: s.adjust(task.name, {"estimated_time": "2h"}),
                "pause": lambda: s.pause(task.name, True)}[verb]

        async def both() -> None:
            async def quietly() -> None:
                try:
                    await call()
                except BabysitError:
                    pass
            await asyncio.gather(quietly(), self.life.ended(run_id, how))
        self.do(self.life.call(both))

    @precondition(lambda self: self.lock is None and not self.life.world.faults)  # (a restart waits it out)
    @rule()
    def store_locked(self) -> None:
        self.lock = sqlite3.connect(self.life.path, isolation_level=None)
        self.lock.execute("BEGIN IMMEDIATE")

    @precondition(lambda self: self.lock is not None)
    @rule()
    def store_free(self) -> None:
        assert self.lock
        self.lock.rollback()
        self.lock.close()
        self.lock = None
        self.ledger.retry()  # each tick does this
        self.verb(self.life.up.scheduler.queue.drain)

    @rule()
    def restart(self) -> None:
        self.store_free() if self.lock else None  # a locked store is waited out at start (not modelled)
        self.do(self.life.restart())

    @rule(point=st.sampled_from(["start", "release", "stop"]))
    def sigkill_at(self, point: str) -> None:
        """babysitd is SIGKILLed the next time it reaches this point."""
        if self.lock is None:
            self.life.world.faults.add(point)

    # --- the invariants -------------------------------------------------------------------------------

    def check_start(self, task: Task) -> None:
        """As a run starts: its parents ended as required, it is not held, admission is not drained, its
        sweep's `%N` holds, no queued task goes before one of higher priority, attempts are bounded."""
        daemon = self.life.up
        assert task.id not in self.life.world.units, f"{task.name} #{task.id} runs twice"
        assert not task.held, f"{task.name} started while held"
        assert not daemon.scheduler.queue.draining, f"{task.name} started while admission is drained"
        w = task.spec.workflow
        assert w.attempt <= w.attempts
        live = {t.id: t for t in self.ledger.tasks.values()}
        for dependency in w.after:
            runs = [daemon.scheduler.workflows.current(dependency.run_id, dependency.name, live)]
            if dependency.sweep:  # every member's latest run
                runs = list({t.name: t for t in [*self.ledger.store.sweeps.members(dependency.name, dependency.sweep), *(
                    t for t in live.values() if t.spec.workflow.sweep == dependency.sweep)]}.values())
            for run in runs:
                assert run and run.state.terminal, f"{task.name} started before {dependency.name} ended"
                assert not (run.outcome and run.outcome.next_attempt), f"{task.name}: {run.name} is to be retried"
                assert dependency.condition == Condition.ANY or run.state == State.COMPLETED, \
                    f"{task.name} started after {run.name} {run.state}"
        held_gpus = [g for u in self.life.world.live_units().values() for g in u.task.gpus]
        assert len(task.gpus) == task.spec.estimates.gpus, f"{task.name} asked for {task.spec.estimates.gpus} GPUs"
        assert not set(task.gpus) & set(held_gpus), f"{task.name} given a GPU another task holds"
        if w.limit:
            running = [u for u in self.life.world.live_units().values() if u.task.spec.workflow.sweep == w.sweep]
            assert len(running) < w.limit, f"{task.name}: more than {w.limit} of its sweep at once"
        for other in self.ledger.queue():
            if other.id == task.id:
                break
            # none overtakes another: the queue stops at the first ready task that does not fit
            plain = not other.held and not other.spec.workflow.after and not other.spec.workflow.limit
            assert not plain, \
                f"{task.name} (priority {task.spec.priority}) started before {other.name} ({other.spec.priority})"

    @invariant()
    def records_match_the_executor(self) -> None:
        """A run recorded as running has a unit that has not ended, and a live unit a running record."""
        if self.life.daemon is None:
            return
        live = self.life.world.live_units()
        for task in self.ledger.running():
            assert task.id in live, f"{task.name} #{task.id} recorded as running, without a live unit"
        for run_id, unit in live.items():
            task = self.ledger.by_id(run_id)
            assert task and task.state == State.RUNNING, f"unit of {unit.task.name} #{run_id} runs unrecorded"

    @invariant()
    def nothing_accepted_is_lost(self) -> None:
        if self.life.daemon is None:
            return
        for name in self.accepted:
            assert self.ledger.latest_or_none(name) or self.life.up.scheduler.workflows.sweep(name), name

    def teardown(self) -> None:
        try:
            if self.lock:
                self.store_free()
            self.life.world.faults.clear()
            self.do(self.finish_everything())
        finally:
            if self.life.daemon:
                self.do(self.life.kill())
            self.loop.close()
            self.dir.cleanup()

    async def finish_everything(self) -> None:
        """Undrain, release and resume all; let every run complete; then every accepted name has ended once."""
        s = self.life.up.scheduler
        await self.life.call(lambda: s.drain(False))
        for _ in range(200):
            for task in list(self.ledger.tasks.values()):
                if task.held:
                    await self.life.call(lambda t=task: s.hold(t.name, False))
                if task.paused_at is not None:
                    await self.life.call(lambda t=task: s.pause(t.name, False))
            live = sorted(self.life.world.live_units())
            if not live and not self.ledger.tasks:
                break
            for run_id in live:
                await self.life.end(run_id, "completed")
            await self.life.call(s.queue.drain)
        assert not self.ledger.tasks, f"never ended: {sorted(self.ledger.tasks)}"
        for name in self.accepted:
            runs = s.workflows.sweep(name) or [self.ledger.latest(name)]
            for run in runs:
                assert run.state.terminal and run.outcome, f"{run.name} is {run.state}"
                assert not run.outcome.next_attempt, f"{run.name} promises attempt {run.outcome.next_attempt}"
                status = s.status(run.name)
                assert status["status"] == run.state


Scheduler.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=30, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])
TestScheduler = Scheduler.TestCase

