"""What the daemon and the CLI agree on: bus names, states, kill reasons, errors and exit codes."""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any, ClassVar

BUS_NAME = "org.babysit"
SCHEDULER_PATH = "/org/babysit/Scheduler"
SCHEDULER_INTERFACE = "org.babysit.Scheduler"
TASK_INTERFACE = "org.babysit.Task"
TASKS_PATH = f"{SCHEDULER_PATH}/tasks"
UNIT_PREFIX = "babysit-"
SLICE = "babysit.slice"
DAEMON_UNIT = "babysitd.service"


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self not in (State.QUEUED, State.RUNNING)


class KillReason(StrEnum):
    USER = "user"
    TIMEOUT = "timeout"
    OOM = "oom"
    MEM_2X_SUSTAINED = "mem_2x_sustained"
    CPU_2X_SUSTAINED = "cpu_2x_sustained"
    GPU_MEM_2X_SUSTAINED = "gpu_mem_2x_sustained"  # on one of its GPUs: no cgroup caps GPU memory
    OBSERVABILITY_STALL = "observability_stall"
    PRESSURE = "pressure"
    DEPENDENCY = "dependency"  # never run: a task it was to run after did not end as required


class ExitCode(IntEnum):
    OK = 0
    NEGATIVE = 1  # task not completed, daemon not running, timeout
    USAGE = 2  # bad usage or a refused request


def label_escape(text: str) -> str:
    """An object-path element for any string, escaped as systemd's bus_label_escape does."""
    return "".join(c if c.isascii() and c.isalnum() else f"_{ord(c):02x}" for c in text) or "_"


def unit_name(task: str) -> str:
    return f"{UNIT_PREFIX}{task}.service"


def output_matches(task: str) -> list[str]:
    """journalctl's matches for a task's output: its unit, or its unit's SyslogIdentifier.

    journald learns a line's unit from the writer's cgroup when it reads the line; a line it reads after
    a short-lived writer exited has no unit, but still the identifier systemd sent when it connected.
    """
    return [f"_SYSTEMD_USER_UNIT={unit_name(task)}", "+", f"SYSLOG_IDENTIFIER={log_identifier(task)}"]


def log_identifier(task: str) -> str:
    """The SyslogIdentifier of a task's unit: the unit's name without `.service`."""
    return f"{UNIT_PREFIX}{task}"


def task_path(task: str) -> str:
    return f"{TASKS_PATH}/{label_escape(task)}"


def log_command(task: str) -> str:
    return f"journalctl --user -u {UNIT_PREFIX}{task}"


class BabysitError(Exception):
    """A request babysit refuses; each kind has one D-Bus error name and exits the CLI with 2."""

    dbus_name: ClassVar[str] = "org.babysit.Error.Failed"
    exit_code: ClassVar[ExitCode] = ExitCode.USAGE


class InvalidArgument(BabysitError):
    dbus_name = "org.babysit.Error.InvalidArgument"


class NameInUse(BabysitError):
    dbus_name = "org.babysit.Error.NameInUse"

    @classmethod
    def of(cls, name: str) -> NameInUse:
        return cls(f"task {name!r} is still queued or running; pick another name or wait for it")


class NoSuchTask(BabysitError):
    dbus_name = "org.babysit.Error.NoSuchTask"


class ExceedsCap(BabysitError):
    dbus_name = "org.babysit.Error.ExceedsCap"


class CapacityExceeded(BabysitError):
    """The message is the capacity_exceeded JSON object."""

    dbus_name = "org.babysit.Error.CapacityExceeded"


class CapsUnavailable(BabysitError):
    """The user manager cannot apply memory/CPU caps (controllers not delegated)."""

    dbus_name = "org.babysit.Error.CapsUnavailable"


class NotRunning(BabysitError):
    """The task is not in a state the request applies to (e.g. adjusting a finished task)."""

    dbus_name = "org.babysit.Error.NotRunning"


class QueueFull(BabysitError):
    """As many tasks are queued or running as babysit keeps (config max_live_tasks)."""

    dbus_name = "org.babysit.Error.QueueFull"


class StoreUnavailable(BabysitError):
    """babysit's store takes no writes for now (a full disk, an I/O error); the message says why. Results
    are kept and written once it does: a new task must wait until then."""

    dbus_name = "org.babysit.Error.StoreUnavailable"
    exit_code = ExitCode.NEGATIVE


class ExecutorUnavailable(BabysitError):
    """Where tasks run cannot be reached now (the Slurm controller does not answer); the message says what
    failed. babysit keeps asking and takes new tasks again once it answers."""

    dbus_name = "org.babysit.Error.ExecutorUnavailable"
    exit_code = ExitCode.NEGATIVE


class StateUnsafe(BabysitError):
    """babysitd will not keep its state where it would have to (others could write there, or it cannot be
    made): it answers every request with why, until that is fixed."""

    dbus_name = "org.babysit.Error.StateUnsafe"
    exit_code = ExitCode.NEGATIVE


ERRORS: dict[str, type[BabysitError]] = {
    cls.dbus_name: cls
    for cls in (InvalidArgument, NameInUse, NoSuchTask, ExceedsCap, CapacityExceeded, CapsUnavailable, NotRunning,
                QueueFull, StoreUnavailable, ExecutorUnavailable, StateUnsafe)
}


# --- the terminal JSON, as the daemon sends it and the CLI prints it -------------------------------

# The terminal JSON's keys in order; for a kill, kill_reason and kill_hint come first.
RESULT_KEYS = (
    "name", "status", "exit_code", "signal", "started_at", "finished_at", "elapsed_s", "peak_mem_bytes",
    "cpu_seconds", "estimated_time_s", "kill_timeout_s", "observability_interval_s", "estimated_mem_bytes",
    "estimated_cpu_cores", "mem_pct_limit", "cpu_pct_limit", "memory_max_bytes", "cpu_quota_pct",
    "runtime_max_s", "unit", "log_cmd",
)
KILL_KEYS = ("kill_reason", "kill_hint")
# after them, where they apply: its chain, its attempts (and what follows this one), its sweep
WORKFLOW_KEYS = ("after", "attempt", "attempts", "next_attempt", "retry", "group", "array_index")
# what a queued task waits for while admission is drained (`babysit drain`)
DRAINED = "babysit undrain (admission is drained)"
# ... and what queue control and stops add, where they apply (core.report.control)
CONTROL_KEYS = ("priority", "held", "signals", "stop_signal", "stop_grace_s", "warn_signal", "paused_since",
                "paused_by", "backstop_at", "paused_s")
# ... and a task's GPUs, where it asked for some (core.report.gpus)
GPU_KEYS = ("gpus", "estimated_gpu_mem_bytes", "gpu_uuids", "peak_gpu_mem_bytes")
# `babysit history`'s keys, in order
HISTORY_KEYS = (
    "name", "run_id", "status", "kill_reason", "exit_code", "submitted_at", "elapsed_s", "peak_mem_bytes",
    "p95_cpu_cores", "estimated_time_s", "estimated_mem_bytes", "estimated_cpu_cores", "command", "cwd", "attempt",
    "attempts", "group", "peak_gpu_mem_bytes",
)


def terminal_only(report: dict[str, Any]) -> dict[str, Any]:
    """The terminal JSON's keys of a fuller status report."""
    kept = {*KILL_KEYS, *RESULT_KEYS, *WORKFLOW_KEYS, *CONTROL_KEYS, *GPU_KEYS, "detail"}
    return {k: v for k, v in report.items() if k in kept}


def complete(report: dict[str, Any]) -> dict[str, Any]:
    """A report read back from D-Bus (which has no null) with its absent keys as None, in order."""
    keys = [k for k in KILL_KEYS if k in report] + list(RESULT_KEYS)
    return {k: report.get(k) for k in keys} | {k: v for k, v in report.items() if k not in keys}
