"""Workflows: chains (`--after`), retries that learn (`--retries`, `--retry_on`) and sweeps (`--array`).

What a run waits for, whether it is tried again and with what, and which sweep it belongs to: all pure,
kept with the run's spec (so a restarted babysitd knows it), decided on by the daemon (daemon.workflows).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from babysit.core.protocol import InvalidArgument, KillReason, State

MAX_MEMBERS = 10_000  # members of one sweep (Slurm's default MaxArraySize is 1001); max_live_tasks bounds them too
MAX_INDEX = 10_000_000
MAX_RETRIES = 100
MAX_AFTER = 100  # dependencies of one task


class Condition(StrEnum):
    """How a dependency must end for its dependent to run (Slurm's afterok and afterany)."""

    COMPLETED = "completed"
    ANY = "any"


@dataclass(frozen=True)
class Dependency:
    """A run this one waits for: named by the caller, bound to that name's run when it was submitted."""

    name: str
    condition: Condition = Condition.COMPLETED
    run_id: int = 0  # 0 until bound, and for a sweep
    sweep: str = ""  # where the name is a sweep's: which submission of it (one edge for all its members)

    def __str__(self) -> str:
        return self.name if self.condition == Condition.COMPLETED else f"{self.name}:{self.condition}"


# the ends a retry can follow, as `--retry_on` names them: `failed` and `unknown` by state, kills by reason
END_KINDS = ("failed", "unknown", *(str(r) for r in KillReason if r not in (KillReason.USER, KillReason.DEPENDENCY)))
# by default babysit retries the ends whose kill_hint names a bigger figure, which the next attempt asks
# for: a failure or a stall is more often a bug than bad luck, and a retry would only repeat it
DEFAULT_RETRY_ON = (str(KillReason.OOM), str(KillReason.MEM_2X_SUSTAINED), str(KillReason.CPU_2X_SUSTAINED),
                    str(KillReason.GPU_MEM_2X_SUSTAINED),
                    str(KillReason.TIMEOUT), str(KillReason.PRESSURE))


@dataclass(frozen=True)
class Workflow:
    """Where a run stands in a chain, a series of attempts and a sweep."""

    after: tuple[Dependency, ...] = ()
    retries: int = 0  # attempts after the first
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    attempt: int = 1
    first_run: int = 0  # the run id of attempt 1 (0 on attempt 1 itself)
    group: str = ""  # the sweep's name: members are named `<group>-<index>`
    index: int | None = None
    limit: int = 0  # members of the sweep running at once (`%N`); 0 for no limit
    sweep: str = ""  # which submission of the group name (its request id): a name can be swept again
    learn: tuple[str, ...] = ()  # estimates the caller left out: a member learns them again from its siblings

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def as_dict(self) -> dict[str, Any]:
        """The fields a result or a status shows (only those that apply)."""
        shown: dict[str, Any] = {}
        if self.after:
            shown["after"] = [str(d) for d in self.after]
        if self.retries:
            shown |= {"attempt": self.attempt, "attempts": self.attempts}
        if self.group:
            shown |= {"group": self.group, "array_index": self.index}
        return shown


def workflow_from_json(data: Mapping[str, Any] | None) -> Workflow:
    """A stored workflow (absent in records from before workflows)."""
    if not data:
        return Workflow()
    return Workflow(**{**data, "after": tuple(Dependency(d["name"], Condition(d["condition"]), d["run_id"],
                                                         d.get("sweep", "")) for d in data.get("after", ())),
                       "retry_on": tuple(data.get("retry_on", DEFAULT_RETRY_ON)),
                       "learn": tuple(data.get("learn", ()))})


# --- parsing what the caller wrote --------------------------------------------------------------------

def parse_after(text: str) -> tuple[Dependency, ...]:
    """`prepare,train:any` -> the dependencies, in order, once each."""
    found: dict[str, Dependency] = {}
    for part in (p.strip() for p in text.split(",")):
        name, _, condition = part.partition(":")
        if not name:
            raise InvalidArgument(f"after: {text!r} names no task (NAME[,NAME...], each NAME or NAME:any)")
        if condition and condition not in set(Condition):
            raise InvalidArgument(f"after: {part!r}: the condition is `any` (NAME:any waits for any end), or none "
                                  "(NAME alone waits for it to complete)")
        found.setdefault(name, Dependency(name, Condition(condition or Condition.COMPLETED)))
    if len(found) > MAX_AFTER:
        raise InvalidArgument(f"after: at most {MAX_AFTER} tasks")
    return tuple(found.values())


def parse_retry_on(text: str) -> tuple[str, ...]:
    """`oom,timeout` -> the end kinds a retry follows."""
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    wrong = [k for k in kinds if k not in END_KINDS]
    if wrong or not kinds:
        raise InvalidArgument(f"retry_on: {', '.join(wrong) or repr(text)} is not an end babysit retries; "
                              f"choose from {', '.join(END_KINDS)}")
    return kinds


@dataclass(frozen=True)
class Sweep:
    """What `--array` asks for: the indices, and how many members may run at once (0: no limit)."""

    indices: tuple[int, ...]
    limit: int = 0


# ASCII digits, and no more of them than MAX_INDEX has: `int()` would also take other scripts' digits, and
# thousands of digits cost it quadratic time
ARRAY_PART = re.compile(r"([0-9]{1,8})(?:-([0-9]{1,8})(?::([0-9]{1,8}))?)?")


def parse_array(text: str) -> Sweep:
    """Slurm's --array syntax: `1-100`, `0,3,7`, `1-9:2` (a step), each with an optional `%N`."""
    ranges, _, limit_text = text.strip().partition("%")
    indices: dict[int, None] = {}
    for part in ranges.split(","):
        match = ARRAY_PART.fullmatch(part.strip())
        if not match:
            raise InvalidArgument(f"array: {text!r} is not a list of indices (e.g. 1-100, 0,3,7, 1-9:2, 1-100%4)")
        low, high, step = int(match[1]), int(match[2] or match[1]), int(match[3] or 1)
        if high < low or step < 1 or high > MAX_INDEX:
            raise InvalidArgument(f"array: {part!r} is not a range of indices from 0 to {MAX_INDEX}")
        if (high - low) // step + 1 + len(indices) > MAX_MEMBERS:
            raise InvalidArgument(f"array: at most {MAX_MEMBERS} members in one sweep")
        indices.update(dict.fromkeys(range(low, high + 1, step)))
    if limit_text and (not re.fullmatch(r"[0-9]{1,8}", limit_text) or int(limit_text) < 1):
        raise InvalidArgument(f"array: %{limit_text} must be a number of members, at least 1")
    return Sweep(tuple(indices), int(limit_text or 0))


def member_name(group: str, index: int) -> str:
    return f"{group}-{index}"


def member_command(command: str, index: int) -> str:
    """The member's command: `{index}` replaced by its index (the index is in BABYSIT_ARRAY_INDEX as well)."""
    return command.replace("{index}", str(index))


# --- what a run's dependencies and ends mean ----------------------------------------------------------

class Verdict(StrEnum):
    WAIT = "wait"
    MET = "met"
    BROKEN = "broken"


def verdict(dependency: Dependency, state: State | None) -> Verdict:
    """What a dependency's run, in this state (None: its record is gone), means for its dependent."""
    if state is None:
        return Verdict.BROKEN
    if not state.terminal:
        return Verdict.WAIT
    return Verdict.MET if dependency.condition == Condition.ANY or state == State.COMPLETED else Verdict.BROKEN


@dataclass(frozen=True)
class Standing:
    """Where a sweep's members stand now, for a task that waits for the sweep."""

    members: int = 0
    live: int = 0  # not ended, or ended with a next attempt to come
    ended_otherwise: str = ""  # the first member that ended other than completed, and how


def sweep_verdict(dependency: Dependency, standing: Standing) -> Verdict:
    """What a sweep, standing so, means for a task that waits for it: with `:any` every member must end;
    without, every member must complete, and the first that does not breaks the dependency at once."""
    if not standing.members or standing.ended_otherwise and dependency.condition == Condition.COMPLETED:
        return Verdict.BROKEN
    return Verdict.WAIT if standing.live else Verdict.MET


def end_kind(state: State, kill_reason: KillReason | None) -> str | None:
    """How a run ended, as `--retry_on` names it (None: completed)."""
    if state == State.COMPLETED:
        return None
    return str(kill_reason) if state == State.KILLED and kill_reason else str(state)


def retried(workflow: Workflow, state: State, kill_reason: KillReason | None) -> bool:
    """Whether a run that ended so is tried again."""
    kind = end_kind(state, kill_reason)
    return kind is not None and kind in workflow.retry_on and workflow.attempt < workflow.attempts


def next_attempt(workflow: Workflow, run_id: int) -> Workflow:
    """The workflow of the attempt after run `run_id`: its dependencies are met already."""
    return Workflow(after=(), retries=workflow.retries, retry_on=workflow.retry_on, attempt=workflow.attempt + 1,
                    first_run=workflow.first_run or run_id, group=workflow.group, index=workflow.index,
                    limit=workflow.limit, sweep=workflow.sweep)


# --- a sweep as one ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rollup:
    """A sweep's members' states, counted."""

    counts: dict[str, int] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """queued or running while any member is; completed when all did; failed otherwise."""
        for live in (State.RUNNING, State.QUEUED):
            if self.counts.get(live):
                return str(live)
        return str(State.COMPLETED) if set(self.counts) <= {State.COMPLETED} else str(State.FAILED)


def rollup(states: Iterable[str]) -> Rollup:
    counts: dict[str, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    return Rollup(dict(sorted(counts.items())))


def sweep_summary(group: str, members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A sweep as `wait` and `status` show it: its status, counts per status, and every member's result."""
    summary = rollup(m["status"] for m in members)
    return {"name": group, "status": summary.status, "members": len(members), "counts": summary.counts,
            "results": list(members)}
