"""babysitd keeps supervising through faults: a damaged database, a daemon that cannot start, an error
while watching one task, a supervision loop that dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from babysit.common import failpoints
from babysit.common.config import Config
from babysit.core.protocol import unit_name
from babysit.daemon.state_dir import store_path
from tests.integration.conftest import (
    BIN,
    Gate,
    babysit,
    daemon_config,
    daemon_log_since,
    daemon_pid,
    manager_environment,
    restart_daemon,
    status,
)
from tests.unit.test_accounting import LOCKER  # holds the store exclusively locked until its stdin closes
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("daemon")]
MiB = 1 << 20
LIGHT = ("--estimated_cpu_cores=0.1", "--estimated_mem_bytes=16M")  # side by side with anything else


def run(name: str, command: str, *flags: str) -> None:
    started = babysit("run", f"--name={name}", f"--command={command}", *LIGHT, *flags)
    assert started.returncode == 0, started.stderr


def wait(name: str) -> dict:
    done = babysit("wait", f"--name={name}", timeout=60)
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def stopped_afterwards(task_name: str) -> Iterator[str]:
    """A task name whose unit is stopped after the test, whatever babysitd knows of it by then."""
    yield task_name
    subprocess.run(["systemctl", "--user", "stop", unit_name(task_name)], capture_output=True)


def test_a_damaged_database_is_set_aside_and_running_tasks_are_taken_up(stopped_afterwards: str) -> None:
    task_name = stopped_afterwards
    started = babysit("run", f"--name={task_name}", "--command=echo up; sleep 120", "--estimated_mem_bytes=100M",
                      "--estimated_cpu_cores=0.5", "--observability_interval=1h", "--estimated_time=30m")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: status(task_name)["status"] == "running", 30, "running")
    subprocess.run(["systemctl", "--user", "stop", "babysitd"], check=True)
    db = store_path(Config())
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"\x00garbage, not SQLite\n" * 500)

    pong = babysit("ping")  # ping does not start babysitd: the next real command does, through the bus
    assert pong.returncode == 1
    taken_up = status(task_name)
    assert taken_up["status"] == "running"
    assert (taken_up["estimated_mem_bytes"], taken_up["estimated_cpu_cores"], taken_up["observability_interval_s"],
            taken_up["estimated_time_s"]) == (100 * MiB, 0.5, 3600, 1800)
    assert taken_up["command"] == "echo up; sleep 120"
    pong = babysit("ping")
    assert pong.returncode == 0 and "state database was damaged" in pong.stderr, pong.stderr
    assert list(db.parent.glob(f"{db.name}.damaged-*")), "the damaged file is kept"

    assert babysit("kill", f"--name={task_name}").returncode == 0
    done = babysit("wait", f"--name={task_name}")
    assert (done.returncode, json.loads(done.stdout)["kill_reason"]) == (1, "user")
    restart_daemon()  # the warning is about this daemon's start only
    assert "damaged" not in babysit("ping").stderr


def test_a_daemon_that_cannot_start_is_explained(task_name: str) -> None:
    config = Path.home() / ".config" / "babysit" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("tick_seconds = 1\n")  # a misspelt key: babysitd refuses to start
    try:
        subprocess.run(["systemctl", "--user", "restart", "babysitd"], capture_output=True)
        refused = babysit("status", f"--name={task_name}")
        assert refused.returncode == 1
        assert "daemon not running" in refused.stderr
        assert "unknown keys tick_seconds" in refused.stderr, refused.stderr  # from its journal
        assert "systemctl --user status babysitd.service" in refused.stderr
    finally:
        config.unlink()
    started = babysit("daemon-start")
    assert started.returncode == 0, started.stderr


@pytest.mark.parametrize("unsafe", ["writable parent", "cannot make"])
def test_a_state_dir_others_could_write_or_babysit_cannot_make_is_one_line_and_no_restart_loop(unsafe: str,
                                                                                                task_name: str) -> None:
    """Whoever can write above the state directory can replace the script each unit runs at its end; a
    state_dir that cannot be made once crash-looped babysitd. babysitd stays up and answers every request
    with the one line that says why, and starts afresh by itself once it is fixed."""
    parent = Path.home() / f"{task_name}-open"
    parent.mkdir()
    if unsafe == "writable parent":
        parent.chmod(0o777)
        said = "can be written by others than you and root (mode 777"
    else:
        parent.chmod(0o500)  # babysit cannot make its directory below it
        said = "babysitd cannot make its state directory"
    config = Path.home() / ".config" / "babysit" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'state_dir = "{parent}/babysit"\n')
    try:
        subprocess.run(["systemctl", "--user", "restart", "babysitd"], check=True)
        for verb in (["status", f"--name={task_name}"], ["run", f"--name={task_name}", "--command=true"], ["ping"]):
            refused = babysit(*verb)
            assert refused.returncode == 1 and said in refused.stderr, refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        shown = subprocess.run(["systemctl", "--user", "show", "babysitd", "--property=NRestarts,ActiveState"],
                               capture_output=True, text=True).stdout
        assert "NRestarts=0" in shown and "ActiveState=active" in shown, shown
    finally:
        parent.chmod(0o700)
        config.unlink()
    wait_for(lambda: babysit("ping").returncode == 0, 30, "babysitd to start afresh once fixed")


@pytest.fixture
def fault_points(tmp_path: Path) -> Iterator[Path]:
    """babysitd restarted with fault points armed by files in a directory, and without them afterwards."""
    directory = tmp_path / "faults"
    directory.mkdir()
    # (running tasks are checked against their units every second meanwhile: no test here may see a
    # task judged by that check that had not ended)
    with manager_environment(failpoints.DIR_VARIABLE, str(directory)), \
            daemon_config("tick_s = 0.25\nreconcile_s = 1\n"):
        yield directory
    restart_daemon()


def test_an_error_while_watching_one_task_leaves_the_others_watched(fault_points: Path, task_name: str) -> None:
    since, pid = time.time(), daemon_pid()
    faulty, other = f"{task_name}-faulty", f"{task_name}-other"
    (fault_points / "sample_task").write_text(faulty)
    run(faulty, "sleep 2")
    run(other, "echo on; sleep 60", "--kill_timeout=2s")
    assert wait(other)["kill_reason"] == "timeout"  # still policed, every tick
    assert wait(faulty)["status"] == "completed"  # its end is still seen and judged
    assert daemon_pid() == pid
    assert f"error while sampling it (task {faulty})" in daemon_log_since(since)


def test_a_supervision_loop_that_dies_restarts_the_daemon(fault_points: Path, task_name: str) -> None:
    pid = daemon_pid()
    run(task_name, "echo on; sleep 4")
    since = time.time()
    (fault_points / "sample_loop").write_text("")
    # back under a new PID; NRestarts would not tell, as a start through D-Bus activation resets it
    try:
        wait_for(lambda: daemon_pid() not in (pid, 0) and babysit("ping").returncode == 0, 60, "a new babysitd")
    except AssertionError as e:
        state = subprocess.run(["systemctl", "--user", "status", "babysitd", "--no-pager", "-n", "0"],
                               capture_output=True, text=True).stdout
        everything = subprocess.run(["journalctl", "--user", f"--since=@{int(since) - 1}", "-o", "short-precise",
                                     "--no-pager"], capture_output=True, text=True).stdout
        raise AssertionError(f"{e}\n{state}\n{everything}\nping: {babysit('ping')}") from None
    assert not (fault_points / "sample_loop").exists()
    assert "the sampling loop ended" in daemon_log_since(since)  # then exit 1, and Restart=always
    assert wait(task_name)["status"] == "completed"  # taken up by the new daemon


def test_a_missed_end_signal_is_found_and_judged(fault_points: Path, task_name: str) -> None:
    """Every signal of one task's unit is lost: the check against the units finds it ended, and the result is
    the real one (its exit code, from the unit and its final accounting), not a task running for ever."""
    since = time.time()
    (fault_points / "lose_unit_signals").write_text(task_name)
    run(task_name, "echo done; exit 3")
    result = wait(task_name)
    assert (result["status"], result["exit_code"]) == ("failed", 3), result
    assert f"no end was heard of {task_name}" in daemon_log_since(since)


def test_a_fault_in_any_background_step_leaves_supervision_going(fault_points: Path, task_name: str) -> None:
    since, pid = time.time(), daemon_pid()
    for step in ("pressure_check", "drain", "reconcile"):
        (fault_points / step).write_text("")  # each fires once
    run(task_name, "echo on; sleep 3")
    wait_for(lambda: not any((fault_points / step).exists() for step in ("pressure_check", "reconcile")), 30,
             "the pressure and reconcile faults")
    assert wait(task_name)["status"] == "completed"
    wait_for(lambda: not (fault_points / "drain").exists(), 30, "the drain fault (after the task's end)")
    after = f"{task_name}-after"
    run(after, "echo still supervised; sleep 30", "--kill_timeout=1s")
    assert wait(after)["kill_reason"] == "timeout"
    assert daemon_pid() == pid
    said = daemon_log_since(since)
    for error in ("error while looking at host memory pressure", "error while draining the queue",
                  "error while checking the running tasks against their units"):
        assert error in said, said


def test_a_store_locked_across_a_start_is_waited_for_not_replaced(stopped_afterwards: str) -> None:
    """Seen in review: a store another process held locked for 8 s at start was moved aside as damaged, and
    the queue in it was gone. Now the start waits, says who holds the lock, and loses nothing."""
    holder, queued = stopped_afterwards, f"{stopped_afterwards}-queued"
    with daemon_config("cpu_budget_cores = 1\n"):  # room for one 0.6-core task: the second one queues
        run(holder, "sleep 300", "--estimated_cpu_cores=0.6")
        run(queued, "true", "--estimated_cpu_cores=0.6", "--force")
        assert status(queued)["status"] == "queued"
        subprocess.run(["systemctl", "--user", "stop", "babysitd"], check=True)
        db = store_path(Config())
        set_aside = set(db.parent.glob(f"{db.name}.damaged-*"))  # an earlier test's
        locker = subprocess.Popen([str(BIN / "python"), "-c", LOCKER, str(db)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert locker.stdout and locker.stdout.readline() == "locked\n"
            since = time.time()
            answer = subprocess.Popen([str(BIN / "babysit"), "status", f"--name={queued}", "--json"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # said only once a whole busy timeout (5 s) has passed with the lock held
            wait_for(lambda: f"locked by PID {locker.pid} " in daemon_log_since(since), 60, "the start's reason")
            meanwhile = babysit("ping")  # a caller kept waiting is told why
            assert meanwhile.returncode == 1 and f"locked by PID {locker.pid} " in meanwhile.stderr, meanwhile.stderr
        finally:
            locker.communicate("")
        out, err = answer.communicate(timeout=60)
        assert answer.returncode == 0, err
        assert json.loads(out)["status"] == "queued"
        assert status(holder)["status"] == "running"
        assert set(db.parent.glob(f"{db.name}.damaged-*")) == set_aside, "nothing is moved aside for a lock"
        assert "damaged" not in babysit("ping").stderr
        babysit("kill", f"--name={queued}")
        babysit("kill", f"--name={holder}")
        wait(holder)


SMALL_FS = os.environ.get("BABYSIT_TEST_SMALL_FS")  # the private session mounts it (tests/session/run.py)


@pytest.mark.skipif(not SMALL_FS, reason="needs the private session's small filesystem: run the suite as root")
def test_a_full_disk_loses_no_result(task_name: str, gate: Gate) -> None:
    """The disk under the state directory fills while a task runs: its waiter still gets the task's result,
    babysit says why the store takes no writes and starts nothing new; once there is room again, a new task
    runs and the first one's result is in the history."""
    assert SMALL_FS
    small, after = Path(SMALL_FS), f"{task_name}-after"
    filler = small / "filler"
    with manager_environment("XDG_STATE_HOME", str(small / "state")):
        restart_daemon()
        try:
            run(task_name, gate.then("echo done"))
            wait_for(lambda: status(task_name)["status"] == "running", 30, "running")
            full = subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, text=True)
            assert "No space left on device" in full.stderr, full.stderr
            gate.open()
            result = wait(task_name)
            assert (result["status"], result["exit_code"]) == ("completed", 0), result
            assert "no space left under" in babysit("ping").stderr
            refused = babysit("run", f"--name={after}", "--command=echo after", *LIGHT)
            assert refused.returncode == 1 and "no space left under" in refused.stderr, refused.stderr
            filler.unlink()
            wait_for(lambda: "no space left" not in babysit("ping").stderr, 30, "the store to take writes again")
            run(after, "echo after")
            assert wait(after)["status"] == "completed"
            history = json.loads(babysit("history", f"--name={task_name}", "--json").stdout)
            assert [(run["status"], run["exit_code"]) for run in history] == [("completed", 0)], history
        finally:
            filler.unlink(missing_ok=True)
    restart_daemon()  # on the usual state directory again


def test_a_busy_daemon_is_waited_for_and_never_called_not_running(task_name: str, tmp_path: Path) -> None:
    """Seen in review: a client gave up after 30 s and said "daemon not running" while babysitd was only busy
    (and had taken the task), inviting a second submission."""
    quick = {**os.environ, "BABYSIT_CALL_TIMEOUT_S": "0.5"}  # the CLI asks the bus about babysitd sooner
    said = tmp_path / "stderr"
    pid = daemon_pid()
    os.kill(pid, signal.SIGSTOP)  # it keeps its bus name and answers nothing: as busy as can be
    try:
        pong = babysit("ping", env=quick)
        assert pong.returncode == 1 and "is up but has not answered Ping within 5s" in pong.stderr, pong.stderr
        assert "not running" not in pong.stderr
        with said.open("w") as stderr:
            submit = subprocess.Popen([str(BIN / "babysit"), "run", f"--name={task_name}", "--command=true"],
                                      env=quick, stdout=subprocess.PIPE, stderr=stderr, text=True)
        wait_for(lambda: "babysitd is busy; still waiting for its answer to Run" in said.read_text(), 30,
                 "the CLI to say what it waits for")
    finally:
        os.kill(pid, signal.SIGCONT)
    out, _ = submit.communicate(timeout=60)
    assert (submit.returncode, out) == (0, f"queued: {task_name}\n"), said.read_text()
    assert babysit("wait", f"--name={task_name}").returncode == 0
    runs = json.loads(babysit("history", f"--name={task_name}", "--json").stdout)
    assert len(runs) == 1 and daemon_pid() == pid  # sent once, answered by the same babysitd
