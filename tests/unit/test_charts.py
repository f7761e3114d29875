"""Terminal charts: a series against its cap, squeezed to a width without losing a spike."""

from __future__ import annotations

from babysit.cli.charts import activity, sparkline, usage_charts
from babysit.core.timeline import Timeline


def test_sparkline_scales_to_the_cap() -> None:
    assert sparkline([0, 50, 100, 200], top=100) == " ▄██"


def test_a_spike_survives_squeezing() -> None:
    line = sparkline([1.0] * 500 + [8.0] + [1.0] * 499, top=8, width=50)
    assert len(line) == 50 and line.count("█") == 1


def test_activity() -> None:
    assert activity([True, False, False, True]) == "█··█"


def test_usage_charts_name_the_estimate_and_the_cap() -> None:
    timeline = Timeline()
    for t in range(120):
        timeline = timeline.add(float(t), (1 << 30) if t < 60 else (2 << 30), 0.5, float(min(t, 30)))
    status = {"memory_max_bytes": 3 << 30, "cpu_quota_pct": 180.0, "estimated_mem_bytes": 1 << 30,
              "estimated_cpu_cores": 1.0}
    rows = dict(usage_charts(status, timeline.as_dict(), width=40))
    assert rows["memory"].endswith("peak 2 GiB, estimate 1 GiB, cap 3 GiB"), rows
    assert "p95 0.5 cores, estimate 1, cap 1.8" in rows["cpu"]
    assert rows["output"].startswith("█" * 10) and "·" in rows["output"]
    assert usage_charts(status, Timeline().as_dict()) == []
