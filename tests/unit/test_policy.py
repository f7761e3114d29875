import pytest

from babysit.core.outcome import UnitEnd, classify, oom_evidence
from babysit.core.policy import Load, Memory, Observation, evaluate, pressure_victims, sample_interval, stalled
from babysit.core.protocol import KillReason, State
from babysit.core.task import Estimates

MiB = 1 << 20
EST = Estimates(time_s=60, mem_bytes=100 * MiB, cpu_cores=1, kill_timeout_s=120, observability_interval_s=30)
TOLERANCE = 10


def run(samples: list[tuple[float, int, float]], est: Estimates = EST) -> tuple[list, KillReason | None]:
    """Feed (at, mem MiB, cores) samples; return every risk raised and the first kill."""
    memory, risks = Memory(), []
    for at, mem, cores in samples:
        verdict = evaluate(Observation(at, mem * MiB, cores), est, memory, TOLERANCE)
        memory, risks = verdict.memory, risks + list(verdict.risks)
        if verdict.kill:
            return risks, verdict.kill
    return risks, None


def test_each_dimension_warns_once() -> None:
    risks, kill = run([(1, 150, 0.5), (2, 160, 0.5), (3, 170, 1.5), (61, 50, 1.5)])
    assert [(r.dim, r.ratio) for r in risks] == [("mem", 1.5), ("cpu", 1.5)]  # elapsed: a deadline
    assert kill is None


@pytest.mark.parametrize("samples, kill", [
    # 2x for just under the window: kept
    ([(0, 200, 0), (5, 250, 0), (9.9, 210, 0)], None),
    # 2x for the whole window: stopped
    ([(0, 200, 0), (5, 250, 0), (10, 210, 0)], KillReason.MEM_2X_SUSTAINED),
    # just below 2x for long: kept
    ([(0, 199, 0), (20, 199, 0), (40, 199, 0)], None),
    # bursts shorter than the window, again and again: kept
    ([(0, 250, 0), (5, 250, 0), (6, 100, 0), (7, 250, 0), (12, 250, 0), (13, 90, 0)], None),
    ([(0, 10, 2.0), (4, 10, 2.5), (10, 10, 2.1)], KillReason.CPU_2X_SUSTAINED),
    # both at once: memory is named first
    ([(0, 300, 3.0), (10, 300, 3.0)], KillReason.MEM_2X_SUSTAINED),
])
def test_two_x_sustained(samples: list, kill: KillReason | None) -> None:
    assert run(samples)[1] == kill


def test_a_stall_is_a_whole_interval_without_a_line() -> None:
    assert stalled(last_output_at=100.0, now=130.0, interval_s=30)
    assert not stalled(last_output_at=100.0, now=129.9, interval_s=30)


def test_samples_never_decide_timeouts_or_stalls() -> None:
    """Those are the daemon's timers (exact to the deadline); a sample past them changes nothing."""
    assert evaluate(Observation(10_000, 0, 0), EST, Memory(), TOLERANCE).kill is None


def test_a_task_well_within_its_estimates_is_sampled_less_often() -> None:
    est = EST
    assert sample_interval(est.mem_bytes // 4, est.cpu_cores / 4, est, tick_s=1, tolerance_s=30) == 5
    assert sample_interval(est.mem_bytes, est.cpu_cores / 4, est, tick_s=1, tolerance_s=30) == 1  # near its memory
    assert sample_interval(0, est.cpu_cores, est, tick_s=1, tolerance_s=30) == 1  # near its CPU
    assert sample_interval(0, 0, est, tick_s=0.25, tolerance_s=2) == pytest.approx(2 / 6)  # a short window
    assert sample_interval(0, 0, est, tick_s=1, tolerance_s=2) == 1  # never more often than each tick


def test_pressure_stops_the_largest_overage_first() -> None:
    loads = [Load("within", 900 * MiB, 1000 * MiB), Load("small-over", 300 * MiB, 100 * MiB),
             Load("big-over", 800 * MiB, 200 * MiB)]
    assert pressure_victims(loads, free_bytes=400 * MiB, threshold_bytes=500 * MiB).victims == ("big-over",)
    assert pressure_victims(loads, free_bytes=0, threshold_bytes=1000 * MiB).victims == ("big-over", "small-over")
    # within-estimate tasks only while pressure remains once the exceeders are gone
    assert pressure_victims(loads, free_bytes=0, threshold_bytes=1500 * MiB).victims == ("big-over", "small-over")
    assert pressure_victims(loads[:1], free_bytes=1100 * MiB, threshold_bytes=1500 * MiB).victims == ("within",)


def test_a_pressure_dip_spares_tasks_within_their_estimates() -> None:
    """Something outside still allocating: until the pressure lasts, only estimate-exceeders are stopped."""
    loads = [Load("within", 10 * MiB, 64 * MiB), Load("over", 100 * MiB, 50 * MiB)]
    assert pressure_victims(loads[:1], free_bytes=498 * MiB, threshold_bytes=500 * MiB, sustained=False).victims == ()
    assert pressure_victims(loads[:1], free_bytes=498 * MiB, threshold_bytes=500 * MiB).victims == ("within",)
    assert pressure_victims(loads, free_bytes=395 * MiB, threshold_bytes=500 * MiB, sustained=False).victims == ("over",)
    assert pressure_victims(loads, free_bytes=395 * MiB, threshold_bytes=500 * MiB).victims == ("over",)


def test_a_runaway_goes_first_and_alone() -> None:
    """Seen in CI: the shortfall was a few MiB more than the runaway held; the 3 MiB bystander is
    judged only once the runaway's memory is back."""
    loads = [Load("bystander", 3 * MiB, 64 * MiB), Load("runaway", 302 * MiB, 120 * MiB)]
    assert pressure_victims(loads, free_bytes=0, threshold_bytes=304 * MiB).victims == ("runaway",)
    back = pressure_victims(loads[:1], free_bytes=302 * MiB, threshold_bytes=304 * MiB)
    assert back.victims == ("bystander",)  # if it truly remains babysit's own, and lasts (sustained)


def test_memory_still_held_by_a_task_being_stopped_counts_as_freed() -> None:
    """The runaway's stop is under way: the bystander is not stopped for the memory the runaway still holds."""
    bystander = [Load("bystander", 10 * MiB, 64 * MiB)]
    assert pressure_victims(bystander, free_bytes=495 * MiB, threshold_bytes=500 * MiB,
                            stopping_bytes=250 * MiB).victims == ()
    assert pressure_victims(bystander, free_bytes=495 * MiB, threshold_bytes=500 * MiB).victims == ("bystander",)


def test_pressure_from_outside_stops_nothing() -> None:
    loads = [Load("a", 100 * MiB, 50 * MiB)]
    verdict = pressure_victims(loads, free_bytes=100 * MiB, threshold_bytes=500 * MiB)
    assert (verdict.victims, verdict.external, verdict.shortfall_bytes) == ((), True, 400 * MiB)
    assert pressure_victims(loads, free_bytes=600 * MiB, threshold_bytes=500 * MiB).victims == ()


# recorded from this project's cgroup v1 machines and from systemd's v2 reports
@pytest.mark.parametrize("end, evidence, state, reason", [
    (UnitEnd("failed", "failed", "signal", 2, 9), True, State.KILLED, KillReason.OOM),  # v1 + notifier
    (UnitEnd("failed", "failed", "signal", 2, 9), False, State.FAILED, None),  # kill -9 by someone else
    (UnitEnd("failed", "failed", "oom-kill", 2, 9), False, State.KILLED, KillReason.OOM),  # v2
    (UnitEnd("failed", "failed", "signal", 2, 15), True, State.FAILED, None),  # SIGTERM is no OOM
])
def test_oom_recognition(end: UnitEnd, evidence: bool, state: State, reason: KillReason | None) -> None:
    outcome = classify(end, None, evidence)
    assert (outcome.state, outcome.kill_reason) == (state, reason)


def test_oom_evidence_from_samples() -> None:
    assert oom_evidence(oom_kills=1, failcnt=0, peak_bytes=0, memory_max_bytes=300 * MiB)
    assert oom_evidence(oom_kills=0, failcnt=4, peak_bytes=0, memory_max_bytes=300 * MiB)
    assert oom_evidence(oom_kills=0, failcnt=0, peak_bytes=299 * MiB, memory_max_bytes=300 * MiB)
    assert not oom_evidence(oom_kills=0, failcnt=0, peak_bytes=200 * MiB, memory_max_bytes=300 * MiB)


def test_a_ratio_just_over_an_estimate_reads_over_1() -> None:
    from babysit.core.policy import RunawayRisk

    assert RunawayRisk("elapsed", 1.000319, 1.0).ratio == 1.001  # found by CI: it read 1.0
    assert RunawayRisk("mem", 150, 100).ratio == 1.5
