"""Load: many clients at once, and a task that floods the journal."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from dbus_fast import Variant

from babysit.cli.client import Client
from babysit.core.protocol import State
from tests.integration.conftest import BIN, babysit, run_spec, task_output, until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.usefixtures("daemon")]
CLIENTS, TASKS_PER_CLIENT, ADJUSTS_PER_CLIENT = 20, 5, 30
MiB = 1 << 20


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


@pytest.mark.timeout(240)
async def test_twenty_clients_in_parallel_lose_no_update(figure: Callable[[str], None]) -> None:
    prefix = f"conc-{uuid.uuid4().hex[:6]}"
    latencies: list[float] = []

    async def timed(client: Client, member: str, signature: str = "", body: list | None = None) -> Any:
        start = time.perf_counter()
        try:
            return await client.call(member, signature, body)
        finally:
            latencies.append(time.perf_counter() - start)

    async def one_client(c: int) -> dict[str, int]:
        """50 calls: submit its tasks, adjust them, list, look, kill; returns the last memory set per task."""
        client = await Client.connect()
        names = [f"{prefix}-{c}-{t}" for t in range(TASKS_PER_CLIENT)]
        last: dict[str, int] = {}
        try:
            for name in names:
                await timed(client, "Run", "a{sv}b", [run_spec(name, "sleep 120"), True])
            for k in range(ADJUSTS_PER_CLIENT):
                name = names[k % len(names)]
                last[name] = (16 + k) * MiB
                await timed(client, "Adjust", "sa{sv}", [name, {"estimated_mem_bytes": Variant("s", str(last[name]))}])
                if k % 6 == 0:
                    await timed(client, "List", "b", [False])
            for name in names:
                assert (await timed(client, "Status", "s", [name]))[0]["status"] in ("queued", "running")
                await timed(client, "Kill", "s", [name])
        finally:
            client.close()
        return last

    started = time.monotonic()
    results = await asyncio.gather(*(one_client(c) for c in range(CLIENTS)))
    elapsed = time.monotonic() - started
    assert len(latencies) == 1000

    checker = await Client.connect()

    async def all_killed() -> list[dict[str, Any]] | None:
        (runs,) = await checker.call("List", "b", [True])
        mine = [r for r in runs if r["name"].startswith(prefix)]
        return mine if len(mine) == CLIENTS * TASKS_PER_CLIENT and all(State(r["status"]).terminal for r in mine) else None

    runs = await until(all_killed, 120, "every task to be killed")
    checker.close()
    expected = {name: mem for last in results for name, mem in last.items()}
    for run in runs:
        assert (run["status"], run["kill_reason"]) == ("killed", "user"), run
        assert run["estimated_mem_bytes"] == expected[run["name"]], f"lost update of {run['name']}"
    figure(f"concurrency: {CLIENTS} clients, {len(latencies)} calls in {elapsed:.1f}s, latency p50 "
          f"{statistics.median(latencies) * 1000:.1f} ms, p99 {percentile(latencies, 99) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms")


FLOOD = """
import time
end, n = time.monotonic() + 5, 0
while time.monotonic() < end:
    for _ in range(100):
        print(f"line {n}")
        n += 1
print(f"total {n}")
"""


@pytest.mark.timeout(240)
async def test_a_log_flood_is_kept_whole_and_the_daemon_stays_responsive(
        tmp_path: Any, figure: Callable[[str], None]) -> None:
    name = f"flood-{uuid.uuid4().hex[:6]}"
    script = tmp_path / "flood.py"
    script.write_text(FLOOD)
    script.chmod(0o644)
    client = await Client.connect()
    assert babysit("run", f"--name={name}", f"--command=/usr/bin/python3 -u {script}", "--estimated_cpu_cores=1",
                   "--estimated_time=30s").returncode == 0
    with subprocess.Popen([str(BIN / "babysit"), "log", f"--name={name}", "--follow", "--tail=100000000"],
                          stdout=subprocess.PIPE, text=True) as follower:
        pings = []

        async def pinging() -> None:
            while True:
                start = time.perf_counter()
                await client.call("Ping")
                pings.append(time.perf_counter() - start)
                await asyncio.sleep(0.05)

        pinger = asyncio.get_running_loop().create_task(pinging())
        waited = await asyncio.to_thread(babysit, "wait", f"--name={name}", timeout=120)
        pinger.cancel()
        followed, _ = await asyncio.to_thread(follower.communicate, timeout=120)
    client.close()
    assert waited.returncode == 0, waited.stdout + waited.stderr
    journal = task_output(name)
    total = int(journal[-1].split()[1])
    expected = [f"line {i}" for i in range(total)] + [f"total {total}"]
    assert len(journal) == len(expected) and journal == expected, (
        f"the journal lost or reordered lines: {len(journal)} lines for {total}, first difference at "
        f"{next(i for i, (a, b) in enumerate(zip(journal, expected)) if a != b)}")
    assert followed.splitlines() == journal, "log --follow did not keep up"
    assert max(pings) < 0.1, f"slowest ping {max(pings) * 1000:.0f} ms"
    figure(f"flood: {total} lines in 5 s ({total / 5:.0f}/s), all in the journal and in log --follow; "
          f"{len(pings)} pings during it, p50 {statistics.median(pings) * 1000:.1f} ms, max {max(pings) * 1000:.1f} ms")
