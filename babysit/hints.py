"""One actionable sentence per kill, built from what was measured against what was estimated."""

from __future__ import annotations

from babysit.protocol import KillReason
from babysit.quantities import format_duration, format_size, size_flag
from babysit.task import Task


def kill_hint(task: Task) -> str:
    """What to change before running `task` again, given why it was killed."""
    e, u, name = task.spec.estimates, task.usage, task.name
    reason = task.outcome.kill_reason if task.outcome else None
    if reason == KillReason.USER:
        return f"stopped on request (babysit kill --name={name}); run it again when wanted"
    if reason == KillReason.TIMEOUT:
        elapsed = elapsed_s(task) or e.kill_timeout_s
        return (f"ran {format_duration(elapsed)} vs estimate {format_duration(e.time_s)}, hit kill_timeout "
                f"{format_duration(e.kill_timeout_s)}: check for a hang, then re-run with "
                f"--estimated_time={format_duration(2 * elapsed)}")
    if reason in (KillReason.OOM, KillReason.MEM_2X_SUSTAINED):
        peak = max(u.peak_mem_bytes or u.mem_bytes, task.caps.memory_max_bytes if reason == KillReason.OOM else 0)
        return (f"peak {format_size(peak)} vs estimate {format_size(e.mem_bytes)}: audit memory use (rolling "
                f"reads, smaller batches), then re-run with --estimated_mem_bytes={size_flag(peak * 1.2)}")
    if reason == KillReason.CPU_2X_SUSTAINED:
        return (f"used {u.cpu_cores:.1f} cores vs estimate {e.cpu_cores:g}: limit its threads/workers, or "
                f"re-run with --estimated_cpu_cores={max(1, round(u.cpu_cores + 0.5))}")
    if reason == KillReason.OBSERVABILITY_STALL:
        return (f"no output for {format_duration(e.observability_interval_s)}: print progress (python -u, "
                f"flush=True), or re-run with --observability_interval={format_duration(2 * e.observability_interval_s)}")
    if reason == KillReason.PRESSURE:
        need = max(u.peak_mem_bytes or 0, e.mem_bytes)
        return (f"the host ran short of memory while it used {format_size(u.mem_bytes)} (estimate "
                f"{format_size(e.mem_bytes)}): re-run with --estimated_mem_bytes={size_flag(need * 1.2)} after "
                f"babysit wait_for_capacity --mem_bytes={size_flag(need * 1.2)} --cpu_cores={e.cpu_cores:g}")
    return ""


def elapsed_s(task: Task) -> float | None:
    if task.started_at is None:
        return None
    return (task.finished_at or task.started_at) - task.started_at
