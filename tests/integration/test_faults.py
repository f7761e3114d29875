"""Faults around running tasks: a SIGKILL storm on babysitd, daemon-reload, a journald restart.

Whatever happens to the daemon, every task ends exactly once with its correct result, none is lost
and none is left running.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from dbus_fast import Variant

from babysit.cli.client import Client
from babysit.core.protocol import DAEMON_UNIT, State
from tests.integration.conftest import babysit, babysit_units, daemon_pid, run_spec, session_control, task_output, until
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.usefixtures("daemon")]


def expected_exit(i: int) -> int:
    return i % 3


def command(name: str, i: int) -> str:
    return f"sleep 0.{i % 7}; echo out-{name}; exit {expected_exit(i)}"


async def submit(client: Client, name: str, command: str) -> None:
    """As `babysit run --force` does: retried with the same request id when babysitd dies mid-call."""
    assert await client.submit(run_spec(name, command), force=True) == name


def retried_runs(prefix: str) -> int:
    """Runs whose first answer was lost, and that babysitd recognised when they came again."""
    out = subprocess.run(["journalctl", "--user", "-u", DAEMON_UNIT, "-o", "cat", "--no-pager",
                          f"--grep=Run of {prefix}.* retried by its client"], capture_output=True, text=True).stdout
    return len(out.splitlines())


def new_daemon(killed: list[int]) -> int:
    """The PID of a running babysitd not killed yet, or 0."""
    pid = daemon_pid()
    return pid if pid not in (0, *killed) else 0


async def all_terminal(client: Client, names: list[str]) -> list[dict[str, Any]] | None:
    (runs,) = await client.call("List", "b", [True])
    mine = [r for r in runs if r["name"] in set(names)]
    return mine if sum(State(r["status"]).terminal for r in mine) == len(names) else None


def journal_lines(marker: str) -> Counter[str]:
    out = subprocess.run(["journalctl", "--user", "-o", "cat", "--no-pager", f"--grep={marker}"],
                         capture_output=True, text=True).stdout
    return Counter(line for line in out.splitlines() if line.startswith("out-"))


def check_results(prefix: str, names: list[str], runs: list[dict[str, Any]]) -> None:
    """Exactly one correct terminal result per task, each ran once, and no unit left behind."""
    counts = Counter(r["name"] for r in runs)
    assert {n: c for n, c in counts.items() if c != 1} == {}, f"duplicated: {[r for r in runs if counts[r['name']] > 1]}"
    assert set(counts) == set(names), f"lost: {set(names) - set(counts)}"
    for r in runs:
        i = int(r["name"].rsplit("-", 1)[1])
        want = (State.COMPLETED, 0) if expected_exit(i) == 0 else (State.FAILED, expected_exit(i))
        assert (r["status"], r.get("exit_code")) == want, r
    printed = journal_lines(prefix)
    assert printed == Counter(f"out-{n}" for n in names), "a task ran twice or not at all"
    wait_for(lambda: not babysit_units(prefix), 30, "no unit left behind")


@pytest.mark.timeout(300)
async def test_a_sigkill_storm_loses_and_duplicates_nothing(figure: Callable[[str], None]) -> None:
    prefix = f"storm-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i}" for i in range(100)]
    client = await Client.connect()
    kills: list[int] = []

    async def stream(lane: int) -> None:
        for i in range(lane, len(names), 4):
            await submit(client, names[i], command(names[i], i))
            await asyncio.sleep(random.uniform(0, 0.4))  # tasks stream in, not all at once

    async def storm() -> None:
        for _ in range(10):
            await asyncio.sleep(random.uniform(0.3, 1.5))
            pid = await until(lambda: asyncio.to_thread(new_daemon, kills), 60, "a live babysitd")
            os.kill(pid, signal.SIGKILL)
            kills.append(pid)

    started = time.monotonic()
    await asyncio.gather(*(stream(lane) for lane in range(4)), storm())
    runs = await until(lambda: all_terminal(client, names), 120, "every task to end")
    client.close()
    check_results(prefix, names, runs)
    figure(f"storm: {len(names)} tasks, {len(kills)} SIGKILLs of babysitd, "
          f"{retried_runs(prefix)} Run calls retried after a lost answer, all terminal after "
          f"{time.monotonic() - started:.1f}s")


@pytest.mark.timeout(120)
async def test_daemon_reload_while_tasks_run_loses_nothing() -> None:
    prefix = f"reload-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i}" for i in range(6)]
    client = await Client.connect()
    for i, name in enumerate(names):
        await submit(client, name, f"sleep 1.{i}; echo out-{name}; exit {expected_exit(i)}")
    for _ in range(3):
        subprocess.run(["systemctl", "--user", "daemon-reload"], check=True, timeout=60)
    runs = await until(lambda: all_terminal(client, names), 60, "every task to end")
    client.close()
    check_results(prefix, names, runs)
    assert babysit("ping").returncode == 0


@pytest.mark.timeout(120)
async def test_a_journald_restart_loses_no_line_and_stalls_nothing() -> None:
    prefix = f"jrestart-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i}" for i in range(3)]
    client = await Client.connect()
    for name in names:  # 80 numbered lines over 4 s; the stall watchdog would fire after 3 s of silence
        command = f"for i in $(seq 80); do echo {name}-$i; sleep 0.05; done; echo out-{name}"
        await client.submit({**run_spec(name, command), "observability_interval": Variant("s", "3s")}, force=True)
    # mid-output: a stream journald accepted a moment ago may not be in the fd store yet, on a host too
    await until(lambda: asyncio.to_thread(all_printing, names), 30, "the tasks to print")
    await asyncio.to_thread(session_control, "restart-journald")
    runs = await until(lambda: all_terminal(client, names), 60, "every task to end")
    client.close()
    for r in runs:
        assert (r["status"], r.get("exit_code")) == ("completed", 0), r
    for name in names:
        assert task_output(name) == [f"{name}-{i}" for i in range(1, 81)] + [f"out-{name}"]


def all_printing(names: list[str]) -> bool:
    return all(f"{name}-5" in task_output(name) for name in names)

