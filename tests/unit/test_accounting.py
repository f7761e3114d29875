"""The final accounting: the ExecStopPost script on recorded cgroup files, and how a run's end is judged."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from babysit.common import failpoints
from babysit.core.outcome import FinalAccounting, UnitEnd, classify, final_usage
from babysit.core.protocol import KillReason, State
from babysit.core.task import Task, Usage, derive_caps
from babysit.daemon import store
from babysit.executors.systemd import accounting
from babysit.executors.systemd.unit import description, parse_description
from tests.unit.test_report_and_store import HOST, make_spec

MiB = 1 << 20


def make_task() -> Task:
    spec = make_spec("train-3", estimated_time="2h", estimated_cpu_cores="1.5")
    return Task(42, spec, derive_caps(spec, HOST), State.RUNNING, 0.0)


def run_script(tmp_path: Path, files: dict[str, str], env: dict[str, str], cpu_files: list[str],
               manager_state: str = "running") -> str:
    """The record the script writes; `systemctl` on its PATH reports the user manager in `manager_state`."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "systemctl").write_text(f"#!/bin/sh\n[ \"$*\" = '--user is-system-running' ] && echo {manager_state}\n")
    (tools / "systemctl").chmod(0o755)
    memory = tmp_path / "memory"
    memory.mkdir()
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    record = tmp_path / "record"
    script = accounting.install_script(tmp_path)
    _path, argv, _ignore = accounting.stop_post_command(script, record, memory, [tmp_path / f for f in cpu_files])
    assert not any(c in word for word in argv for c in "$;\"\\\n")  # nothing systemd would escape
    subprocess.run(argv, env={"PATH": f"{tools}:{os.environ['PATH']}", **env}, check=True)
    return record.read_text()


def test_v1_record_an_oom_kill(tmp_path: Path) -> None:
    text = run_script(tmp_path, {
        "memory/memory.max_usage_in_bytes": f"{192 * MiB}\n",
        "memory/memory.failcnt": "17\n",
        "memory/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        "unified/cpu.stat": "usage_usec 1250000\nuser_usec 1000000\nsystem_usec 250000\n",
    }, {"SERVICE_RESULT": "signal", "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"},
        ["unified/cpu.stat", "cpuacct/cpuacct.usage"])
    assert accounting.parse(text) == FinalAccounting("signal", "killed", signal.SIGKILL, 192 * MiB, 1_250_000_000,
                                                     17, 1, "running")


def test_v2_record_a_clean_exit(tmp_path: Path) -> None:
    text = run_script(tmp_path, {
        "memory/memory.peak": f"{55 * MiB}\n",
        "memory/memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
        "cg/cpu.stat": "usage_usec 300\n",
    }, {"SERVICE_RESULT": "success", "EXIT_CODE": "exited", "EXIT_STATUS": "0"}, ["cg/cpu.stat"])
    assert accounting.parse(text) == FinalAccounting("success", "exited", 0, 55 * MiB, 300_000, None, 0)


def test_a_figure_the_host_does_not_keep_is_unknown_not_zero(tmp_path: Path) -> None:
    text = run_script(tmp_path, {}, {"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "3"},
                      ["missing/cpu.stat"])
    final = accounting.parse(text)
    assert final is not None and (final.exit_status, final.peak_mem_bytes, final.cpu_ns) == (3, None, None)


def test_a_stop_by_a_stopping_user_manager_is_unknown_not_a_failure(tmp_path: Path) -> None:
    text = run_script(tmp_path, {}, {"SERVICE_RESULT": "success", "EXIT_CODE": "killed", "EXIT_STATUS": "TERM"}, [],
                      manager_state="stopping")
    final = accounting.parse(text)
    assert final is not None and final.manager_state == "stopping"
    outcome = classify(UnitEnd.of({"ActiveState": "inactive", "SubState": "dead"}, final), None)
    assert (outcome.state, outcome.signal) == (State.UNKNOWN, signal.SIGTERM)
    assert "user manager was stopping" in outcome.detail
    # a kill babysit asked for is still that kill, and a task's own exit is still its exit
    assert classify(UnitEnd.of({}, final), KillReason.USER).kill_reason == KillReason.USER
    exited = FinalAccounting("exit-code", "exited", 3, None, None, None, None, "")
    assert classify(UnitEnd.of({}, exited), None).state == State.FAILED


def test_not_a_record() -> None:
    assert accounting.parse("") is None and accounting.parse("garbage") is None
    assert accounting.parse("result=success\nexit_code=exited\n") is None  # not whole


def test_the_record_corrects_what_the_signals_said() -> None:
    final = FinalAccounting("exit-code", "exited", 4, 10 * MiB, 2_000_000_000, None, None)
    end = UnitEnd.of({"ActiveState": "failed", "SubState": "failed"}, final)
    assert classify(end, None).exit_code == 4
    assert UnitEnd.of({"Result": "exit-code", "ExecMainCode": 1, "ExecMainStatus": 2}, None).exec_main_status == 2


@pytest.mark.parametrize("sampled, final, oom, expected", [
    # a task shorter than a sample: only the end's figures exist
    (Usage(), FinalAccounting("success", "exited", 0, 50 * MiB, 400_000_000, None, None), False,
     (50 * MiB, 0.4)),
    # an OOM kill at MemoryMax: at least MemoryMax, even if the record is missing
    (Usage(peak_mem_bytes=116 * MiB, cpu_seconds=1.0), None, True, (192 * MiB, 1.0)),
    # the record never lowers what sampling saw
    (Usage(peak_mem_bytes=80 * MiB, cpu_seconds=3.0), FinalAccounting("success", "exited", 0, 70 * MiB, None, None,
                                                                      None), False, (80 * MiB, 3.0)),
    # nothing measured: unknown stays unknown
    (Usage(), None, False, (None, None)),
])
def test_final_usage(sampled: Usage, final: FinalAccounting | None, oom: bool,
                     expected: tuple[int | None, float | None]) -> None:
    usage = final_usage(sampled, final, oom, 192 * MiB)
    assert (usage.peak_mem_bytes, usage.cpu_seconds) == expected
    assert usage.cpu_cores == sampled.cpu_cores  # the last rate sampled: what a CPU kill's hint cites


@pytest.mark.parametrize("status, words", [(200, "CHDIR"), (203, "EXEC"), (217, "USER")])
def test_systemd_own_exit_statuses_are_said_in_words(status: int, words: str) -> None:
    outcome = classify(UnitEnd("failed", "failed", "exit-code", 1, status), None)
    assert outcome.state == State.FAILED and outcome.exit_code == status
    assert f"step {words} failed" in outcome.detail


def test_a_command_exit_status_below_200_has_no_systemd_detail() -> None:
    assert classify(UnitEnd("failed", "failed", "exit-code", 1, 3), None).detail == ""


def test_oom_is_judged_from_the_record() -> None:
    end = UnitEnd.of({}, FinalAccounting("signal", "killed", 9, 192 * MiB, None, 3, 1))
    assert classify(end, None, oom_seen=True).kill_reason == KillReason.OOM


def test_the_description_carries_enough_to_take_a_unit_up_again() -> None:
    task = make_task()
    described = parse_description(description(task))
    assert described is not None
    assert (described.name, described.run_id) == (task.name, task.id)
    e = task.spec.estimates
    assert described.fields == {"time_s": e.time_s, "mem_bytes": e.mem_bytes, "cpu_cores": e.cpu_cores,
                                "kill_timeout_s": e.kill_timeout_s,
                                "observability_interval_s": e.observability_interval_s,
                                "mem_pct_limit": task.spec.mem_pct_limit, "cpu_pct_limit": task.spec.cpu_pct_limit}
    assert parse_description("babysit task old (#3)") == parse_description("babysit task old (#3)")
    assert parse_description("babysit task old (#3)").fields == {}  # type: ignore[union-attr]
    assert parse_description("some other unit") is None


def test_a_damaged_database_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "babysit.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    db, warning = store.open_or_replace(path, 0.0)
    assert warning and "damaged" in warning and "19700101T000000Z" in warning
    assert (tmp_path / "babysit.sqlite3.damaged-19700101T000000Z").read_bytes().startswith(b"this is not")
    task = db.add(make_spec("fresh"), make_task().caps, 1.0)
    assert db.latest("fresh") == task
    # a unit found running without a record keeps its run's id where it is free, and gets a new one otherwise
    kept = db.add_running(make_spec("found"), make_task().caps, 42, 5.0)
    moved = db.add_running(make_spec("other"), make_task().caps, None, 6.0)
    assert (kept.id, kept.state, kept.started_at, db.name_of(42)) == (42, State.RUNNING, 5.0, "found")
    assert moved.id == 43 and db.name_of(7) is None
    db.close()
    again, warning = store.open_or_replace(path, 1.0)
    assert warning is None and again.latest("fresh") is not None
    again.close()


def test_a_healthy_database_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "babysit.sqlite3"
    store.Store(path).close()
    db, warning = store.open_or_replace(path, 0.0)
    assert warning is None
    db.close()
    with pytest.raises(sqlite3.DatabaseError):
        path.write_bytes(b"garbage" * 1000)
        store.Store(path)


LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA locking_mode=EXCLUSIVE")
db.execute("BEGIN EXCLUSIVE")
db.execute("UPDATE tasks SET usage = usage")
print("locked", flush=True)
sys.stdin.read()
db.execute("COMMIT")
"""


def test_a_locked_database_is_not_damaged(tmp_path: Path) -> None:
    """Seen in review: a store another process held locked at start was moved aside, its queue lost."""
    path = tmp_path / "babysit.sqlite3"
    db = store.Store(path)
    queued = db.add(make_spec("queued"), make_task().caps, 1.0)
    db.close()
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout and locker.stdout.readline() == "locked\n"
        with pytest.raises(store.Unavailable, match=f"locked by PID {locker.pid} "):
            store.open_or_replace(path, 0.0, busy_timeout_s=0.2)
    finally:
        locker.communicate("")
    assert not list(tmp_path.glob("*.damaged-*")), "nothing is moved aside for a lock"
    reopened, warning = store.open_or_replace(path, 1.0)
    assert warning is None and reopened.live() == [queued]
    reopened.close()


def test_only_corruption_counts_as_damage() -> None:
    def error(name: str) -> sqlite3.DatabaseError:
        e = sqlite3.OperationalError(name)
        e.sqlite_errorname = name  # type: ignore[attr-defined]
        return e

    assert store.is_damage(error("SQLITE_CORRUPT")) and store.is_damage(error("SQLITE_NOTADB"))
    assert store.is_damage(store.Damaged("quick_check: row 3 missing from index"))
    for transient in ("SQLITE_BUSY", "SQLITE_FULL", "SQLITE_IOERR_WRITE", "SQLITE_CANTOPEN"):
        assert not store.is_damage(error(transient)), transient
    assert "no space left under /state" in store.unavailable_because(Path("/state/babysit.sqlite3"),
                                                                    error("SQLITE_FULL"))


def test_failpoints_are_off_unless_armed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failpoints.check("sample_task", "a")  # no directory named: nothing
    monkeypatch.setenv(failpoints.DIR_VARIABLE, str(tmp_path))
    failpoints.check("sample_task", "a")  # not armed
    (tmp_path / "sample_task").write_text("b\n")
    failpoints.check("sample_task", "a")  # armed for another task
    with pytest.raises(failpoints.InjectedFault):
        failpoints.check("sample_task", "b")
    (tmp_path / "sample_loop").write_text("")
    with pytest.raises(failpoints.InjectedFault):
        failpoints.check("sample_loop", once=True)
    failpoints.check("sample_loop", once=True)  # fired once, then disarmed
