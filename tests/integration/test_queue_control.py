"""Queue control and stops that let work be saved, end to end through the CLI.

The stop test runs on every executor (systemd units in the session; jobs on the real Slurm cluster when
the Slurm tier started one); priority, hold and drain are babysit's own queue, tested in the session.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from babysit.core.protocol import DRAINED
from tests.integration.conftest import Gate, babysit, daemon_config, on_slurm, restart_daemon, status
from tests.integration.test_contract import PY
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration]
# a grace far shorter than the save takes: only a task's own --stop_grace lets it finish
QUICK = "tick_s = 0.25\ntolerance_s = 2\ncpu_window_s = 1\nrecheck_s = 1\nstop_grace_s = 1\n"
TINY = ("--estimated_time=1m", "--estimated_mem_bytes=32M", "--estimated_cpu_cores=0.1")
# a training loop's shape: SIGUSR1 writes a checkpoint and goes on; SIGTERM saves (7 s) and exits 0. The save
# outlasts the configured 1 s grace, and on Slurm that grace plus the test cluster's KillWait (5 s) too.
CHECKPOINTER = (
    "import pathlib, signal, sys, time\n"
    "d = pathlib.Path(sys.argv[1])\n"
    "def checkpoint(sig, frame):\n"
    "    (d / 'checkpoint').write_text(str(time.time())); print('checkpoint written', flush=True)\n"
    "def save_and_exit(sig, frame):\n"
    "    print('saving', flush=True); time.sleep(7); (d / 'saved').write_text('ok'); sys.exit(0)\n"
    "signal.signal(signal.SIGUSR1, checkpoint)\n"
    "signal.signal(signal.SIGTERM, save_and_exit)\n"
    "while True:\n"
    "    print('working', flush=True); time.sleep(0.5)\n"
)


@pytest.fixture(scope="module", params=["systemd", pytest.param("slurm", marks=pytest.mark.slurm)])
def executor(request: pytest.FixtureRequest, daemon: str) -> Iterator[str]:
    with daemon_config(QUICK) if request.param == "systemd" else on_slurm(QUICK):
        yield request.param


def run(name: str, command: str, *flags: str) -> subprocess.CompletedProcess[str]:
    started = babysit("run", f"--name={name}", f"--command={command}", *TINY, *flags)
    assert started.returncode == 0, started.stderr
    return started


def finished(name: str, timeout: float = 120) -> dict:
    done = babysit("wait", f"--name={name}", timeout=timeout)
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


def call(method: str, *args: str) -> dict:
    """A method of org.babysit.Scheduler, as `busctl --user call` makes it; its reply, as busctl's JSON."""
    called = subprocess.run(["busctl", "--user", "--json=short", "call", "org.babysit",
                             "/org/babysit/Scheduler", "org.babysit.Scheduler", method, *args],
                            capture_output=True, text=True, timeout=30)
    assert called.returncode == 0, called.stderr
    return json.loads(called.stdout) if called.stdout.strip() else {}


def at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def test_a_warning_signal_and_a_long_grace_let_a_timed_out_task_save_its_work(
        executor: str, task_name: str, tmp_path: Path) -> None:
    saving, plain = tmp_path / "saving", tmp_path / "plain"
    saving.mkdir()
    plain.mkdir()
    run(task_name, f'{PY} "{CHECKPOINTER}" {saving}', "--kill_timeout=4s", "--warn_signal=SIGUSR1@2s",
        "--stop_grace=30s")
    run(f"{task_name}-plain", f'{PY} "{CHECKPOINTER}" {plain}', "--kill_timeout=4s")
    result = finished(task_name)
    assert (result["status"], result["kill_reason"]) == ("killed", "timeout"), result
    assert (saving / "checkpoint").exists() and (saving / "saved").read_text() == "ok"
    warned, stopped = result["signals"]
    assert (warned["signal"], warned["why"], stopped["signal"], stopped["why"]) == (
        "SIGUSR1", "kill_timeout in 2s", "SIGTERM", "stop: timeout"), result
    started = at(result["started_at"])
    # sent 2 s before the 4 s kill_timeout (a Slurm job's start is seen a round late: a wider margin)
    assert 1.0 <= at(warned["at"]) - started <= 3.5 < at(stopped["at"]) - started, result
    assert at(result["finished_at"]) - at(stopped["at"]) >= 6.5, result  # the save ran its 7 s, unkilled
    assert (result["warn_signal"], result["stop_grace_s"]) == ("SIGUSR1@2s", 30.0)
    # the same program with the configured 1 s grace: killed mid-save (on Slurm, KillWait later), never warned
    other = finished(f"{task_name}-plain")
    assert [s["signal"] for s in other["signals"]] == ["SIGTERM"], other
    assert not (plain / "checkpoint").exists() and not (plain / "saved").exists()


# --- babysit's own queue, in the session ---------------------------------------------------------------

@pytest.fixture(scope="module")
def one_at_a_time(daemon: str) -> Iterator[None]:
    """A budget where one 600 MiB task fits and two do not: the queue's order decides who goes next."""
    with daemon_config(QUICK + 'mem_budget_bytes = "1G"\n'):
        yield


def big(name: str, command: str, *flags: str) -> None:
    started = babysit("run", f"--name={name}", f"--command={command}", "--estimated_time=1m",
                      "--estimated_mem_bytes=600M", "--estimated_cpu_cores=0.1", "--mem_pct_limit=90", *flags)
    assert started.returncode == 0, started.stderr


def test_priority_overtakes_in_a_full_queue_and_adjust_moves_a_queued_task(
        one_at_a_time: None, task_name: str, gate: Gate, tmp_path: Path) -> None:
    order = tmp_path / "order"
    blocker, low, high, later = (f"{task_name}-{n}" for n in ("blocker", "low", "high", "later"))
    big(blocker, gate.then("true"))
    wait_for(lambda: status(blocker)["status"] == "running", 30, "the blocker running")
    for name, flags in ((low, ()), (high, ("--priority=5",)), (later, ())):
        big(name, f"echo {name} >> {order}", "--force", *flags)
    assert [status(n)["queue_position"] for n in (high, low, later)] == [1, 2, 3]
    assert babysit("adjust", f"--name={later}", "--priority=9").returncode == 0
    assert status(later)["queue_position"] == 1 and status(later)["priority"] == 9
    gate.open()
    for name in (later, high, low):
        assert finished(name)["status"] == "completed"
    assert order.read_text().split() == [later, high, low]


def test_a_held_task_is_passed_over_survives_a_restart_and_runs_once_released(
        one_at_a_time: None, task_name: str, gate: Gate, tmp_path: Path) -> None:
    blocker, held, next_one = (f"{task_name}-{n}" for n in ("blocker", "held", "next"))
    big(blocker, gate.then("true"))
    wait_for(lambda: status(blocker)["status"] == "running", 30, "the blocker running")
    big(held, f"touch {tmp_path}/held-ran", "--force")
    assert babysit("hold", f"--name={held}").stdout.strip() == f"held: {held}"
    big(next_one, gate.then("true"), "--force")
    shown = status(held)
    assert shown["held"] is True and "babysit release" in shown["waiting_for"], shown
    assert babysit("hold", f"--name={blocker}").returncode == 2  # only a queued task can be held
    gate.open()
    assert finished(blocker)["status"] == "completed"
    assert finished(next_one)["status"] == "completed"  # the held one, ahead of it, was passed over
    restart_daemon()
    shown = status(held)
    assert (shown["status"], shown["held"]) == ("queued", True), shown
    # the D-Bus API, as busctl calls it
    call("Release", "s", held)
    result = finished(held)
    assert result["status"] == "completed" and "held" not in result
    assert (tmp_path / "held-ran").exists()


def test_a_drained_babysit_finishes_what_runs_and_admits_nothing_until_undrained(
        one_at_a_time: None, task_name: str, gate: Gate, tmp_path: Path) -> None:
    running, queued = f"{task_name}-running", f"{task_name}-queued"
    run(running, gate.then("true"))
    wait_for(lambda: status(running)["status"] == "running", 30, "the first task running")
    assert babysit("drain").returncode == 0
    try:
        submitted = babysit("run", f"--name={queued}", f"--command=touch {tmp_path}/ran", *TINY)
        assert submitted.returncode == 0 and "admission is drained" in submitted.stderr, submitted
        assert "admission is drained" in babysit("ping").stderr
        gate.open()
        assert finished(running)["status"] == "completed"  # running work goes on
        restart_daemon()  # and the drain outlives babysitd
        shown = status(queued)
        assert (shown["status"], shown["waiting_for"]) == ("queued", DRAINED), shown
        assert call("Capacity")["data"][0]["draining"] == {"type": "b", "data": True}
    finally:
        assert babysit("undrain").returncode == 0
    assert finished(queued)["status"] == "completed"
    assert (tmp_path / "ran").exists()
    assert "drained" not in babysit("ping").stderr


def test_a_paused_task_outlasts_its_kill_timeout_and_silence_and_completes_after_resume(
        daemon: str, task_name: str) -> None:
    # 9 s of steps under a 20 s kill_timeout: room for a slow guest to pause it before its deadline
    counter = "import time\nfor i in range(30):\n    print('step', i, flush=True); time.sleep(0.3)\n"
    run(task_name, f'{PY} "{counter}"', "--kill_timeout=20s", "--observability_interval=4s")
    wait_for(lambda: "step 1" in babysit("log", f"--name={task_name}").stdout, 30, "the first steps")
    paused_now = babysit("pause", f"--name={task_name}")
    assert paused_now.stdout.strip() == f"paused: {task_name}", paused_now
    paused = status(task_name)
    # the cgroup v2 freezer where the host has one (the VM tier), SIGSTOP on cgroup v1 (the session)
    expected = "freeze" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "SIGSTOP"
    assert (paused["status"], paused["paused_by"]) == ("running", expected), paused
    assert paused["paused_since"] and "paused" in babysit("list").stdout
    steps = babysit("log", f"--name={task_name}", "--tail=100").stdout.count("step")
    # past its 20 s kill_timeout (counted from its start) and 4 s observability interval, it is neither
    # stopped nor does it run
    started = at(paused["started_at"])
    wait_for(lambda: status(task_name)["status"] == "running" and time.time() - started > 22, 60,
             "22 s since its start")
    assert babysit("log", f"--name={task_name}", "--tail=100").stdout.count("step") == steps
    assert babysit("pause", f"--name={task_name}").returncode == 2  # already paused
    assert babysit("resume", f"--name={task_name}").stdout.strip() == f"resumed: {task_name}"
    result = finished(task_name)
    assert (result["status"], result["exit_code"]) == ("completed", 0), result
    # it ended past its kill_timeout, having run (its pause left out) less than that
    assert result["elapsed_s"] > 22 and result["paused_s"] > 2 and result["elapsed_s"] - result["paused_s"] < 20, result
    assert "paused_since" not in result


def test_a_pause_that_outlasts_the_backstop_is_ended_by_babysit_thawed_and_said_so(
        daemon: str, task_name: str, tmp_path: Path) -> None:
    # systemd cannot move RuntimeMaxSec (2 x kill_timeout + 60 s) on a running unit: a pause has that much room
    run(task_name, f'{PY} "{CHECKPOINTER}" {tmp_path}', "--kill_timeout=10s", "--stop_grace=30s")
    wait_for(lambda: "working" in babysit("log", f"--name={task_name}").stdout, 30, "the loop to start")
    assert babysit("pause", f"--name={task_name}").returncode == 0
    paused = status(task_name)
    assert at(paused["backstop_at"]) - at(paused["started_at"]) == pytest.approx(80, abs=0.01), paused
    result = finished(task_name, timeout=180)
    assert (result["status"], result["kill_reason"]) == ("killed", "timeout"), result
    assert result["kill_hint"].startswith("paused for "), result["kill_hint"]
    assert "RuntimeMaxSec" not in (result.get("detail") or ""), result  # babysit's stop, ahead of systemd's
    assert [s["why"] for s in result["signals"]] == ["stop: timeout"], result
    assert at(result["signals"][0]["at"]) < at(paused["backstop_at"]), result
    # thawed first, so its SIGTERM handler saved within its grace (systemd's backstop applies to a running
    # unit only, not to one already stopping)
    assert (tmp_path / "saved").read_text() == "ok" and result["exit_code"] == 0, result
    assert 60 < result["paused_s"] < 80 and "paused_since" not in result, result
