"""A task's status and terminal result as JSON, built from the daemon's task model (the key order is
the protocol's)."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from typing import Any

from babysit.core.hints import kill_hint
from babysit.core.history import PastRun
from babysit.core.protocol import HISTORY_KEYS, State, log_command, unit_name
from babysit.core.quantities import format_duration
from babysit.core.task import Task, TaskSpec


def timestamp(at: float | None) -> str | None:
    """ISO 8601 in UTC, to the millisecond."""
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def result(task: Task, now: float) -> dict[str, Any]:
    """The terminal JSON (also the core of `status` for a task still queued or running)."""
    e, caps, outcome = task.spec.estimates, task.caps, task.outcome
    end = task.finished_at or now
    report: dict[str, Any] = {}
    if outcome and outcome.state == State.KILLED:
        report |= {"kill_reason": str(outcome.kill_reason), "kill_hint": kill_hint(task)}
    report |= {
        "name": task.name,
        "status": str(task.state),
        "exit_code": outcome.exit_code if outcome else None,
        "signal": outcome.signal if outcome else None,
        "started_at": timestamp(task.started_at),
        "finished_at": timestamp(task.finished_at),
        "elapsed_s": round(end - task.started_at, 3) if task.started_at else None,
        "peak_mem_bytes": task.usage.peak_mem_bytes,
        # None (JSON null) when the kernel's figure could not be read, never a made-up 0
        "cpu_seconds": None if task.usage.cpu_seconds is None else round(task.usage.cpu_seconds, 3),
        "estimated_time_s": e.time_s,
        "kill_timeout_s": e.kill_timeout_s,
        "observability_interval_s": e.observability_interval_s,
        "estimated_mem_bytes": e.mem_bytes,
        "estimated_cpu_cores": e.cpu_cores,
        "mem_pct_limit": task.spec.mem_pct_limit,
        "cpu_pct_limit": task.spec.cpu_pct_limit,
        "memory_max_bytes": caps.memory_max_bytes,
        "cpu_quota_pct": caps.cpu_quota_pct,
        "runtime_max_s": caps.runtime_max_s,
        # a Slurm job's output is a file (shlex.join quotes it for a shell)
        "unit": f"slurm job {task.job.key}" if task.job else unit_name(task.name),
        "log_cmd": shlex.join(["cat", output]) if (output := output_file(task)) else log_command(task.name),
    }
    if outcome and outcome.detail:
        report["detail"] = outcome.detail
    report |= task.spec.workflow.as_dict()
    if outcome and outcome.retry:  # a retried run's result says what follows (next_attempt), or why nothing does
        report |= {"next_attempt": outcome.next_attempt or None, "retry": outcome.retry}
    return report | control(task) | gpus(task)


def gpus(task: Task) -> dict[str, Any]:
    """A task's GPUs, where it asked for some: how many, its estimate on each, which it got, its peak."""
    e = task.spec.estimates
    if not e.gpus:
        return {}
    return {"gpus": e.gpus, "estimated_gpu_mem_bytes": e.gpu_mem_bytes, "gpu_uuids": list(task.gpus),
            "peak_gpu_mem_bytes": task.usage.peak_gpu_mem_bytes}


def control(task: Task) -> dict[str, Any]:
    """What queue control and stops add, where they apply: priority, a hold, a pause, the signals babysit sent."""
    spec, stopping, paused = task.spec, task.spec.stopping, task.paused_at is not None
    shown = {
        "priority": spec.priority or None,
        "held": task.held or None,
        "signals": [{"signal": s.signal, "at": timestamp(s.at), "why": s.why} for s in task.signals] or None,
        "stop_signal": stopping.signal if stopping.signal != "SIGTERM" else None,
        "stop_grace_s": stopping.grace_s or None,
        "warn_signal": f"{stopping.warn_signal}@{format_duration(stopping.warn_before_s)}"
        if stopping.warn_signal else None,
        "paused_since": timestamp(task.paused_at) if paused else None,
        "paused_by": task.paused_by if paused else None,
        # a pause does not move the executor's backstop: babysit stops a task still paused just before it
        "backstop_at": timestamp(task.started_at + task.caps.runtime_max_s) if paused and task.started_at else None,
        "paused_s": round(task.paused_s, 3) or None,
    }
    return {key: value for key, value in shown.items() if value is not None}


def status(task: Task, now: float) -> dict[str, Any]:
    """Everything the record of a run tells: the result fields plus the spec and the usage now."""
    return result(task, now) | {
        "command": task.spec.command,
        "cwd": task.spec.cwd,
        "submitted_at": timestamp(task.submitted_at),
        "mem_bytes": task.usage.mem_bytes,
        "cpu_cores": round(task.usage.cpu_cores, 3),
        "silent_s": None,  # journald tells, when asked: the daemon fills it in for a running task
        "estimates_from": task.spec.estimates_from or None,
    } | ({"gpu_mem_bytes": task.usage.gpu_mem_bytes, "gpu_utilization_pct": task.usage.gpu_utilization_pct}
         if task.gpus else {}) | ({"output_file": output} if (output := output_file(task)) else {})


def output_file(task: Task) -> str | None:
    """The file that holds a run's output, where it is not in the journal: a Slurm job's, or a unit's on a
    host whose journald keeps none the user can read."""
    return task.job.output if task.job else task.output_file


LISTED_COMMAND_CHARS = 1024  # a List reply of the most tasks stays a few MB (D-Bus arrays end at 64 MiB)


def listed(task: Task, now: float) -> dict[str, Any]:
    """A run's record in `List`: its status, with a long command cut short (`Status` has all of it)."""
    record = status(task, now)
    if len(task.spec.command) > LISTED_COMMAND_CHARS:
        record["command"] = task.spec.command[:LISTED_COMMAND_CHARS] + "…"
    return record


def risk_event(task: Task, dim: str, actual: float, estimate: float, ratio: float, at: float) -> dict[str, Any]:
    """A runaway_risk event as `wait` prints it."""
    return {"event": "runaway_risk", "name": task.name, "dim": dim, "actual": actual, "estimate": estimate,
            "ratio": ratio, "at": timestamp(at)}


def history_entry(run: PastRun) -> dict[str, Any]:
    """A finished run as `babysit history --json` shows it: the protocol's HISTORY_KEYS, in their order;
    each is the PastRun field of its name but for the few written out here."""
    shown = {"run_id": run.id, "status": str(run.state), "submitted_at": timestamp(run.submitted_at),
             "elapsed_s": None if run.elapsed_s is None else round(run.elapsed_s, 3),
             "p95_cpu_cores": None if run.p95_cpu_cores is None else round(run.p95_cpu_cores, 3)}
    return {key: shown[key] if key in shown else getattr(run, key) for key in HISTORY_KEYS}


def estimate(spec: TaskSpec, runs: int) -> dict[str, Any]:
    """What `babysit estimate` prints: the estimates `run` would use, and where they come from."""
    e = spec.estimates
    return {"name": spec.name, "command": spec.command, "cwd": spec.cwd, "runs": runs,
            "estimates_from": spec.estimates_from or None, "estimated_time_s": e.time_s,
            "kill_timeout_s": e.kill_timeout_s, "estimated_mem_bytes": e.mem_bytes, "estimated_cpu_cores": e.cpu_cores,
            } | ({"gpus": e.gpus, "estimated_gpu_mem_bytes": e.gpu_mem_bytes} if e.gpus else {})


def notification(task: Task) -> tuple[str, str]:
    """A desktop notification of a task's end: its summary and its body."""
    outcome, summary = task.outcome, f"babysit: {task.name} {task.state}"
    elapsed = format_duration(task.finished_at - task.started_at) if task.started_at and task.finished_at else None
    if outcome and outcome.kill_reason:
        return f"{summary} ({outcome.kill_reason})", kill_hint(task)
    if outcome and outcome.exit_code:
        return summary, f"exit code {outcome.exit_code}" + (f" after {elapsed}" if elapsed else "")
    return summary, (f"after {elapsed}" if elapsed else outcome.detail if outcome else "")
