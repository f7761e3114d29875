"""Features that compose, on the real executor, while babysitd is SIGKILLed (issue 32).

A mixed workload (a chain, a `%2` sweep after it, an OOM kill retried with what its hint named, a held
task, priorities) runs while babysitd is SIGKILLed at random moments and at its fault points (a unit
started and its record not yet; an end and its retry stored and the name not yet free). Then what
systemd ran is checked against the scheduler's promises: every name ends once and every wait returns,
nothing starts before its parents completed, `%2` holds, the retry asked for at least its hint's figure,
the held task waited for its release, nothing ran twice, no unit is left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from babysit.common import failpoints
from tests.integration.conftest import babysit, babysit_units, daemon_config, daemon_pid, manager_environment
from tests.integration.test_contract import hog
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("daemon")]
LIGHT = ("--estimated_cpu_cores=0.1", "--estimated_mem_bytes=32M", "--estimated_time=1m")


@pytest.fixture
def crash_points(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "faults"
    directory.mkdir()
    with manager_environment(failpoints.DIR_VARIABLE, str(directory)), \
            daemon_config("tick_s = 0.25\nreconcile_s = 1\nrecheck_s = 1\n"):
        yield directory


def run(*args: str) -> None:
    done = babysit("run", *args, timeout=120)  # (a Run whose answer a SIGKILL lost is sent again, and known)
    assert done.returncode == 0, done.stderr


def printed(prefix: str) -> dict[str, list[float]]:
    """Each line the tasks printed that starts with `prefix`, and when journald received it: what ran, and
    when, as the units themselves said (a start babysit did not see recorded is not in its result)."""
    out = subprocess.run(["journalctl", "--user", "-o", "json", "--no-pager", f"--grep=^{prefix}"],
                         capture_output=True, text=True).stdout
    lines: dict[str, list[float]] = {}
    for entry in map(json.loads, out.splitlines()):
        lines.setdefault(str(entry["MESSAGE"]), []).append(int(entry["__REALTIME_TIMESTAMP"]) / 1e6)
    return lines


@pytest.mark.timeout(400)
def test_a_mixed_workload_keeps_every_promise_through_sigkills(crash_points: Path, task_name: str,
                                                                figure: Callable[[str], None]) -> None:
    seed = random.randrange(1 << 30)
    chance = random.Random(seed)
    a, b, s, r, h = (f"{task_name}-{x}" for x in "absrh")
    out = f"out-{task_name}"
    # a unit started, babysitd killed before it recorded so; an end and its next attempt stored, killed then
    crash_points.joinpath("started").write_text(f"{s}-3\n")
    crash_points.joinpath("ended").write_text(f"{r}\n")
    run(f"--name={a}", f"--command=sleep 2; echo {out}-a", *LIGHT)
    run(f"--name={b}", f"--command=echo {out}-b", f"--after={a}", "--priority=1", *LIGHT)
    run(f"--name={s}", f"--command=echo {out}-s-{{index}}-start; sleep 1; echo {out}-s-{{index}}", f"--after={a}",
        "--array=1-6%2", *LIGHT)
    run(f"--name={r}", f"--command={hog(250, hold_s=1)}", "--estimated_mem_bytes=64M",  # the OOM kill: its main process
        "--estimated_cpu_cores=0.1", "--retries=2")
    run(f"--name={h}", f"--command=echo {out}-h", f"--after={a}:any", "--priority=-1", *LIGHT)  # held in time
    assert babysit("hold", f"--name={h}").returncode == 0

    kills = 0
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        time.sleep(chance.uniform(0.3, 1.5))
        pid = daemon_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            kills += 1
    wait_for(lambda: babysit("ping").returncode == 0, 60, "babysitd back")
    released_at = time.time()
    assert babysit("release", f"--name={h}").returncode == 0

    waited = babysit("wait", *(f"--name={n}" for n in (a, b, s, r, h)), timeout=240)
    results = {x["name"]: x for x in map(json.loads, waited.stdout.splitlines())}
    assert waited.returncode == 0 and set(results) == {a, b, s, r, h}, (seed, waited.stdout, waited.stderr)
    expected = [f"{out}-{x}" for x in "abh"] + [f"{out}-s-{i}{end}" for i in range(1, 7) for end in ("-start", "")]
    wait_for(lambda: sorted(printed(out)) == sorted(expected), 30, "each one's output")
    lines = printed(out)
    assert all(len(at) == 1 for at in lines.values()), (seed, lines)  # nothing ran twice
    (ended_a,) = lines[f"{out}-a"]
    assert lines[f"{out}-b"][0] >= ended_a, seed
    spans = sorted((lines[f"{out}-s-{i}-start"][0], lines[f"{out}-s-{i}"][0]) for i in range(1, 7))
    assert spans[0][0] >= ended_a, seed
    assert all(sum(start <= at < end for start, end in spans) <= 2 for at, _ in spans), (seed, spans)
    retried = results[r]
    assert (retried["status"], retried["attempt"]) == ("completed", 2), (seed, retried)
    first = json.loads(babysit("history", f"--name={r}", "--json").stdout)[0]
    assert first["kill_reason"] == "oom", first
    # its hint asked for 1.2 x what the OOM kill ended it at (its peak, or its MemoryMax if higher)
    assert retried["estimated_mem_bytes"] >= 1.2 * first["peak_mem_bytes"], (seed, first, retried)
    assert lines[f"{out}-h"][0] >= released_at, seed
    wait_for(lambda: not babysit_units(task_name), 30, "no unit left behind")
    assert not list(crash_points.iterdir()), "every crash point fired"
    figure(f"chaos: 5 names (a sweep of 6, a retry), {kills} SIGKILLs and 2 crash points of babysitd, seed {seed}")
