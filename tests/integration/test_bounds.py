"""Bounded state: the largest store babysit allows starts within babysitd's MemoryMax, and what goes past
the bounds is refused in one line."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from babysit.common.config import Config
from babysit.core.task import MAX_COMMAND_BYTES, MAX_ENV_BYTES, Host, derive_caps, spec_from_wire
from babysit.daemon.state_dir import STORE_FILE, host_key
from babysit.daemon.store import Store
from tests.integration.conftest import babysit, daemon_pid, manager_environment, restart_daemon, rss_bytes

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("daemon")]
MiB = 1 << 20
MEMORY_MAX = 512 * MiB  # units/babysitd.service


def fill_store(path: Path, count: int) -> None:
    """`count` queued tasks, each with the longest command and the largest environment babysit takes, and
    estimates no host fits (so none starts)."""
    host = Host(mem_bytes=64 << 30, cores=16.0)
    command = ": " + "x" * (MAX_COMMAND_BYTES - 2)
    env = {f"VARIABLE_{i:03d}": "v" * (MAX_ENV_BYTES // 64 - 16) for i in range(64)}
    db = Store(path)
    for i in range(count):
        spec = spec_from_wire({"name": f"big-{i}", "command": command, "env": env, "cwd": "/"}, host)
        caps = derive_caps(spec, host)
        db.add(replace(spec, estimates=replace(spec.estimates, mem_bytes=1 << 50)), caps, time.time())
    db.close()


@pytest.mark.timeout(600)
def test_the_largest_store_starts_within_memory_max(tmp_path: Path, figure: Callable[[str], None]) -> None:
    """Seen in review: a store of ~20,000 queued tasks had babysitd OOM-killed at every start, for good."""
    most = int(Config().max_live_tasks)
    state = tmp_path / "state"
    fill_store(state / "babysit" / host_key() / STORE_FILE, most)
    with manager_environment("XDG_STATE_HOME", str(state)):
        started = time.monotonic()
        restart_daemon()
        took = time.monotonic() - started
        pid = daemon_pid()
        rss = rss_bytes(pid)
        figure(f"babysitd with the largest store ({most} queued tasks, {MAX_COMMAND_BYTES >> 10} KiB commands, "
               f"{MAX_ENV_BYTES >> 10} KiB environments): up in {took:.1f} s, RSS {rss / MiB:.0f} MiB "
               f"of its MemoryMax {MEMORY_MAX / MiB:.0f} MiB")
        assert rss < MEMORY_MAX * 0.8, rss
        listed = babysit("list", "--json", timeout=120)  # a List of all of them, too
        assert listed.returncode == 0, listed.stderr
        refused = babysit("run", "--name=one-more", "--command=true")
        assert refused.returncode == 2 and "max_live_tasks" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert daemon_pid() == pid  # not OOM-killed and restarted meanwhile
    restart_daemon()  # on the usual state directory again


def test_a_command_or_environment_past_the_bounds_is_refused_in_one_line(task_name: str) -> None:
    long = babysit("run", f"--name={task_name}", f"--command=: {'x' * MAX_COMMAND_BYTES}")
    assert long.returncode == 2 and "put the script in a file" in long.stderr, long.stderr
    big_env = {**os.environ, "HUGE_VARIABLE": "v" * MAX_ENV_BYTES}
    refused = babysit("run", f"--name={task_name}", "--command=true", env=big_env)
    assert refused.returncode == 2 and "HUGE_VARIABLE" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
