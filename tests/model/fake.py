"""An executor in memory, and a babysitd on it that a test can run, end, fault, restart and kill.

The World is what outlives babysitd, as systemd's units do: the runs started, and how each ended. A
FakeExecutor is one babysitd's view of it, made anew at each restart. A SIGKILL is a Crashed raised at
a fault point: the daemon's coroutines are dropped, its store connection closed (what SQLite committed
stays, what was kept in memory is lost) and a new babysitd starts on the same store and World.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from babysit.common.config import Config
from babysit.core.protocol import KillReason, State
from babysit.core.gpus import Gpu
from babysit.core.task import Caps, GiB, Host, Outcome, Task, Usage
from babysit.daemon.babysitd import Babysitd
from babysit.daemon.store import Store
from babysit.executors.base import Capacity, Orphan, Reading, Reporting, RunEvents, StartRefused

GPUS = tuple(Gpu(i, f"GPU-fake-{i}", "Stand-in", i, 16 * GiB, 0) for i in range(2))
HOST = Host(mem_bytes=8 * GiB, cores=4.0, gpus=GPUS)


class Crashed(BaseException):
    """babysitd was SIGKILLed here (a BaseException: no `except Exception` of the daemon's catches it)."""


@dataclass
class Unit:
    """One run as its executor knows it."""

    task: Task  # as it was handed over
    started_at: float
    ended: Outcome | None = None
    stopping: bool = False  # a stop was asked for; the test says when it ends
    released: bool = False
    told: bool = False  # whether a babysitd was told of its end


@dataclass
class World:
    host: Host = HOST
    units: dict[int, Unit] = field(default_factory=dict)  # by run id
    starts: list[int] = field(default_factory=list)  # run ids, in the order they started
    faults: set[str] = field(default_factory=set)  # armed fault points: "start", "release", "stop"
    refuse: set[str] = field(default_factory=set)  # names whose start the executor refuses
    crashed: bool = False
    on_start: Callable[[Task], None] = lambda task: None  # the model's checks, as a run starts

    def crash_if_armed(self, point: str) -> None:
        if point in self.faults:
            self.faults.discard(point)
            self.crashed = True
            raise Crashed(point)

    def live_units(self) -> dict[int, Unit]:
        """Units not ended: what systemd would list as running."""
        return {run_id: unit for run_id, unit in self.units.items() if unit.ended is None}


class FakeExecutor(Reporting):
    kind = "fake"
    queues = False
    pressure_applies = False
    gpu_note = ""
    trouble: str | None = None

    def __init__(self, world: World) -> None:
        self.world = world
        self.host = world.host
        self.caps_missing: list[str] = []
        self.advice: list[str] = []
        self.dead = False

    def alive(self) -> None:
        if self.dead or self.world.crashed:
            raise Crashed("a babysitd that was killed does nothing more")

    async def open(self, daemon: RunEvents) -> None:
        self.events = daemon

    def capacity(self) -> Capacity:
        return Capacity(self.host, free_mem_bytes=self.host.mem_bytes, gpus=self.host.gpus)

    async def refresh(self) -> None:
        self.alive()

    async def start(self, task: Task) -> Task:
        self.alive()
        self.world.on_start(task)
        if task.name in self.world.refuse:
            raise StartRefused("refused by the fake executor")
        assert task.id not in self.world.units, f"run #{task.id} ({task.name}) started twice"
        self.world.units[task.id] = Unit(task, time.time())
        self.world.starts.append(task.id)
        self.world.crash_if_armed("start")  # started, and babysitd killed before it recorded so
        return task.with_(state=State.RUNNING, started_at=self.world.units[task.id].started_at)

    async def stop(self, task: Task) -> None:
        self.alive()
        await asyncio.sleep(0)
        self.world.crash_if_armed("stop")
        unit = self.world.units.get(task.id)
        if unit and unit.ended is None:
            unit.stopping = True

    async def signal(self, task: Task, signal: str) -> bool:
        self.alive()
        return task.id in self.world.live_units()

    async def hold(self, task: Task, held: bool) -> None:
        self.alive()

    async def pause(self, task: Task, paused: bool) -> str:
        self.alive()
        await asyncio.sleep(0)  # another verb, or an end, may come in between
        return "freeze"

    async def set_caps(self, task: Task, was: Caps) -> Caps:
        self.alive()
        await asyncio.sleep(0)
        return task.caps

    def read(self, task: Task) -> Reading | None:
        return None

    def waiting_for(self, task: Task) -> str | None:
        return None

    def last_output_at(self, task: Task) -> float | None:
        return None

    async def release(self, task: Task) -> None:
        self.alive()
        await asyncio.sleep(0)
        self.world.crash_if_armed("release")  # its end is stored; its name not yet free
        if task.id in self.world.units:
            self.world.units[task.id].released = True

    async def recover_queued(self, task: Task) -> Task:
        unit = self.world.units.get(task.id)
        return task.with_(state=State.RUNNING, started_at=unit.started_at) if unit else task

    async def adopt(self, task: Task) -> None:
        unit = self.world.units.get(task.id)
        if unit is None:
            await self.daemon.ended(task.id, Outcome(State.UNKNOWN, detail="no unit"), Usage())
        elif unit.ended is not None:
            unit.told = True
            await self.daemon.ended(task.id, unit.ended, usage_of(unit))

    async def unrecorded(self, known: set[str]) -> list[Orphan]:
        return []

    async def tidy(self, known: set[str]) -> None:
        pass

    async def supervise(self) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        pass


def usage_of(unit: Unit) -> Usage:
    """What a unit used: an OOM kill ends at its MemoryMax."""
    oom = unit.ended is not None and unit.ended.kill_reason == KillReason.OOM
    peak = unit.task.caps.memory_max_bytes if oom else unit.task.spec.estimates.mem_bytes // 2
    return Usage(mem_bytes=peak, peak_mem_bytes=peak, cpu_seconds=1.0, cpu_cores=0.5)


def outcome_of(task: Task, how: str) -> Outcome:
    """How a unit's end is judged (core.outcome.classify: a stop babysit asked for wins)."""
    if task.kill_requested:
        return Outcome(State.KILLED, None, 15, task.kill_requested)
    return {"completed": Outcome(State.COMPLETED, 0), "failed": Outcome(State.FAILED, 1),
            "oom": Outcome(State.KILLED, None, 9, KillReason.OOM, "the kernel's OOM killer ended it at MemoryMax")
            }[how]


class Life:
    """babysitd on a fake executor, over one store file, through restarts and crashes."""

    def __init__(self, path: Path, world: World | None = None, **settings: Any) -> None:
        self.path = path
        self.world = world or World()
        self.config = Config(**settings)
        self.daemon: Babysitd | None = None
        self.executor: FakeExecutor | None = None
        self.lives = 0

    @property
    def up(self) -> Babysitd:
        assert self.daemon is not None
        return self.daemon

    async def start(self) -> None:
        self.world.crashed = False
        self.executor = FakeExecutor(self.world)
        self.daemon = Babysitd(self.executor, Store(self.path, busy_timeout_s=0.1), self.config, [])
        self.lives += 1
        try:
            await self.daemon.start()
        except Crashed:
            pass
        await self.settle()

    async def settle(self) -> None:
        """Let everything babysitd started beside the loop run to its end; restart it if it was killed."""
        for _ in range(10_000):
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
            if not others and not self.world.crashed:
                return
            if self.world.crashed:
                await self.kill()
                await self.start()
                return
            await asyncio.sleep(0)
        raise AssertionError("babysitd's background work never ended")

    async def kill(self) -> None:
        """SIGKILL: nothing more of this babysitd runs, and what it kept in memory is gone."""
        assert self.executor and self.daemon
        self.executor.dead = True
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for other in others:
            other.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self.daemon.ledger.store.close()
        self.daemon = None

    async def restart(self) -> None:
        """A clean restart: babysitd stops between two requests, and starts again."""
        await self.settle()
        self.world.crashed = True
        await self.settle()

    async def call(self, work: Callable[[], Any]) -> Any:
        """A verb, as a client's request: a crash in it ends the request (the client sees an error)."""
        try:
            return await work()
        except Crashed:
            self.world.crashed = True
            return None
        finally:
            await self.settle()

    async def end(self, run_id: int, how: str) -> None:
        """A unit ends (completed, failed, oom) and its executor says so; then babysitd settles."""
        await self.call(lambda: self.ended(run_id, how))

    async def ended(self, run_id: int, how: str) -> None:
        """A unit ends and its executor says so, beside whatever else runs now."""
        unit = self.world.units[run_id]
        task = self.up.ledger.by_id(run_id) or unit.task
        unit.ended = outcome_of(task, how)
        unit.told = True
        await self.up.ended(run_id, unit.ended, usage_of(unit))
