"""Chains, retries and sweeps: the parsing, the verdicts and the roll-up, with plain inputs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from babysit.core import report
from babysit.core.hints import kill_hint, suggested
from babysit.core.protocol import InvalidArgument, KillReason, State, terminal_only
from babysit.core.quantities import parse_size
from babysit.core.task import GiB, Host, Outcome, Task, Usage, derive_caps, spec_from_wire, sweep_members
from babysit.core.workflow import (
    DEFAULT_RETRY_ON,
    END_KINDS,
    Condition,
    Dependency,
    Verdict,
    Workflow,
    end_kind,
    next_attempt,
    parse_after,
    parse_array,
    parse_retry_on,
    retried,
    rollup,
    sweep_summary,
    verdict,
    workflow_from_json,
)

HOST = Host(mem_bytes=16 * GiB, cores=4)


def test_after_names_tasks_once_each_with_their_condition() -> None:
    assert parse_after("prep, train:any,prep") == (Dependency("prep"), Dependency("train", Condition.ANY))
    for bad in ("", "a,,b", "a:sometimes", ":any"):
        with pytest.raises(InvalidArgument):
            parse_after(bad)


@pytest.mark.parametrize("text, indices, limit", [
    ("1-5", (1, 2, 3, 4, 5), 0), ("0,3,7", (0, 3, 7), 0), ("1-100%4", tuple(range(1, 101)), 4),
    ("1-9:2", (1, 3, 5, 7, 9), 0), ("1-3,2-4%1", (1, 2, 3, 4), 1), ("7", (7,), 0),
])
def test_array_takes_slurms_syntax(text: str, indices: tuple[int, ...], limit: int) -> None:
    sweep = parse_array(text)
    assert (sweep.indices, sweep.limit) == (indices, limit)


@pytest.mark.parametrize("text", ["", "5-1", "1-3%0", "1-3%x", "a-b", "1-2:0", "-1", "0-10000000000", "1-20000"])
def test_array_refuses_what_is_no_list_of_indices(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_array(text)


def test_members_are_named_by_index_and_get_it_in_the_command_and_environment() -> None:
    spec = spec_from_wire({"name": "sweep", "command": "train --seed={index}", "array": "3,5%1", "env": {"A": "1"}},
                          HOST)
    members = sweep_members(spec, parse_array("3,5%1"), "s1")
    assert [(m.name, m.command, m.env["BABYSIT_ARRAY_INDEX"], m.env["A"]) for m in members] == [
        ("sweep-3", "train --seed=3", "3", "1"), ("sweep-5", "train --seed=5", "5", "1")]
    assert {(m.workflow.group, m.workflow.limit, m.workflow.sweep) for m in members} == {("sweep", 1, "s1")}
    with pytest.raises(InvalidArgument):  # the longest member name must be a task name too
        spec_from_wire({"name": "n" * 60, "command": "true", "array": "1-100000"}, HOST)


def test_retry_on_takes_the_end_kinds_and_the_default_is_the_resource_kills() -> None:
    assert parse_retry_on("failed, oom") == ("failed", "oom")
    assert set(DEFAULT_RETRY_ON) == {"oom", "mem_2x_sustained", "cpu_2x_sustained", "gpu_mem_2x_sustained",
                                     "timeout", "pressure"}
    assert {"failed", "unknown", "observability_stall"} <= set(END_KINDS) and "user" not in END_KINDS
    for bad in ("", "user", "bad_luck"):
        with pytest.raises(InvalidArgument):
            parse_retry_on(bad)


def test_a_run_is_retried_only_for_the_ends_named_and_while_attempts_remain() -> None:
    w = Workflow(retries=1, retry_on=("oom", "failed"))
    assert retried(w, State.KILLED, KillReason.OOM) and retried(w, State.FAILED, None)
    assert not retried(w, State.KILLED, KillReason.USER) and not retried(w, State.COMPLETED, None)
    assert not retried(next_attempt(w, 7), State.KILLED, KillReason.OOM)  # the last attempt
    assert end_kind(State.UNKNOWN, None) == "unknown"
    assert next_attempt(Workflow(after=(Dependency("a", run_id=1),), retries=2), 7) == Workflow(
        retries=2, attempt=2, first_run=7)


def test_a_dependency_is_met_broken_or_awaited() -> None:
    ok, any_ = Dependency("a"), Dependency("a", Condition.ANY)
    assert [verdict(ok, s) for s in (State.RUNNING, State.COMPLETED, State.FAILED, None)] == [
        Verdict.WAIT, Verdict.MET, Verdict.BROKEN, Verdict.BROKEN]
    assert [verdict(any_, s) for s in (State.QUEUED, State.KILLED, State.COMPLETED)] == [
        Verdict.WAIT, Verdict.MET, Verdict.MET]


def test_a_sweep_rolls_up_to_one_status() -> None:
    assert rollup(["completed", "running", "queued"]).status == "running"
    assert rollup(["completed", "queued"]).status == "queued"
    assert rollup(["completed", "completed"]).status == "completed"
    assert rollup(["completed", "killed"]).counts == {"completed": 1, "killed": 1}
    assert rollup(["completed", "killed"]).status == "failed"
    summary = sweep_summary("s", [{"name": "s-1", "status": "completed"}, {"name": "s-2", "status": "failed"}])
    assert (summary["status"], summary["members"], summary["counts"]) == ("failed", 2, {"completed": 1, "failed": 1})


def test_a_workflow_survives_its_json() -> None:
    import json
    from dataclasses import asdict

    w = Workflow(after=(Dependency("a", Condition.ANY, 4),), retries=2, retry_on=("oom",), attempt=2, first_run=4,
                 group="g", index=3, limit=2, sweep="x", learn=("estimated_time",))
    assert workflow_from_json(json.loads(json.dumps(asdict(w)))) == w
    assert workflow_from_json(None) == Workflow()


def killed(reason: KillReason, **usage: float) -> Task:
    spec = spec_from_wire({"name": "t", "command": "true", "estimated_mem_bytes": "64M", "retries": 1}, HOST)
    return Task(1, spec, derive_caps(spec, HOST), State.KILLED, 0.0, started_at=0.0, finished_at=100.0,
                usage=Usage(**usage), outcome=Outcome(State.KILLED, kill_reason=reason))  # type: ignore[arg-type]


def test_the_hint_and_the_retry_ask_for_the_same_figure() -> None:
    task = killed(KillReason.OOM, mem_bytes=100 << 20, peak_mem_bytes=150 << 20)
    (flag, value), = suggested(task).items()
    assert f"--{flag}={value}" in kill_hint(task)
    assert parse_size(value) == parse_size("231M")  # 3 x 64M (MemoryMax), and 20% more
    assert suggested(killed(KillReason.USER)) == {}


def test_a_result_says_its_attempt_and_what_follows() -> None:
    task = killed(KillReason.OOM, peak_mem_bytes=150 << 20)
    task = task.with_(outcome=Outcome(State.KILLED, kill_reason=KillReason.OOM, next_attempt=2,
                                      retry="attempt 2 of 2 queued with --estimated_mem_bytes=231M"))
    shown = terminal_only(report.result(task, 100.0) | {"command": "true"})
    assert (shown["attempt"], shown["attempts"], shown["next_attempt"]) == (1, 2, 2)
    assert "command" not in shown and list(shown)[:2] == ["kill_reason", "kill_hint"]


def test_a_slurm_dependent_is_held_by_its_dependencies_jobs() -> None:
    from pathlib import Path

    from babysit.executors.slurm.executor import dependency
    from babysit.executors.slurm.rounds import Tracked

    spec = spec_from_wire({"name": "t", "command": "true"}, HOST)
    after = (Dependency("a", run_id=1), Dependency("b", Condition.ANY, 2), Dependency("c", run_id=3),
             Dependency("d", run_id=4))
    task = Task(9, replace(spec, workflow=Workflow(after=after)), derive_caps(spec, HOST), State.QUEUED, 0.0)
    jobs = {i: Tracked(i, 100 + i, Path("/dev/null")) for i in (1, 2, 4)}  # run 3 ended (and met its condition)
    assert dependency(task, jobs) == "afterok:101:104,afterany:102"
    assert dependency(task, {}) is None
