"""Results are measured, never guessed: peaks and CPU of short and OOM-killed tasks come from the kernel's
accounting at the end; a request that cannot run is refused before any unit exists; systemd's own start
failures are said in words; the command reaches bash exactly as typed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import babysit, babysit_units, journal
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("daemon")]
MiB = 1 << 20
PY = "/usr/bin/python3 -c"


def run_and_wait(name: str, command: str, *flags: str) -> tuple[int, dict]:
    started = babysit("run", f"--name={name}", f"--command={command}", *flags)
    assert started.returncode == 0, started.stderr
    done = babysit("wait", f"--name={name}", timeout=120)
    return done.returncode, json.loads(done.stdout)


def test_a_task_shorter_than_a_sample_reports_its_true_peak_and_cpu(task_name: str,
                                                                     figure: Callable[[str], None]) -> None:
    # 60 MiB touched and about 0.1-0.3 s of CPU (the host's speed decides), inside the first 1 s tick;
    # the task says how much CPU it used itself, and the kernel's account of its unit holds at least that
    code, result = run_and_wait(task_name, f"{PY} \"import time; b = b'x' * (60 << 20); sum(range(8_000_000)); "
                                           "print(time.process_time())\"")
    assert (code, result["status"]) == (0, "completed"), result
    assert result["elapsed_s"] < 1.0, "not shorter than a sample: the test proves nothing"
    assert 60 * MiB <= result["peak_mem_bytes"] < 120 * MiB
    own = float(wait_for(lambda: journal(task_name).strip(), 15, "the task's own CPU time"))
    assert result["cpu_seconds"] is not None and result["cpu_seconds"] >= round(own, 3) - 0.001 > 0
    figure(f"short task ({result['elapsed_s']:.2f} s): peak {result['peak_mem_bytes'] / MiB:.1f} MiB "
           f"(60 MiB touched), cpu {result['cpu_seconds']:.3f} s")


def test_an_oom_kill_reports_the_peak_at_memory_max(task_name: str, figure: Callable[[str], None]) -> None:
    # 400 MB at once against MemoryMax = 3 x 64M: killed before any sample could see it grow
    code, result = run_and_wait(task_name, f"{PY} \"b = b'x' * (400 << 20)\"", "--estimated_mem_bytes=64M")
    assert (code, result["status"], result["kill_reason"]) == (1, "killed", "oom"), result
    assert result["memory_max_bytes"] == 192 * MiB
    assert result["peak_mem_bytes"] >= result["memory_max_bytes"]
    assert "peak 192 MiB vs estimate 64 MiB" in result["kill_hint"], result["kill_hint"]
    figure(f"oom at once: peak {result['peak_mem_bytes'] / MiB:.1f} MiB, MemoryMax 192 MiB, "
           f"hint: {result['kill_hint']}")


def test_the_command_reaches_bash_unexpanded(tmp_path: Path, task_name: str) -> None:
    """systemd expands ${VAR} in command lines itself; a shell command must not lose its own variables."""
    tmp_path.chmod(0o755)
    code, result = run_and_wait(task_name, 'x=41; echo "answer=$((x + 1)) ${x} $x $$ %n" > out.txt',
                                f"--cwd={tmp_path}")
    assert code == 0, result
    words = (tmp_path / "out.txt").read_text().split()
    assert words[:3] == ["answer=42", "41", "41"] and words[3].isdigit() and words[4] == "%n"


def a_file(tmp: Path) -> Path:
    (tmp / "file").write_text("")
    return tmp / "file"


def a_closed_directory(tmp: Path) -> Path:
    (tmp / "closed").mkdir(mode=0o600)
    return tmp / "closed"


@pytest.mark.parametrize("make, problem", [
    (lambda tmp: tmp / "missing", "no such directory"),
    (a_file, "not a directory"),
    (a_closed_directory, "permission denied"),
], ids=["missing", "file", "closed"])
def test_an_unusable_cwd_is_refused_before_any_unit_exists(tmp_path: Path, task_name: str,
                                                           make: Callable[[Path], Path], problem: str) -> None:
    cwd = make(tmp_path)
    refused = babysit("run", f"--name={task_name}", "--command=true", f"--cwd={cwd}")
    assert refused.returncode == 2
    assert str(cwd) in refused.stderr and problem in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert not babysit_units(task_name)
    assert babysit("status", f"--name={task_name}").returncode == 2  # no record either


def test_a_start_that_systemd_refuses_says_why_in_words(tmp_path: Path, task_name: str) -> None:
    """The directory was fine when it was queued, and is gone when the task starts: systemd's CHDIR step."""
    doomed = tmp_path / "doomed"
    doomed.mkdir()
    babysit("run", f"--name={task_name}-hold", "--command=sleep 30", "--estimated_cpu_cores=2",
            "--cpu_pct_limit=100")
    queued = babysit("run", f"--name={task_name}", "--command=true", f"--cwd={doomed}", "--force",
                     "--estimated_cpu_cores=1")
    assert queued.returncode == 0, queued.stderr
    assert json.loads(babysit("status", f"--name={task_name}", "--json").stdout)["status"] == "queued"
    doomed.rmdir()
    babysit("kill", f"--name={task_name}-hold")
    done = babysit("wait", f"--name={task_name}", timeout=60)
    result = json.loads(done.stdout)
    assert (done.returncode, result["status"], result["exit_code"]) == (1, "failed", 200), result
    assert "step CHDIR failed" in result["detail"] and "working directory" in result["detail"]
