"""The bounded usage series: evenly spaced, never longer than MAX_POINTS, peaks and output kept."""

from __future__ import annotations

from babysit.core.timeline import FIRST_STEP_S, MAX_POINTS, Timeline, percentile


def sampled(seconds: int, every: float = 1.0, mem=lambda t: 100, cpu=lambda t: 1.0, out=lambda t: t) -> Timeline:
    timeline, t = Timeline(), 0.0
    while t < seconds:
        timeline = timeline.add(t, mem(t), cpu(t), out(t))
        t += every
    return timeline


def test_samples_within_one_span_make_one_point() -> None:
    timeline = Timeline().add(0.1, 10, 1.0, None).add(0.5, 30, 3.0, 0.4).add(0.9, 20, 2.0, None)
    (point,) = timeline.points
    assert (point.at_s, point.mem_bytes, point.cpu_cores, point.samples, point.last_output_s) == (0.0, 30, 2.0, 3, 0.4)


def test_a_short_run_keeps_every_second() -> None:
    timeline = sampled(60)
    assert timeline.step_s == FIRST_STEP_S
    assert [p.at_s for p in timeline.points] == [float(t) for t in range(60)]


def test_a_week_long_run_stays_bounded_and_evenly_spaced() -> None:
    timeline = sampled(7 * 86400, every=5.0)
    assert MAX_POINTS // 2 <= len(timeline.points) <= MAX_POINTS
    gaps = {b.at_s - a.at_s for a, b in zip(timeline.points, timeline.points[1:])}
    assert gaps == {timeline.step_s}
    assert timeline.points[-1].at_s + timeline.step_s >= 7 * 86400 - 5


def test_merging_keeps_the_peak_and_the_mean() -> None:
    # one second at 9 GiB in a long run at 1 GiB: the chart must still show it
    spike = 3000
    timeline = sampled(20000, mem=lambda t: 9 << 30 if t == spike else 1 << 30, cpu=lambda t: 2.0 if t % 2 else 0.0)
    assert max(p.mem_bytes for p in timeline.points) == 9 << 30
    assert sum(p.mem_bytes == 9 << 30 for p in timeline.points) == 1
    assert all(abs(p.cpu_cores - 1.0) < 1e-9 for p in timeline.points[:-1])
    assert sum(p.samples for p in timeline.points) == 20000


def test_output_activity_per_span() -> None:
    # prints during its first 10 s, then falls silent
    timeline = sampled(30, out=lambda t: min(t, 9.5))
    wrote = timeline.as_dict()["wrote"]
    assert wrote == [True] * 10 + [False] * 20


def test_the_store_form_round_trips() -> None:
    timeline = sampled(1000, every=3.0)
    assert Timeline.from_json(timeline.to_json()) == timeline


def test_percentile() -> None:
    assert percentile([], 95) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile([float(v) for v in range(1, 101)], 95) == 95.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
