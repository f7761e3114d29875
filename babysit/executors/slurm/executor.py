"""The Slurm executor: each run is a batch job on a cluster, and Slurm is the queue.

Slurm pushes nothing to a client, so one loop asks it once a tick: `squeue` (and `sacct`, for jobs it
has forgotten) for the jobs' states, `sstat` for the running ones' usage, `sinfo` for the room. The scheduler's
policy (runaway_risk, the 2x kills, stalls, kill_timeout) works on those figures as on one host; the
memory cap and the backstop are Slurm's own (`--mem`, `--time`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from babysit.common import failpoints
from babysit.common.config import Config
from babysit.core.capacity import Reservation
from babysit.core.protocol import InvalidArgument, State, unit_name
from babysit.core.task import Caps, Host, Job, Outcome, Task
from babysit.core.workflow import Condition
from babysit.executors import output_file
from babysit.executors.base import Capacity, Orphan, Reading, RunEvents, StartDeferred, StartRefused
from babysit.executors.slurm import commands as slurm
from babysit.executors.slurm.commands import Slurm, SlurmError
from babysit.executors.slurm.rounds import PENDING, Rounds, Tracked

log = logging.getLogger("babysitd")
UNKNOWN_HOST = Host(mem_bytes=0, cores=0.0, gpus=None)
PRESSURE_NOTE = ("host memory pressure is not watched with executor = \"slurm\": each job runs within its own "
                 "--mem on the cluster, which Slurm enforces")


def run_comment(run_id: int, origin: str) -> str:
    """The job's --comment: which run it is and which babysitd submitted it, for a daemon that restarted
    before it noted the job's id (several login nodes may each run one for the same user)."""
    return f"babysit run #{run_id} from {origin}"


def sweep_comment(sweep: str, origin: str) -> str:
    """An array job's --comment: which sweep it runs (its members' run ids are theirs alone) and from where."""
    return f"babysit sweep {sweep} from {origin}"


def swept_from(comment: str, origin: str) -> str | None:
    """The sweep in an array job's --comment when this host's babysitd submitted it (sweep_comment), else None."""
    found = re.fullmatch(r"babysit sweep (\S+) from (.*)", comment)
    return found.group(1) if found and found.group(2) == origin else None


def submitted_from(comment: str, origin: str) -> int | None:
    """The run id in a job's --comment when this host's babysitd submitted it (run_comment), else None."""
    found = re.fullmatch(r"babysit run #(\d+) from (.*)", comment)
    return int(found.group(1)) if found and found.group(2) == origin else None


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


def dependency(task: Task, jobs: dict[int, Tracked]) -> str | None:
    """sbatch's --dependency for the task's dependencies that are jobs still (those that ended met theirs):
    Slurm holds the job back itself, as it would any job submitted with it."""
    kinds = {Condition.COMPLETED: "afterok", Condition.ANY: "afterany"}
    held: dict[str, list[str]] = {}
    for after in task.spec.workflow.after:
        if after.run_id in jobs:
            held.setdefault(kinds[after.condition], []).append(jobs[after.run_id].key)
    return ",".join(f"{kind}:{':'.join(ids)}" for kind, ids in held.items()) or None


def recorded(job: slurm.Job, daemon: RunEvents, origin: str) -> bool:
    """Whether a job is a live run's, or not this babysitd's at all (another host's, or no babysit's)."""
    sweep = swept_from(job.comment, origin)
    if sweep is not None and job.array_index is not None:  # a sweep member's: the task of its index
        member = daemon.named(f"{job.name.removeprefix(job_name(''))}-{job.array_index}")
        return member is not None and member.spec.workflow.sweep == sweep
    run_id = submitted_from(job.comment, origin)
    task = daemon.task(run_id) if run_id is not None else None
    return run_id is None or bool(task and job_name(task.name) == job.name)


def output_of(output_dir: Path, task: Task) -> Path:
    """Where a run's job writes its output: `<name>-<run id>.out`, or as its sweep's array job names it."""
    w = task.spec.workflow
    if w.index is not None and w.attempt == 1:  # the array job writes `<group>-%a-<sweep>.out`
        return output_dir / f"{w.group}-{w.index}-{w.sweep}.out"
    return output_dir / f"{task.name}-{task.id}.out"


async def submitted(slurm: Slurm, task: Task, origin: str, output_dir: Path) -> Job | None:
    """The job of this run, if an earlier submission reached the controller (a sweep member's: its task in
    the sweep's array job)."""
    w = task.spec.workflow
    found: list[tuple[int, int | None]]
    if w.index is not None and w.attempt == 1:
        found = [(job.array_job_id or job.job_id, w.index) for job in
                 await slurm.by_name(job_name(w.group), ended_too=True)
                 if job.comment == sweep_comment(w.sweep, origin) and job.array_index == w.index]
    else:
        found = [(job.job_id, None) for job in await slurm.by_name(job_name(task.name), ended_too=True)
                 if job.comment == run_comment(task.id, origin)]
    return Job(found[0][0], str(output_of(output_dir, task)), found[0][1]) if found else None


async def cancel_unrecorded(slurm: Slurm, daemon: RunEvents, origin: str) -> None:
    """This babysitd's jobs that no live record knows are cancelled: babysit never leaves a job it does not
    track."""
    for job in await slurm.by_name_prefix(job_name("")):
        if not recorded(job, daemon, origin):
            log.warning("cancelling slurm job %s (%s): babysit has no record of it", job.key, job.name)
            await slurm.cancel(job.key, "KILL")


def unreachable(e: SlurmError) -> str:
    """The trouble an unreachable controller is, as ping and status say it."""
    log.warning("the Slurm controller does not answer (%s); asking again each tick", e)
    said = e.stderr.strip().splitlines()[-1] if e.stderr.strip() else str(e)
    return f"the Slurm controller has not answered since {time.strftime('%H:%M:%S')} ({said})"


class SlurmExecutor:
    kind = "slurm"
    queues = True
    pressure_applies = False

    def __init__(self, slurm: Slurm, settings: Config, output_dir: Path) -> None:
        self.slurm = slurm
        self.config = settings
        self.host = UNKNOWN_HOST  # until the cluster first answers: then its largest node
        self.output_dir = output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        self.caps_missing: list[str] = []
        self.advice: list[str] = [PRESSURE_NOTE]
        self.gpu_note = "GPUs are the cluster's: --gpus=N asks Slurm for --gres=gpu:N"
        self.trouble: str | None = None  # why the controller cannot be reached now (see ask)
        self.jobs: dict[int, Tracked] = {}  # run id -> its job
        self.rounds = Rounds(slurm, self.jobs)
        self.origin = socket.gethostname()
        self.room = Capacity(self.host, 0, held=())  # until the first answer
        self.unsure: set[int] = set()  # queued runs whose sbatch may have gone through without a word back
        self.sweep_due = False  # the look for jobs no record knows waits for a controller that answers
        self.swept: dict[int, Job] = {}  # sweep members submitted with an earlier member's array job, by run id

    @classmethod
    async def connect(cls, settings: Config, state_dir: Path) -> SlurmExecutor:
        """The cluster's executor; its largest node is what per-task caps are shares of. A controller that
        does not answer leaves it up, saying so (trouble), and it is asked again each tick."""
        output_dir = Path(settings.slurm_output_dir or state_dir / "slurm").expanduser()
        executor = cls(Slurm(), settings, output_dir)
        await executor.ask(executor.refresh_room)
        return executor

    async def ask(self, questions: Callable[[], Awaitable[None]]) -> bool:
        """Put questions to Slurm; whether it answered. An unreachable controller is noted as trouble (ping
        and status say it, `run` refuses, the queue waits) until it answers again."""
        try:
            await questions()
        except SlurmError as e:
            if not e.unreachable:
                raise
            self.trouble = self.trouble or unreachable(e)
            return False
        if self.trouble:
            log.info("the Slurm controller answers again")
            self.trouble = None
        return True

    async def open(self, daemon: RunEvents) -> None:
        self.rounds.events = daemon

    def capacity(self) -> Capacity:
        """The room as the last round found it: Slurm's free figures already count every job's allocation."""
        return self.room

    async def refresh(self) -> None:
        """Nothing: the room is the last round's (each tick asks sinfo), since a decision must not wait on a
        controller that may be slow to answer."""

    # --- the scheduler's requests -------------------------------------------------------------------

    async def start(self, task: Task) -> Task:
        """Submit the task as a batch job (a sweep's member: the sweep's queued members as one array job); it
        stays queued until Slurm starts it. A submission that may have reached the controller without an
        answer is looked for first: a run is never submitted twice."""
        caps = job_caps(task.caps, job_cpus(task))
        job = self.swept.pop(task.id, None)  # submitted with its sweep's array job already
        try:
            if job is None and task.id in self.unsure:
                job = await submitted(self.slurm, task, self.origin, self.output_dir)
                self.unsure.discard(task.id)
                if job:
                    log.info("%s was submitted as slurm job %s before its answer was lost", task.name, job.key)
            if job is None:
                job = await self.submit(task, caps)
                log.info("submitted %s as slurm job %s", task.name, job.key)
        except SlurmError as e:
            if not e.unreachable:
                raise StartRefused(f"sbatch refused it: {e}") from None
            self.unsure.add(task.id)
            self.trouble = self.trouble or unreachable(e)
            raise StartDeferred(f"the Slurm controller did not answer ({e}); it is submitted once it does") from None
        except ValueError as e:
            raise StartRefused(f"sbatch refused it: {e}") from None
        self.unsure.discard(task.id)
        failpoints.crash("submitted", task.name)  # a daemon that dies before it notes the job
        self.jobs[task.id] = Tracked(task.id, job.job_id, Path(job.output), index=job.index)
        return task.with_(caps=caps, job=job)

    async def submit(self, task: Task, caps: Caps) -> Job:
        """sbatch: one job, or the array job of the sweep's queued members (Slurm runs `%N` of them at once)."""
        w = task.spec.workflow
        members = self.rounds.daemon.members(task) if w.index is not None and w.attempt == 1 else []
        output = output_of(self.output_dir, task)
        job_id = await self.slurm.submit(
            name=job_name(w.group if members else task.name), command=task.spec.command,
            cwd=str(Path(task.spec.cwd).expanduser()), env=task.spec.env, mem_bytes=caps.memory_max_bytes,
            cpus=job_cpus(task), time_limit_s=caps.runtime_max_s,
            output=str(self.output_dir / f"{w.group}-%a-{w.sweep}.out") if members else str(output),
            partition=self.config.slurm_partition or None, account=self.config.slurm_account or None,
            comment=sweep_comment(w.sweep, self.origin) if members else run_comment(task.id, self.origin),
            dependency=dependency(task, self.jobs),
            array={m.spec.workflow.index: m.spec.command for m in members if m.spec.workflow.index is not None},
            limit=w.limit, gpus=task.spec.estimates.gpus)
        for member in members:
            self.swept[member.id] = Job(job_id, str(output_of(self.output_dir, member)), member.spec.workflow.index)
        return self.swept.pop(task.id, None) or Job(job_id, str(output))

    async def stop(self, task: Task) -> None:
        """The task's stop signal to the batch script and its steps; after its grace, the job is cancelled
        (see supervise), which Slurm ends with SIGTERM, then SIGKILL after the cluster's KillWait."""
        tracked = self.jobs.get(task.id)
        if tracked is None:
            return
        if tracked.state in PENDING:  # nothing runs yet that a signal could reach
            await self.slurm.cancel(tracked.key, "KILL")
            return
        stopping = task.spec.stopping
        await self.slurm.cancel(tracked.key, stopping.signal.removeprefix("SIG"))
        tracked.kill_at = time.monotonic() + stopping.grace(self.config.stop_grace_s)

    async def signal(self, task: Task, signal: str) -> bool:
        """`scancel --full --signal`: babysit's own deadlines say when (Slurm's `--signal` counts from the
        job's time limit, which is babysit's backstop, not the task's kill_timeout)."""
        tracked = self.jobs.get(task.id)
        if tracked is None or tracked.state in PENDING:
            return False
        await self.slurm.cancel(tracked.key, signal.removeprefix("SIG"))
        return True

    async def hold(self, task: Task, held: bool) -> None:
        """`scontrol hold` or `release` of a pending job (a user may hold their own jobs), also of a sweep's
        member that Slurm has in its array job while babysit has not handed it over yet."""
        tracked, swept = self.jobs.get(task.id), self.swept.get(task.id)
        if tracked is not None and tracked.state in PENDING:
            await self.slurm.hold(tracked.key, held)
        elif swept is not None:
            await self.slurm.hold(swept.key, held)

    async def pause(self, task: Task, paused: bool) -> str:
        raise InvalidArgument("on Slurm only an operator can suspend a job (scontrol suspend); kill it, or give it "
                              "more time with babysit adjust --kill_timeout")

    async def set_caps(self, task: Task, was: Caps) -> Caps:
        """A running job's --mem and CPUs are fixed: the new estimates apply to babysit's policy only."""
        return was

    def read(self, task: Task) -> Reading | None:
        tracked = self.jobs.get(task.id)
        if tracked is None or tracked.usage is None:
            return None
        u = tracked.usage
        return Reading(u.mem_bytes, u.peak_mem_bytes, u.cpu_seconds or 0.0)

    def waiting_for(self, task: Task) -> str | None:
        """Slurm's reason for a pending job (Resources, Priority, ...)."""
        tracked = self.jobs.get(task.id)
        if tracked:
            return f"slurm: {tracked.reason or 'submitting'}"
        return "the Slurm controller to answer" if self.trouble else "slurm: submitting"

    def last_output_at(self, task: Task) -> float | None:
        """The output file's last change: what a job's programs flush goes straight there."""
        tracked = self.jobs.get(task.id)
        return output_file.written_at(tracked.output) if tracked else None

    async def release(self, task: Task) -> None:
        self.jobs.pop(task.id, None)  # the output file stays: it is the run's log
        swept = self.swept.pop(task.id, None)
        if swept is not None:  # a member that ended before babysit handed it over (killed): its array task too
            await self.slurm.cancel(swept.key, "KILL")

    # --- a restarted daemon ---------------------------------------------------------------------------

    async def recover_queued(self, task: Task) -> Task:
        """A queued run: submitted before the daemon stopped (then tracked again), or perhaps not (then its
        start looks for the job first, by its name and comment)."""
        if task.job is None:
            self.unsure.add(task.id)
            return task
        self.jobs[task.id] = Tracked(task.id, task.job.job_id, Path(task.job.output), index=task.job.index)
        return task

    async def adopt(self, task: Task) -> None:
        """Track a running job again; the next round says whether it is still running."""
        if task.job is None:
            await self.rounds.daemon.ended(task.id, Outcome(State.UNKNOWN, detail="no Slurm job is recorded for it"),
                                           task.usage)
            return
        self.jobs[task.id] = Tracked(task.id, task.job.job_id, Path(task.job.output), state="RUNNING",
                                     seen_running=True, index=task.job.index)
        log.info("adopted running task %s (slurm job %s)", task.name, task.job.key)

    async def unrecorded(self, known: set[str]) -> list[Orphan]:
        """None to record again: a job's name and comment do not hold its estimates, so it is cancelled
        (once the controller answers)."""
        self.sweep_due = True
        if not self.trouble:  # else the first round that gets an answer looks
            if await self.ask(lambda: cancel_unrecorded(self.slurm, self.rounds.daemon, self.origin)):
                self.sweep_due = False
        return []

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
                await self.ask(self.look)
            except SlurmError as e:  # a command that fails must not end the supervision
                log.warning("asking Slurm failed (%s); asking again in %.1fs", e, self.config.tick_s)
            except Exception:  # nor does anything else: the next round asks again
                log.exception("error while following the jobs; asking again in %.1fs", self.config.tick_s)

    async def look(self) -> None:
        """One round; then the room, which holds what the jobs that started meanwhile were given; then the
        look for unrecorded jobs, if the start could not make it."""
        await self.rounds.look()
        await self.refresh_room()
        if self.sweep_due:
            await cancel_unrecorded(self.slurm, self.rounds.daemon, self.origin)
            self.sweep_due = False

    async def refresh_room(self) -> None:
        nodes = await self.slurm.nodes(self.config.slurm_partition or None)
        if not nodes:
            raise SlurmError(f"no node in partition {self.config.slurm_partition or '(the default)'} can run jobs",
                             stderr="no node can run jobs")
        if self.host == UNKNOWN_HOST:
            largest = max(nodes, key=lambda n: (n.mem_bytes, n.cpus))
            self.host = Host(mem_bytes=largest.mem_bytes, cores=float(largest.cpus), gpus=None)
        best = max(nodes, key=lambda n: (n.idle_cpus, n.free_mem_bytes), default=None)
        if best:  # a job runs on one node: the room is the roomiest node's, less what Slurm gave its jobs
            given = Reservation(f"(slurm: allocated on {best.name})", best.mem_bytes - best.free_mem_bytes,
                                float(best.cpus - best.idle_cpus), best.mem_bytes - best.free_mem_bytes)
            self.room = Capacity(Host(best.mem_bytes, float(best.cpus), gpus=None), best.free_mem_bytes, held=(given,))
