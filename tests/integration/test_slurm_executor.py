"""What only the Slurm executor does, against a real single-node cluster: the job as submitted, a pending
job's wait and kill, a job cancelled behind babysit's back, a pending job across a restart of babysitd, and
a controller that stops answering."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from babysit.common import failpoints
from tests.integration.conftest import Gate, babysit, manager_environment, on_slurm, restart_daemon, status
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slurm]
WHOLE_NODE = ["--estimated_cpu_cores=2", "--cpu_pct_limit=100"]  # the test cluster's one node has 2 CPUs


@pytest.fixture(scope="module", autouse=True)
def slurm(daemon: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """babysitd on Slurm, with a quick grace and fault points a test can arm (files in the directory)."""
    faults = tmp_path_factory.mktemp("faults")
    with manager_environment(failpoints.DIR_VARIABLE, str(faults)), on_slurm("tick_s = 0.25\nstop_grace_s = 2\n"):
        yield faults


def job_id(name: str) -> str:
    unit = status(name)["unit"]
    assert unit.startswith("slurm job "), unit
    return unit.removeprefix("slurm job ")


def scontrol(job: str) -> dict[str, str]:
    """`scontrol show job`, as key=value pairs (values without spaces; StdOut and WorkDir are paths)."""
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
    return dict(word.split("=", 1) for word in out.split() if "=" in word)


def run(name: str, command: str, *flags: str, cwd: str | None = None) -> None:
    started = babysit("run", f"--name={name}", f"--command={command}", *flags, cwd=cwd)
    assert started.returncode == 0, started.stderr


def result_of(name: str) -> tuple[int, dict]:
    done = babysit("wait", f"--name={name}", timeout=120)
    return done.returncode, json.loads(done.stdout)


def test_the_job_is_submitted_with_the_caps_and_estimates(task_name: str, gate: Gate) -> None:
    run(task_name, gate.then("true"), "--estimated_mem_bytes=200M", "--estimated_cpu_cores=1.5", "--kill_timeout=90s",
        cwd=str(gate.path.parent))
    try:
        wait_for(lambda: status(task_name)["status"] == "running", 60, "running")
        shown, job = status(task_name), scontrol(job_id(task_name))
    finally:
        gate.open()
    assert job["JobName"] == f"babysit-{task_name}" and job["Comment"].startswith("babysit")
    assert (job["MinMemoryNode"], job["NumCPUs"]) == ("600M", "2")  # 3x the estimate; whole CPUs
    assert (shown["memory_max_bytes"], shown["cpu_quota_pct"]) == (600 << 20, 200.0)
    # --time: kill_timeout and babysit's backstop margin, in whole minutes
    minutes = int(shown["runtime_max_s"] // 60)
    assert shown["runtime_max_s"] == 60 * minutes and job["TimeLimit"] == f"00:{minutes:02d}:00"
    assert (job["WorkDir"], job["StdOut"]) == (str(gate.path.parent), shown["output_file"])
    assert shown["log_cmd"] == f"cat {shown['output_file']}"
    assert result_of(task_name)[0] == 0


def test_a_pending_job_says_what_it_waits_for_and_kill_cancels_it(task_name: str) -> None:
    holder, pending = f"{task_name}-holder", f"{task_name}-pending"
    run(holder, "exec sleep 300", *WHOLE_NODE)
    wait_for(lambda: status(holder)["status"] == "running", 60, "the holder to run")
    try:
        run(pending, "echo never", *WHOLE_NODE, "--force")
        wait_for(lambda: status(pending)["waiting_for"] == "slurm: Resources", 30, "Slurm's reason")
        job = job_id(pending)
        assert babysit("kill", f"--name={pending}").returncode == 0
        code, result = result_of(pending)
        assert (code, result["status"], result["kill_reason"], result["started_at"]) == (1, "killed", "user", None)
        assert scontrol(job)["JobState"] == "CANCELLED"
    finally:
        babysit("kill", f"--name={holder}")
    assert result_of(holder)[1]["kill_reason"] == "user"


def test_a_job_cancelled_outside_babysit_is_failed_and_says_so(task_name: str) -> None:
    run(task_name, "echo up; exec sleep 300")
    wait_for(lambda: status(task_name)["status"] == "running", 60, "running")
    subprocess.run(["scancel", job_id(task_name)], check=True)
    code, result = result_of(task_name)
    assert (code, result["status"], result["signal"]) == (1, "failed", 15), result
    assert "cancelled outside babysit" in result["detail"]


def test_a_pending_job_is_followed_across_a_restart_of_babysitd(task_name: str, gate: Gate) -> None:
    holder, pending = f"{task_name}-holder", f"{task_name}-pending"
    run(holder, gate.then("true"), *WHOLE_NODE)
    try:
        wait_for(lambda: status(holder)["status"] == "running", 60, "the holder to run")
        run(pending, "echo after-the-restart", *WHOLE_NODE, "--force")
        restart_daemon()
        assert status(pending)["status"] == "queued"
    finally:
        gate.open()
    code, result = result_of(pending)
    assert (code, result["status"]) == (0, "completed"), result
    assert result["started_at"] is not None and result["elapsed_s"] >= 0  # seen to start, after the restart
    assert babysit("log", f"--name={pending}").stdout.split() == ["after-the-restart"]
    assert result_of(holder)[0] == 0


def test_a_task_that_ignores_sigterm_is_killed_after_the_grace(task_name: str) -> None:
    run(task_name, "trap '' TERM; echo up; while true; do sleep 0.2; done")
    wait_for(lambda: babysit("log", f"--name={task_name}").stdout.split() == ["up"], 60, "it to run")
    assert babysit("kill", f"--name={task_name}").returncode == 0
    code, result = result_of(task_name)
    assert (code, result["status"], result["kill_reason"]) == (1, "killed", "user"), result


def test_a_job_submitted_by_a_daemon_that_died_before_noting_it_is_followed_not_submitted_again(
        slurm: Path, task_name: str) -> None:
    (slurm / "submitted").write_text(task_name)
    # babysitd dies after sbatch, before it notes the job; the next babysitd finds it by its name and comment
    run(task_name, "echo once")
    wait_for(lambda: not (slurm / "submitted").exists(), 60, "the fault to fire")
    code, result = result_of(task_name)
    assert (code, result["status"]) == (0, "completed"), result
    assert babysit("log", f"--name={task_name}").stdout.split() == ["once"]
    jobs = subprocess.run(["squeue", "-h", "-t", "all", "--me", "-o", "%j"], capture_output=True, text=True,
                          check=True).stdout.split()
    assert jobs.count(f"babysit-{task_name}") == 1, jobs


def control(request: str) -> None:
    """Ask the cluster's runner for what an administrator would do (tests/slurm/cluster.py)."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.connect(os.environ["BABYSIT_SLURM_CONTROL"])
        connection.sendall(f"{request}\n".encode())
        assert connection.makefile().readline().strip() == "ok"


@pytest.mark.timeout(600)
def test_a_controller_that_does_not_answer_leaves_babysitd_up_and_is_picked_up_again(task_name: str,
                                                                                        gate: Gate) -> None:
    """Seen in review: babysitd started while slurmctld was down crash-looped, so not even `history` worked."""
    finished, across, later = f"{task_name}-finished", f"{task_name}-across", f"{task_name}-later"
    run(finished, "echo before-the-outage")
    assert result_of(finished)[0] == 0
    run(across, gate.then("echo across-the-outage"), cwd=str(gate.path.parent))
    wait_for(lambda: status(across)["status"] == "running", 60, "it to run")
    control("stop-controller")
    try:
        restart_daemon()  # babysitd starts while nobody answers for the cluster
        pong = babysit("ping")
        assert pong.returncode == 0 and "the Slurm controller has not answered since" in pong.stderr, pong.stderr
        assert (status(finished)["status"], status(across)["status"]) == ("completed", "running")
        assert babysit("log", f"--name={finished}").stdout.split() == ["before-the-outage"]
        assert [run["name"] for run in json.loads(babysit("history", f"--name={finished}", "--json").stdout)] == [
            finished]
        refused = babysit("run", f"--name={later}", "--command=true")
        assert refused.returncode == 1 and "the task is not submitted" in refused.stderr, refused.stderr
        gate.open()  # its job ends while the controller is down
    finally:
        gate.open()
        control("start-controller")
    wait_for(lambda: "Slurm controller" not in babysit("ping").stderr, 120, "babysitd to hear from it again")
    code, result = result_of(across)
    assert (code, result["status"]) == (0, "completed"), result
    run(later, "echo after-the-outage")
    assert result_of(later)[0] == 0
