"""What earlier runs tell about the next one: each run's figures, its kin, and estimates learned from them.

A run's kin are the completed runs of the same name; failing those, of names with the same stem
(`train-3` and `train-2026-12-01` are both `train`); failing those, of the same command in the same
directory. Estimates are a high percentile of the kin's figures with headroom, above floors, never above
the caps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from babysit.core.protocol import KillReason, State
from babysit.core.quantities import format_duration, format_size
from babysit.core.task import Spread, Task
from babysit.core.timeline import percentile

# what can be learned (GPU memory only for a task that asks for GPUs)
ESTIMATE_KEYS = ("estimated_time", "estimated_mem_bytes", "estimated_cpu_cores", "estimated_gpu_mem_bytes")
LAST_RUNS = 10  # estimates follow the recent runs: a task's needs drift as its code does
PERCENTILE = 90
HEADROOM = 1.25
MiB = 1 << 20
# floors: a quick first run (a `true`, a small input) must not starve the next one, whose estimates
# become its caps and its kill thresholds
MIN_TIME_S, MIN_MEM_BYTES, MIN_CPU_CORES = 60.0, 64 * MiB, 1.0
# trailing counters and dates: train-3, train_007, train-2026-12-01, train-20261201T0930, train.v2
STEM_TAIL = re.compile(r"(?:[-_.](?:v?\d+|\d{4}-\d{2}-\d{2}(?:[T_-]?\d{2}[:-]?\d{2}(?:[:-]?\d{2})?)?))+$")


@dataclass(frozen=True)
class PastRun:
    """One finished run's figures, as `babysit history` shows them and estimates learn from."""

    id: int
    name: str
    command: str
    cwd: str
    state: State
    kill_reason: str | None
    exit_code: int | None
    submitted_at: float
    elapsed_s: float | None
    peak_mem_bytes: int | None
    p95_cpu_cores: float | None
    estimated_time_s: float
    estimated_mem_bytes: int
    estimated_cpu_cores: float
    attempt: int | None = None  # of a task retried: which attempt of how many
    attempts: int | None = None
    group: str | None = None  # of a sweep's member: the sweep's name
    peak_gpu_mem_bytes: int | None = None  # on its busiest GPU, for a run given GPUs


def past_run(task: Task, p95_cpu_cores: float | None) -> PastRun:
    """A finished run's figures, from its record and its timeline's p95 CPU (a run too short for a
    timeline has only its mean)."""
    e, o, usage = task.spec.estimates, task.outcome, task.usage
    # the time it ran, its pauses left out: what the next run's time estimate should cover
    elapsed = task.finished_at - task.started_at - task.paused_s if task.started_at and task.finished_at else None
    if p95_cpu_cores is None and usage.cpu_seconds is not None and elapsed:
        p95_cpu_cores = usage.cpu_seconds / elapsed
    w = task.spec.workflow
    return PastRun(task.id, task.name, task.spec.command, task.spec.cwd, task.state,
                   str(o.kill_reason) if o and o.kill_reason else None, o.exit_code if o else None,
                   task.submitted_at, elapsed, usage.peak_mem_bytes, p95_cpu_cores, e.time_s, e.mem_bytes, e.cpu_cores,
                   w.attempt if w.retries else None, w.attempts if w.retries else None, w.group or None,
                   usage.peak_gpu_mem_bytes if task.gpus else None)


def name_stem(name: str) -> str:
    """`train-3` -> `train`: the name without trailing counters and dates (itself when that leaves nothing)."""
    return STEM_TAIL.sub("", name) or name


@dataclass(frozen=True)
class Kin:
    """Which earlier runs estimates come from, and how they are related to the new one."""

    runs: tuple[PastRun, ...]
    relation: str  # "of train", "named like train", ...


def kin(name: str, command: str, cwd: str, completed: Sequence[PastRun]) -> Kin | None:
    """The closest relatives among completed runs (oldest first): the last LAST_RUNS of them."""
    stem = name_stem(name)
    relations: list[tuple[str, Callable[[PastRun], bool]]] = [
        (f"of {name}", lambda r: r.name == name),
        (f"named like {stem}", lambda r: name_stem(r.name) == stem),
        ("of the same command in the same directory", lambda r: (r.command, r.cwd) == (command, cwd)),
    ]
    for relation, related in relations:
        runs = [r for r in completed if r.state == State.COMPLETED and related(r)][-LAST_RUNS:]
        if runs:
            return Kin(tuple(runs), relation)
    return None


@dataclass(frozen=True)
class Learned:
    """Estimates suggested by earlier runs; a figure none of them measured is None."""

    runs: int
    relation: str
    time_s: float | None
    mem_bytes: int | None
    cpu_cores: float | None
    gpu_mem_bytes: int | None = None

    def wire(self) -> dict[str, Any]:
        """As `Run` spec fields (only the figures learned)."""
        values = {"estimated_time": self.time_s, "estimated_mem_bytes": self.mem_bytes,
                  "estimated_cpu_cores": self.cpu_cores, "estimated_gpu_mem_bytes": self.gpu_mem_bytes}
        return {k: v for k, v in values.items() if v is not None}

    def said(self, taken: Sequence[str]) -> str:
        """`3 earlier runs of train: 2h10m, 7.5 GiB, 3.6 cores`, naming only the figures `taken` (wire keys)."""
        shown = {"estimated_time": lambda: format_duration(self.time_s or 0),
                 "estimated_mem_bytes": lambda: format_size(self.mem_bytes),
                 "estimated_cpu_cores": lambda: f"{self.cpu_cores:g} {'core' if self.cpu_cores == 1 else 'cores'}",
                 "estimated_gpu_mem_bytes": lambda: f"{format_size(self.gpu_mem_bytes)} per GPU"}
        figures = ", ".join(shown[k]() for k in shown if k in taken)
        return f"{self.runs} earlier {'run' if self.runs == 1 else 'runs'} {self.relation}: {figures}"


def learn(kin: Kin, mem_cap_bytes: int, cpu_cap_cores: float, gpu_cap_bytes: int | None = None) -> Learned:
    """A high percentile of the kin's figures with headroom, rounded up, above the floors, within the caps
    (GPU memory within the largest device's, where the host's GPUs are known)."""
    def high(values: list[float | None]) -> float | None:
        measured = [v for v in values if v is not None]
        return percentile(measured, PERCENTILE) * HEADROOM if measured else None  # type: ignore[operator]

    time_s = high([r.elapsed_s for r in kin.runs])
    mem = high([r.peak_mem_bytes for r in kin.runs])
    cpu = high([r.p95_cpu_cores for r in kin.runs])
    gpu = high([r.peak_gpu_mem_bytes for r in kin.runs])
    return Learned(
        runs=len(kin.runs),
        relation=kin.relation,
        time_s=None if time_s is None else max(MIN_TIME_S, float(math.ceil(time_s))),
        mem_bytes=None if mem is None else min(mem_cap_bytes, max(MIN_MEM_BYTES, math.ceil(mem / MiB) * MiB)),
        cpu_cores=None if cpu is None else min(cpu_cap_cores, max(MIN_CPU_CORES, math.ceil(cpu * 10) / 10)),
        gpu_mem_bytes=None if gpu is None else min(gpu_cap_bytes or 1 << 60, max(MIN_MEM_BYTES, math.ceil(gpu / MiB) * MiB)),
    )


def spread(kin: Kin | None, figure: Callable[[PastRun], float | None]) -> Spread | None:
    values = [v for v in (figure(r) for r in kin.runs) if v is not None] if kin else []
    return Spread(len(values), min(values), max(values)) if values else None


# the figure a kill's hint compares with earlier runs
KILLING_FIGURE: dict[KillReason, Callable[[PastRun], float | None]] = {
    KillReason.OOM: lambda r: r.peak_mem_bytes,
    KillReason.MEM_2X_SUSTAINED: lambda r: r.peak_mem_bytes,
    KillReason.TIMEOUT: lambda r: r.elapsed_s,
    KillReason.CPU_2X_SUSTAINED: lambda r: r.p95_cpu_cores,
    KillReason.GPU_MEM_2X_SUSTAINED: lambda r: r.peak_gpu_mem_bytes,
}
