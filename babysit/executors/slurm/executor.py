"""The Slurm executor: each run is a batch job on a cluster, and Slurm is the queue.

Slurm pushes nothing to a client, so one loop asks it once a tick: `squeue` (and `sacct`, for jobs it
has forgotten) for the jobs' states, `sstat` for the running ones' usage, `sinfo` for the room. The scheduler's
policy (runaway_risk, the 2x kills, stalls, kill_timeout) works on those figures as on one host; the
memory cap and the backstop are Slurm's own (`--mem`, `--time`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from dataclasses import replace
from pathlib import Path

from babysit.common import failpoints
from babysit.common.config import Config
from babysit.core.capacity import Reservation
from babysit.core.protocol import State, unit_name
from babysit.core.task import Caps, Host, Job, Outcome, Task
from babysit.executors.base import Capacity, Orphan, Reading, RunEvents, StartRefused
from babysit.executors.slurm import commands as slurm
from babysit.executors.slurm.commands import Slurm, SlurmError
from babysit.executors.slurm.rounds import PENDING, Rounds, Tracked

log = logging.getLogger("babysitd")
PRESSURE_NOTE = ("host memory pressure is not watched with executor = \"slurm\": each job runs within its own "
                 "--mem on the cluster, which Slurm enforces")


def run_comment(run_id: int, origin: str) -> str:
    """The job's --comment: which run it is and which babysitd submitted it, for a daemon that restarted
    before it noted the job's id (several login nodes may each run one for the same user)."""
    return f"babysit run #{run_id} from {origin}"


def job_name(task_name: str) -> str:
    """The Slurm job name of a task: the same as its unit would have, without `.service`."""
    return unit_name(task_name).removesuffix(".service")


def job_cpus(task: Task) -> int:
    """--cpus-per-task: the CPU estimate in whole CPUs."""
    return max(1, math.ceil(task.spec.estimates.cpu_cores - 1e-9))


def job_caps(caps: Caps, cpus: int) -> Caps:
    """The caps as Slurm enforces them: --mem in whole MiB, whole CPUs, --time in whole minutes."""
    return replace(caps, memory_max_bytes=math.ceil(caps.memory_max_bytes / slurm.MiB) * slurm.MiB,
                   cpu_quota_pct=100.0 * cpus, runtime_max_s=60.0 * max(1, math.ceil(caps.runtime_max_s / 60)))


class SlurmExecutor:
    kind = "slurm"
    queues = True
    pressure_applies = False

    def __init__(self, slurm: Slurm, settings: Config, host: Host, output_dir: Path) -> None:
        self.slurm = slurm
        self.config = settings
        self.host = host
        self.output_dir = output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        self.caps_missing: list[str] = []
        self.advice: list[str] = [PRESSURE_NOTE]
        self.jobs: dict[int, Tracked] = {}  # run id -> its job
        self.rounds = Rounds(slurm, self.jobs)
        self.origin = socket.gethostname()
        self.room = Capacity(host, host.mem_bytes, held=())  # until the first answer

    @classmethod
    async def connect(cls, settings: Config, state_dir: Path) -> SlurmExecutor:
        """The cluster's executor; its largest node is what per-task caps are shares of."""
        cluster = Slurm()
        nodes = await cluster.nodes(settings.slurm_partition or None)
        if not nodes:
            raise SlurmError(f"no node in partition {settings.slurm_partition or '(the default)'} can run jobs")
        largest = max(nodes, key=lambda n: (n.mem_bytes, n.cpus))
        host = Host(mem_bytes=largest.mem_bytes, cores=float(largest.cpus))
        output_dir = Path(settings.slurm_output_dir or state_dir / "slurm").expanduser()
        executor = cls(cluster, settings, host, output_dir)
        await executor.refresh_room()
        return executor

    async def open(self, daemon: RunEvents) -> None:
        self.rounds.events = daemon

    def capacity(self) -> Capacity:
        """The room as the last round found it: Slurm's free figures already count every job's allocation."""
        return self.room

    async def refresh(self) -> None:
        """Ask Slurm for the room now: other users' jobs take and free it without a word to babysit."""
        await self.refresh_room()

    # --- the scheduler's requests -------------------------------------------------------------------

    async def start(self, task: Task) -> Task:
        """Submit the task as a batch job; it stays queued until Slurm starts it."""
        output, cpus = self.output_of(task), job_cpus(task)
        caps = job_caps(task.caps, cpus)
        try:
            job_id = await self.slurm.submit(
                name=job_name(task.name), command=task.spec.command, cwd=str(Path(task.spec.cwd).expanduser()),
                env=task.spec.env, mem_bytes=caps.memory_max_bytes, cpus=cpus, time_limit_s=caps.runtime_max_s,
                output=str(output), partition=self.config.slurm_partition or None,
                account=self.config.slurm_account or None, comment=run_comment(task.id, self.origin))
        except (SlurmError, ValueError) as e:
            raise StartRefused(f"sbatch refused it: {e}") from None
        failpoints.crash("submitted", task.name)  # a daemon that dies before it notes the job
        self.jobs[task.id] = Tracked(task.id, job_id, output)
        log.info("submitted %s as slurm job %d", task.name, job_id)
        return task.with_(caps=caps, job=Job(job_id, str(output)))

    async def stop(self, task: Task) -> None:
        """SIGTERM to the batch script and its steps, SIGKILL after the grace (see supervise)."""
        tracked = self.tracked(task)
        if tracked is None:
            return
        if tracked.state in PENDING:  # nothing runs yet that a signal could reach
            await self.slurm.cancel(tracked.job_id, "KILL")
            return
        await self.slurm.cancel(tracked.job_id, "TERM")
        tracked.kill_at = time.monotonic() + self.config.stop_grace_s

    async def set_caps(self, task: Task, was: Caps) -> Caps:
        """A running job's --mem and CPUs are fixed: the new estimates apply to babysit's policy only."""
        return was

    def read(self, task: Task) -> Reading | None:
        tracked = self.tracked(task)
        if tracked is None or tracked.usage is None:
            return None
        u = tracked.usage
        return Reading(u.mem_bytes, u.peak_mem_bytes, u.cpu_seconds or 0.0)

    def waiting_for(self, task: Task) -> str | None:
        """Slurm's reason for a pending job (Resources, Priority, ...)."""
        tracked = self.tracked(task)
        return f"slurm: {tracked.reason or 'submitting'}" if tracked else None

    def last_output_at(self, task: Task) -> float | None:
        """The output file's last change: what a job's programs flush goes straight there."""
        tracked = self.tracked(task)
        with contextlib.suppress(OSError):
            return os.stat(tracked.output).st_mtime if tracked else None
        return None

    async def release(self, task: Task) -> None:
        self.jobs.pop(task.id, None)  # the output file stays: it is the run's log

    # --- a restarted daemon ---------------------------------------------------------------------------

    async def recover_queued(self, task: Task) -> Task:
        """A queued run: submitted before the daemon stopped (then tracked again), or not yet."""
        if task.job is None:
            found = [job for job in await self.slurm.by_name(job_name(task.name), ended_too=True)
                     if job.comment == run_comment(task.id, self.origin)]
            if not found:
                return task  # the scheduler submits it (Scheduler.drain)
            task = task.with_(caps=job_caps(task.caps, job_cpus(task)), job=Job(found[0].job_id,
                                                                                 str(self.output_of(task))))
            log.info("recovered %s: submitted as job %d just before the last daemon stopped", task.name,
                     found[0].job_id)
        assert task.job is not None
        self.jobs[task.id] = Tracked(task.id, task.job.job_id, Path(task.job.output))
        return task

    async def adopt(self, task: Task) -> None:
        """Track a running job again; the next round says whether it is still running."""
        if task.job is None:
            await self.rounds.daemon.ended(task.id, Outcome(State.UNKNOWN, detail="no Slurm job is recorded for it"),
                                           task.usage)
            return
        self.jobs[task.id] = Tracked(task.id, task.job.job_id, Path(task.job.output), state="RUNNING",
                                     seen_running=True)
        log.info("adopted running task %s (slurm job %d)", task.name, task.job.job_id)

    async def unrecorded(self, known: set[str]) -> list[Orphan]:
        """None to record again: a job's name and comment do not hold its estimates, so it is cancelled."""
        await self.cancel_unrecorded(known)
        return []

    async def cancel_unrecorded(self, known: set[str]) -> None:
        """This babysitd's jobs that no record knows are cancelled: babysit never leaves a job it does not track."""
        for job in await self.slurm.by_name_prefix(job_name("")):
            ours = job.comment.startswith("babysit run #") and job.comment.endswith(f" from {self.origin}")
            if ours and job.name.removeprefix(job_name("")) not in known:
                log.warning("cancelling slurm job %d (%s): babysit has no record of it", job.job_id, job.name)
                await self.slurm.cancel(job.job_id, "KILL")

    async def tidy(self, known: set[str]) -> None:
        """Nothing stays behind a finished job but its output file, which is its log."""

    async def close(self) -> None:
        """The jobs go on; a restarted daemon tracks them again."""

    # --- the loop: Slurm pushes nothing -----------------------------------------------------------------

    async def supervise(self) -> None:
        """Each tick, one round (rounds.Rounds); then the room, which holds what the jobs that started
        meanwhile were given."""
        while True:
            await asyncio.sleep(self.config.tick_s)
            try:
                await self.rounds.look()
                await self.refresh_room()
            except SlurmError as e:  # a controller that is down for a moment must not end the supervision
                log.warning("asking Slurm failed (%s); asking again in %.1fs", e, self.config.tick_s)
            except Exception:  # nor does anything else: the next round asks again
                log.exception("error while following the jobs; asking again in %.1fs", self.config.tick_s)

    async def refresh_room(self) -> None:
        nodes = await self.slurm.nodes(self.config.slurm_partition or None)
        best = max(nodes, key=lambda n: (n.idle_cpus, n.free_mem_bytes), default=None)
        if best:  # a job runs on one node: the room is the roomiest node's, less what Slurm gave its jobs
            given = Reservation(f"(slurm: allocated on {best.name})", best.mem_bytes - best.free_mem_bytes,
                                float(best.cpus - best.idle_cpus), best.mem_bytes - best.free_mem_bytes)
            self.room = Capacity(Host(best.mem_bytes, float(best.cpus)), best.free_mem_bytes, held=(given,))

    def output_of(self, task: Task) -> Path:
        return self.output_dir / f"{task.name}-{task.id}.out"

    def tracked(self, task: Task) -> Tracked | None:
        return self.jobs.get(task.id)
