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
from dataclasses import dataclass, replace
from pathlib import Path

from babysit import failpoints, slurm
from babysit.capacity import Reservation
from babysit.config import Config
from babysit.executor import Capacity, Orphan, Reading, Reporting, StartRefused, Supervisor
from babysit.outcome import signal_name
from babysit.protocol import KillReason, State, unit_name
from babysit.slurm import JobUsage, Slurm, SlurmError
from babysit.task import Caps, Host, Job, Outcome, Task, Usage

log = logging.getLogger("babysitd")
PENDING = ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED")
# what Slurm reports in a job's signal field that no signal sent: its OOM handling, a launch that failed
SLURM_OOM, SLURM_LAUNCH_FAILED = 125, 53
SLURM_CODES = (None, 0, SLURM_OOM, SLURM_LAUNCH_FAILED)
LOST_AFTER_S = 30.0  # a job neither squeue nor sacct knows for this long is reported unknown
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


def job_outcome(job: slurm.Job, kill_requested: KillReason | None) -> Outcome:
    """How a finished job ended, in babysit's terms, from Slurm's word alone."""
    code = job.exit_code
    sig = job.signal if job.signal not in SLURM_CODES else None
    said = f"Slurm ended the job as {job.state}" + (f" ({job.reason})" if job.reason else "")
    if kill_requested:
        return Outcome(State.KILLED, code, sig, kill_requested)
    if job.state == "COMPLETED":
        return Outcome(State.COMPLETED, code or 0)
    if job.state == "OUT_OF_MEMORY":
        return Outcome(State.KILLED, code, sig, KillReason.OOM, "Slurm's OOM handling ended it at its --mem")
    if job.state == "TIMEOUT":
        return Outcome(State.KILLED, code, sig, KillReason.TIMEOUT, "Slurm ended it at its --time")
    if job.state == "CANCELLED":
        return Outcome(State.FAILED, None, sig, None, "cancelled outside babysit (scancel, or the cluster's "
                                                      "administrator)")
    if job.state == "FAILED" and job.signal == SLURM_LAUNCH_FAILED:
        return Outcome(State.FAILED, None, None, None, f"{said}: the node could not start it; its working "
                                                       "directory and output file must be on a filesystem the "
                                                       "node shares")
    if job.state == "FAILED" and code:
        return Outcome(State.FAILED, code)
    if job.state == "FAILED" and sig:
        return Outcome(State.FAILED, None, sig, None, f"killed by {signal_name(sig)}")
    return Outcome(State.FAILED, code, sig, None, said)


def ran(job: slurm.Job, seen_running: bool) -> bool:
    """Whether an ended job ever started: Slurm gives one cancelled while pending a start time too, its end."""
    cancelled_pending = job.state == "CANCELLED" and not seen_running and job.start_time == job.end_time
    return job.start_time is not None and not cancelled_pending


@dataclass
class Tracked:
    """A job babysit watches, with what the last round of questions said of it."""

    task_id: int
    job_id: int
    output: Path
    state: str = "PENDING"
    seen_running: bool = False
    reason: str = ""  # why Slurm keeps it pending
    usage: JobUsage | None = None  # the last sstat figures
    missing_since: float | None = None  # monotonic; when Slurm first did not know it
    kill_at: float | None = None  # monotonic; when a SIGTERM's grace is over


class SlurmExecutor(Reporting):
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
        self.origin = socket.gethostname()
        self.room = Capacity(host, host.mem_bytes, counts_running=False)  # until the first answer

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

    async def open(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

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
                return task  # the scheduler submits it (Daemon.drain)
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
            await self.scheduler.ended(task.id, Outcome(State.UNKNOWN, detail="no Slurm job is recorded for it"),
                                       task.usage)
            return
        self.jobs[task.id] = Tracked(task.id, task.job.job_id, Path(task.job.output), state="RUNNING",
                                     seen_running=True)
        log.info("adopted running task %s (slurm job %d)", task.name, task.job.job_id)

    async def orphans(self, known: set[str]) -> list[Orphan]:
        """This babysitd's jobs that no record knows are cancelled: babysit never leaves a job it does not track."""
        for job in await self.slurm.by_name_prefix(job_name("")):
            ours = job.comment.startswith("babysit run #") and job.comment.endswith(f" from {self.origin}")
            if ours and job.name.removeprefix(job_name("")) not in known:
                log.warning("cancelling slurm job %d (%s): babysit has no record of it", job.job_id, job.name)
                await self.slurm.cancel(job.job_id, "KILL")
        return []

    async def tidy(self, known: set[str]) -> None:
        """Nothing stays behind a finished job but its output file, which is its log."""

    async def close(self) -> None:
        """The jobs go on; a restarted daemon tracks them again."""

    # --- the loop: Slurm pushes nothing -----------------------------------------------------------------

    async def supervise(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            try:
                await self.look()
            except SlurmError as e:  # a controller that is down for a moment must not end the supervision
                log.warning("asking Slurm failed (%s); asking again in %.1fs", e, self.config.tick_s)

    async def look(self) -> None:
        """One round: the jobs' states, the running ones' usage, the SIGKILLs that are due; then the room,
        which holds what the jobs that started meanwhile were given."""
        states = await self.slurm.jobs([t.job_id for t in self.jobs.values()]) if self.jobs else {}
        for tracked in list(self.jobs.values()):
            try:
                await self.look_at(tracked, states.get(tracked.job_id))
            except SlurmError:
                raise
            except Exception:  # one job's trouble must not cost the others their supervision
                log.exception("error while following slurm job %d; the other jobs are still followed",
                              tracked.job_id)
        await self.refresh_room()

    async def look_at(self, tracked: Tracked, job: slurm.Job | None) -> None:
        now = time.monotonic()
        if job is None:
            await self.lost(tracked, now)
            return
        tracked.missing_since = None
        if job.state == "RUNNING" and not tracked.seen_running:
            tracked.seen_running = True
            self.scheduler.started(tracked.task_id, job.start_time or time.time())
        if job.state == "RUNNING":
            tracked.usage = await self.slurm.usage(tracked.job_id) or tracked.usage
        if job.ended:
            await self.conclude(tracked, job)
            return
        tracked.state, tracked.reason = job.state, job.reason
        if tracked.kill_at is not None and now >= tracked.kill_at:
            tracked.kill_at = None
            await self.slurm.cancel(tracked.job_id, "KILL")

    async def conclude(self, tracked: Tracked, job: slurm.Job) -> None:
        """A job ended: Slurm's word on how, the usage sstat saw, to the scheduler."""
        task = self.scheduler.task(tracked.task_id)
        if task is None:
            self.jobs.pop(tracked.task_id, None)
            return
        if task.state == State.QUEUED and ran(job, tracked.seen_running):  # it ran between two rounds
            self.scheduler.started(task.id, job.start_time or time.time())
            task = self.scheduler.task(task.id) or task
        outcome = job_outcome(job, task.kill_requested)
        seen = tracked.usage
        peak = max(task.usage.peak_mem_bytes or 0, (seen.peak_mem_bytes or 0) if seen else 0)
        if outcome.kill_reason == KillReason.OOM:  # Slurm ended it at --mem, whatever sstat last saw
            peak = max(peak, task.caps.memory_max_bytes)
        cpu_seconds = seen.cpu_seconds if seen and seen.cpu_seconds is not None else task.usage.cpu_seconds
        await self.scheduler.ended(task.id, outcome, Usage(0, peak or None, cpu_seconds, 0.0))

    async def lost(self, tracked: Tracked, now: float) -> None:
        """A job Slurm does not know: not yet (sacct lags), or not any more (forgotten after MinJobAge)."""
        if tracked.missing_since is None:
            tracked.missing_since = now
        if now - tracked.missing_since < LOST_AFTER_S:
            return
        self.jobs.pop(tracked.task_id, None)
        task = self.scheduler.task(tracked.task_id)
        await self.scheduler.ended(tracked.task_id, Outcome(
            State.UNKNOWN, detail=f"Slurm no longer knows job {tracked.job_id}, so how it ended is not known; "
                                  f"see its output, {tracked.output}"), task.usage if task else Usage())

    async def refresh_room(self) -> None:
        nodes = await self.slurm.nodes(self.config.slurm_partition or None)
        best = max(nodes, key=lambda n: (n.idle_cpus, n.free_mem_bytes), default=None)
        if best:  # a job runs on one node: the room is the roomiest node's, less what Slurm gave its jobs
            given = Reservation(f"(slurm: allocated on {best.name})", best.mem_bytes - best.free_mem_bytes,
                                float(best.cpus - best.idle_cpus), best.mem_bytes - best.free_mem_bytes)
            self.room = Capacity(Host(best.mem_bytes, float(best.cpus)), best.free_mem_bytes,
                                 counts_running=False, held=(given,))

    def output_of(self, task: Task) -> Path:
        return self.output_dir / f"{task.name}-{task.id}.out"

    def tracked(self, task: Task) -> Tracked | None:
        return self.jobs.get(task.id)
