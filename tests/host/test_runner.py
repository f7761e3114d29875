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


def runner_leftovers() -> list[str]:
    """Runner cgroups still on the host, and processes still in one."""
    left = [str(p) for h in cgroups.current_hierarchies() for p in h.dir.glob(f"{CHILD_PREFIX}*")]
    for proc in Path("/proc").glob("[0-9]*/cgroup"):
        try:
            if CHILD_PREFIX in proc.read_text():
                left.append(f"process {proc.parent.name}")
        except OSError:
            pass  # the process ended while we looked
    return left


@pytest.fixture
def pid1_cgroups() -> Iterator[str]:
    before = Path("/proc/1/cgroup").read_text()
    yield before
    assert "init.scope" not in Path("/proc/1/cgroup").read_text()
    assert Path("/proc/1/cgroup").read_text() == before


def test_two_runs_in_a_row_leave_nothing(pid1_cgroups: str) -> None:
    for _ in range(2):
        done = subprocess.run([*RUNNER, "--", "systemctl", "--user", "is-system-running"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "running"
        assert "host clean" in done.stderr
        assert runner_leftovers() == []


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
    assert runner_leftovers() == []


def test_timeout_ends_the_session(pid1_cgroups: str) -> None:
    done = subprocess.run([*RUNNER, "--timeout", "3", "--", "sleep", "600"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 124
    assert runner_leftovers() == []


def test_inner_part_refuses_outside_its_namespaces() -> None:
    config = {"host_cgroupns": os.readlink("/proc/self/ns/cgroup"), "user": "nobody", "hierarchies": []}
    done = subprocess.run([*RUNNER, "--inner", json.dumps(config)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "refusing to start systemd --user" in done.stderr


def test_failure_status_is_passed_through(pid1_cgroups: str) -> None:
    done = subprocess.run([*RUNNER, "--", "sh", "-c", "exit 7"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 7
    assert runner_leftovers() == []
