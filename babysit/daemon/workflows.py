"""Chains, retries and sweeps in the daemon (core.workflow decides; this looks runs up).

A dependency is bound to the run its name had when the dependent was submitted, and follows that run's
retries; a queued run whose dependency ended other than required never runs. A run that ended in a way
its `--retry_on` names is followed, under the same name, by its next attempt, which asks for what the
kill_hint said. A sweep's members are ordinary runs that share a group name.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from babysit.core import report
from babysit.core.hints import suggested
from babysit.core.history import ESTIMATE_KEYS
from babysit.core.protocol import BabysitError, InvalidArgument, KillReason, NameInUse, NoSuchTask, NotRunning, State
from babysit.core.quantities import format_duration, parse_duration
from babysit.core.task import Outcome, Task, TaskSpec, derive_caps, spec_from_wire, spec_to_wire, sweep_members
from babysit.core.workflow import (
    Condition,
    Dependency,
    Standing,
    Verdict,
    next_attempt,
    parse_array,
    retried,
    sweep_summary,
    sweep_verdict,
    verdict,
)
from babysit.daemon.learning import Learning
from babysit.daemon.ledger import Ledger
from babysit.executors.base import Executor

log = logging.getLogger("babysitd")
LEARNT_KEYS = (*ESTIMATE_KEYS, "kill_timeout")  # a default kill_timeout follows a learnt time


@dataclass
class Plan:
    """What the queue's runs may do now: start (in order, if they fit), wait for their dependencies or
    their sweep's limit, or end without running."""

    ready: list[Task] = field(default_factory=list)  # in order; each a member its sweep's limit lets start
    waiting: dict[int, str] = field(default_factory=dict)  # run id -> what it waits for
    broken: list[tuple[Task, Outcome]] = field(default_factory=list)
    active: Counter[str] = field(default_factory=Counter)  # members of each sweep started, or ready to


class Workflows:
    def __init__(self, ledger: Ledger, learning: Learning, executor: Executor) -> None:
        self.ledger = ledger
        self.learning = learning
        self.executor = executor

    # --- at submission --------------------------------------------------------------------------------

    def bind(self, spec: TaskSpec) -> TaskSpec:
        """The spec with each dependency bound to its name's run now (every member's, for a sweep's name);
        NoSuchTask for a name with no run, InvalidArgument for a task that would wait for itself."""
        bound: list[Dependency] = []
        for dependency in spec.workflow.after:
            if dependency.name in (spec.name, spec.workflow.group):
                raise InvalidArgument(f"after: {dependency.name} would wait for itself (a cycle)")
            group = self.newest_sweep(dependency.name)
            latest = None if group else self.ledger.latest_or_none(dependency.name)
            if group:  # one edge for the whole sweep, however many members it has
                bound.append(Dependency(dependency.name, dependency.condition, sweep=group))
            elif latest:
                bound.append(Dependency(latest.name, dependency.condition, latest.id))
            else:
                raise NoSuchTask(f"after: no task named {dependency.name!r}")
        return replace(spec, workflow=replace(spec.workflow, after=tuple(bound)))

    def newest_sweep(self, name: str) -> str:
        """The id of the newest sweep of that name, or "" where the name is a task's (the newer of the two)."""
        live = [t for t in self.ledger.tasks.values() if t.spec.workflow.group == name]
        member = max(live, key=lambda t: t.id) if live else self.ledger.store.sweeps.newest(name)
        task = self.ledger.tasks.get(name) or self.ledger.latest_or_none(name)
        return member.spec.workflow.sweep if member and not (task and task.id > member.id) else ""

    def members(self, spec: TaskSpec, wire: Mapping[str, Any]) -> list[TaskSpec]:
        """A sweep's members; what their caller left out of the estimates, each learns again as it starts."""
        learn = tuple(key for key in LEARNT_KEYS if key not in wire)
        spec = replace(spec, workflow=replace(spec.workflow, learn=learn))
        return sweep_members(spec, parse_array(wire["array"]), spec.request_id or os.urandom(8).hex())

    def check_name(self, name: str, members: list[TaskSpec]) -> None:
        """A live sweep's name is no task's, and a live task's name no sweep's, nor a new member's: verbs
        take either."""
        groups = {t.spec.workflow.group for t in self.ledger.tasks.values()}
        if name in self.ledger.tasks or name in groups:
            raise NameInUse.of(name)
        clash = next((m.name for m in members if m.name in groups), None)
        if clash:
            raise NameInUse.of(clash)

    # --- the queue ------------------------------------------------------------------------------------

    def plan(self, queue: list[Task]) -> Plan:
        """Which queued runs may go, which wait and for what, and which can never run. Each dependency is
        looked up once, however many tasks wait for it (a sweep after a sweep: once, not once per pair)."""
        live = {t.id: t for t in self.ledger.tasks.values()}
        plan = Plan(active=Counter(t.spec.workflow.sweep for t in live.values()
                                   if t.spec.workflow.limit and not t.state.terminal and not t.in_babysits_queue))
        judged: dict[Dependency, tuple[Verdict, str, Task | None]] = {}
        for task in queue:
            if task.held:
                plan.waiting[task.id] = f"its release (held: babysit release --name={task.name})"
                continue
            waits: list[str] = []
            held = True  # by the executor itself, once handed over (a Slurm job's --dependency)
            for dependency in task.spec.workflow.after:
                if dependency not in judged:
                    judged[dependency] = self.judge(dependency, live)
                said, words, run = judged[dependency]
                if said == Verdict.BROKEN:
                    plan.broken.append((task, never_run(words)))
                    break
                if said == Verdict.WAIT:
                    waits.append(words)
                    held = held and self.handed_on(run)
            else:
                limit, sweep = task.spec.workflow.limit, task.spec.workflow.sweep
                if waits:
                    plan.waiting[task.id] = ", ".join(waits)
                if not task.in_babysits_queue or (waits and not held):
                    continue
                if limit and plan.active[sweep] >= limit and not self.executor.queues:  # (Slurm's array: %N)
                    plan.waiting[task.id] = f"its sweep: at most {limit} members at once"
                else:
                    plan.active[sweep] += 1
                    plan.ready.append(task)
        return plan

    def judge(self, dependency: Dependency, live: Mapping[int, Task]) -> tuple[Verdict, str, Task | None]:
        """What a dependency means now: its verdict, in words (what it waits for, or why it broke), and its
        run (None for a sweep's)."""
        needed = "complete" if dependency.condition == Condition.COMPLETED else "end"
        if dependency.sweep:
            standing = self.standing(dependency.name, dependency.sweep, live)
            said = sweep_verdict(dependency, standing)
            if said == Verdict.WAIT:
                return said, f"sweep {dependency.name} to {needed} ({standing.live} of {standing.members} members " \
                             "not done)", None
            how = standing.ended_otherwise or "has no record any more"
            return said, f"sweep {dependency.name}: {how}, and it was to {needed} first", None
        run = self.current(dependency.run_id, dependency.name, live)
        said = verdict(dependency, run.state if run else None)
        if said == Verdict.WAIT:
            return said, f"{dependency.name} to {needed} ({run.state if run else '?'} now)", run
        how = "has no record any more" if run is None else f"ended {ended_how(run)}"
        return said, f"{dependency.name} {how}, and it was to {needed} first", run

    def standing(self, group: str, sweep: str, live: Mapping[int, Task]) -> Standing:
        """Where the members of one submission of a sweep stand: one light query, however many wait for it."""
        states = self.ledger.store.sweeps.states(group, sweep)
        for t in live.values():
            if (t.spec.workflow.group, t.spec.workflow.sweep) == (group, sweep):
                states[t.name] = (t.id, t.state, bool(t.outcome and t.outcome.next_attempt))
        going = sum(1 for _, state, following in states.values() if not state.terminal or following)
        otherwise = min((run_id for run_id, state, following in states.values()
                         if state.terminal and not following and state != State.COMPLETED), default=None)
        run = None if otherwise is None else live.get(otherwise) or self.ledger.store_get(otherwise)
        return Standing(len(states), going, f"{run.name} ended {ended_how(run)}" if run else "")

    def current(self, run_id: int, name: str, live: Mapping[int, Task]) -> Task | None:
        """A dependency's run as it is now: its latest attempt, where it was retried."""
        run = live.get(run_id) or self.ledger.store_get(run_id)
        while run and run.outcome and run.outcome.next_attempt:
            run = next((t for t in live.values() if t.name == name and t.id > run.id), None) or \
                self.ledger.store.after(run.id, name)
        return run

    def rebind(self, task: Task) -> Task:
        """The task with each dependency bound to its run's latest attempt (an executor holding it back by its
        own dependencies needs the runs it waits for now)."""
        live = {t.id: t for t in self.ledger.tasks.values()}
        after = tuple(replace(d, run_id=run.id) if not d.sweep and (run := self.current(d.run_id, d.name, live))
                      else d for d in task.spec.workflow.after)
        if after == task.spec.workflow.after:
            return task
        return self.ledger.save(task.with_(spec=replace(task.spec, workflow=replace(task.spec.workflow, after=after))))

    def broken_detail(self, task: Task) -> str:
        """Which dependency of the task ended other than required, and how (for a stop its executor reported)."""
        live = {t.id: t for t in self.ledger.tasks.values()}
        for dependency in task.spec.workflow.after:
            said, words, _ = self.judge(dependency, live)
            if said == Verdict.BROKEN:
                return words
        return "a task it was to run after did not end as required"

    def handed_on(self, run: Task | None) -> bool:
        """Whether an executor with a queue of its own (Slurm) holds the dependent back itself: the dependency
        is in its hands, as the last attempt it will get (a job's --dependency cannot follow a retry)."""
        return bool(self.executor.queues and run and run.job and not run.state.terminal
                    and run.spec.workflow.attempt == run.spec.workflow.attempts)

    def relearn(self, task: Task) -> Task:
        """A sweep member's estimates that its caller left out, learnt again as it starts: from its siblings
        that completed meanwhile (they share a stem), or as they were."""
        keys = task.spec.workflow.learn
        if not keys:
            return task
        wire = {k: v for k, v in spec_to_wire(task.spec).items() if k not in keys}
        try:
            spec, runs = self.learning.spec(wire)
            if not runs or spec.estimates == task.spec.estimates:
                return task
            spec = replace(task.spec, estimates=spec.estimates, estimates_from=spec.estimates_from)
            caps = derive_caps(spec, self.executor.host)
        except BabysitError as e:  # what it was submitted with stands
            log.warning("%s keeps the estimates it was submitted with: %s", task.name, e)
            return task
        return self.ledger.save(task.with_(spec=spec, caps=caps))

    # --- a run's end ----------------------------------------------------------------------------------

    def retry(self, task: Task, outcome: Outcome) -> tuple[Outcome, TaskSpec | None]:
        """Whether an attempt that ended so is followed by another, and what it asks for: the outcome says so
        (next_attempt, retry), and the next attempt's spec; or why none follows (a refusal by the caps)."""
        w = task.spec.workflow
        if not retried(w, outcome.state, outcome.kill_reason):
            return outcome, None
        changes: dict[str, Any] = suggested(task.with_(state=outcome.state, outcome=outcome))
        wire = {**spec_to_wire(task.spec), **changes}
        if "estimated_time" in changes:  # the kill_timeout must leave the longer estimate room
            longer = 2 * parse_duration(changes["estimated_time"])
            wire["kill_timeout"] = max(task.spec.estimates.kill_timeout_s, longer)
        try:
            spec = replace(spec_from_wire(wire, self.executor.host), workflow=next_attempt(w, task.id),
                           estimates_from="" if changes else task.spec.estimates_from)
            derive_caps(spec, self.executor.host)
        except BabysitError as e:
            return replace(outcome, retry=f"no attempt {w.attempt + 1} of {w.attempts}: {e}"), None
        asked = " ".join(f"--{k}={v}" for k, v in changes.items()) or "the same estimates"
        return replace(outcome, next_attempt=w.attempt + 1,
                       retry=f"attempt {w.attempt + 1} of {w.attempts} queued with {asked}"), spec

    # --- a sweep as one -------------------------------------------------------------------------------

    def sweep(self, name: str) -> list[Task]:
        """The members of the newest sweep of that name (each one's latest run), or [] where the name is a
        task's (a task and a sweep of one name: the newer of the two)."""
        # the store has them all (a live sweep is its newest); the ledger has the live ones as they are now
        members = {t.name: t for t in self.ledger.store.sweeps.members(name)}
        members |= {t.name: t for t in self.ledger.tasks.values() if t.spec.workflow.group == name}
        task = self.ledger.tasks.get(name) or self.ledger.latest_or_none(name)
        if not members or (task and task.id > max(t.id for t in members.values())):
            return []
        return sorted(members.values(), key=lambda t: t.spec.workflow.index or 0)

    def live_members(self, name: str) -> list[Task]:
        """The members of a sweep that have not ended ([] where the name is a task's); NotRunning when none."""
        members = self.sweep(name)
        live = [m for m in members if not m.state.terminal]
        if members and not live:
            raise NotRunning(f"every member of sweep {name!r} has ended")
        return live

    def summary(self, name: str, members: list[Task], now: float) -> dict[str, Any]:
        """A sweep as `status` and `wait` show it."""
        return sweep_summary(name, [report.result(t, now) for t in members])


def never_run(why: str) -> Outcome:
    """The end of a run whose dependency ended other than required."""
    return Outcome(State.KILLED, kill_reason=KillReason.DEPENDENCY, detail=why)


def ended_how(run: Task) -> str:
    """`failed (exit code 1)`, `killed (oom)`, `completed after 2m05s`."""
    o = run.outcome
    if o and o.kill_reason:
        return f"{run.state} ({o.kill_reason})"
    if o and o.exit_code:
        return f"{run.state} (exit code {o.exit_code})"
    if o and o.signal:
        return f"{run.state} (signal {o.signal})"
    elapsed = run.finished_at - run.started_at if run.finished_at and run.started_at else None
    return f"{run.state}" + (f" after {format_duration(elapsed)}" if elapsed else "")
