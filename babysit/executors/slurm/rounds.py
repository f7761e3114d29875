"""One round of questions to Slurm, and what the answers mean for each job babysit follows: started,
its usage, ended (and how, in babysit's terms), forgotten, or due for its SIGKILL."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from babysit.core.outcome import signal_name
from babysit.core.protocol import KillReason, State
from babysit.core.task import Outcome, Usage
from babysit.executors.base import Reporting
from babysit.executors.slurm import commands as slurm
from babysit.executors.slurm.commands import JobUsage, Slurm, SlurmError

log = logging.getLogger("babysitd")
PENDING = ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED")
# what Slurm reports in a job's signal field that no signal sent: its OOM handling, a launch that failed
SLURM_OOM, SLURM_LAUNCH_FAILED = 125, 53
SLURM_CODES = (None, 0, SLURM_OOM, SLURM_LAUNCH_FAILED)
LOST_AFTER_S = 30.0  # a job neither squeue nor sacct knows for this long is reported unknown


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
    job_id: int  # the id sbatch gave: the job's, or its array's
    output: Path
    state: str = "PENDING"
    seen_running: bool = False
    reason: str = ""  # why Slurm keeps it pending
    usage: JobUsage | None = None  # the last sstat figures
    missing_since: float | None = None  # monotonic; when Slurm first did not know it
    kill_at: float | None = None  # monotonic; when a SIGTERM's grace is over
    index: int | None = None  # of an array's task: its index

    @property
    def key(self) -> str:
        """What names the job to Slurm's commands: `12`, or `12_3` for task 3 of array job 12."""
        return f"{self.job_id}_{self.index}" if self.index is not None else str(self.job_id)


class Rounds(Reporting):
    def __init__(self, cluster: Slurm, jobs: dict[int, Tracked]) -> None:
        self.slurm = cluster
        self.jobs = jobs  # the executor's, by run id

    async def look(self) -> None:
        """One round: the jobs' states (one squeue, and one sacct for those it forgot), the running ones' usage
        (one sstat), the SIGKILLs that are due."""
        states = await self.slurm.jobs([t.key for t in self.jobs.values()]) if self.jobs else {}
        # sstat knows a running array task by its own job id only
        usages = await self.slurm.usages([job.job_id for job in states.values() if job.state == "RUNNING"])
        for tracked in list(self.jobs.values()):
            job = states.get(tracked.key)
            try:
                await self.look_at(tracked, job, usages.get(job.job_id) if job else None)
            except SlurmError:
                raise
            except Exception:  # one job's trouble must not cost the others their supervision
                log.exception("error while following slurm job %s; the other jobs are still followed",
                              tracked.key)

    async def look_at(self, tracked: Tracked, job: slurm.Job | None, usage: JobUsage | None) -> None:
        now = time.monotonic()
        if job is None:
            await self.lost(tracked, now)
            return
        tracked.missing_since = None
        if job.state == "RUNNING" and not tracked.seen_running:
            tracked.seen_running = True
            task = self.daemon.task(tracked.task_id)
            gpus = await self.slurm.gpus_of(tracked.key) if task and task.spec.estimates.gpus else ()
            self.daemon.started(tracked.task_id, job.start_time or time.time(), gpus)
        if job.state == "RUNNING":
            tracked.usage = usage or tracked.usage
        if job.ended:
            await self.conclude(tracked, job)
            return
        tracked.state, tracked.reason = job.state, job.reason
        if tracked.kill_at is not None and now >= tracked.kill_at:
            tracked.kill_at = None
            await self.slurm.cancel(tracked.key, "KILL")

    async def conclude(self, tracked: Tracked, job: slurm.Job) -> None:
        """A job ended: Slurm's word on how, the usage sstat saw, to the daemon."""
        task = self.daemon.task(tracked.task_id)
        if task is None:
            self.jobs.pop(tracked.task_id, None)
            return
        if task.state == State.QUEUED and ran(job, tracked.seen_running):  # it ran between two rounds
            self.daemon.started(task.id, job.start_time or time.time())
            task = self.daemon.task(task.id) or task
        outcome = job_outcome(job, task.kill_requested)
        seen = tracked.usage
        peak = max(task.usage.peak_mem_bytes or 0, (seen.peak_mem_bytes or 0) if seen else 0)
        if outcome.kill_reason == KillReason.OOM:  # Slurm ended it at --mem, whatever sstat last saw
            peak = max(peak, task.caps.memory_max_bytes)
        cpu_seconds = seen.cpu_seconds if seen and seen.cpu_seconds is not None else task.usage.cpu_seconds
        await self.daemon.ended(task.id, outcome, Usage(0, peak or None, cpu_seconds, task.usage.cpu_cores))

    async def lost(self, tracked: Tracked, now: float) -> None:
        """A job Slurm does not know: not yet (sacct lags), or not any more (forgotten after MinJobAge)."""
        if tracked.missing_since is None:
            tracked.missing_since = now
        if now - tracked.missing_since < LOST_AFTER_S:
            return
        self.jobs.pop(tracked.task_id, None)
        task = self.daemon.task(tracked.task_id)
        await self.daemon.ended(tracked.task_id, Outcome(
            State.UNKNOWN, detail=f"Slurm no longer knows job {tracked.key}, so how it ended is not known; "
                                  f"see its output, {tracked.output}"), task.usage if task else Usage())
