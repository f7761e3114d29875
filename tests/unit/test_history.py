"""Learning from earlier runs: which runs are kin, the estimates they suggest, and the hints that cite them."""

from __future__ import annotations

import pytest

from babysit.core.history import HEADROOM, LAST_RUNS, Learned, PastRun, kin, learn, name_stem, spread
from babysit.core.protocol import State
from babysit.core.task import Spread

GiB = 1 << 30


def run(name: str, peak: int = 2 * GiB, elapsed: float = 100.0, cpu: float = 1.0, state: State = State.COMPLETED,
        command: str = "python train.py", cwd: str = "/w", run_id: int = 0) -> PastRun:
    return PastRun(run_id, name, command, cwd, state, None, 0, 0.0, elapsed, peak, cpu, 600.0, 4 * GiB, 4.0)


@pytest.mark.parametrize(("name", "stem"), [
    ("train", "train"), ("train-3", "train"), ("train_007", "train"), ("train-2026-12-01", "train"),
    ("train-20261201", "train"), ("train-2026-12-01T09-30", "train"), ("model.v2", "model"), ("42", "42"),
    ("resnet50-run-2", "resnet50-run"),
])
def test_name_stem(name: str, stem: str) -> None:
    assert name_stem(name) == stem


def test_kin_prefers_the_same_name_then_the_stem_then_the_command() -> None:
    runs = [run("train-1"), run("train-2"), run("eval", command="python eval.py"), run("train-2")]
    assert kin("train-2", "x", "/w", runs).relation == "of train-2"
    assert len(kin("train-2", "x", "/w", runs).runs) == 2
    assert kin("train-9", "x", "/w", runs).relation == "named like train"
    assert kin("nightly", "python eval.py", "/w", runs).relation == "of the same command in the same directory"
    assert kin("nightly", "python eval.py", "/elsewhere", runs) is None


def test_only_completed_runs_and_the_last_ones_count() -> None:
    runs = [run("t", peak=GiB * (i + 1)) for i in range(LAST_RUNS + 5)] + [run("t", peak=100 * GiB, state=State.KILLED)]
    found = kin("t", "", "", runs)
    assert len(found.runs) == LAST_RUNS and min(r.peak_mem_bytes for r in found.runs) == 6 * GiB


def test_learned_estimates_are_a_high_percentile_with_headroom_within_the_caps() -> None:
    runs = kin("t", "", "", [run("t", peak=p * GiB, elapsed=e, cpu=c)
                            for p, e, c in [(7, 3600, 3.0), (7.5, 7000, 3.5), (8, 7800, 2.9)]])
    learned = learn(runs, mem_cap_bytes=64 * GiB, cpu_cap_cores=8)
    assert learned.runs == 3
    assert learned.time_s == 7800 * HEADROOM
    assert learned.mem_bytes == 10 * GiB  # 8 GiB x 1.25
    assert learned.cpu_cores == 4.4  # 3.5 x 1.25, rounded up to a tenth
    capped = learn(runs, mem_cap_bytes=9 * GiB, cpu_cap_cores=2)
    assert (capped.mem_bytes, capped.cpu_cores) == (9 * GiB, 2)


def test_a_figure_no_run_measured_is_not_learned() -> None:
    learned = learn(kin("t", "", "", [run("t", peak=None, cpu=None)]), 64 * GiB, 8)
    assert learned.mem_bytes is None and learned.cpu_cores is None and learned.time_s == 125
    assert learned.wire() == {"estimated_time": 125}


def test_a_quick_first_run_does_not_starve_the_next() -> None:
    learned = learn(kin("t", "", "", [run("t", peak=1 << 20, elapsed=0.01, cpu=0.01)]), 64 * GiB, 8)
    assert (learned.time_s, learned.mem_bytes, learned.cpu_cores) == (60, 64 << 20, 1.0)


def test_what_run_says_of_learned_estimates() -> None:
    learned = Learned(3, "of train", 7800.0, int(7.5 * GiB), 3.6)
    assert learned.said(["estimated_time", "estimated_mem_bytes", "estimated_cpu_cores"]) == (
        "3 earlier runs of train: 2h10m, 7.5 GiB, 3.6 cores")
    assert learned.said(["estimated_mem_bytes"]) == "3 earlier runs of train: 7.5 GiB"


def test_spread() -> None:
    found = kin("t", "", "", [run("t", peak=p) for p in (9 * GiB, 8 * GiB, 10 * GiB)])
    assert spread(found, lambda r: r.peak_mem_bytes) == Spread(3, 8 * GiB, 10 * GiB)
    assert spread(None, lambda r: r.peak_mem_bytes) is None
