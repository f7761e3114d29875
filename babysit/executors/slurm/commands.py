"""Slurm's commands, thinly wrapped: submit a task as a batch job, read jobs' states and usage, cancel them.

The `parse_*` functions are pure and read the commands' output as Slurm 22.05 prints it (recorded in
tests/unit/test_slurm.py); `Slurm` runs the commands. Times are asked for as epoch seconds
(SLURM_TIME_FORMAT=%s), so no time zone is involved. Live state comes from squeue, which keeps ended
jobs for the controller's MinJobAge (300 s by default); sacct (by job id, never by name) only covers
the ids squeue has forgotten, because accounting lags the controller by a fraction of a second.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shlex
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from babysit.core.task import split_env

MiB = 1 << 20

# Fields are separated by ASCII's unit separator: names and comments may hold `|` or spaces, not this.
SEP = "\x1f"
# `Field:X` prints a field unpadded and untruncated, followed by X (`Field` alone pads it to 20).
# An array's tasks (asked for one per line, -r) each have their own JobID once they start; pending ones share
# the array's. ArrayTaskID is N/A for a job that is not an array's.
SQUEUE_FORMAT = ",".join(f"{f}:{SEP}" for f in ("JobID", "State", "Reason", "StartTime", "EndTime", "exit_code",
                                                  "Comment", "ArrayJobID", "ArrayTaskID")) + ",Name:"
# sacct keeps comments only with AccountingStoreFlags=job_comment: often empty.
SACCT_FIELDS = "JobIDRaw,State,ExitCode,Reason,Start,End,Comment,JobID,JobName"  # JobID: 12_3 for an array task
# MaxRSS is the peak; TresUsageInTot's mem= is the current RSS (it drops when a job frees memory) and
# its cpu= the CPU time, both summed over the step's tasks. --noconvert prints bytes.
SSTAT_FIELDS = "JobID,MaxRSS,TresUsageInTot"
SINFO_FORMAT = "NodeHost:|,StateLong:|,CPUsState:|,Memory:|,AllocMem:|,Partition:"

# A job in one of these will not run again (jobs are submitted with --no-requeue).
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED", "NODE_FAIL",
                          "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED"})
# Its processes are gone or going: the exit status and the end time are real (before, they are forecasts).
_ENDED = FINAL_STATES | {"COMPLETING"}
# Node states (sinfo's long form) in which a node runs new jobs; a suffix such as `*` (not responding),
# `~` (powered off) or `#` (powering up) means it cannot now.
_USABLE_NODE_STATES = frozenset({"idle", "mixed", "allocated", "completing", "planned"})
# Errors that mean "no such job (any more)", not a failure of the command.
_GONE = ("Invalid job id specified", "already completing or completed")
# What the client commands say when slurmctld is down or unreachable (each tries for its MessageTimeout).
_UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Connection refused",
                "Zero Bytes were transmitted or received")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


class SlurmError(Exception):
    """A Slurm command failed (`stderr` is what it said), or the cluster cannot serve."""

    def __init__(self, message: str, *, argv: Sequence[str] = (), returncode: int | None = None,
                 stderr: str = "") -> None:
        super().__init__(message)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr

    @property
    def unreachable(self) -> bool:
        """Whether the controller did not answer (an outage), as opposed to a refusal or a failed command."""
        return self.returncode is None or any(sign in self.stderr for sign in _UNREACHABLE)

    @classmethod
    def of(cls, argv: Sequence[str], returncode: int | None, stderr: str) -> SlurmError:
        """The failure of a command: what it was, its status (None: it never ran or did not end), what it said."""
        return cls(f"{shlex.join(argv)} failed ({returncode}): {stderr.strip()}", argv=argv, returncode=returncode,
                   stderr=stderr)


@dataclass(frozen=True)
class Job:
    """A job as Slurm reports it; exit status and end time only once it has ended."""

    job_id: int
    state: str  # Slurm's base state: PENDING RUNNING COMPLETING COMPLETED FAILED OUT_OF_MEMORY TIMEOUT CANCELLED ...
    exit_code: int | None  # the batch script's exit code when it exited
    # the signal that ended it; Slurm's own codes too: 125 for OUT_OF_MEMORY (SIG_OOM 253 & 0x7f), 53 when
    # slurmstepd could not start it (JobLaunchFailure: e.g. its --output file was not writable)
    signal: int | None
    reason: str  # Slurm's reason (NonZeroExitCode, OutOfMemory, TimeLimit, Resources...); "" for None
    start_time: float | None  # epoch seconds; None while pending (Slurm shows a forecast then)
    end_time: float | None  # epoch seconds; None until it ends (Slurm shows the time limit's end then)
    name: str
    comment: str = ""  # sbatch --comment; sacct has it only with AccountingStoreFlags=job_comment
    array_job_id: int | None = None  # of an array's task: the array's job id, and its index in the array
    array_index: int | None = None

    @property
    def key(self) -> str:
        """What names it to squeue, sacct and scancel: `12`, or `12_3` for task 3 of array job 12."""
        return f"{self.array_job_id}_{self.array_index}" if self.array_index is not None else str(self.job_id)

    @property
    def ended(self) -> bool:
        """True when the job will not run again."""
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class Node:
    """A node that can run jobs now, with its size and what Slurm has not allocated of it."""

    name: str
    state: str  # sinfo's long form: idle, mixed, allocated, completing, planned
    cpus: int
    idle_cpus: int
    mem_bytes: int  # RealMemory
    free_mem_bytes: int  # RealMemory - AllocMem


@dataclass(frozen=True)
class JobUsage:
    """A running job's batch step, measured by Slurm's accounting gatherer (fresh at each sstat call)."""

    mem_bytes: int  # current RSS (TresUsageInTot mem=), else the peak when that is all sstat gives
    peak_mem_bytes: int | None  # MaxRSS: the high-water mark of the step
    cpu_seconds: float | None  # TresUsageInTot cpu=: CPU time so far, in whole seconds


# --- pure parsing -------------------------------------------------------------------------------


def parse_epoch(text: str) -> float | None:
    """A time printed with SLURM_TIME_FORMAT=%s; None for Unknown, N/A, None, NONE or 0."""
    text = text.strip()
    return float(text) if text.isdigit() and int(text) > 0 else None


def parse_size(text: str) -> int | None:
    """Bytes in sstat's sizes: `2628599808` (--noconvert), `211868K`, `1.5G`; None when empty."""
    match = re.fullmatch(r"([0-9.]+)([KMGTP]?)", text.strip())
    if not match:
        return None
    return int(float(match[1]) * _UNITS[match[2]])


def parse_duration(text: str) -> float | None:
    """Seconds in Slurm's durations: `[D-]HH:MM:SS`, `MM:SS.mmm`, `SS`; None when empty or unlimited."""
    text = text.strip()
    days, _, clock = text.rpartition("-")
    try:
        parts = [float(p) for p in clock.split(":")]
        seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
        return seconds + (int(days) * 86400 if days else 0)
    except ValueError:
        return None


def _exit_status(state: str, exit_code: int | None, signal: int | None) -> tuple[int | None, int | None]:
    """Exit code and signal, only for a job that has ended (before, Slurm prints zeros)."""
    if state not in _ENDED:
        return None, None
    if signal:
        return None, signal
    return exit_code, None


def _job(job_id: str, state: str, reason: str, start: str, end: str, status: tuple[int | None, int | None],
         comment: str, name: str, array: tuple[int, int] | None = None) -> Job:
    base = state.split()[0] if state.strip() else "UNKNOWN"  # sacct says "CANCELLED by 1500"
    exit_code, signal = _exit_status(base, *status)
    return Job(
        job_id=int(job_id),
        state=base,
        exit_code=exit_code,
        signal=signal,
        reason="" if reason in ("None", "(null)") else reason,
        start_time=None if base == "PENDING" else parse_epoch(start),
        end_time=parse_epoch(end) if base in _ENDED else None,
        name=name,
        comment="" if comment == "(null)" else comment,
        array_job_id=array[0] if array else None,
        array_index=array[1] if array else None,
    )


def parse_squeue(output: str) -> dict[str, Job]:
    """Jobs in `squeue -h -r -O SQUEUE_FORMAT` output, by key (its exit_code is a wait status: code << 8 | signal).
    Lines without the array columns (as squeue printed them before babysit asked for those) are plain jobs."""
    jobs: dict[str, Job] = {}
    for line in output.split("\n"):
        fields = line.split(SEP)
        if len(fields) == 8:
            fields[7:7] = [fields[0], "N/A"]
        if len(fields) != 10 or not fields[0].isdigit():
            continue  # a heterogeneous job's `12+1`: not babysit's
        job_id, state, reason, start, end, status, comment, array_job, array_task, name = fields
        if array_task != "N/A" and not (array_task.isdigit() and array_job.isdigit()):
            continue  # an array's pending tasks on one line (`2-5%2`): babysit asks for one per line
        raw = int(status) if status.isdigit() else 0
        array = (int(array_job), int(array_task)) if array_task.isdigit() else None
        job = _job(job_id, state, reason, start, end, (raw >> 8, raw & 0x7F), comment, name, array)
        jobs[job.key] = job
    return jobs


ARRAY_TASK = re.compile(r"(\d+)_(\d+)")


def parse_sacct(output: str) -> dict[str, Job]:
    """Jobs in `sacct -X -n -P --delimiter=SEP -o SACCT_FIELDS` output, by key (ExitCode `code:signal`; quotes in
    names become `). Lines without the JobID column (recorded before babysit asked for it) are plain jobs."""
    jobs: dict[str, Job] = {}
    for line in output.split("\n"):
        fields = line.split(SEP)
        if len(fields) == 8:
            fields[7:7] = [fields[0]]
        if len(fields) != 9 or not fields[0].isdigit():
            continue
        job_id, state, status, reason, start, end, comment, shown_id, name = fields
        code, _, signal = status.partition(":")
        numbers = (int(code) if code.isdigit() else None, int(signal) if signal.isdigit() else None)
        task = ARRAY_TASK.fullmatch(shown_id)
        if "_" in shown_id and not task:
            continue  # an array's tasks that never started, as one line (`2_[4-5%2]`)
        array = (int(task[1]), int(task[2])) if task else None
        job = _job(job_id, state, reason, start, end, numbers, comment, name, array)
        jobs[job.key] = job  # a requeued job's last record wins
    return jobs


def parse_sstat(output: str) -> dict[int, JobUsage]:
    """The usage of each job's batch step in `sstat -n -P --noconvert --format=SSTAT_FIELDS` output; a job
    with no running step prints nothing (its error goes to stderr) and is absent."""
    found = {}
    for line in output.splitlines():
        step, _, rest = line.partition("|")
        max_rss, _, tres = rest.partition("|")
        job_id, _, name = step.partition(".")
        if name != "batch" or not job_id.isdigit():
            continue
        usage = dict(item.split("=", 1) for item in tres.strip().split(",") if "=" in item)
        peak = parse_size(max_rss)
        current = parse_size(usage.get("mem", ""))
        mem = current if current is not None else peak
        if mem is not None:
            found[int(job_id)] = JobUsage(mem_bytes=mem, peak_mem_bytes=peak,
                                          cpu_seconds=parse_duration(usage.get("cpu", "")))
    return found


def parse_sinfo(output: str, partition: str | None) -> list[Node]:
    """The nodes in `sinfo -N -h -O SINFO_FORMAT` output that belong to `partition` (None: the default one, marked
    `*`) and can run jobs now, each once."""
    nodes: dict[str, Node] = {}
    for line in output.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 6:
            continue
        name, state, cpus, memory, allocated, part = fields[:6]
        in_partition = part.endswith("*") if partition is None else part.rstrip("*") == partition
        counts = cpus.split("/")  # allocated/idle/other/total
        memory = memory.rstrip("+")  # `+` when nodes of a line differ, which -N avoids
        if (not in_partition or name in nodes or state not in _USABLE_NODE_STATES or len(counts) != 4
                or not all(c.isdigit() for c in (*counts, memory, allocated))):
            continue
        nodes[name] = Node(name=name, state=state, cpus=int(counts[3]), idle_cpus=int(counts[1]),
                           mem_bytes=int(memory) * MiB, free_mem_bytes=max(0, int(memory) - int(allocated)) * MiB)
    return list(nodes.values())


def key_order(key: str) -> tuple[int, int]:
    """Job keys in Slurm's order: `2`, `6`, `12`, `12_3`, `12_10`."""
    job, _, task = key.partition("_")
    return int(job), int(task) if task else -1


# `scontrol show job -d`: each node's line says which GPUs the job got there, `GRES=gpu:2(IDX:0-1)` (with a
# type, `GRES=gpu:a100:1(IDX:3)`)
GPU_INDICES = re.compile(r"\bGRES=gpu(?::[^:(\s]+)?:\d+\(IDX:([\d,-]+)\)")


def parse_gpu_indices(output: str) -> tuple[str, ...]:
    """The GPU indices a running job was given on its node, as Slurm numbers them (its CUDA_VISIBLE_DEVICES)."""
    found: list[str] = []
    for listed in GPU_INDICES.findall(output):
        for part in listed.split(","):
            low, _, high = part.partition("-")
            found += [str(i) for i in range(int(low), int(high or low) + 1)]
    return tuple(found)


def parse_job_id(output: str) -> int:
    """The id in `sbatch --parsable` output (`12`, or `12;cluster` on a federation); ValueError without one."""
    lines = output.strip().splitlines()
    if not lines or not lines[-1].split(";")[0].isdigit():
        raise ValueError(f"no job id in sbatch's output {output!r}")
    return int(lines[-1].split(";")[0])


def bash_literal(text: str) -> str:
    """`text` as one bash word: single-quoted, or $'...' when it holds control characters (sbatch refuses \\r)."""
    if not any(ord(c) < 32 and c not in "\n\t" or ord(c) == 127 for c in text):
        return shlex.quote(text)
    escaped = []
    for c in text:
        if c in "\\'":
            escaped.append("\\" + c)
        elif ord(c) < 32 or ord(c) == 127:
            escaped.append(f"\\x{ord(c):02x}")
        else:
            escaped.append(c)
    return "$'" + "".join(escaped) + "'"


def batch_script(command: str, functions: Mapping[str, str] | None = None) -> str:
    """A batch script that runs `command` with `bash -c`, exec'd so Slurm's signals reach it directly; the
    caller's exported shell functions go to that bash through env(1), which bash imports them from."""
    # Everything after the first command line is the quoted word, which sbatch does not scan for #SBATCH.
    env = "".join(f"{bash_literal(f'{k}={v}')} " for k, v in (functions or {}).items())
    return f"#!/bin/bash\nexec {'/usr/bin/env ' + env if env else ''}/bin/bash -c {bash_literal(command)}\n"


def array_script(commands: Mapping[int, str], functions: Mapping[str, str] | None = None) -> str:
    """The batch script of an array job: each task runs the command of its index (SLURM_ARRAY_TASK_ID), as
    batch_script does, with its index in BABYSIT_ARRAY_INDEX."""
    env = "".join(f"{bash_literal(f'{k}={v}')} " for k, v in (functions or {}).items())
    run = f"exec {'/usr/bin/env ' + env if env else ''}/bin/bash -c"
    cases = "".join(f"{index}) {run} {bash_literal(command)} ;;\n" for index, command in commands.items())
    return (f'#!/bin/bash\nexport BABYSIT_ARRAY_INDEX="$SLURM_ARRAY_TASK_ID"\ncase "$SLURM_ARRAY_TASK_ID" in\n{cases}'
            'esac\necho "babysit: no command for array index $SLURM_ARRAY_TASK_ID" >&2\nexit 127\n')


def sbatch_args(*, name: str, cwd: str, mem_bytes: int, cpus: int, time_limit_s: float | None, output: str,
                partition: str | None, account: str | None, comment: str | None = None,
                dependency: str | None = None, gpus: int = 0) -> list[str]:
    """sbatch's options for one task; the script comes on stdin."""
    for text in (name, comment or ""):
        if any(c in text for c in ("\n", "\r", SEP)):
            raise ValueError(f"a job's name and comment are one line each: {text!r}")
    args = [
        "--parsable", f"--job-name={name}", f"--chdir={cwd}", f"--output={output}",  # stderr joins stdout
        "--nodes=1", "--ntasks=1", f"--cpus-per-task={max(1, cpus)}",
        f"--mem={max(1, math.ceil(mem_bytes / MiB))}M",
        # A job re-run after a node failure would run the command a second time unasked.
        "--no-requeue",
    ]
    if time_limit_s is not None and math.isfinite(time_limit_s):
        args.append(f"--time={max(1, math.ceil(time_limit_s / 60))}")  # whole minutes
    if partition:
        args.append(f"--partition={partition}")
    if account:
        args.append(f"--account={account}")
    if comment:
        args.append(f"--comment={comment}")
    if dependency:
        args.append(f"--dependency={dependency}")
    if gpus:  # Slurm's generic resource: the cluster assigns the devices and sets CUDA_VISIBLE_DEVICES
        args.append(f"--gres=gpu:{gpus}")
    return args


def job_environment(task_env: Mapping[str, str], slurm_env: Mapping[str, str]) -> dict[str, str]:
    """sbatch's environment, which it copies into the job: the task's, plus how to reach the cluster."""
    # SBATCH_* and SLURM_* would change how sbatch submits (or pose as another job's): not the task's to set.
    env = {k: v for k, v in task_env.items() if not k.startswith(("SBATCH_", "SLURM_"))}
    for key in ("SLURM_CONF",):
        if key in slurm_env:
            env[key] = slurm_env[key]
    if "PATH" not in env and "PATH" in slurm_env:
        env["PATH"] = slurm_env["PATH"]
    return env


# --- running the commands -----------------------------------------------------------------------


class Slurm:
    """Slurm's client commands, run with `env` (default: this process's; SLURM_CONF names the cluster)."""

    def __init__(self, env: Mapping[str, str] | None = None, timeout: float = 60) -> None:
        self.env = dict(os.environ if env is None else env)
        self.timeout = timeout  # a command retries an unreachable controller for a long time

    async def _run(self, argv: list[str], *, env: Mapping[str, str] | None = None, stdin: str | None = None,
                   ok_errors: tuple[str, ...] = ()) -> str:
        """A command's stdout; SlurmError when it fails, unless its stderr holds one of `ok_errors`."""
        # Found on our PATH: a task's environment need not name Slurm's directory.
        binary = shutil.which(argv[0], path=self.env.get("PATH", os.defpath)) or argv[0]
        run_env = {**self.env, "SLURM_TIME_FORMAT": "%s"} if env is None else dict(env)
        try:
            proc = await asyncio.create_subprocess_exec(
                binary, *argv[1:], env=run_env, stdin=asyncio.subprocess.PIPE if stdin is not None else
                asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as e:
            raise SlurmError.of(argv, None, str(e)) from e
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None),
                                              self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise SlurmError.of(argv, None, f"no answer within {self.timeout:.0f}s") from None
        stderr = err.decode(errors="replace")
        if proc.returncode != 0 and not any(e in stderr for e in ok_errors):
            raise SlurmError.of(argv, proc.returncode, stderr)
        return out.decode(errors="replace")

    async def submit(self, *, name: str, command: str, cwd: str, env: Mapping[str, str], mem_bytes: int,
                     cpus: int, time_limit_s: float | None, output: str, partition: str | None = None,
                     account: str | None = None, comment: str | None = None, dependency: str | None = None,
                     array: Mapping[int, str] | None = None, limit: int = 0, gpus: int = 0) -> int:
        """Submit `command` (run by `bash -c` in `cwd`, stdout and stderr to `output`) as a batch job; its id.
        `dependency` is sbatch's (afterok:12:13,afterany:14): Slurm holds the job until it is met. With `array`
        (index -> command), one array job (`--array=...%limit`) whose task of each index runs its command."""
        args = sbatch_args(name=name, cwd=cwd, mem_bytes=mem_bytes, cpus=cpus, time_limit_s=time_limit_s,
                           output=output, partition=partition, account=account, comment=comment,
                           dependency=dependency, gpus=gpus)
        variables, functions = split_env(env)
        script = batch_script(command, functions)
        if array:
            args.append(f"--array={','.join(map(str, array))}" + (f"%{limit}" if limit else ""))
            script = array_script(array, functions)
        argv = ["sbatch", *args]
        out = await self._run(argv, env=job_environment(variables, self.env), stdin=script)
        try:
            return parse_job_id(out)
        except ValueError as e:
            raise SlurmError.of(argv, 0, str(e)) from None

    async def jobs(self, keys: Iterable[str]) -> dict[str, Job]:
        """The jobs among `keys` (`12`, or `12_3` for an array's task) that the controller or the accounting
        knows; unknown ones are absent."""
        wanted = sorted(set(keys), key=key_order)
        if not wanted:
            return {}
        listed = ",".join(wanted)
        # squeue fails when it knows none of the ids; it lists the known ones of a mixed list.
        out = await self._run(["squeue", "-h", "-r", "-t", "all", "-j", listed, "-O", SQUEUE_FORMAT],
                              ok_errors=("Invalid job id specified",))
        found = {k: j for k, j in parse_squeue(out).items() if k in wanted}
        forgotten = [k for k in wanted if k not in found]
        if forgotten:
            # Without slurmdbd there is no record to ask: those jobs are unknown everywhere.
            out = await self._run(["sacct", "-X", "-n", "-P", f"--delimiter={SEP}", "-j",
                                   ",".join(forgotten), "-o", SACCT_FIELDS],
                                  ok_errors=("accounting storage is disabled",))
            found.update({k: j for k, j in parse_sacct(out).items() if k in forgotten})
        return found

    async def usages(self, job_ids: Iterable[int]) -> dict[int, JobUsage]:
        """The batch steps' current usage, in one call; a job whose step is not running (yet, or any more)
        is absent."""
        wanted = sorted(set(job_ids))
        if not wanted:
            return {}
        # sstat says "not found running" (or "couldn't get steps") on stderr for such a job, and exits 0.
        out = await self._run(["sstat", "-j", ",".join(f"{i}.batch" for i in wanted), "-n", "-P", "--noconvert",
                               f"--format={SSTAT_FIELDS}"])
        return parse_sstat(out)

    async def cancel(self, key: str, signal: str = "TERM") -> None:
        """Send `signal` to every process of the job (`12`, or an array's task `12_3`; KILL: cancel it); a job
        already gone is no error."""
        # (scancel takes --signal=KILL as a cancel too: no user can SIGKILL a job's processes before KillWait)
        if signal.upper().removeprefix("SIG") == "KILL":
            # Ends the job as CANCELLED: SIGTERM to every step, SIGKILL after the cluster's KillWait.
            argv = ["scancel", key]
        else:
            # Without --full a signal other than KILL skips the batch step, i.e. the task's own processes.
            argv = ["scancel", "--full", f"--signal={signal}", key]
        await self._run(argv, ok_errors=_GONE)

    async def gpus_of(self, key: str) -> tuple[str, ...]:
        """The GPUs a running job was given (their indices on its node)."""
        return parse_gpu_indices(await self._run(["scontrol", "show", "job", "-d", key]))

    async def hold(self, key: str, held: bool) -> None:
        """Keep a pending job from starting, or let it start again."""
        await self._run(["scontrol", "hold" if held else "release", key], ok_errors=_GONE)

    async def by_name(self, name: str, ended_too: bool = False) -> list[Job]:
        """This user's jobs named exactly `name`, oldest first: live ones, and with `ended_too` those the
        controller still remembers (for its MinJobAge)."""
        return [j for j in await self.by_name_prefix(name, ended_too) if j.name == name]

    async def by_name_prefix(self, prefix: str, ended_too: bool = False) -> list[Job]:
        """This user's jobs whose name starts with `prefix`, oldest first (see by_name)."""
        # Filtered here: squeue's --name takes a comma-separated list of exact names.
        out = await self._run(["squeue", "-h", "-r", "--me", *(["-t", "all"] if ended_too else []), "-O",
                               SQUEUE_FORMAT])
        found = [j for j in parse_squeue(out).values() if j.name.startswith(prefix) and (ended_too or not j.ended)]
        return sorted(found, key=lambda j: key_order(j.key))

    async def nodes(self, partition: str | None = None) -> list[Node]:
        """The nodes of `partition` (None: the default one) that can run jobs now."""
        return parse_sinfo(await self._run(["sinfo", "-N", "-h", "-O", SINFO_FORMAT]), partition)

    async def free(self, partition: str | None = None) -> tuple[int, float]:
        """Unallocated memory (bytes) and idle CPUs, summed over the usable nodes of `partition`."""
        nodes = await self.nodes(partition)
        return sum(n.free_mem_bytes for n in nodes), float(sum(n.idle_cpus for n in nodes))
