"""The CLI contract, the same on every executor: run, wait, status, list, log, kill, the kills and the JSON.

Each test runs once per executor: as systemd units in the session, and as jobs on a real single-node
Slurm cluster when the Slurm tier started one (tests/slurm/cluster.py exports SLURM_CONF).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator

import pytest

from babysit.core.protocol import log_command, unit_name
from tests.integration.conftest import BIN, Gate, babysit, daemon_config, on_slurm, restart_daemon, status
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration]
TOLERANCE_S = 2.0
PY = "/usr/bin/python3 -u -c"
WATCHDOGS = f"tick_s = 0.25\ntolerance_s = {TOLERANCE_S}\ncpu_window_s = 1\n"


@pytest.fixture(scope="module", params=["systemd", pytest.param("slurm", marks=pytest.mark.slurm)])
def executor(request: pytest.FixtureRequest, daemon: str) -> Iterator[str]:
    """babysitd with quick watchdogs, on the executor the test is run for."""
    with daemon_config(WATCHDOGS) if request.param == "systemd" else on_slurm(WATCHDOGS):
        yield request.param


def wait_result(name: str, timeout: float = 120) -> tuple[int, dict, str]:
    done = babysit("wait", f"--name={name}", timeout=timeout)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def log_lines(name: str, *flags: str) -> list[str]:
    shown = babysit("log", f"--name={name}", *flags)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.split()


def hog(target_mib: int, step_mib: int = 8, pause: float = 0.05, hold_s: float = 60) -> str:
    """A Python hog that fills memory step by step, then holds it (printing)."""
    code = (f"import time\nc = []\nwhile len(c) * {step_mib} < {target_mib}:\n"
            f"    c.append(b'x' * ({step_mib} << 20)); print('at', len(c) * {step_mib}); time.sleep({pause})\n"
            f"print('holding')\nfor _ in range({int(hold_s * 2)}):\n    print('alive'); time.sleep(0.5)\n")
    return f"{PY} \"{code}\""


def test_a_completed_task_its_result_and_its_log(executor: str, task_name: str) -> None:
    started = babysit("run", f"--name={task_name}", "--command=echo hi; sleep 1; echo bye", "--estimated_time=1m")
    assert started.returncode == 0 and started.stdout.strip() == f"queued: {task_name}", started
    code, result, _ = wait_result(task_name)
    assert (code, result["status"], result["exit_code"], result["signal"]) == (0, "completed", 0, None), result
    assert 1.0 <= result["elapsed_s"] < 60
    if executor == "slurm":
        shown = status(task_name)
        assert result["unit"].startswith("slurm job ") and result["log_cmd"] == f"cat {shown['output_file']}"
        assert subprocess.run(shlex.split(result["log_cmd"]), capture_output=True, text=True).stdout.split() == [
            "hi", "bye"]
    else:
        assert (result["unit"], result["log_cmd"]) == (unit_name(task_name), log_command(task_name))
    wait_for(lambda: log_lines(task_name) == ["hi", "bye"], 15, "hi and bye in babysit log")


def test_a_failing_command_is_failed_with_its_exit_code(executor: str, task_name: str) -> None:
    babysit("run", f"--name={task_name}", "--command=echo oops >&2; exit 3")
    code, result, _ = wait_result(task_name)
    assert (code, result["status"], result["exit_code"], result["signal"]) == (1, "failed", 3, None), result


def test_the_task_gets_the_callers_environment_and_directory(executor: str, task_name: str, gate: Gate) -> None:
    workdir = gate.path.parent  # under /tmp: a Slurm job runs where the cluster's node sees it
    env = {**os.environ, "BABYSIT_PROBE": "from the caller's $HOME"}
    babysit("run", f"--name={task_name}", '--command=echo "probe=$BABYSIT_PROBE"; echo "cwd=$PWD"', env=env,
            cwd=str(workdir))
    assert wait_result(task_name)[0] == 0
    wait_for(lambda: f"cwd={workdir}" in babysit("log", f"--name={task_name}").stdout, 15, "its output")
    assert "probe=from the caller's $HOME" in babysit("log", f"--name={task_name}").stdout


def test_the_task_gets_the_callers_exported_shell_functions(executor: str, task_name: str, gate: Gate) -> None:
    """Seen in review: on HPC login nodes (Environment Modules, Lmod export `module`) every run was refused."""
    shell = (f"greet() {{ echo \"hello from $1\"; }}; export -f greet; env 'ODD NAME=x' {BIN / 'babysit'} run "
             f"--name={task_name} --command='greet \"the caller\"; bash -c \"greet a-child\"'")
    started = subprocess.run(["/usr/bin/env", "/bin/bash", "-c", shell], capture_output=True, text=True,
                             cwd=str(gate.path.parent), timeout=60)
    assert started.returncode == 0, started.stderr
    assert started.stderr.strip() == "babysit: not passed to the task (no task can take these names): ODD NAME"
    code, result, _ = wait_result(task_name)
    assert code == 0, result
    wait_for(lambda: log_lines(task_name) == "hello from the caller hello from a-child".split(), 15, "its output")


def test_status_and_list_show_a_running_task_then_kill_stops_it(executor: str, task_name: str) -> None:
    babysit("run", f"--name={task_name}", "--command=echo started; exec sleep 300", "--estimated_mem_bytes=256M",
            "--estimated_time=1m")
    wait_for(lambda: status(task_name)["status"] == "running", 60, "running")
    shown = status(task_name)
    assert (shown["estimated_mem_bytes"], shown["memory_max_bytes"]) == (256 << 20, 3 * (256 << 20))
    assert (shown["estimated_time_s"], shown["kill_timeout_s"]) == (60, 120)
    listed = babysit("list")
    assert listed.returncode == 0 and task_name in listed.stdout and "running" in listed.stdout
    assert babysit("kill", f"--name={task_name}").returncode == 0
    code, result, _ = wait_result(task_name)
    assert (code, result["status"], result["kill_reason"]) == (1, "killed", "user"), result
    assert list(result)[:2] == ["kill_reason", "kill_hint"] and "babysit kill" in result["kill_hint"]
    again = babysit("run", f"--name={task_name}", "--command=true")  # the name is free again
    assert again.returncode == 0, again.stderr
    assert wait_result(task_name)[0] == 0


def test_log_follow_streams_until_the_task_ends(executor: str, task_name: str) -> None:
    babysit("run", f"--name={task_name}", "--command=for i in 1 2 3 4 5; do echo line-$i; sleep 0.3; done")
    followed = babysit("log", f"--name={task_name}", "--follow", timeout=90)
    assert followed.returncode == 0, followed.stderr
    assert [line for line in followed.stdout.split() if line.startswith("line-")] == [f"line-{i}" for i in range(1, 6)]
    assert status(task_name)["status"] == "completed"


def test_memory_past_3x_is_an_oom_kill(executor: str, task_name: str) -> None:
    babysit("run", f"--name={task_name}", f"--command={hog(400)}", "--estimated_mem_bytes=64M")
    code, result, _ = wait_result(task_name)
    assert (code, result["status"], result["kill_reason"]) == (1, "killed", "oom"), result
    assert "--estimated_mem_bytes=" in result["kill_hint"]


def test_memory_held_at_2_5x_is_stopped_after_the_window(executor: str, task_name: str) -> None:
    babysit("run", f"--name={task_name}", f"--command={hog(160)}", "--estimated_mem_bytes=64M")
    code, result, _ = wait_result(task_name)
    assert (code, result["kill_reason"]) == (1, "mem_2x_sustained"), result
    assert result["peak_mem_bytes"] >= 2 * (64 << 20)


def test_a_cpu_burner_far_above_its_estimate_is_stopped(executor: str, task_name: str) -> None:
    burn = f"{PY} \"import time\nprint('burning')\nend = time.time() + 90\nwhile time.time() < end: pass\""
    babysit("run", f"--name={task_name}", f"--command={burn}", "--estimated_cpu_cores=0.2")
    code, result, _ = wait_result(task_name)
    assert (code, result.get("kill_reason")) == (1, "cpu_2x_sustained"), result
    assert "--estimated_cpu_cores=" in result["kill_hint"]


def test_a_silent_task_is_stopped_as_stalled(executor: str, task_name: str) -> None:
    babysit("run", f"--name={task_name}", "--command=sleep 300", "--observability_interval=2s",
            "--estimated_cpu_cores=0.1")
    code, result, _ = wait_result(task_name)
    assert (code, result["kill_reason"]) == (1, "observability_stall"), result


def test_kill_timeout_stops_a_task_that_runs_too_long(executor: str, task_name: str) -> None:
    babysit("run", f"--name={task_name}", "--command=while true; do echo .; sleep 0.2; done", "--kill_timeout=2s",
            "--estimated_time=1s")
    code, result, _ = wait_result(task_name)
    assert (code, result["kill_reason"]) == (1, "timeout"), result
    assert 2 <= result["elapsed_s"] < 30


def test_wait_prints_runaway_risk_before_the_result(executor: str, task_name: str) -> None:
    babysit("run", f"--name={task_name}", "--command=sleep 2; echo done", "--estimated_time=1s", "--kill_timeout=60s")
    code, result, stderr = wait_result(task_name)
    assert (code, result["status"]) == (0, "completed")
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [(e["event"], e["name"], e["dim"]) for e in events] == [("runaway_risk", task_name, "elapsed")]


def test_a_task_that_does_not_fit_is_refused_and_force_queues_it(executor: str, task_name: str) -> None:
    holder, waiting = f"{task_name}-holder", f"{task_name}-waiting"
    cores = ["--estimated_cpu_cores=2", "--cpu_pct_limit=100"]  # the whole of this 2-core machine (or node)
    assert babysit("run", f"--name={holder}", "--command=echo holding; exec sleep 300", *cores).returncode == 0
    try:
        wait_for(lambda: status(holder)["status"] == "running", 60, "the holder to run")
        refused = babysit("run", f"--name={waiting}", "--command=echo my-turn", *cores)
        assert refused.returncode == 2 and json.loads(refused.stderr)["error"] == "capacity_exceeded", refused
        assert babysit("run", f"--name={waiting}", "--command=echo my-turn", *cores, "--force").returncode == 0
        assert status(waiting)["status"] == "queued"
    finally:
        babysit("kill", f"--name={holder}")
    code, result, _ = wait_result(waiting)
    assert (code, result["status"]) == (0, "completed"), result
    wait_for(lambda: log_lines(waiting) == ["my-turn"], 15, "its output")


def test_wait_for_capacity_returns_once_the_room_is_free(executor: str, task_name: str) -> None:
    cores = ["--estimated_cpu_cores=2", "--cpu_pct_limit=100"]
    assert babysit("run", f"--name={task_name}", "--command=exec sleep 300", *cores).returncode == 0
    wait_for(lambda: status(task_name)["status"] == "running", 60, "the holder to run")
    no_room = babysit("wait_for_capacity", "--mem_bytes=64M", "--cpu_cores=2", "--timeout=1s")
    assert no_room.returncode == 1 and "no room" in no_room.stderr, no_room
    with subprocess.Popen([str(BIN / "babysit"), "wait_for_capacity", "--mem_bytes=64M", "--cpu_cores=2",
                           "--timeout=2m"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as waiter:
        assert babysit("kill", f"--name={task_name}").returncode == 0
        out, err = waiter.communicate(timeout=150)
    assert (waiter.returncode, out.strip()) == (0, "capacity: available"), err


def test_a_task_outlives_a_restart_of_babysitd(executor: str, task_name: str, gate: Gate) -> None:
    assert babysit("run", f"--name={task_name}", f"--command=echo up; {gate.then('echo done')}").returncode == 0
    wait_for(lambda: status(task_name)["status"] == "running", 60, "running")
    restart_daemon()
    assert status(task_name)["status"] == "running"
    gate.open()
    code, result, _ = wait_result(task_name)
    assert (code, result["status"]) == (0, "completed"), result
    wait_for(lambda: log_lines(task_name) == ["up", "done"], 15, "its output")
