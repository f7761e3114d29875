"""A run's usage over time, in a bounded series: however long it runs, at most MAX_POINTS points.

Each point covers `step_s` seconds of the run. When the series is full, neighbouring points are merged
in pairs and the step doubles, so a run of a minute and a run of a week both keep a few hundred
points, evenly spaced. A merged point keeps the highest memory and GPU memory (a peak must not be
smoothed away), the mean CPU (what the run used), and the newest line of output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

MAX_POINTS = 240
FIRST_STEP_S = 1.0


@dataclass(frozen=True)
class Point:
    at_s: float  # where its span starts, in seconds since the run started
    mem_bytes: int  # the highest sample in the span
    cpu_cores: float  # the mean of the span's samples
    samples: int  # how many samples the mean is over
    last_output_s: float | None  # its newest line of output, seconds since the start
    gpu_mem_bytes: int = 0  # the highest on its busiest GPU (0: none; a point stored before GPUs has none)

    def merged(self, later: Point) -> Point:
        total = self.samples + later.samples
        return Point(self.at_s, max(self.mem_bytes, later.mem_bytes),
                     (self.cpu_cores * self.samples + later.cpu_cores * later.samples) / total, total,
                     newest(self.last_output_s, later.last_output_s), max(self.gpu_mem_bytes, later.gpu_mem_bytes))


def newest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass(frozen=True)
class Timeline:
    step_s: float = FIRST_STEP_S
    points: tuple[Point, ...] = ()

    def add(self, at_s: float, mem_bytes: int, cpu_cores: float, last_output_s: float | None,
            gpu_mem_bytes: int = 0) -> Timeline:
        """The series with one more sample, `at_s` seconds into the run (samples come in time order), and
        the newest line of output known then, which counts for the span it was printed in."""
        sample = Point(self.slot(at_s), mem_bytes, cpu_cores, 1, None, gpu_mem_bytes)
        points = list(self.points)
        if points and points[-1].at_s == sample.at_s:
            points[-1] = points[-1].merged(sample)
        else:
            points.append(sample)
        if last_output_s is not None:  # learnt as a new span starts, it may well be the previous span's
            for i in (len(points) - 1, len(points) - 2):
                if i >= 0 and points[i].at_s <= last_output_s:
                    points[i] = replace(points[i], last_output_s=newest(points[i].last_output_s, last_output_s))
                    break
        timeline = replace(self, points=tuple(points))
        return timeline.halved() if len(points) > MAX_POINTS else timeline

    def slot(self, at_s: float) -> float:
        """The start of the span that holds `at_s`."""
        return (max(0.0, at_s) // self.step_s) * self.step_s

    def needs_point(self, at_s: float) -> bool:
        """Whether a sample at `at_s` would start a new point (the moment to ask what is slow to know)."""
        return not self.points or self.slot(at_s) != self.points[-1].at_s

    def halved(self) -> Timeline:
        """Twice the step, half the points: each pair of spans that now share a slot becomes one point."""
        step = self.step_s * 2
        merged: list[Point] = []
        for point in self.points:
            at = (point.at_s // step) * step
            if merged and merged[-1].at_s == at:
                merged[-1] = merged[-1].merged(point)
            else:
                merged.append(replace(point, at_s=at))
        return Timeline(step, tuple(merged))

    def wrote(self) -> list[bool]:
        """Per point: did the task print anything during its span."""
        return [p.last_output_s is not None for p in self.points]

    def p95_cpu_cores(self) -> float | None:
        """The cores the run used 95 % of the time (None before any sample)."""
        return percentile([p.cpu_cores for p in self.points], 95)

    def as_dict(self, gpus: bool = False) -> dict[str, Any]:
        """Columns, as `status --json` shows them: one list per figure, index by index (GPU memory for a run
        given GPUs)."""
        return {
            "step_s": self.step_s,
            "at_s": [p.at_s for p in self.points],
            "mem_bytes": [p.mem_bytes for p in self.points],
            "cpu_cores": [round(p.cpu_cores, 3) for p in self.points],
            "wrote": self.wrote(),
        } | ({"gpu_mem_bytes": [p.gpu_mem_bytes for p in self.points]} if gpus else {})

    def to_json(self) -> dict[str, Any]:
        """Everything, for the store."""
        return {"step_s": self.step_s, "points": [[p.at_s, p.mem_bytes, p.cpu_cores, p.samples, p.last_output_s,
                                                   p.gpu_mem_bytes] for p in self.points]}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Timeline:
        return Timeline(data["step_s"], tuple(Point(*p) for p in data["points"]))


def percentile(values: list[float], pct: float) -> float | None:
    """The nearest-rank percentile (`pct` in 0-100) of `values`, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats going wrong at exact ranks
    return ordered[int(rank) - 1]
