"""The task model: a validated spec, the caps derived from it, and the record of one run."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from babysit.core.gpus import Gpu, never_fits
from babysit.core.protocol import ExceedsCap, InvalidArgument, KillReason, State
from babysit.core.quantities import duration_text, format_duration, format_size, parse_duration, parse_size
from babysit.core.stopping import Sent, Stopping, parse_signal, parse_warn_signal
from babysit.core.workflow import (
    DEFAULT_RETRY_ON,
    MAX_RETRIES,
    Sweep,
    Workflow,
    member_command,
    member_name,
    parse_after,
    parse_array,
    parse_retry_on,
)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
EXPORTED_FUNCTION = re.compile(r"BASH_FUNC_[^=\s/]+%%")
KiB, GiB = 1 << 10, 1 << 30
# What one task may carry: every queued task is held in babysitd's memory with its command and environment,
# so these and config max_live_tasks bound it (tests/integration/test_load.py starts the largest store).
MAX_COMMAND_BYTES = 32 * KiB  # a longer script belongs in a file that the command runs
MAX_ENV_BYTES = 96 * KiB  # the caller's whole environment, names and values
DEFAULT_TIME_S = 600.0
DEFAULT_OBSERVABILITY_S = 300.0
DEFAULT_MEM_PCT = 40.0
DEFAULT_CPU_PCT = 90.0
DEFAULT_MEM_BYTES = 4 * GiB
DEFAULT_CPU_CORES = 4.0
DEFAULT_GPU_MEM_BYTES = 4 * GiB  # per GPU, at most the smallest device's memory
MAX_GPUS = 64
MAX_STOP_GRACE_S = 3600.0  # a stop that may take a year is no stop (Slurm's KillWait is at most 65533 s)
RUNTIME_BACKSTOP_MARGIN_S = 60.0  # RuntimeMaxSec ends a task even without the daemon, a little later
# systemd's own variables for a unit's processes; copying the caller's would mislead the task
SYSTEMD_ENV = {"NOTIFY_SOCKET", "INVOCATION_ID", "JOURNAL_STREAM", "LISTEN_PID", "LISTEN_FDS",
               "LISTEN_FDNAMES", "MANAGERPID", "SYSTEMD_EXEC_PID", "WATCHDOG_PID", "WATCHDOG_USEC"}


class Buffering(StrEnum):
    """How the task's C stdio output is buffered: by line (so native loggers are seen), or as the program does."""

    LINE = "line"
    DEFAULT = "default"


@dataclass(frozen=True)
class Host:
    """The capacity babysit may hand out: RAM and cores (after any configured budget), and its GPUs."""

    mem_bytes: int
    cores: float
    # as NVML showed them when babysitd started (their totals do not change); None where a cluster's scheduler
    # knows its GPUs and babysit does not (Slurm's gres)
    gpus: tuple[Gpu, ...] | None = ()


@dataclass(frozen=True)
class Estimates:
    time_s: float
    mem_bytes: int
    cpu_cores: float
    kill_timeout_s: float
    observability_interval_s: float
    gpus: int = 0  # --gpus: devices of its own
    gpu_mem_bytes: int = 0  # --estimated_gpu_mem_bytes: on each of them (0 without GPUs)


@dataclass(frozen=True)
class Caps:
    """What systemd and the daemon enforce on one unit."""

    mem_limit_bytes: int  # the per-task cap: mem_pct_limit % of the host
    cpu_limit_cores: float  # the per-task cap: cpu_pct_limit % of the host's cores
    memory_max_bytes: int  # MemoryMax: 3 x estimate, within the cap
    cpu_quota_pct: float  # CPUQuota, in percent of one CPU as systemd counts it
    runtime_max_s: float  # RuntimeMaxSec: a backstop past kill_timeout, for when no daemon runs


@dataclass(frozen=True)
class TaskSpec:
    name: str
    command: str
    cwd: str  # "~" is the user's home, as systemd reads WorkingDirectory
    env: Mapping[str, str]
    estimates: Estimates
    mem_pct_limit: float
    cpu_pct_limit: float
    request_id: str = ""  # the client's id for this submission, so a retried Run is not a second task
    buffering: Buffering = Buffering.LINE
    estimates_from: str = ""  # where estimates the caller left out came from: earlier runs (babysit.history)
    workflow: Workflow = Workflow()  # its chain, attempts and sweep (core.workflow)
    priority: int = 0  # higher goes first in babysit's queue; equal priorities keep their order
    stopping: Stopping = Stopping()  # how it is stopped, and warned first (core.stopping)


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid task name {name!r}: 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return name


def _get(wire: Mapping[str, Any], key: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    value = wire.get(key, default)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
        raise InvalidArgument(f"{key} has the wrong type ({type(value).__name__})")
    return value


def _duration(wire: Mapping[str, Any], key: str, default: float) -> float:
    value = _get(wire, key, (str, int, float))
    if value is None:
        return default
    try:
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
    except InvalidArgument as e:
        raise InvalidArgument(f"{key}: {e}") from None
    if not 0 < seconds <= 365 * 86400:
        raise InvalidArgument(f"{key} must be more than 0 and at most 365d")
    return seconds


def _size(wire: Mapping[str, Any], key: str) -> int | None:
    value = _get(wire, key, (str, int, float))
    if value is None:
        return None
    size = parse_size(value) if isinstance(value, str) else value
    if not 0 < size <= 1 << 60:  # NaN fails this too
        raise InvalidArgument(f"{key} must be more than 0 bytes and at most 1 EiB")
    return int(size)


def _number(wire: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = _get(wire, key, (str, int, float))
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise InvalidArgument(f"{key} must be a number, not {value!r}") from None
    if not low < number <= high:
        raise InvalidArgument(f"{key} must be more than {low:g} and at most {high:g}")
    return number


def is_exported_function(name: str, value: str) -> bool:
    """Whether a variable is a shell function the caller exported (`export -f f`: BASH_FUNC_f%%='() {...}'),
    in the form bash itself imports. Environment Modules and Lmod export theirs on most HPC login nodes."""
    return bool(EXPORTED_FUNCTION.fullmatch(name)) and value.startswith("() {")


def unusable_env_names(env: Mapping[str, str]) -> list[str]:
    """The names no task can be given: neither a variable name nor an exported function (they are dropped)."""
    return [k for k, v in env.items() if not ENV_NAME.fullmatch(k) and not is_exported_function(k, v)]


def split_env(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The variables (what a unit's Environment takes) and the exported functions, which no unit takes by
    name: the executors hand those to bash through env(1), and bash imports them as it would its own."""
    functions = {k: v for k, v in env.items() if is_exported_function(k, v)}
    return {k: v for k, v in env.items() if k not in functions}, functions


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment as a task can take it: variables and exported functions (other names are
    dropped), no systemd-owned variables, not too big."""
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise InvalidArgument("env must map names to strings")
    # bounded before anything else is done with it: a caller's environment is the caller's to size
    size = sum(len(k.encode(errors="replace")) + len(v.encode(errors="replace")) + 2 for k, v in env.items())
    if size > MAX_ENV_BYTES:
        largest = sorted(env, key=lambda k: len(env[k]), reverse=True)[:3]
        raise InvalidArgument(f"the environment is {size} bytes, more than babysit takes ({MAX_ENV_BYTES}); the "
                              f"largest variables: {', '.join(largest)} (unset what the task does not need)")
    unusable = set(unusable_env_names(env))
    env = {k: v for k, v in env.items() if k not in unusable}
    return {k: v for k, v in env.items() if k not in SYSTEMD_ENV and "\0" not in v}


SPEC_FIELDS = {"name", "command", "cwd", "env", "estimated_time", "kill_timeout", "observability_interval",
               "mem_pct_limit", "cpu_pct_limit", "estimated_mem_bytes", "estimated_cpu_cores", "request_id",
               "buffering", "after", "retries", "retry_on", "array", "priority", "stop_signal", "stop_grace",
               "warn_signal", "gpus", "estimated_gpu_mem_bytes"}
# what `Adjust` may change: a run's command, environment and directory are what it was started with
ADJUSTABLE_FIELDS = ("estimated_time", "kill_timeout", "observability_interval", "estimated_mem_bytes",
                     "estimated_cpu_cores", "mem_pct_limit", "cpu_pct_limit", "priority", "estimated_gpu_mem_bytes")
MAX_PRIORITY = 1_000_000
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def spec_from_wire(wire: Mapping[str, Any], host: Host) -> TaskSpec:
    """A complete, validated spec from the D-Bus `Run` dictionary; defaults resolved against the host."""
    unknown = set(wire) - SPEC_FIELDS
    if unknown:
        raise InvalidArgument(f"unknown spec fields: {', '.join(sorted(unknown))}")
    name = validate_name(wire.get("name"))
    command = _get(wire, "command", (str,))
    if not command or not command.strip() or "\0" in command:
        raise InvalidArgument("command must be a non-empty shell command")
    cwd = _get(wire, "cwd", (str,), "~")
    if cwd != "~" and (not cwd.startswith("/") or "\0" in cwd):
        raise InvalidArgument(f"cwd must be an absolute path, not {cwd!r}")
    if len(command.encode()) > MAX_COMMAND_BYTES:
        raise InvalidArgument(f"command is {len(command.encode())} bytes, more than babysit takes "
                              f"({MAX_COMMAND_BYTES}): put the script in a file and run that")
    env = _get(wire, "env", (dict,), {})
    mem_pct = _number(wire, "mem_pct_limit", 0, 100) or DEFAULT_MEM_PCT
    cpu_pct = _number(wire, "cpu_pct_limit", 0, 100) or DEFAULT_CPU_PCT
    estimates = estimates_from_wire(wire, host, mem_pct, cpu_pct)
    request_id = _get(wire, "request_id", (str,), "")
    if request_id and not REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument("request_id must be 1 to 64 letters, digits, '-' or '_'")
    buffering = _get(wire, "buffering", (str,), Buffering.LINE)
    if buffering not in set(Buffering):
        raise InvalidArgument(f"buffering must be one of {', '.join(Buffering)}, not {buffering!r}")
    return TaskSpec(name, command, cwd, clean_env(env), estimates, mem_pct, cpu_pct, request_id,
                    Buffering(buffering), workflow=workflow_from_wire(wire, name), priority=priority_from_wire(wire),
                    stopping=stopping_from_wire(wire))


def priority_from_wire(wire: Mapping[str, Any]) -> int:
    value = _get(wire, "priority", (int, str), 0)
    try:
        priority = int(value)
    except ValueError:
        raise InvalidArgument(f"priority must be a whole number, not {value!r}") from None
    if abs(priority) > MAX_PRIORITY:
        raise InvalidArgument(f"priority must be between -{MAX_PRIORITY} and {MAX_PRIORITY}")
    return priority


def stopping_from_wire(wire: Mapping[str, Any]) -> Stopping:
    """--stop_signal, --stop_grace and --warn_signal of a `Run` dictionary."""
    stop_signal = _get(wire, "stop_signal", (str,)) or "SIGTERM"
    warn = _get(wire, "warn_signal", (str,)) or ""
    warn_signal, warn_before_s = parse_warn_signal(warn) if warn else ("", 0.0)
    grace_s = _duration(wire, "stop_grace", 0.0)
    if grace_s > MAX_STOP_GRACE_S:
        raise InvalidArgument(f"stop_grace must be at most {format_duration(MAX_STOP_GRACE_S)}: a stop must end")
    return Stopping(parse_signal(stop_signal, "stop_signal"), grace_s, warn_signal, warn_before_s)


def _words(wire: Mapping[str, Any], key: str) -> str | None:
    """A list flag as one comma-separated string: D-Bus callers may send `s` or `as`."""
    value = wire.get(key)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return _get(wire, key, (str,))


def workflow_from_wire(wire: Mapping[str, Any], name: str) -> Workflow:
    """The chain, retries and sweep a `Run` dictionary asks for (dependencies not bound to runs yet)."""
    after, retry_on, array = _words(wire, "after"), _words(wire, "retry_on"), _get(wire, "array", (str,))
    retries = _number(wire, "retries", -1, MAX_RETRIES) or 0
    if retries != int(retries):
        raise InvalidArgument("retries must be a whole number")
    sweep = parse_array(array) if array else None
    if sweep:
        validate_name(member_name(name, max(sweep.indices)))  # the longest member name must be a name too
    return Workflow(after=parse_after(after) if after else (), retries=int(retries),
                    retry_on=parse_retry_on(retry_on) if retry_on else DEFAULT_RETRY_ON,
                    group=name if sweep else "", limit=sweep.limit if sweep else 0)


def sweep_members(spec: TaskSpec, sweep: Sweep, sweep_id: str) -> list[TaskSpec]:
    """One spec per index of a sweep: named `<group>-<index>`, `{index}` in its command replaced, and
    BABYSIT_ARRAY_INDEX in its environment."""
    return [replace(spec, name=member_name(spec.name, index), command=member_command(spec.command, index),
                    env={**spec.env, "BABYSIT_ARRAY_INDEX": str(index)},
                    workflow=replace(spec.workflow, index=index, sweep=sweep_id))
            for index in sweep.indices]


def estimates_from_wire(wire: Mapping[str, Any], host: Host, mem_pct: float, cpu_pct: float) -> Estimates:
    """The estimates of a `Run` dictionary, defaults resolved against the host and the per-task caps."""
    time_s = _duration(wire, "estimated_time", DEFAULT_TIME_S)
    mem_cap, cpu_cap = host.mem_bytes * mem_pct / 100, host.cores * cpu_pct / 100
    return Estimates(
        time_s=time_s,
        # defaults yield to small hosts: a default `run` must pass the caps anywhere
        mem_bytes=_size(wire, "estimated_mem_bytes") or int(min(DEFAULT_MEM_BYTES, mem_cap)),
        cpu_cores=_number(wire, "estimated_cpu_cores", 0, 1 << 20) or min(DEFAULT_CPU_CORES, cpu_cap),
        kill_timeout_s=_duration(wire, "kill_timeout", 2 * time_s),
        observability_interval_s=_duration(wire, "observability_interval", DEFAULT_OBSERVABILITY_S),
        **gpus_from_wire(wire, host),
    )


def gpus_from_wire(wire: Mapping[str, Any], host: Host) -> dict[str, int]:
    """--gpus and --estimated_gpu_mem_bytes; the default per-GPU estimate yields to small devices."""
    gpus = _number(wire, "gpus", -1, MAX_GPUS) or 0
    if gpus != int(gpus):
        raise InvalidArgument("gpus must be a whole number")
    asked = _size(wire, "estimated_gpu_mem_bytes")
    if not gpus:
        if asked:
            raise InvalidArgument("estimated_gpu_mem_bytes is per GPU: give --gpus too")
        return {}
    smallest = min((g.total_bytes for g in host.gpus or ()), default=DEFAULT_GPU_MEM_BYTES)
    return {"gpus": int(gpus), "gpu_mem_bytes": asked or min(DEFAULT_GPU_MEM_BYTES, smallest)}


def spec_to_wire(spec: TaskSpec) -> dict[str, Any]:
    e = spec.estimates
    return {
        "name": spec.name, "command": spec.command, "cwd": spec.cwd, "env": dict(spec.env),
        "estimated_time": e.time_s, "kill_timeout": e.kill_timeout_s,
        "observability_interval": e.observability_interval_s, "mem_pct_limit": spec.mem_pct_limit,
        "cpu_pct_limit": spec.cpu_pct_limit, "estimated_mem_bytes": e.mem_bytes,
        "estimated_cpu_cores": e.cpu_cores, "request_id": spec.request_id, "buffering": str(spec.buffering),
        "priority": spec.priority, "stop_signal": spec.stopping.signal,
        **({"stop_grace": spec.stopping.grace_s} if spec.stopping.grace_s else {}),
        **({"warn_signal": f"{spec.stopping.warn_signal}@{duration_text(spec.stopping.warn_before_s)}"}
           if spec.stopping.warn_signal else {}),
        **({"gpus": e.gpus, "estimated_gpu_mem_bytes": e.gpu_mem_bytes} if e.gpus else {}),
    }


def limits(spec: TaskSpec, host: Host) -> tuple[int, float]:
    """The per-task caps: memory (bytes) and CPU (cores) no estimate may exceed."""
    return int(host.mem_bytes * spec.mem_pct_limit / 100), host.cores * spec.cpu_pct_limit / 100


def derive_caps(spec: TaskSpec, host: Host) -> Caps:
    """The caps of SPEC 'Caps applied to each unit'; an estimate above its cap is refused."""
    mem_cap, cpu_cap = limits(spec, host)
    e = spec.estimates
    if e.mem_bytes > mem_cap:
        raise ExceedsCap(
            f"exceeds_cap: estimated memory {format_size(e.mem_bytes)} is above the per-task cap "
            f"{format_size(mem_cap)} ({spec.mem_pct_limit:g}% of {format_size(host.mem_bytes)}); "
            "lower --estimated_mem_bytes or raise --mem_pct_limit"
        )
    if e.cpu_cores > cpu_cap:
        raise ExceedsCap(
            f"exceeds_cap: estimated CPU {e.cpu_cores:g} cores is above the per-task cap {cpu_cap:g} cores "
            f"({spec.cpu_pct_limit:g}% of {host.cores:g}); lower --estimated_cpu_cores or raise --cpu_pct_limit"
        )
    if host.gpus is not None:
        never_fits(host.gpus, e.gpus, e.gpu_mem_bytes)
    return Caps(
        mem_limit_bytes=mem_cap,
        cpu_limit_cores=cpu_cap,
        memory_max_bytes=min(3 * e.mem_bytes, mem_cap),
        cpu_quota_pct=cpu_cap * 100,
        # systemd cannot move RuntimeMaxSec on a running unit; leave `adjust` room to extend kill_timeout
        runtime_max_s=2 * e.kill_timeout_s + RUNTIME_BACKSTOP_MARGIN_S,
    )


@dataclass(frozen=True)
class Usage:
    """What sampling saw of a running task."""

    mem_bytes: int = 0
    peak_mem_bytes: int | None = None  # the kernel's high-water mark; None until measured
    cpu_seconds: float | None = None  # the kernel's CPU total; None until measured
    cpu_cores: float = 0.0
    gpu_mem_bytes: int = 0  # on its busiest GPU, as NVML shows its processes (babysit.core.gpus)
    peak_gpu_mem_bytes: int | None = None  # the most seen there; None until measured
    gpu_utilization_pct: float = 0.0


@dataclass(frozen=True)
class Spread:
    """How one figure ranged over earlier runs of a task, kept with a kill so its hint can cite them."""

    runs: int
    low: float
    high: float


@dataclass(frozen=True)
class Job:
    """The Slurm job that runs a task (a systemd unit needs no record: its name follows from the task's)."""

    job_id: int  # the id sbatch gave: the job's, or its array's (a sweep is one array job)
    output: str  # the file its output goes to
    index: int | None = None  # of an array's task: its index

    @property
    def key(self) -> str:
        """`12`, or `12_3` for task 3 of array job 12: what Slurm's commands take."""
        return f"{self.job_id}_{self.index}" if self.index is not None else str(self.job_id)


@dataclass(frozen=True)
class Outcome:
    """How a run ended."""

    state: State
    exit_code: int | None = None
    signal: int | None = None
    kill_reason: KillReason | None = None
    detail: str = ""  # why, for `unknown`, or what systemd said
    history: Spread | None = None  # for a kill: the killing figure over the earlier runs
    next_attempt: int = 0  # the attempt queued after this one (--retries); 0 when none is
    retry: str = ""  # what the next attempt asks for, or why none follows


@dataclass(frozen=True)
class Task:
    """One run of a named task, as the store keeps it."""

    id: int
    spec: TaskSpec
    caps: Caps
    state: State
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    kill_requested: KillReason | None = None  # a stop babysit asked for, kept across restarts
    outcome: Outcome | None = None
    usage: Usage = field(default_factory=Usage)
    job: Job | None = None  # where an executor other than systemd runs it
    output_file: str | None = None  # a file that holds its output, where babysit cannot read it from journald
    held: bool = False  # `babysit hold`: kept back in the queue until released
    signals: tuple[Sent, ...] = ()  # what babysit sent it while it ran: warnings, then its stop
    paused_at: float | None = None  # `babysit pause`: when (wall clock), while it is paused
    paused_by: str = ""  # how: "freeze" (systemd's FreezeUnit) or "SIGSTOP" where a unit cannot be frozen
    paused_s: float = 0.0  # how long its earlier pauses lasted: no deadline counts them
    gpus: tuple[str, ...] = ()  # the UUIDs of the GPUs it was given at its start

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def in_babysits_queue(self) -> bool:
        """Queued and not yet handed to its executor (a queued task with a job waits in the executor's queue)."""
        return self.state == State.QUEUED and self.job is None

    def with_(self, **changes: Any) -> Task:
        return replace(self, **changes)
