"""`babysit top`'s screen, drawn at 80 columns from plain figures."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from babysit.top import board

GiB = 1 << 30
NOW = 1_000_000.0
RUNNING = {"name": "train-4", "status": "running", "started_at": datetime.fromtimestamp(NOW - 400, UTC).isoformat(),
           "mem_bytes": 3 * GiB, "estimated_mem_bytes": 2 * GiB, "cpu_cores": 1.0, "estimated_cpu_cores": 4.0,
           "kill_timeout_s": 1200.0, "silent_s": 2.0, "observability_interval_s": 300.0}
QUEUED = {"name": "prep", "status": "queued", "queue_position": 1, "waiting_for": "not enough memory"}
CAPACITY = {"free_mem_bytes": 10 * GiB, "host_mem_bytes": 16 * GiB, "available_mem_bytes": 4 * GiB,
            "available_cpu_cores": 1.5}


def screen(tasks: list[dict], width: int = 80) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(board(tasks, CAPACITY, NOW, fetched_at=NOW - 1))
    return console.export_text().splitlines()


def test_what_a_person_sees_at_80_columns() -> None:
    lines = screen([RUNNING, QUEUED])
    assert all(len(line) <= 80 for line in lines), lines
    assert "1 running, 1 queued" in lines[0] and "room 4 GiB, 1.5 cores" in lines[0]
    train = next(line for line in lines if "train-4" in line)
    assert "3 GiB/2 GiB" in train and "1.0/4" in train  # memory past its estimate, CPU well within
    assert "13m20s" in train  # kill_timeout 20m, 6m40s gone
    assert "3s/5m" in train  # silent 2 s when asked, 1 s ago
    prep = next(line for line in lines if "prep" in line)
    assert "queued" in prep and "#1: not enough memory" in prep
    assert lines[-1].strip() == "q quits"


def test_an_empty_board_says_so() -> None:
    assert any("no task queued or running" in line for line in screen([]))
