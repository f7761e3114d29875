"""Hosts as users have them, bent for real in the guest (root's to bend): a journal kept only in RAM, and a
wall clock that jumps (NTP, a user's `date -s`, a laptop's resume). A task is judged on its own time, and
no task is ever killed as stalled because babysit could not read what it printed."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from babysit.core.protocol import DAEMON_UNIT
from tests.integration.conftest import babysit, status
from tests.waiting import wait_for

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("daemon")]
DROP_IN = "/etc/systemd/journald.conf.d/zz-babysit-vm-test.conf"
CHATTY = "for i in $(seq 12); do echo line $i; sleep 1; done"


def sudo(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(["sudo", *argv], input=stdin, text=True, check=True, timeout=120)


def restart_babysitd() -> None:
    subprocess.run(["systemctl", "--user", "restart", DAEMON_UNIT], check=True, timeout=120)
    wait_for(lambda: babysit("ping").returncode == 0, 60, "babysitd")


@contextlib.contextmanager
def volatile_journal() -> Iterator[None]:
    """journald keeps everything in /run, in system-wide files a user may not read (then babysitd restarts)."""
    sudo("mkdir", "-p", "/etc/systemd/journald.conf.d")
    sudo("tee", DROP_IN, stdin="[Journal]\nStorage=volatile\n")
    sudo("systemctl", "restart", "systemd-journald")
    try:
        restart_babysitd()
        yield
    finally:
        sudo("rm", "-f", DROP_IN)
        sudo("systemctl", "restart", "systemd-journald")
        sudo("journalctl", "--flush")
        restart_babysitd()


@contextlib.contextmanager
def clock_stepped(seconds: int) -> Iterator[None]:
    """The wall clock jumps by `seconds` (back where it was, give or take, afterwards)."""
    sudo("date", "-s", f"{seconds:+d} seconds")
    try:
        yield
    finally:
        sudo("date", "-s", f"{-seconds:+d} seconds")


@pytest.mark.timeout(600)
def test_with_a_volatile_journal_output_is_still_seen_and_no_task_is_killed_for_it(task_name: str) -> None:
    """Seen in review: with Storage=volatile a task printing every second was killed as observability_stall,
    and `babysit log` showed none of its lines."""
    with volatile_journal():
        pong = babysit("ping")
        assert "journald keeps no output this user can read back" in pong.stderr, pong.stderr
        started = babysit("run", f"--name={task_name}", f"--command={CHATTY}", "--observability_interval=4s")
        assert started.returncode == 0, started.stderr
        done = babysit("wait", f"--name={task_name}", timeout=120)
        assert (done.returncode, json.loads(done.stdout)["status"]) == (0, "completed"), done.stdout
        assert babysit("log", f"--name={task_name}", "--tail=20").stdout.splitlines() == [
            f"line {i}" for i in range(1, 13)]
        assert status(task_name)["log_cmd"].startswith("cat ")


@pytest.mark.timeout(600)
def test_a_wall_clock_step_forward_neither_warns_nor_kills_a_task_within_its_estimates(task_name: str) -> None:
    """Seen in review: stepping the clock forward 30 minutes gave a 40-second task an `elapsed` warning."""
    started = babysit("run", f"--name={task_name}", f"--command={CHATTY}", "--estimated_time=40s",
                      "--observability_interval=6s")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: status(task_name)["status"] == "running", 60, "the task to run")
    with clock_stepped(30 * 60):
        done = babysit("wait", f"--name={task_name}", timeout=120)
    result = json.loads(done.stdout)
    assert (done.returncode, result["status"]) == (0, "completed"), done.stdout
    assert "runaway_risk" not in done.stderr, done.stderr
    assert not babysit("status", f"--name={task_name}", "--json").stdout.count('"runaway_risk"')


@pytest.mark.timeout(600)
def test_a_wall_clock_step_back_still_stops_a_silent_task_within_its_interval(task_name: str) -> None:
    """Seen in review: stepping the clock back an hour left a silent task with a 10 s interval unkilled for
    two minutes."""
    started = babysit("run", f"--name={task_name}", "--command=echo once; exec sleep 600",
                      "--observability_interval=10s")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: status(task_name)["status"] == "running", 60, "the task to run")
    begun = time.monotonic()
    with clock_stepped(-3600):
        done = babysit("wait", f"--name={task_name}", timeout=120)
        took = time.monotonic() - begun
    result = json.loads(done.stdout)
    assert (result["status"], result["kill_reason"]) == ("killed", "observability_stall"), result
    assert took < 10 + 15, took  # its interval, a stop grace and a tick or two
