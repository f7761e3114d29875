"""Secrets do not outlive their run: the caller's environment reaches the task, and once the run has ended
no byte of babysit's state holds it, nor any reply or log line."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from babysit.common.config import Config
from babysit.daemon.state_dir import host_dir
from tests.integration.conftest import babysit, daemon_log_since

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("daemon")]


def test_a_secret_in_the_callers_environment_leaves_no_trace_once_the_run_ends(task_name: str) -> None:
    """Seen in review: a canary value in the caller's environment was still in the state directory's files
    after its run had ended (the record kept it for a year, and the WAL and free pages after that)."""
    canary = f"canary-{uuid.uuid4().hex}"
    since = time.time()
    started = babysit("run", f"--name={task_name}", '--command=[ -n "$API_KEY" ] && echo got-it',
                      env={**os.environ, "API_KEY": canary})
    assert started.returncode == 0, started.stderr
    done = babysit("wait", f"--name={task_name}")
    assert done.returncode == 0, done.stdout + done.stderr  # the task had it
    state = host_dir(Config())
    files = [p for p in state.rglob("*") if p.is_file()]
    assert files and not [p for p in files if canary.encode() in p.read_bytes()]
    shown = [babysit(*verb).stdout for verb in (("status", f"--name={task_name}", "--json"), ("list", "--all", "--json"),
                                                 ("history", f"--name={task_name}", "--json"))]
    assert not [text for text in [*shown, daemon_log_since(since)] if canary in text]
    assert state.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o077 == 0 for p in files if p.parent == state), [
        (p, oct(p.stat().st_mode)) for p in files]
