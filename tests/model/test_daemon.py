"""The daemon's decisions through an executor in memory (tests/model/fake.py): in milliseconds, no session.

Each test here is a defect of issue 32, reproduced first, or an example the model (test_model.py) found.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from babysit.core.protocol import BabysitError, KillReason, NameInUse, State, StoreUnavailable
from babysit.core.quantities import parse_size
from tests.model.fake import Life, outcome_of, usage_of

pytestmark = pytest.mark.asyncio


def wire(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "command": f"work {name}", "estimated_time": "1h", "estimated_mem_bytes": "512M",
            "estimated_cpu_cores": 1, **fields}


async def running(life: Life, name: str) -> int:
    task = life.up.ledger.tasks[name]
    assert task.state == State.RUNNING, task
    return task.id


def locked(life: Life) -> sqlite3.Connection:
    """Another process holds the store's write lock: every write babysitd tries is refused (SQLITE_BUSY)."""
    other = sqlite3.connect(life.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


async def test_a_warning_days_ahead_neither_jams_the_queue_nor_stops_babysitd(tmp_path: Path) -> None:
    """`--warn_signal=SIGUSR1@12d` was written back as `1.0368e+06s`: every member's drain failed, the next
    run was refused behind them, and babysitd crash-looped at start."""
    life = Life(tmp_path / "state.db")
    await life.start()
    await life.call(lambda: life.up.scheduler.run(wire("ck", array="1-4%1", kill_timeout="30d",
                                                       estimated_time="20d", warn_signal="SIGUSR1@12d"), False))
    assert life.up.ledger.tasks["ck-1"].state == State.RUNNING
    await life.restart()
    await life.end(await running(life, "ck-1"), "completed")
    assert life.up.ledger.tasks["ck-2"].state == State.RUNNING
    await life.call(lambda: life.up.scheduler.run(wire("next", estimated_cpu_cores=1), False))
    assert life.up.ledger.tasks["next"].state == State.RUNNING


async def test_a_task_that_cannot_start_ends_and_the_queue_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    life = Life(tmp_path / "state.db")
    await life.start()
    await life.call(lambda: life.up.scheduler.run(wire("hog", estimated_cpu_cores=3.5), False))
    await life.call(lambda: life.up.scheduler.run(wire("bad"), True))
    await life.call(lambda: life.up.scheduler.run(wire("good"), True))

    def broken(task: Any) -> Any:
        if task.name == "bad":
            raise BabysitError("its values cannot be read back")
        return task

    monkeypatch.setattr(life.up.scheduler.workflows, "relearn", broken)
    await life.end(await running(life, "hog"), "completed")
    assert life.up.ledger.latest("bad").state == State.FAILED
    assert "babysit could not start it: its values cannot be read back" in life.up.ledger.latest("bad").outcome.detail
    assert life.up.ledger.tasks["good"].state == State.RUNNING


async def test_a_retry_is_not_lost_when_the_store_is_full_at_the_end(tmp_path: Path) -> None:
    """The end was saved promising attempt 2, and the attempt was refused (the store took no writes):
    `wait` then never returned."""
    life = Life(tmp_path / "state.db")
    await life.start()
    await life.call(lambda: life.up.scheduler.run(wire("train", retries=1), False))
    first = await running(life, "train")
    other = locked(life)
    await life.end(first, "oom")
    ended = life.up.ledger.latest("train")  # from memory: the store takes neither the end nor the attempt
    assert ended.id == first and ended.outcome.next_attempt == 2
    other.rollback()
    life.up.ledger.retry()  # each tick does this: both in one commit, and the attempt joins the queue
    await life.call(life.up.scheduler.queue.drain)
    attempt = life.up.ledger.tasks["train"]
    assert attempt.spec.workflow.attempt == 2 and attempt.state == State.RUNNING
    assert life.up.ledger.store.find(first).outcome.next_attempt == 2
    assert life.up.ledger.store.latest("train").id == attempt.id


@pytest.mark.parametrize("point", ["release", "stop"])
async def test_a_retry_survives_a_crash_between_its_end_and_its_start(tmp_path: Path, point: str) -> None:
    life = Life(tmp_path / "state.db")
    await life.start()
    await life.call(lambda: life.up.scheduler.run(wire("train", retries=2), False))
    first = await running(life, "train")
    life.world.faults.add(point)
    if point == "stop":
        await life.call(lambda: life.up.scheduler.kill("train"))  # crashes after the stop is recorded
        assert life.lives == 2
        life.world.units[first].stopping = True
        await life.end(first, "oom")  # the restarted babysitd still knows it was asked to stop
        assert life.up.ledger.latest("train").outcome.kill_reason == KillReason.USER
        return
    await life.end(first, "oom")  # crashes once the end is stored, before its name is free
    assert life.lives == 2
    attempt = life.up.ledger.tasks["train"]
    assert attempt.spec.workflow.attempt == 2 and attempt.state == State.RUNNING
    assert parse_size("1536M") < attempt.spec.estimates.mem_bytes  # what the OOM hint asked for
    assert [life.world.units[i].task.name for i in life.world.starts] == ["train", "train"]


async def test_an_adjust_during_a_stop_keeps_the_stop(tmp_path: Path) -> None:
    """adjust saved the record it read before `set_caps`: a kill in between lost its reason."""
    life = Life(tmp_path / "state.db")
    await life.start()
    await life.call(lambda: life.up.scheduler.run(wire("job"), False))
    run_id = await running(life, "job")
    scheduler = life.up.scheduler
    await life.call(lambda: asyncio.gather(scheduler.adjust("job", {"estimated_time": "2h"}),
                                           scheduler.kill("job")))
    assert life.up.ledger.tasks["job"].kill_requested == KillReason.USER
    assert life.up.ledger.tasks["job"].spec.estimates.time_s == 7200
    await life.end(run_id, "completed")
    assert life.up.ledger.latest("job").outcome.kill_reason == KillReason.USER


async def test_a_pause_as_the_task_ends_does_not_bring_it_back(tmp_path: Path) -> None:
    """pause saved the record it read before FreezeUnit: an end in between came back RUNNING."""
    life = Life(tmp_path / "state.db")
    await life.start()
    await life.call(lambda: life.up.scheduler.run(wire("job"), False))
    run_id = await running(life, "job")
    unit = life.world.units[run_id]

    async def end() -> None:  # while the executor freezes it
        unit.ended = outcome_of(unit.task, "completed")
        await life.up.ended(run_id, unit.ended, usage_of(unit))

    results = await asyncio.gather(life.up.scheduler.pause("job", True), end(), return_exceptions=True)
    await life.settle()
    assert not [r for r in results if isinstance(r, Exception) and not isinstance(r, BabysitError)]
    assert "job" not in life.up.ledger.tasks
    assert life.up.ledger.store.latest("job").state == State.COMPLETED


async def test_a_new_run_is_refused_while_the_store_is_full_and_nothing_else_changes(tmp_path: Path) -> None:
    life = Life(tmp_path / "state.db")
    await life.start()
    await life.call(lambda: life.up.scheduler.run(wire("a"), False))
    other = locked(life)  # (held until the end: a connection collected early would let go of the lock)
    await life.end(await running(life, "a"), "completed")
    with pytest.raises(StoreUnavailable):
        await life.up.scheduler.run(wire("b"), False)
    assert life.up.ledger.latest("a").state == State.COMPLETED
    other.rollback()


async def test_a_sweep_after_a_sweep_is_one_edge_per_member(tmp_path: Path) -> None:
    """`--after=<sweep>` made one dependency per member on every member, looked up on every plan: a
    300-member sweep after another took 98 s to run, and a status 10.7 s."""
    life = Life(tmp_path / "state.db")
    await life.start()
    size = 300
    await life.call(lambda: life.up.scheduler.run(wire("first", array=f"1-{size}", estimated_cpu_cores=0.01), False))
    await life.call(lambda: life.up.scheduler.run(wire("second", array=f"1-{size}", after="first",
                                                       estimated_cpu_cores=0.01), True))
    member = life.up.ledger.tasks["second-7"]
    assert [(d.name, bool(d.sweep)) for d in member.spec.workflow.after] == [("first", True)]
    started = asyncio.get_running_loop().time()
    status = life.up.scheduler.status("second-7")
    assert asyncio.get_running_loop().time() - started < 0.25
    assert status["waiting_for"] == f"sweep first to complete ({size} of {size} members not done)"
    while life.world.live_units():
        for run_id in sorted(life.world.live_units()):
            await life.end(run_id, "completed")
    order = [life.world.units[i].task.name.partition("-")[0] for i in life.world.starts]
    assert order == ["first"] * size + ["second"] * size


async def test_a_failed_member_ends_the_tasks_after_its_sweep_at_once(tmp_path: Path) -> None:
    life = Life(tmp_path / "state.db")
    await life.start()
    await life.call(lambda: life.up.scheduler.run(wire("sweep", array="1-3"), False))
    await life.call(lambda: life.up.scheduler.run(wire("next", after="sweep"), True))
    await life.call(lambda: life.up.scheduler.run(wire("any", after="sweep:any"), True))
    await life.end(await running(life, "sweep-2"), "failed")
    ended = life.up.ledger.latest("next")
    assert ended.outcome.kill_reason == KillReason.DEPENDENCY
    assert ended.outcome.detail == "sweep sweep: sweep-2 ended failed (exit code 1), and it was to complete first"
    assert life.up.ledger.tasks["any"].state == State.QUEUED  # waits for every member to end
    for name in ("sweep-1", "sweep-3"):
        await life.end(await running(life, name), "completed")
    assert life.up.ledger.tasks["any"].state == State.RUNNING


async def test_a_member_cannot_take_the_name_of_a_live_sweep(tmp_path: Path) -> None:
    life = Life(tmp_path / "state.db")
    await life.start()
    await life.call(lambda: life.up.scheduler.run(wire("x-1", array="1-2"), False))
    with pytest.raises(NameInUse, match="x-1"):
        await life.up.scheduler.run(wire("x", array="1-2"), True)
