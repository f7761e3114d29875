"""The session runner leaves the host as it found it: no process, no cgroup, PID 1 untouched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.session import cgroups
from tests.session.run import CHILD_PREFIX

pytestmark = pytest.mark.host

RUNNER = [sys.executable, str(Path(__file__).resolve().parents[1] / "session" / "run.py")]


def runner_leftovers(runner_pid: int) -> list[str]:
    """This runner's cgroups still on the host, and processes still in any runner cgroup."""
    left = [str(h.dir / f"{CHILD_PREFIX}{runner_pid}") for h in cgroups.current_hierarchies()
            if (h.dir / f"{CHILD_PREFIX}{runner_pid}").exists()]
    for proc in Path("/proc").glob("[0-9]*/cgroup"):
        try:
            if CHILD_PREFIX in proc.read_text():
                left.append(f"process {proc.parent.name}")
        except OSError:
            pass  # the process ended while we looked
    return left


def run(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the runner to its end; the result and the runner's PID, which names its cgroups."""
    with subprocess.Popen([*RUNNER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as runner:
        out, err = runner.communicate(timeout=timeout)
    return subprocess.CompletedProcess(runner.args, runner.returncode, out, err), runner.pid


@pytest.fixture
def pid1_cgroups() -> Iterator[str]:
    before = Path("/proc/1/cgroup").read_text()
    yield before
    assert "init.scope" not in Path("/proc/1/cgroup").read_text()
    assert Path("/proc/1/cgroup").read_text() == before


def test_two_runs_in_a_row_leave_nothing(pid1_cgroups: str) -> None:
    for _ in range(2):
        done, pid = run("--", "systemctl", "--user", "is-system-running")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "running"
        assert "host clean" in done.stderr
        assert runner_leftovers(pid) == []


def test_ctrl_c_ends_the_session_and_cleans_up(pid1_cgroups: str) -> None:
    # A terminal's Ctrl-C sends SIGINT to the whole foreground process group.
    with subprocess.Popen([*RUNNER, "--", "sleep", "600"], stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as runner:
        assert runner.stderr is not None
        for line in runner.stderr:  # the runner says when the command starts
            if line.startswith("session: running"):
                break
        os.killpg(runner.pid, signal.SIGINT)
        assert runner.wait(timeout=60) != 0
        assert "host clean" in runner.stderr.read()
    assert runner_leftovers(runner.pid) == []


def test_timeout_ends_the_session(pid1_cgroups: str) -> None:
    done, pid = run("--timeout", "3", "--", "sleep", "600", timeout=60)
    assert done.returncode == 124
    assert runner_leftovers(pid) == []


def test_inner_part_refuses_outside_its_namespaces() -> None:
    config = {"host_cgroupns": os.readlink("/proc/self/ns/cgroup"), "user": "nobody", "hierarchies": []}
    done = subprocess.run([*RUNNER, "--inner", json.dumps(config)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "refusing to start systemd --user" in done.stderr


def test_failure_status_is_passed_through(pid1_cgroups: str) -> None:
    done, pid = run("--", "sh", "-c", "exit 7")
    assert done.returncode == 7
    assert runner_leftovers(pid) == []


def test_cgroups_of_a_runner_that_died_are_removed(pid1_cgroups: str) -> None:
    dead = ended_pid()
    stale = [cgroups.make_child(h.dir, f"{CHILD_PREFIX}{dead}", h.is_cpuset) for h in cgroups.current_hierarchies()]
    (stale[0] / "user.slice").mkdir()
    done, pid = run("--", "true")
    assert done.returncode == 0, done.stderr
    assert [p for p in stale if p.exists()] == []
    assert runner_leftovers(pid) == []


def ended_pid() -> int:
    """The PID of a process that has ended (as a runner killed by a power loss)."""
    with subprocess.Popen(["true"]) as ended:
        ended.wait()
    return ended.pid
