"""A burst: hundreds of tasks end at the same moment while many clients wait on them and read the list.

babysitd must keep its bus connection (back-pressure means waiting), answer every call, and every
waiter must get its result. The tasks block on a shared lock the test holds, so they all end when it
is released, not at a time the test guesses.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from babysit.cli.client import Client
from babysit.cli.waiting import Waiter
from tests.integration.conftest import BIN, babysit_units, daemon_pid, run_spec, systemctl_show, until
from tests.waiting import wait_event

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("daemon"), pytest.mark.timeout(600)]
TASKS = 300
LISTERS = 10
CLI_WAITERS = 10
LIGHT = {"estimated_cpu_cores": "0.005", "estimated_time": "10m"}  # all of them fit on 2 cores at once


def restarts() -> int:
    return int(systemctl_show("babysitd.service", "NRestarts")["NRestarts"])


async def submit_all(names: list[str], command: str, lanes: int = 4) -> None:
    """Submit over a few connections at once, as several users' shells would."""

    async def lane(chunk: list[str]) -> None:
        client = await Client.connect()
        try:
            for name in chunk:
                await client.submit(run_spec(name, command, **LIGHT), force=True)
        finally:
            client.close()

    await asyncio.gather(*(lane(names[i::lanes]) for i in range(lanes)))


async def lister(stop: asyncio.Event, latencies: list[float], errors: list[BaseException]) -> None:
    """List(all) in a loop until told to stop: the heaviest read a client can ask for."""
    client = await Client.connect()
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await client.call("List", "b", [True])
            except Exception as e:  # noqa: BLE001 (every error counts against the daemon)
                errors.append(e)
            latencies.append(time.monotonic() - started)
    finally:
        client.close()


async def pinger(stop: asyncio.Event, latencies: list[float]) -> None:
    """How long babysitd keeps another client waiting meanwhile (its loop is never blocked for long)."""
    client = await Client.connect()
    try:
        while not stop.is_set():
            started = time.monotonic()
            await client.call("Ping", autostart=False)
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.02)
    finally:
        client.close()


async def waiter(name: str, attached: Callable[[], None]) -> dict[str, Any]:
    client = await Client.connect()
    try:
        (result,) = await Waiter(client, on_attached=lambda _status: attached()).wait([name])
        return result
    finally:
        client.close()


@pytest.mark.asyncio
async def test_a_burst_of_task_ends_under_many_waiters_and_readers(tmp_path: Path, task_name: str,
                                                                    figure: Callable[[str], None]) -> None:
    pid, restarted = daemon_pid(), restarts()
    lock_path = tmp_path / "release"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # every task waits for this lock, then ends
        await burst(lock, lock_path, f"{task_name}-", figure)
    assert (daemon_pid(), restarts()) == (pid, restarted), "babysitd restarted during the burst"
    assert not babysit_units(task_name)


async def burst(lock: IO[str], lock_path: Path, prefix: str, figure: Callable[[str], None]) -> None:
    names = [f"{prefix}{i}" for i in range(TASKS)]
    await submit_all(names, f"echo waiting; flock -s {lock_path} true; echo released")

    async def all_running() -> bool:
        client = await Client.connect()
        try:
            (tasks,) = await client.call("List", "b", [False])
        finally:
            client.close()
        states = {t["name"]: t["status"] for t in tasks}
        return all(states.get(n) == "running" for n in names)

    await until(all_running, 180, f"{TASKS} tasks running")

    attached = 0
    all_attached = asyncio.Event()

    def one_more() -> None:
        nonlocal attached
        attached += 1
        if attached == TASKS:
            all_attached.set()

    waiters = [asyncio.ensure_future(waiter(n, one_more)) for n in names]
    cli_waiters = [await asyncio.create_subprocess_exec(str(BIN / "babysit"), "wait", f"--name={n}",
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
                   for n in names[:CLI_WAITERS]]
    stop, latencies, errors = asyncio.Event(), [], []
    listers = [asyncio.ensure_future(lister(stop, latencies, errors)) for _ in range(LISTERS)]
    pings: list[float] = []
    listers.append(asyncio.ensure_future(pinger(stop, pings)))
    await wait_event(all_attached.wait(), 120, f"{TASKS} waiters attached")

    released = time.monotonic()
    fcntl.flock(lock, fcntl.LOCK_UN)
    results = await wait_event(asyncio.gather(*waiters), 240, "every waiter's result")
    all_results_s = time.monotonic() - released
    cli_out = [await wait_event(p.communicate(), 120, "babysit wait") for p in cli_waiters]
    stop.set()
    await asyncio.gather(*listers)

    assert [r["status"] for r in results] == ["completed"] * TASKS, [r for r in results if r["status"] != "completed"]
    assert [r["name"] for r in results] == names
    for process, (out, err) in zip(cli_waiters, cli_out):
        assert process.returncode == 0, err.decode()
        assert json.loads(out)["status"] == "completed"
    assert errors == []
    figure(f"burst: {TASKS} tasks ended at once, {TASKS} waiters + {CLI_WAITERS} CLI waiters all got their result "
           f"{all_results_s:.2f} s after the release; {len(latencies)} List(all) calls from {LISTERS} clients, "
           f"p50 {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; Ping meanwhile "
           f"p50 {statistics.median(pings) * 1000:.1f} ms, max {max(pings) * 1000:.0f} ms; "
           f"0 errors, 0 daemon restarts (python {sys.version_info.major}.{sys.version_info.minor})")
