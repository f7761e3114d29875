"""Watchdogs with real workloads and short intervals: each kill reason, warnings, and host pressure.

Each test prints the measured delay between the trigger and the kill (a figure, not an assertion).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest

from tests.integration.conftest import babysit, daemon_config, journal, session_control, status
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration]
TOLERANCE_S = 2.0
PY = "/usr/bin/python3 -u -c"


@pytest.fixture(scope="module")
def quick_watchdogs(daemon: str) -> Iterator[None]:
    with daemon_config(f"tick_s = 0.25\ntolerance_s = {TOLERANCE_S}\ncpu_window_s = 1\n"):
        yield


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def wait_result(name: str, timeout: float = 90) -> tuple[int, dict, str]:
    done = babysit("wait", f"--name={name}", timeout=timeout)
    return done.returncode, json.loads(done.stdout), done.stderr


def line_time(name: str, text: str, last: bool = False) -> float:
    """When the task printed the first (or last) line containing `text` (journald's receive time)."""
    out = journal(name, "json")
    times = [int(e["__REALTIME_TIMESTAMP"]) / 1e6 for e in map(json.loads, out.splitlines())
             if text in str(e.get("MESSAGE", ""))]
    return times[-1] if last else times[0]


def hog(target_mib: int, step_mib: int = 8, pause: float = 0.05, hold_s: float = 60) -> str:
    """A Python hog that fills memory step by step, says when it holds it, then holds it (printing)."""
    code = (f"import time\nc = []\nwhile len(c) * {step_mib} < {target_mib}:\n"
            f"    c.append(b'x' * ({step_mib} << 20)); print('at', len(c) * {step_mib}); time.sleep({pause})\n"
            f"print('holding')\nfor _ in range({int(hold_s * 2)}):\n    print('alive'); time.sleep(0.5)\n")
    return f"{PY} \"{code}\""


@pytest.mark.usefixtures("quick_watchdogs")
class TestKills:
    def test_memory_past_3x_is_the_kernels_oom_kill(self, task_name: str, figure: Callable[[str], None]) -> None:
        babysit("run", f"--name={task_name}", f"--command={hog(400)}", "--estimated_mem_bytes=64M")
        code, result, _ = wait_result(task_name)
        assert (code, result["status"], result["kill_reason"]) == (1, "killed", "oom"), result
        assert "--estimated_mem_bytes=" in result["kill_hint"]
        last = line_time(task_name, "at ", last=True)
        figure(f"oom: last output -> recorded kill {1000 * (epoch(result['finished_at']) - last):.0f} ms")

    def test_memory_held_at_2_5x_is_stopped_after_the_window(self, task_name: str,
                                                             figure: Callable[[str], None]) -> None:
        babysit("run", f"--name={task_name}", f"--command={hog(160)}", "--estimated_mem_bytes=64M")
        code, result, _ = wait_result(task_name)
        assert (code, result["kill_reason"]) == (1, "mem_2x_sustained"), result
        assert result["peak_mem_bytes"] >= 2 * (64 << 20)
        assert "--estimated_mem_bytes=" in result["kill_hint"] and "peak" in result["kill_hint"]
        trigger = line_time(task_name, "at 128") + TOLERANCE_S  # 2x of 64M from here
        figure(f"mem_2x_sustained: window end -> kill {1000 * (epoch(result['finished_at']) - trigger):.0f} ms")

    def test_a_cpu_burner_far_above_its_estimate(self, task_name: str, figure: Callable[[str], None]) -> None:
        burn = f"{PY} \"import time\nprint('burning')\nend = time.time() + 60\nwhile time.time() < end: pass\""
        babysit("run", f"--name={task_name}", f"--command={burn}", "--estimated_cpu_cores=0.2")
        code, result, _ = wait_result(task_name)
        assert (code, result.get("kill_reason")) == (1, "cpu_2x_sustained"), result
        assert "--estimated_cpu_cores=" in result["kill_hint"]
        used = float(result["kill_hint"].split()[1])  # "used 1.0 cores vs estimate 0.2: ..."
        assert used >= 2 * 0.2, result["kill_hint"]  # the rate that was 2x over, not the ended task's zero
        start = line_time(task_name, "burning")
        figure(f"cpu_2x_sustained: start -> kill {epoch(result['finished_at']) - start:.2f} s "
               f"(1 s CPU window + {TOLERANCE_S:.0f} s tolerance)")

    def test_a_silent_task_is_stopped_and_a_chatty_one_is_not(self, task_name: str,
                                                              figure: Callable[[str], None]) -> None:
        silent, chatty = f"{task_name}-silent", f"{task_name}-chatty"
        light = ["--observability_interval=2s", "--estimated_cpu_cores=0.1"]
        babysit("run", f"--name={silent}", "--command=sleep 300", *light)
        # a core for the chatty one: under the VM tier's emulation its loop's forks alone used 2x of 0.1 core
        # for the 2 s tolerance and it was stopped for CPU, which is not what this test is about
        babysit("run", f"--name={chatty}", "--command=for i in $(seq 12); do echo tick $i; sleep 0.5; done",
                "--observability_interval=2s", "--estimated_cpu_cores=1")
        code, result, _ = wait_result(silent)
        assert (code, result["kill_reason"]) == (1, "observability_stall"), result
        assert "--observability_interval" in result["kill_hint"]
        delay = epoch(result["finished_at"]) - epoch(result["started_at"]) - 2
        figure(f"observability_stall: interval end -> kill {1000 * delay:.0f} ms")
        code, result, _ = wait_result(chatty)
        assert (code, result["status"]) == (0, "completed"), result

    def test_kill_timeout(self, task_name: str, figure: Callable[[str], None]) -> None:
        babysit("run", f"--name={task_name}", "--command=while true; do echo .; sleep 0.2; done", "--kill_timeout=2s",
                "--estimated_time=1s")
        code, result, _ = wait_result(task_name)
        assert (code, result["kill_reason"]) == (1, "timeout"), result
        figure(f"timeout: kill_timeout -> kill {1000 * (result['elapsed_s'] - 2):.0f} ms")

    def test_wait_prints_runaway_risk_before_the_result(self, task_name: str) -> None:
        babysit("run", f"--name={task_name}", "--command=sleep 2; echo done", "--estimated_time=1s",
                "--kill_timeout=30s")
        code, result, stderr = wait_result(task_name)
        assert (code, result["status"]) == (0, "completed")
        events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        assert [(e["event"], e["name"], e["dim"]) for e in events] == [("runaway_risk", task_name, "elapsed")]
        assert events[0]["estimate"] == 1 and events[0]["actual"] > 1 and events[0]["ratio"] > 1
        # a wait attached later replays the stored event
        assert json.loads(babysit("wait", f"--name={task_name}").stderr.splitlines()[0])["dim"] == "elapsed"


def test_host_pressure(task_name: str, daemon: str, figure: Callable[[str], None]) -> None:
    """Free memory below the threshold: pressure from outside babysit is only reported; babysit's own stops
    the task over its estimate, and not the one within it.

    The free figure is held by the session (a MemAvailable of the test's, bound over /proc/meminfo in the
    session's namespace): the machine's own moves with everything else that runs, and once made this test
    pass or fail by luck."""
    threshold, plenty = 1 << 30, 8 << 30
    session_control(f"meminfo {plenty}")
    try:
        with daemon_config(f"tick_s = 0.25\ntolerance_s = 120\npressure_free_bytes = {threshold}\n"):
            bystander = f"{task_name}-bystander"
            babysit("run", f"--name={bystander}", "--command=while true; do echo .; sleep 1; done",
                    "--estimated_cpu_cores=0.1", "--estimated_mem_bytes=64M")

            def events() -> list[str]:
                return [e["event"] for e in status(bystander)["events"]]

            session_control(f"meminfo {threshold - (300 << 20)}")  # 300 MiB short; babysit's tasks hold a few
            wait_for(lambda: "external_pressure" in events(), 30, "the external-pressure event")
            assert status(bystander)["status"] == "running"

            session_control(f"meminfo {plenty}")
            babysit("run", f"--name={task_name}", f"--command={hog(300, step_mib=50)}",
                    "--estimated_mem_bytes=120M", "--estimated_cpu_cores=0.1")
            wait_for(lambda: (status(task_name).get("mem_bytes") or 0) > 250 << 20, 30, "the hog to hold 250 MiB")
            short_at = time.time()
            session_control(f"meminfo {threshold - (100 << 20)}")  # 100 MiB short, and the hog holds 300: ours
            code, result, _ = wait_result(task_name)
            assert (code, result["kill_reason"]) == (1, "pressure"), result
            figure(f"pressure: free memory short -> kill {1000 * (epoch(result['finished_at']) - short_at):.0f} ms")
            # the pressure stays, but what babysit's tasks still hold cannot explain it: nothing else is stopped
            said = subprocess.run(["journalctl", "--user", "--identifier=babysitd", "--grep=pressure", "--no-pager",
                                   "-o", "short-precise", "-n", "20"], capture_output=True, text=True).stdout
            wait_for(lambda: events().count("external_pressure") >= 2, 30, "the pressure, now outside babysit's")
            assert status(bystander)["status"] == "running", said
            babysit("kill", f"--name={bystander}")
            wait_result(bystander)
    finally:
        session_control("meminfo-real")


def test_the_elapsed_warning_comes_when_the_estimate_passes(daemon: str, task_name: str) -> None:
    """Seen in review: calm tasks are sampled every few seconds (every 5 s by default), so a 12 s task over a
    1 s estimate was warned at 6 s, and a 4 s one never."""
    babysit("run", f"--name={task_name}", "--command=sleep 4", "--estimated_time=1s", "--kill_timeout=30s")
    code, result, stderr = wait_result(task_name)
    assert (code, result["status"]) == (0, "completed"), result
    (event,) = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert event["dim"] == "elapsed" and 1 <= event["actual"] < 1.5, event  # at the estimate, not at a sample
