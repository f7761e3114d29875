"""A run's output file, where journald keeps none to read: its last change on the task's clock, bounded."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from babysit.executors import output_file


def test_a_file_past_its_bound_keeps_its_newest_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "t-1.out"
    path.write_bytes(b"".join(b"line %04d\n" % i for i in range(1000)))  # 10,000 bytes
    output_file.bound(path, most=4000)
    kept = path.read_bytes().splitlines()
    assert kept[0].startswith(b"[babysit: earlier output dropped")
    assert kept[1:] == [b"line %04d" % i for i in range(801, 1000)]  # whole lines, the newest 2000 bytes
    with path.open("ab") as writer:  # the unit appends after the cut as before it
        writer.write(b"after\n")
    assert path.read_bytes().endswith(b"line 0999\nafter\n")
    output_file.bound(path, most=4000)
    assert len(path.read_bytes().splitlines()) == 201  # within the bound: untouched


def test_last_change_on_the_tasks_clock_and_pruning(tmp_path: Path) -> None:
    assert output_file.written_at(tmp_path / "none.out") is None
    for i in range(5):
        path = tmp_path / f"t-{i}.out"
        path.write_text("x\n")
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
    assert time.monotonic() - output_file.written_at(tmp_path / "t-4.out") == pytest.approx(96, abs=0.5)
    output_file.prune(tmp_path, live={str(tmp_path / "t-0.out")}, kept=2)  # t-0 runs still, quietly
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t-0.out", "t-3.out", "t-4.out"]


def test_a_units_output_goes_to_its_file_where_the_journal_cannot_be_read() -> None:
    from babysit.core.protocol import State
    from babysit.core.task import Host, Task, derive_caps, spec_from_wire
    from babysit.executors.systemd.unit import start_properties

    host = Host(8 << 30, 2.0)
    spec = spec_from_wire({"name": "t", "command": "true"}, host)
    task = Task(1, spec, derive_caps(spec, host), State.QUEUED, 0.0)
    to_file = start_properties(task, 10, ("/bin/true", ["/bin/true"], True), None, "/s/output/t-1.out")
    assert (to_file["StandardOutputFileToAppend"], to_file["StandardErrorFileToAppend"]) == ("/s/output/t-1.out",) * 2
    assert "StandardOutput" not in to_file
    assert start_properties(task, 10, ("/bin/true", ["/bin/true"], True), None)["StandardOutput"] == "journal"
