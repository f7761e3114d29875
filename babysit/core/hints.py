"""One actionable sentence per kill, built from what was measured against what was estimated."""

from __future__ import annotations

from collections.abc import Callable

from babysit.core.protocol import KillReason
from babysit.core.quantities import format_duration, format_size, size_flag
from babysit.core.task import Spread, Task


def earlier(spread: Spread | None, verb: str, shown: Callable[[float], str]) -> str:
    """`; the last 3 runs peaked at 8.7 GiB–9.3 GiB`, when there were earlier runs to cite."""
    if spread is None:
        return ""
    runs = "the last run" if spread.runs == 1 else f"the last {spread.runs} runs"
    figures = shown(spread.low) if spread.low == spread.high else f"{shown(spread.low)}–{shown(spread.high)}"
    return f"; {runs} {verb} {figures}"


def suggested(task: Task) -> dict[str, str]:
    """The flags a killed run's hint tells to re-run with (`--retries` asks for exactly these), as `Run`
    spec fields; empty where a bigger figure would not help."""
    e, u = task.spec.estimates, task.usage
    reason = task.outcome.kill_reason if task.outcome else None
    past = task.outcome.history if task.outcome else None
    if reason == KillReason.TIMEOUT and paused_too_long(task):
        return {}  # a longer estimate would not have helped: the pause used up the backstop's room
    if reason == KillReason.TIMEOUT:
        longest = max(elapsed_s(task) or e.kill_timeout_s, past.high if past else 0)
        return {"estimated_time": format_duration(2 * longest)}
    if reason in (KillReason.OOM, KillReason.MEM_2X_SUSTAINED):
        peak = max(u.peak_mem_bytes or u.mem_bytes, task.caps.memory_max_bytes if reason == KillReason.OOM else 0)
        return {"estimated_mem_bytes": size_flag(max(peak, past.high if past else 0) * 1.2)}
    if reason == KillReason.GPU_MEM_2X_SUSTAINED:
        return {"estimated_gpu_mem_bytes": size_flag(max(u.peak_gpu_mem_bytes or u.gpu_mem_bytes,
                                                         past.high if past else 0) * 1.2)}
    if reason == KillReason.CPU_2X_SUSTAINED:
        return {"estimated_cpu_cores": f"{max(1, round(max(u.cpu_cores, past.high if past else 0) + 0.5))}"}
    if reason == KillReason.OBSERVABILITY_STALL:
        return {"observability_interval": format_duration(2 * e.observability_interval_s)}
    if reason == KillReason.PRESSURE:
        return {"estimated_mem_bytes": size_flag(max(u.peak_mem_bytes or 0, e.mem_bytes) * 1.2)}
    return {}


def kill_hint(task: Task) -> str:
    """What to change before running `task` again, given why it was killed (and how earlier runs went)."""
    e, u, name = task.spec.estimates, task.usage, task.name
    reason = task.outcome.kill_reason if task.outcome else None
    past = task.outcome.history if task.outcome else None
    flags = " ".join(f"--{key}={value}" for key, value in suggested(task).items())
    if reason == KillReason.USER:
        return f"stopped on request (babysit kill --name={name}); run it again when wanted"
    if reason == KillReason.DEPENDENCY:
        detail = task.outcome.detail if task.outcome else ""
        return f"never started: {detail}; see why with babysit status, fix it, then run the chain again"
    if reason == KillReason.TIMEOUT and (paused := paused_too_long(task)):
        return (f"paused for {format_duration(paused)}, and a pause does not move the backstop fixed at its "
                f"start ({format_duration(task.caps.runtime_max_s)} after it, about 2x kill_timeout): resume it "
                f"sooner (babysit resume --name={name}), or give it a larger --kill_timeout for more room")
    if reason == KillReason.TIMEOUT:
        elapsed = elapsed_s(task) or e.kill_timeout_s
        return (f"ran {format_duration(elapsed)} vs estimate {format_duration(e.time_s)}, hit kill_timeout "
                f"{format_duration(e.kill_timeout_s)}{earlier(past, 'took', format_duration)}: check for a hang, "
                f"then re-run with {flags}")
    if reason in (KillReason.OOM, KillReason.MEM_2X_SUSTAINED):
        peak = max(u.peak_mem_bytes or u.mem_bytes, task.caps.memory_max_bytes if reason == KillReason.OOM else 0)
        return (f"peak {format_size(peak)} vs estimate {format_size(e.mem_bytes)}"
                f"{earlier(past, 'peaked at', format_size)}: audit memory use (rolling reads, smaller batches), "
                f"then re-run with {flags}")
    if reason == KillReason.GPU_MEM_2X_SUSTAINED:
        peak = u.peak_gpu_mem_bytes or u.gpu_mem_bytes
        return (f"GPU memory peaked at {format_size(peak)} vs estimate {format_size(e.gpu_mem_bytes)} per GPU"
                f"{earlier(past, 'peaked at', format_size)}: smaller batches or activation checkpointing, "
                f"or re-run with {flags}")
    if reason == KillReason.CPU_2X_SUSTAINED:
        return (f"used {u.cpu_cores:.1f} cores vs estimate {e.cpu_cores:g}"
                f"{earlier(past, 'used', lambda c: f'{c:.1f} cores')}: limit its threads/workers, or "
                f"re-run with {flags}")
    if reason == KillReason.OBSERVABILITY_STALL:
        return (f"no output for {format_duration(e.observability_interval_s)}: print progress (python -u, "
                f"flush=True), or re-run with {flags}")
    if reason == KillReason.PRESSURE:
        need = max(u.peak_mem_bytes or 0, e.mem_bytes)
        return (f"the host ran short of memory while it used {format_size(u.mem_bytes)} (estimate "
                f"{format_size(e.mem_bytes)}): re-run with {flags} after "
                f"babysit wait_for_capacity --mem_bytes={size_flag(need * 1.2)} --cpu_cores={e.cpu_cores:g}")
    return ""


def paused_too_long(task: Task) -> float:
    """How long a task stopped at its timeout had been paused, where its pauses, not its kill_timeout, ended it
    (it had run less than its kill_timeout when its stop was sent); 0.0 otherwise."""
    stops = [sent.at for sent in task.signals if sent.is_stop]
    if not (task.paused_s and stops and task.started_at):
        return 0.0
    ran = stops[0] - task.started_at - task.paused_s
    return task.paused_s if ran < task.spec.estimates.kill_timeout_s - 0.5 else 0.0


def elapsed_s(task: Task) -> float | None:
    """How long the task ran, its pauses left out (what its kill_timeout counted)."""
    if task.started_at is None:
        return None
    return (task.finished_at or task.started_at) - task.started_at - task.paused_s
