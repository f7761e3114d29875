"""Compact charts for a terminal: a series as one line of block characters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from babysit.core.quantities import format_duration, format_size
from babysit.core.timeline import percentile

BLOCKS = " ▁▂▃▄▅▆▇█"


def columns(values: Sequence[float], width: int) -> list[float]:
    """At most `width` values: neighbours share a column, which shows their highest (a spike stays visible)."""
    if len(values) <= width:
        return list(values)
    return [max(values[i * len(values) // width:(i + 1) * len(values) // width]) for i in range(width)]


def sparkline(values: Sequence[float], top: float, width: int = 60) -> str:
    """`values` against `top` (a cap: a full block is the cap reached; above it stays full)."""
    if top <= 0:
        return ""
    steps = len(BLOCKS) - 1
    return "".join(BLOCKS[min(steps, max(0, round(v / top * steps)))] if v > 0 else BLOCKS[0]
                   for v in columns(values, width))


def activity(wrote: Sequence[bool], width: int = 60) -> str:
    """Output over time: a bar where the task printed, a dot where it was silent."""
    return "".join("█" if w else "·" for w in columns([1.0 if w else 0.0 for w in wrote], width))


def usage_charts(status: dict[str, Any], timeline: dict[str, Any], width: int = 60) -> list[tuple[str, str]]:
    """Memory and CPU over the run against the estimate and the cap, and when it printed: (label, line) rows."""
    if not timeline.get("at_s"):
        return []
    mem_cap, cpu_cap = status["memory_max_bytes"], status["cpu_quota_pct"] / 100
    mem, cpu = timeline["mem_bytes"], timeline["cpu_cores"]
    span = format_duration(timeline["at_s"][-1] + timeline["step_s"])
    return [
        ("memory", f"{sparkline(mem, mem_cap, width)}  peak {format_size(max(mem))}, "
                   f"estimate {format_size(status['estimated_mem_bytes'])}, cap {format_size(mem_cap)}"),
        ("cpu", f"{sparkline(cpu, cpu_cap, width)}  p95 {percentile(cpu, 95):.1f} cores, "
                f"estimate {status['estimated_cpu_cores']:g}, cap {cpu_cap:g}"),
        ("output", f"{activity(timeline['wrote'], width)}  over {span}, {timeline['step_s']:g}s a point"),
    ]
