"""Where tasks run: what the scheduler asks of the thing that starts, watches and stops a task's processes.

The daemon (babysit.daemon) owns admission, the queue, the kill policy, the store and the D-Bus API.
An executor owns a run's processes: systemd units on this host (executors.systemd, the default) or jobs
on a Slurm cluster (executors.slurm). Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from babysit.core.capacity import Reservation
from babysit.core.gpus import Gpu, GpuUse
from babysit.core.task import Caps, Host, Outcome, Task, TaskSpec, Usage


@dataclass(frozen=True)
class Reading:
    """A running task's usage as its executor reads it now."""

    mem_bytes: int
    peak_mem_bytes: int | None
    cpu_seconds: float
    gpu: GpuUse | None = None  # what its processes hold on its GPUs, for a task given some


@dataclass(frozen=True)
class Capacity:
    """What admission weighs a task against."""

    host: Host  # the room babysit may hand out
    free_mem_bytes: int
    # what is held already, where the executor knows it (a cluster: what its jobs were given, other users'
    # included); None on one host, where babysit's running tasks hold their estimates (a task below its
    # estimate may still grow into it)
    held: tuple[Reservation, ...] | None = None
    gpus: tuple[Gpu, ...] | None = None  # the host's GPUs now; None: a cluster's, its scheduler's to count


@dataclass(frozen=True)
class Orphan:
    """A run found running that the store has no record of: enough to record it again."""

    spec: TaskSpec
    caps: Caps  # as they are enforced now
    run_id: int  # the id it was started under
    started_at: float


class StartRefused(Exception):
    """The executor could not start a task; the message says why, for its result."""


class StartDeferred(Exception):
    """The executor cannot take a task now (its controller does not answer): the task stays queued and is
    handed over again later; the message says why."""


class RunEvents(Protocol):
    """What the daemon offers its executor: the record of a run, and a handler per transition it reports."""

    def task(self, task_id: int) -> Task | None:
        """The current record of a live run."""

    def running(self) -> list[Task]:
        """The runs babysit's records say are running (to check against what the executor knows)."""

    def named(self, name: str) -> Task | None:
        """The live run of a task name."""

    def members(self, task: Task) -> list[Task]:
        """The members of a sweep member's sweep still in babysit's queue and not held, first attempts, by index
        (an executor that runs a sweep as one job submits them together)."""

    def started(self, task_id: int, at: float, gpus: tuple[str, ...] = ()) -> None:
        """A run that waited in the executor's own queue has started (on these GPUs, as the executor names
        them)."""

    def sample_now(self, task_id: int) -> None:
        """Read the run's usage at once (the kernel is about to take it away)."""

    async def ended(self, task_id: int, outcome: Outcome, usage: Usage) -> None:
        """A run is over; `usage` holds its final figures."""


class Reporting:
    """What every executor keeps of the daemon it reports to, once open() has given it."""

    events: RunEvents | None = None

    @property
    def daemon(self) -> RunEvents:
        assert self.events is not None, "open() comes first"
        return self.events


class Executor(Protocol):
    """Starts, watches and stops the processes of runs."""

    kind: str  # "systemd" or "slurm", as the config names it
    host: Host  # what per-task caps are shares of
    queues: bool  # whether tasks that do not fit wait in the executor (Slurm) rather than in babysit's queue
    pressure_applies: bool  # whether babysit watches the host's free memory and stops its own culprits
    caps_missing: list[str]  # why caps cannot be applied, with the fix: `run` refuses then
    advice: list[str]  # what else does not hold here, with the fix
    gpu_note: str  # the GPUs tasks can be given, or why none (`babysit ping` says it)
    # why the executor cannot be reached now (a Slurm controller that does not answer), None when it can:
    # ping and status say it, `run` refuses meanwhile, and queued tasks wait
    trouble: str | None

    async def open(self, daemon: RunEvents) -> None:
        """Start listening for changes, before any snapshot is taken."""

    def capacity(self) -> Capacity:
        """The room there is now (cheap: called for every decision and every status)."""

    async def refresh(self) -> None:
        """Bring capacity() up to date before a decision that must be fresh (a new task's admission)."""

    async def start(self, task: Task) -> Task:
        """Start a run; the task as it is then (RUNNING, or still QUEUED in the executor's own queue).

        Raises StartRefused, or StartDeferred.
        """

    async def stop(self, task: Task) -> None:
        """A graceful stop: the task's stop signal (SIGTERM), then SIGKILL after its grace."""

    async def signal(self, task: Task, signal: str) -> bool:
        """Send a running task's processes a signal (a warning); whether it could be sent."""

    async def hold(self, task: Task, held: bool) -> None:
        """Hold back, or release, a task waiting in the executor's own queue (babysit's own needs nothing)."""

    async def pause(self, task: Task, paused: bool) -> str:
        """Freeze a running task, and how ("freeze", "SIGSTOP"); or thaw one paused as task.paused_by says.
        Raises InvalidArgument where tasks cannot be paused."""

    async def set_caps(self, task: Task, was: Caps) -> Caps:
        """Apply a running task's changed caps and estimates; the caps in force afterwards."""

    def read(self, task: Task) -> Reading | None:
        """The run's usage now; None when there is nothing to read yet."""

    def waiting_for(self, task: Task) -> str | None:
        """What a task in the executor's own queue waits for, in its words (None: babysit's queue says)."""

    def last_output_at(self, task: Task) -> float | None:
        """When the run last wrote a line, on time.monotonic()'s clock, if it has."""

    async def release(self, task: Task) -> None:
        """Forget a run whose result is stored, so its name can run again."""

    async def recover_queued(self, task: Task) -> Task:
        """A run recorded as queued that the last daemon may have started just before it stopped."""

    async def adopt(self, task: Task) -> None:
        """Watch a run that was running when the last daemon stopped (it may have ended meanwhile)."""

    async def unrecorded(self, known: set[str]) -> list[Orphan]:
        """Runs going on that no record knows (the records were lost): those babysit can record again; an
        executor that cannot describe them ends them instead."""

    async def tidy(self, known: set[str]) -> None:
        """Let go of what finished runs left behind, now that their results are stored."""

    async def supervise(self) -> None:
        """Its own loop, for changes nothing pushes to babysit; it never returns."""

    async def close(self) -> None:
        """Stop watching (the daemon stops; the runs go on)."""
