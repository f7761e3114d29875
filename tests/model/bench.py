"""How long babysitd's requests hold its event loop at the largest inputs it accepts, on the fake executor:
each figure beside its floor (a `Ping` in the same run), as a ratio. It prints; it asserts nothing.

    .venv/bin/python -m tests.model.bench [--members 10000]

The promise (SPEC, "Scale does not depend on luck") is about 50 ms at most per request; the rows show
where babysit stands against it.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from babysit.core.task import MAX_ENV_BYTES
from tests.model.fake import Life


async def held(work: Callable[[], Awaitable[Any]]) -> float:
    """Seconds the longest stretch of `work` kept the loop from anything else (a ticker measures it)."""
    longest, running = 0.0, True

    async def ticker() -> None:
        nonlocal longest
        while running:
            before = time.perf_counter()
            await asyncio.sleep(0)
            longest = max(longest, time.perf_counter() - before)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        await work()
    finally:
        running = False
        await tick
    return longest


def wire(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "command": "true", "estimated_time": "1h", "estimated_mem_bytes": "1M",
            "estimated_cpu_cores": 0.0001, **fields}


async def main(members: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        life = Life(Path(directory) / "state.db", max_live_tasks=4 * members + 10)
        await life.start()
        s = life.up.scheduler

        async def ping() -> None:
            s.ping()

        floor = await held(ping)
        rows = [
            (f"Run of a sweep of {members}", lambda: s.run(wire("first", array=f"1-{members}"), True)),
            (f"Run of a sweep of {members} after it", lambda: s.run(wire("second", array=f"1-{members}",
                                                                         after="first"), True)),
            ("Status of a member waiting for the sweep", lambda: asyncio.sleep(0, s.status("second-7"))),
            (f"List of {2 * members} live tasks", lambda: collect(s.list_tasks(False))),
            (f"Run with the largest environment ({MAX_ENV_BYTES >> 10} KiB)",
             lambda: s.run(wire("env", env={f"V{i}": "v" * 8 for i in range(MAX_ENV_BYTES // 16)}), True)),
            (f"Kill of the sweep of {members}", lambda: s.kill("first")),
        ]
        print(f"| request | longest hold of the loop | floor ({'Ping'}) | ratio |\n| --- | --- | --- | --- |")
        for label, work in rows:
            took = await held(work)
            print(f"| {label} | {took * 1000:.1f} ms | {floor * 1000:.3f} ms | {took / floor:.0f}x |", flush=True)
        await life.kill()


async def collect(batches: Any) -> None:
    async for _ in batches:
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=10_000)
    asyncio.run(main(parser.parse_args().members))
