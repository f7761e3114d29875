"""`babysit top`'s screen, drawn at 80 columns from plain figures."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from babysit.cli.top import board

GiB = 1 << 30
NOW = 1_000_000.0
RUNNING = {"name": "train-4", "status": "running", "started_at": datetime.fromtimestamp(NOW - 400, UTC).isoformat(),
           "mem_bytes": 3 * GiB, "estimated_mem_bytes": 2 * GiB, "cpu_cores": 1.0, "estimated_cpu_cores": 1.5,
           "kill_timeout_s": 1200.0, "observability_interval_s": 300.0, "memory_max_bytes": 6 * GiB,
           "cpu_quota_pct": 180.0, "silent_s": 3.0}
QUEUED = {"name": "prep", "status": "queued", "queue_position": 1, "waiting_for": "not enough memory",
          "estimated_mem_bytes": 8 * GiB, "estimated_cpu_cores": 2.0}
CAPACITY = {"free_mem_bytes": 10 * GiB, "host_mem_bytes": 16 * GiB, "available_mem_bytes": 4 * GiB,
            "available_cpu_cores": 1.5}


def screen(tasks: list[dict], width: int = 80) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(board(tasks, CAPACITY, NOW))
    return console.export_text().splitlines()


def test_what_a_person_sees_at_80_columns() -> None:
    lines = screen([RUNNING, QUEUED])
    assert all(len(line) <= 80 for line in lines), lines
    assert "1 running, 1 queued" in lines[0] and "room 4 GiB, 1.5 cores" in lines[0]
    train = next(line for line in lines if "train-4" in line)
    assert "3.0G/2.0G" in train and "1.0/1.5" in train
    assert "13m20s" in train  # kill_timeout 20m, 6m40s gone
    assert "3s/5m" in train  # silent for 3 s, of the 5 m it may be
    assert "████░░░░ 3.0G/2.0G" in train  # half the cap (6 GiB), past the estimate: no marker left
    assert "███░┃ 1.0/1.5" in train  # CPU under its estimate, on the scale of its cap (1.8 cores)
    prep = next(line for line in lines if "prep" in line)
    assert prep.strip() == "#1 prep  waiting: not enough memory; asks 8.0G, 2 cores"
    assert lines[-1].strip() == "q quits"


def test_an_empty_board_says_so() -> None:
    assert any("no task queued or running" in line for line in screen([]))


def test_bars_show_the_estimate_within_the_cap() -> None:
    from babysit.cli.top import bar

    assert str(bar(1.0, 2.0, 6.0, 12)) == "██░░┃░░░░░░░"  # a third of the estimate, the estimate a third of the cap
    assert str(bar(4.0, 2.0, 6.0, 12)) == "████████░░░░"  # twice the estimate: the marker is under the bar
    assert bar(4.0, 2.0, 6.0, 12).style == "red" and bar(1.0, 2.0, 6.0, 12).style == "green"


def test_a_chain_step_says_what_it_waits_for_and_a_retried_task_its_attempt() -> None:
    lines = screen([{**RUNNING, "attempt": 2, "attempts": 3},
                    {**QUEUED, "name": "evaluate", "waiting_for": "train-4 to complete (running now)"}])
    assert any("train-4 2/3" in line for line in lines), lines
    evaluate = next(line for line in lines if "evaluate" in line)
    assert evaluate.strip().startswith("#1 evaluate  waiting: train-4 to complete (running now)"), evaluate


def test_queue_control_shows_a_priority_a_pause_and_draining() -> None:
    paused = {**RUNNING, "paused_since": datetime.fromtimestamp(NOW - 100, UTC).isoformat(), "paused_s": 50.0}
    console = Console(width=80, record=True, color_system=None)
    console.print(board([paused, {**QUEUED, "priority": 5}], {**CAPACITY, "draining": True}, NOW))
    lines = console.export_text().splitlines()
    assert lines[1] == "admission is drained: nothing queued starts until babysit undrain", lines
    train = next(line for line in lines if "train-4" in line)
    assert "paused" in train and "15m50s" in train  # 400 s since its start, 150 s of it paused
    prep = next(line for line in lines if "prep" in line)
    assert prep.strip().startswith("#1 prep priority 5  waiting: not enough memory"), prep


def test_a_task_with_gpus_shows_its_gpu_memory_against_its_estimate() -> None:
    lines = screen([{**RUNNING, "gpus": 1, "gpu_mem_bytes": GiB, "estimated_gpu_mem_bytes": 2 * GiB}], width=100)
    assert any("train-4 gpu 1.0G/2.0G" in line for line in lines), lines
