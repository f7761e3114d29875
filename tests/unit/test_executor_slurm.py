"""The Slurm executor's pure parts: how each recorded ending of a job reads in babysit's terms, the caps
as Slurm enforces them, and a job's last output."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from babysit.common.config import Config
from babysit.core.protocol import KillReason, State
from babysit.core.task import Caps, Host, Job, Task, derive_caps, spec_from_wire
from babysit.executors.slurm import commands as slurm
from babysit.executors.slurm.commands import Slurm
from babysit.executors.slurm.executor import SlurmExecutor, job_caps, job_name, run_comment, submitted_from
from babysit.executors.slurm.rounds import Tracked, job_outcome, ran
from tests.unit.test_slurm import SQUEUE_ALL

ENDED = slurm.parse_squeue(SQUEUE_ALL)  # recorded from a real cluster, one job per ending
MiB = 1 << 20


@pytest.mark.parametrize("job_id, state, exit_code, signal, kill_reason, detail", [
    (5, State.COMPLETED, 0, None, None, ""),
    (6, State.FAILED, 7, None, None, ""),  # exit 7
    (7, State.KILLED, None, None, KillReason.OOM, "at its --mem"),  # Slurm's 0:125 is no signal
    (2, State.KILLED, 3, None, KillReason.TIMEOUT, "at its --time"),  # TERM trapped, exit 3
    (3, State.KILLED, None, 15, KillReason.TIMEOUT, "at its --time"),
    (11, State.FAILED, None, 15, None, "cancelled outside babysit"),  # someone's scancel
    (4, State.FAILED, None, None, None, "cancelled outside babysit"),  # cancelled while pending
    (8, State.FAILED, None, None, None, "filesystem the node shares"),  # --output not writable: 0:53
    (10, State.FAILED, None, 15, None, "killed by SIGTERM"),  # a TERM babysit did not send
])
def test_each_ending_of_a_job(job_id: int, state: State, exit_code: int | None, signal: int | None,
                              kill_reason: KillReason | None, detail: str) -> None:
    outcome = job_outcome(ENDED[str(job_id)], None)
    assert (outcome.state, outcome.exit_code, outcome.signal, outcome.kill_reason) == (state, exit_code, signal,
                                                                                       kill_reason)
    assert detail in outcome.detail


def test_a_stop_babysit_asked_for_wins_over_how_slurm_saw_it() -> None:
    # babysit's stop is `scancel --full --signal=TERM`: Slurm calls the job FAILED (JobLaunchFailure, 0:15)
    outcome = job_outcome(ENDED["10"], KillReason.OBSERVABILITY_STALL)
    assert (outcome.state, outcome.kill_reason, outcome.signal) == (State.KILLED, KillReason.OBSERVABILITY_STALL, 15)


def test_caps_are_what_slurm_enforces() -> None:
    caps = Caps(mem_limit_bytes=8 << 30, cpu_limit_cores=2, memory_max_bytes=3 * 100 * MiB + 5,
                cpu_quota_pct=30.0, runtime_max_s=150)
    enforced = job_caps(caps, cpus=1)
    assert (enforced.memory_max_bytes, enforced.cpu_quota_pct, enforced.runtime_max_s) == (301 * MiB, 100.0, 180.0)
    assert slurm.sbatch_args(name=job_name("train"), cwd="/", mem_bytes=enforced.memory_max_bytes, cpus=1,
                             time_limit_s=enforced.runtime_max_s, output="/o", partition=None, account=None,
                             comment=run_comment(7, "login1"))[1:] == [
        "--job-name=babysit-train", "--chdir=/", "--output=/o", "--nodes=1", "--ntasks=1", "--cpus-per-task=1",
        "--mem=301M", "--no-requeue", "--time=3", "--comment=babysit run #7 from login1"]


def test_a_job_cancelled_while_pending_never_ran() -> None:
    # Slurm gives it a StartTime all the same: its end
    assert not ran(ENDED["4"], seen_running=False)
    assert ran(ENDED["11"], seen_running=True) and ran(ENDED["5"], seen_running=False)  # a quick job between rounds


def test_a_jobs_last_output_is_its_output_files_change(tmp_path: Path) -> None:
    """What babysitd's silence of a Slurm task (`silent_s`, `babysit top`) comes from: the output file's age."""
    host = Host(mem_bytes=8 << 30, cores=4.0)
    spec = spec_from_wire({"name": "train-4", "command": "python train.py"}, host)
    output = tmp_path / "train-4-7.out"
    task = Task(7, spec, derive_caps(spec, host), State.RUNNING, 0.0, job=Job(70, str(output)))
    executor = SlurmExecutor(Slurm(env={}), Config(), tmp_path)
    executor.jobs[task.id] = Tracked(task.id, 70, output)
    assert executor.last_output_at(task) is None  # nothing written yet
    output.write_text("epoch 1\n")
    ten_s_ago = time.time() - 10
    os.utime(output, (ten_s_ago, ten_s_ago))
    assert time.monotonic() - executor.last_output_at(task) == pytest.approx(10, abs=0.5)  # on the task's clock


def test_a_jobs_comment_says_which_run_of_which_host_it_is() -> None:
    assert submitted_from(run_comment(7, "login1"), "login1") == 7
    assert submitted_from(run_comment(7, "login1"), "login2") is None  # another login node's babysitd
    assert submitted_from(run_comment(7, "login1.x"), "login1") is None
    assert submitted_from("my own job", "login1") is None
