"""Admission on a small "host" made by config.toml budgets: refuse, queue, start when room frees."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest

from babysit.core.protocol import unit_name
from tests.integration.conftest import babysit, daemon_config, restart_daemon, status, systemctl_show
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("small_host")]
MiB = 1 << 20
BIG = ["--estimated_mem_bytes=700M", "--mem_pct_limit=100", "--estimated_cpu_cores=1"]


@pytest.fixture(scope="module")
def small_host(daemon: str) -> Iterator[None]:
    """A 1 GiB, 2-core budget, whatever the machine has."""
    with daemon_config('mem_budget_bytes = "1G"\ncpu_budget_cores = 2\nrecheck_s = 1\n'):
        yield


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_refused_then_forced_into_the_queue_then_started(task_name: str, figure: Callable[[str], None]) -> None:
    first, second = f"{task_name}-a", f"{task_name}-b"
    assert babysit("run", f"--name={first}", "--command=sleep 3", *BIG).returncode == 0

    refused = babysit("run", f"--name={second}", "--command=echo second", *BIG)
    assert refused.returncode == 2
    body = json.loads(refused.stderr)  # exactly one JSON object
    assert body["error"] == "capacity_exceeded" and body["name"] == second
    assert body["requested"] == {"mem_bytes": 700 * MiB, "cpu_cores": 1}
    assert body["available"]["mem_bytes"] == 1024 * MiB - 700 * MiB
    assert [r["name"] for r in body["running"]] == [first]
    assert body["hint"].startswith(f"babysit wait_for_capacity --mem_bytes={700 * MiB} --cpu_cores=1")
    figure(f"capacity_exceeded: {refused.stderr.strip()}")

    forced = babysit("run", f"--name={second}", "--command=echo second", *BIG, "--force")
    assert (forced.returncode, forced.stdout.strip()) == (0, f"queued: {second}")
    queued = status(second)
    assert (queued["status"], queued["queue_position"], queued["waiting_for"]) == ("queued", 1, "not enough memory")

    waited = babysit("wait", f"--name={second}")
    assert waited.returncode == 0, waited.stderr
    a, b = status(first), status(second)
    assert a["status"] == "completed"
    assert epoch(b["started_at"]) >= epoch(a["finished_at"])
    figure(f"timeline: {first} submitted {a['submitted_at']} started {a['started_at']} finished {a['finished_at']};"
           f" {second} refused, forced {b['submitted_at']}, started {b['started_at']} "
           f"({1000 * (epoch(b['started_at']) - epoch(a['finished_at'])):.0f} ms after {first} ended)")


def test_wait_for_capacity(task_name: str) -> None:
    babysit("run", f"--name={task_name}", "--command=sleep 300", *BIG)
    timed_out = babysit("wait_for_capacity", "--mem_bytes=700M", "--cpu_cores=1", "--timeout=1s")
    assert timed_out.returncode == 1

    with subprocess.Popen([*babysit_argv(), "wait_for_capacity", "--mem_bytes=700M", "--cpu_cores=1",
                           "--timeout=60s"], stdout=subprocess.PIPE, text=True) as waiter:
        with pytest.raises(subprocess.TimeoutExpired):
            waiter.wait(timeout=1)  # still blocked: there is no room yet
        babysit("kill", f"--name={task_name}")
        assert waiter.wait(timeout=60) == 0
    assert babysit("wait_for_capacity", "--mem-bytes=700M", "--cpu-cores=1").returncode == 0


def test_adjust_changes_caps_live(task_name: str) -> None:
    babysit("run", f"--name={task_name}", "--command=sleep 300", "--estimated_mem_bytes=100M", "--mem_pct_limit=100")
    wait_for(lambda: status(task_name)["status"] == "running", 30, "running")
    assert systemctl_show(unit_name(task_name), "MemoryMax")["MemoryMax"] == str(300 * MiB)
    adjusted = babysit("adjust", f"--name={task_name}", "--estimated_mem_bytes=200M", "--estimated_cpu_cores=0.5")
    assert adjusted.returncode == 0, adjusted.stderr
    assert systemctl_show(unit_name(task_name), "MemoryMax")["MemoryMax"] == str(600 * MiB)
    assert status(task_name)["estimated_mem_bytes"] == 200 * MiB
    too_big = babysit("adjust", f"--name={task_name}", "--estimated_mem_bytes=4G")
    assert too_big.returncode == 2 and "exceeds_cap" in too_big.stderr
    babysit("kill", f"--name={task_name}")
    babysit("wait", f"--name={task_name}")


def test_a_queued_task_survives_a_daemon_restart(task_name: str) -> None:
    first, second = f"{task_name}-a", f"{task_name}-b"
    babysit("run", f"--name={first}", "--command=sleep 300", *BIG)
    assert babysit("run", f"--name={second}", "--command=echo after-restart", *BIG, "--force").returncode == 0
    restart_daemon()
    assert status(second)["status"] == "queued"
    assert status(first)["status"] == "running"
    babysit("kill", f"--name={first}")
    waited = babysit("wait", f"--name={second}")
    assert (waited.returncode, json.loads(waited.stdout)["status"]) == (0, "completed")


def test_kill_removes_a_queued_task(task_name: str) -> None:
    first, second = f"{task_name}-a", f"{task_name}-b"
    babysit("run", f"--name={first}", "--command=sleep 300", *BIG)
    babysit("run", f"--name={second}", "--command=true", *BIG, "--force")
    assert babysit("kill", f"--name={second}").returncode == 0
    result = json.loads(babysit("wait", f"--name={second}").stdout)
    assert (result["status"], result["kill_reason"], result["started_at"]) == ("killed", "user", None)
    babysit("kill", f"--name={first}")
    babysit("wait", f"--name={first}")


def babysit_argv() -> list[str]:
    from tests.integration.conftest import BIN

    return [str(BIN / "babysit")]


def test_adjust_moves_the_kill_timeout_of_a_running_task(task_name: str) -> None:
    babysit("run", f"--name={task_name}", "--command=sleep 300", "--estimated_time=1m", "--estimated_cpu_cores=0.2")
    wait_for(lambda: status(task_name)["status"] == "running", 30, "running")
    too_long = babysit("adjust", f"--name={task_name}", "--kill_timeout=1h")
    assert too_long.returncode == 2 and "can grow to at most" in too_long.stderr
    assert babysit("adjust", f"--name={task_name}", "--kill_timeout=2s").returncode == 0
    waited = babysit("wait", f"--name={task_name}")
    result = json.loads(waited.stdout)
    assert (waited.returncode, result["status"], result["kill_reason"]) == (1, "killed", "timeout")
    assert result["elapsed_s"] < 30
