"""The kill policy: from what a task does now and did before, its warnings and whether it must stop."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from babysit.core.protocol import KillReason
from babysit.core.task import Estimates

DIMENSIONS = ("elapsed", "mem", "cpu", "gpu_mem")
TWICE = (("mem", KillReason.MEM_2X_SUSTAINED), ("cpu", KillReason.CPU_2X_SUSTAINED),
         ("gpu_mem", KillReason.GPU_MEM_2X_SUSTAINED))


@dataclass(frozen=True)
class Observation:
    """One sample of a running task (its elapsed time is a deadline of its own: see babysit.daemon.deadlines)."""

    at: float  # seconds on a monotonic clock
    mem_bytes: int
    cpu_cores: float
    gpu_mem_bytes: int = 0  # on its busiest GPU


@dataclass(frozen=True)
class Memory:
    """What the policy remembers of a task between samples."""

    warned: frozenset[str] = frozenset()  # dimensions already reported as runaway_risk
    over_2x_since: dict[str, float] = field(default_factory=dict)  # dimension -> when it reached 2x


@dataclass(frozen=True)
class RunawayRisk:
    dim: str
    actual: float
    estimate: float

    @property
    def ratio(self) -> float:
        """actual / estimate, rounded up at the third decimal: an exceeded estimate never reads as 1.0."""
        return math.ceil(self.actual / self.estimate * 1000) / 1000 if self.estimate else 0.0


@dataclass(frozen=True)
class Verdict:
    memory: Memory
    risks: tuple[RunawayRisk, ...] = ()
    kill: KillReason | None = None
    opened: tuple[str, ...] = ()  # dimensions whose 2x window began with this sample (--warn_signal goes)


def actuals(obs: Observation, est: Estimates) -> dict[str, tuple[float, float]]:
    """(actual, estimate) per sampled dimension (GPU memory for a task given GPUs)."""
    gpu = {"gpu_mem": (obs.gpu_mem_bytes, est.gpu_mem_bytes)} if est.gpus else {}
    return {"mem": (obs.mem_bytes, est.mem_bytes), "cpu": (obs.cpu_cores, est.cpu_cores)} | gpu


def stalled(last_output_at: float, now: float, interval_s: float) -> bool:
    """Silent for its whole observability interval: no line since `last_output_at` (or its start)."""
    return now - last_output_at >= interval_s


CALM_SAMPLE_MAX_S = 5.0


def sample_interval(mem_bytes: int, cpu_cores: float, est: Estimates, tick_s: float, tolerance_s: float) -> float:
    """How soon a task needs its next sample: each tick while it uses more than half of an estimate.

    A task well within both is sampled less often (watching must not cost what it guards), but often
    enough that a 2x window still starts within a sixth of the tolerance, and never less than every 5 s.
    """
    calm = mem_bytes <= est.mem_bytes / 2 and cpu_cores <= est.cpu_cores / 2
    return max(tick_s, min(CALM_SAMPLE_MAX_S, tolerance_s / 6)) if calm else tick_s


def evaluate(obs: Observation, est: Estimates, memory: Memory, tolerance_s: float) -> Verdict:
    """Warn the first time the memory, CPU or GPU memory estimate is exceeded; stop a task that is 2x over for
    the whole tolerance window. (The time estimate, kill_timeout and stalls are deadlines, not samples: see `stalled`.)"""
    figures = actuals(obs, est)
    risks = tuple(RunawayRisk(dim, actual, estimate) for dim, (actual, estimate) in figures.items()
                  if actual > estimate and dim not in memory.warned)
    since = dict(memory.over_2x_since)
    kill, opened = None, []
    for dim, reason in ((dim, reason) for dim, reason in TWICE if dim in figures):
        actual, estimate = figures[dim]
        if actual >= 2 * estimate:
            if dim not in since:
                opened.append(dim)
            since.setdefault(dim, obs.at)
            if obs.at - since[dim] >= tolerance_s and kill is None:
                kill = reason
        else:
            since.pop(dim, None)  # a burst shorter than the window is forgiven
    memory = replace(memory, warned=memory.warned | {r.dim for r in risks}, over_2x_since=since)
    return Verdict(memory, risks, kill, tuple(opened))


@dataclass(frozen=True)
class Load:
    """A running task as host pressure sees it."""

    name: str
    mem_bytes: int
    estimate_bytes: int

    @property
    def overage(self) -> int:
        return self.mem_bytes - self.estimate_bytes


@dataclass(frozen=True)
class PressureVerdict:
    victims: tuple[str, ...]
    external: bool  # babysit's tasks together are smaller than the shortfall: not theirs to fix
    shortfall_bytes: int


def pressure_victims(loads: Sequence[Load], free_bytes: int, threshold_bytes: int, sustained: bool = True,
                     stopping_bytes: int = 0) -> PressureVerdict:
    """Whom to stop when free memory is below the threshold.

    Estimate-exceeders go first, largest overage first; tasks within their estimates only while the
    shortfall remains, only once the pressure is `sustained` (a dip while something outside is still
    allocating must not cost a well-behaved task its run), and never in the same verdict as exceeders:
    whether they must go too is judged once the exceeders' memory is back (in CI, a runaway holding a
    few MiB less than the shortfall once cost a 3 MiB bystander its run). What tasks already being
    stopped still hold (`stopping_bytes`) is as good as free: it must not cost another task its run
    either. If all of babysit's tasks together use less than the shortfall, the pressure is someone
    else's: stop nothing.
    """
    shortfall = threshold_bytes - free_bytes - stopping_bytes
    if shortfall <= 0:
        return PressureVerdict((), False, 0)
    if sum(load.mem_bytes for load in loads) < shortfall:
        return PressureVerdict((), True, shortfall)
    exceeders = sorted((x for x in loads if x.overage > 0), key=lambda x: x.overage, reverse=True)
    within = sorted((x for x in loads if x.overage <= 0), key=lambda x: x.mem_bytes, reverse=True)
    victims, freed = [], 0
    for load in exceeders or (within if sustained else []):
        if freed >= shortfall:
            break
        victims.append(load.name)
        freed += load.mem_bytes
    return PressureVerdict(tuple(victims), False, shortfall)
