"""Killing babysitd never kills a task; a new daemon re-adopts them and still reports how each ended."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from babysit.core.protocol import DAEMON_UNIT, unit_name
from tests.integration.conftest import Gate, babysit, daemon_pid, journal, systemctl_show
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("daemon")]
LIGHT = ["--estimated_cpu_cores=0.2", "--estimated_mem_bytes=128M"]  # several side by side on 2 cores


def sigkill_daemon() -> None:
    pid = daemon_pid()
    assert pid > 0
    os.kill(pid, signal.SIGKILL)


def test_tasks_outlive_a_killed_daemon(task_name: str, gate: Gate) -> None:
    long, short = f"{task_name}-long", f"{task_name}-short"
    # the long one runs until the test has seen it outlive the daemon, however slowly Python starts
    for name, command in ((long, gate.then("echo long-done")), (short, "sleep 0.5; echo short-done; exit 4")):
        started = babysit("run", f"--name={name}", f"--command={command}", *LIGHT)
        assert started.returncode == 0, started.stderr
    wait_for(lambda: systemctl_show(unit_name(long), "SubState")["SubState"] == "running", 30, "long running")

    sigkill_daemon()
    # keep it down (no restart by systemd, no activation) while the short task ends
    subprocess.run(["systemctl", "--user", "stop", DAEMON_UNIT], check=True)
    wait_for(lambda: systemctl_show(unit_name(short), "ActiveState")["ActiveState"] == "failed", 30,
             "the short task to end while no daemon runs")
    assert systemctl_show(unit_name(long), "SubState")["SubState"] == "running"
    gate.open()

    # the next call activates a new daemon, which adopts both
    waited = babysit("wait", f"--name={short}")
    result = json.loads(waited.stdout)
    assert (waited.returncode, result["status"], result["exit_code"]) == (1, "failed", 4)
    waited = babysit("wait", f"--name={long}")
    assert (waited.returncode, json.loads(waited.stdout)["status"]) == (0, "completed")
    assert "long-done" in journal(long)


def test_wait_survives_a_daemon_restart_by_systemd(task_name: str) -> None:
    assert babysit("run", f"--name={task_name}", "--command=sleep 3; echo done", *LIGHT).returncode == 0
    with subprocess.Popen([*babysit_argv(), "wait", f"--name={task_name}"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as waiter:
        wait_for(lambda: daemon_pid() > 0, 30, "daemon")
        before = daemon_pid()
        sigkill_daemon()  # Restart=always brings it back
        wait_for(lambda: daemon_pid() not in (0, before), 30, "a restarted daemon")
        out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert json.loads(out)["status"] == "completed"


def babysit_argv() -> list[str]:
    from tests.integration.conftest import BIN

    return [str(BIN / "babysit")]
