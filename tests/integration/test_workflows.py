"""Chains, retries that learn, and sweeps, end to end through the CLI, on every executor.

Each test runs once per executor: as systemd units in the session, and as jobs on a real single-node
Slurm cluster when the Slurm tier started one. What ran, and when, is written by the tasks themselves
into files under the test's directory (under /tmp, which a Slurm job's node sees too).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from babysit.core.quantities import parse_size
from tests.integration.conftest import BIN, Gate, babysit, daemon_config, on_slurm, restart_daemon, status
from tests.integration.test_contract import hog
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration]
QUICK = "tick_s = 0.25\ntolerance_s = 2\ncpu_window_s = 1\nrecheck_s = 1\n"
TINY = ("--estimated_time=1m", "--estimated_mem_bytes=32M", "--estimated_cpu_cores=0.1")


@pytest.fixture(scope="module", params=["systemd", pytest.param("slurm", marks=pytest.mark.slurm)])
def executor(request: pytest.FixtureRequest, daemon: str) -> Iterator[str]:
    with daemon_config(QUICK) if request.param == "systemd" else on_slurm(QUICK):
        yield request.param


def run(name: str, command: str, *flags: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    started = babysit("run", f"--name={name}", f"--command={command}", *TINY, *flags, cwd=str(cwd) if cwd else None)
    assert started.returncode == 0, started.stderr
    return started


def wait(*names: str, flags: tuple[str, ...] = (), timeout: float = 180) -> tuple[int, list[dict], str]:
    done = babysit("wait", *(f"--name={n}" for n in names), *flags, timeout=timeout)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_a_chain_of_three_runs_each_step_after_the_one_before(executor: str, task_name: str, tmp_path: Path) -> None:
    order = tmp_path / "order"
    prepare, train, evaluate = (f"{task_name}-{step}" for step in ("prepare", "train", "evaluate"))
    step = "echo start-{0} >> {1}; sleep 1; echo end-{0} >> {1}"
    run(prepare, step.format("prepare", order))
    run(train, step.format("train", order), f"--after={prepare}")
    run(evaluate, step.format("evaluate", order), f"--after={train}")
    waiting = status(evaluate)
    assert waiting["status"] == "queued" and waiting["waiting_for"] == f"{train} to complete (queued now)", waiting
    code, (result,), _ = wait(evaluate)
    assert (code, result["status"], result["after"]) == (0, "completed", [train]), result
    assert lines(order) == ["start-prepare", "end-prepare", "start-train", "end-train", "start-evaluate",
                            "end-evaluate"]


def test_a_failed_first_step_ends_the_rest_unrun_saying_why(executor: str, task_name: str, tmp_path: Path) -> None:
    first, second, third = (f"{task_name}-{i}" for i in (1, 2, 3))
    run(first, "echo broken >&2; exit 3")
    run(second, f"touch {tmp_path}/second-ran", f"--after={first}")
    run(third, f"touch {tmp_path}/third-ran", f"--after={second}")
    code, results, _ = wait(second, third)
    assert code == 1 and [r["name"] for r in results] == [second, third], results
    for result, before, how in ((results[0], first, "failed (exit code 3)"), (results[1], second, "killed (dependency)")):
        assert (result["status"], result["kill_reason"], result["started_at"]) == ("killed", "dependency", None), result
        assert f"{before} ended {how}" in result["kill_hint"], result
    assert not list(tmp_path.glob("*-ran"))


def test_an_oom_kill_is_retried_with_the_figure_its_hint_named(executor: str, task_name: str) -> None:
    run(task_name, hog(250, hold_s=3), "--estimated_mem_bytes=64M", "--retries=2")
    code, (result,), stderr = wait(task_name)
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds.count("retry") == 1, stderr
    first = events[kinds.index("retry")]
    # each attempt went past its memory estimate while it ran: both warnings were streamed, in order
    assert "runaway_risk" in kinds[:kinds.index("retry")] and "runaway_risk" in kinds[kinds.index("retry"):], stderr
    assert (first["status"], first["kill_reason"], first["attempt"], first["next_attempt"]) == ("killed", "oom", 1, 2)
    asked = first["kill_hint"].split("--estimated_mem_bytes=")[1].split()[0]
    assert f"--estimated_mem_bytes={asked}" in first["retry"], first
    assert (code, result["status"], result["attempt"], result["attempts"]) == (0, "completed", 2, 3), result
    assert result["estimated_mem_bytes"] == parse_size(asked) > 200 << 20, result
    history = json.loads(babysit("history", f"--name={task_name}", "--json").stdout)
    assert [(r["status"], r["kill_reason"]) for r in history] == [("killed", "oom"), ("completed", None)], history


def test_a_sweep_of_8_runs_each_index_once_never_more_than_2_at_once(executor: str, task_name: str,
                                                                      tmp_path: Path) -> None:
    marks = f"date +%s.%N > {tmp_path}/{{index}}.start; sleep 1; date +%s.%N > {tmp_path}/{{index}}.end"
    started = run(task_name, f'echo "index {{index}} $BABYSIT_ARRAY_INDEX"; {marks}', "--array=1-8%2")
    assert started.stdout.strip() == f"queued: {task_name}"
    code, (summary,), _ = wait(task_name)
    assert (code, summary["status"], summary["counts"], summary["members"]) == (0, "completed", {"completed": 8}, 8)
    assert [(r["name"], r["array_index"]) for r in summary["results"]] == [(f"{task_name}-{i}", i) for i in range(1, 9)]
    if executor == "slurm":  # one array job, `sbatch --array=1-8%2`: Slurm itself holds the members back
        jobs = [r["unit"].removeprefix("slurm job ").partition("_") for r in summary["results"]]
        assert len({job for job, _, _ in jobs}) == 1 and [int(i) for _, _, i in jobs] == list(range(1, 9)), jobs
    spans = [(float((tmp_path / f"{i}.start").read_text()), float((tmp_path / f"{i}.end").read_text()))
             for i in range(1, 9)]
    most = max(sum(start <= at < end for start, end in spans) for at, _ in spans)
    assert most <= 2, spans
    for i in range(1, 9):
        shown = babysit("log", f"--name={task_name}-{i}")
        assert f"index {i} {i}" in shown.stdout.splitlines(), shown


def test_wait_any_returns_at_the_first_end_and_wait_all_at_the_last(executor: str, task_name: str,
                                                                     gate: Gate) -> None:
    slow, quick = f"{task_name}-slow", f"{task_name}-quick"
    run(slow, gate.then("true"))
    run(quick, "true")
    code, results, _ = wait(slow, quick, flags=("--any",))
    assert code == 0 and [(r["name"], r["status"]) for r in results] == [(quick, "completed")], results
    assert status(slow)["status"] in ("queued", "running")
    gate.open()
    code, results, _ = wait(slow, quick)
    assert code == 0 and [(r["name"], r["status"]) for r in results] == [(slow, "completed"), (quick, "completed")]


def test_a_restart_mid_chain_runs_nothing_twice_and_loses_nothing(executor: str, task_name: str, gate: Gate) -> None:
    ran = gate.path.parent / "ran"
    steps = [f"{task_name}-{i}" for i in (1, 2, 3)]
    run(steps[0], gate.then(f"echo 1 >> {ran}"))
    run(steps[1], f"echo 2 >> {ran}; sleep 2", f"--after={steps[0]}")
    run(steps[2], f"echo 3 >> {ran}", f"--after={steps[1]}")
    restart_daemon()
    assert status(steps[2])["waiting_for"] == f"{steps[1]} to complete (queued now)"
    gate.open()
    wait_for(lambda: "2" in lines(ran), 60, "the second step to start")
    restart_daemon()
    code, (result,), _ = wait(steps[2])
    assert (code, result["status"]) == (0, "completed"), result
    assert lines(ran) == ["1", "2", "3"]


def test_a_restart_mid_sweep_runs_each_member_once(executor: str, task_name: str, gate: Gate) -> None:
    ran = gate.path.parent / "ran"
    run(task_name, gate.then(f"echo {{index}} >> {ran}"), "--array=1-6%2")
    wait_for(lambda: status(task_name)["counts"].get("running") == 2, 60, "two members running")
    restart_daemon()
    assert status(task_name)["counts"] == {"queued": 4, "running": 2}
    gate.open()
    wait_for(lambda: len(lines(ran)) >= 3, 60, "three members done")
    restart_daemon()
    code, (summary,), _ = wait(task_name)
    assert (code, summary["counts"]) == (0, {"completed": 6}), summary
    assert sorted(lines(ran), key=int) == [str(i) for i in range(1, 7)]


def test_held_and_killed_members_of_a_sweep_never_run(executor: str, task_name: str, gate: Gate) -> None:
    """On Slurm a sweep is one array job: a member held before it was submitted ran in it all the same, out
    of babysit's sight. A held member is left out of the array (and runs as a job of its own once
    released); a killed one never runs."""
    ran = gate.path.parent / "ran"
    assert babysit("drain").returncode == 0  # the sweep waits in babysit's queue while its members are set
    try:
        run(task_name, gate.then(f"echo {{index}} >> {ran}"), "--array=1-4%1", "--force")
        for verb, member in (("hold", 2), ("hold", 3), ("kill", 4)):
            assert babysit(verb, f"--name={task_name}-{member}").returncode == 0
    finally:
        assert babysit("undrain").returncode == 0
    wait_for(lambda: status(f"{task_name}-1")["status"] == "running", 60, "the first member to run")
    assert babysit("kill", f"--name={task_name}-3").returncode == 0  # held, then killed
    gate.open()
    wait_for(lambda: lines(ran) == ["1"], 60, "the first member to finish")
    assert status(f"{task_name}-2")["status"] == "queued"  # held: it has not run
    released_at = time.time()
    assert babysit("release", f"--name={task_name}-2").returncode == 0
    code, (summary,), _ = wait(task_name)
    assert summary["counts"] == {"completed": 2, "killed": 2}, summary
    assert lines(ran) == ["1", "2"]
    second = next(r for r in summary["results"] if r["name"] == f"{task_name}-2")
    assert epoch(second["started_at"]) >= released_at - 1, second  # (a second: Slurm's times are whole)
    if executor == "slurm":  # the held member was no task of the first member's array job, and nothing is left
        first = next(r for r in summary["results"] if r["name"] == f"{task_name}-1")
        assert second["unit"].split("_")[0] != first["unit"].split("_")[0], (first["unit"], second["unit"])
        user = os.environ.get("USER") or str(os.getuid())
        wait_for(lambda: not subprocess.run(["squeue", "-h", "-u", user], capture_output=True, text=True).stdout,
                 60, "no job of ours left in Slurm")
        assert lines(ran) == ["1", "2"]


# --- on one executor: the verbs on a sweep, the refusals, the D-Bus API -----------------------------------

@pytest.fixture(scope="module")
def on_systemd(daemon: str) -> Iterator[None]:
    with daemon_config(QUICK):
        yield


def test_the_verbs_act_on_a_sweep_as_one(on_systemd: None, task_name: str, gate: Gate) -> None:
    run(task_name, gate.then("true"), "--array=0,3,7%2")
    shown = status(task_name)
    assert (shown["status"], shown["members"], sum(shown["counts"].values())) == ("running", 3, 3), shown
    listed = babysit("list")
    assert f"{task_name} (sweep of 3)" in listed.stdout, listed.stdout
    members = [t for t in json.loads(babysit("list", "--json").stdout) if t.get("group") == task_name]
    assert sorted(t["array_index"] for t in members) == [0, 3, 7]
    logged = babysit("log", f"--name={task_name}")
    assert logged.returncode == 2 and f"babysit log --name={task_name}-0" in logged.stderr, logged
    assert babysit("adjust", f"--name={task_name}", "--estimated_time=5m").returncode == 0
    assert {status(f"{task_name}-{i}")["estimated_time_s"] for i in (0, 3, 7)} == {300.0}
    assert babysit("kill", f"--name={task_name}").returncode == 0
    code, (summary,), _ = wait(task_name)
    assert (code, summary["status"], summary["counts"]) == (1, "failed", {"killed": 3}), summary


def test_a_retry_the_caps_refuse_ends_the_retries_saying_why(on_systemd: None, task_name: str) -> None:
    with daemon_config(QUICK + 'mem_budget_bytes = "1G"\n'):  # a cap of 20 %: 204.8 MiB, under what the hint asks
        # a command of its own: earlier runs of the same command would change the hint's figure
        run(task_name, f"{hog(250, hold_s=1)} # {task_name}", "--estimated_mem_bytes=64M", "--mem_pct_limit=20",
            "--retries=2")
        code, (result,), stderr = wait(task_name)
    assert (code, result["kill_reason"], result["attempt"], result.get("next_attempt")) == (1, "oom", 1, None), result
    assert result["retry"].startswith("no attempt 2 of 3: exceeds_cap: estimated memory 231 MiB"), result
    assert '"event": "retry"' not in stderr
    assert len(json.loads(babysit("history", f"--name={task_name}", "--json").stdout)) == 1


def test_members_learn_their_estimates_from_each_other(on_systemd: None, task_name: str) -> None:
    started = babysit("run", f"--name={task_name}", "--command=sleep 1", "--array=1-3%1")
    assert started.returncode == 0, started.stderr
    code, (summary,), _ = wait(task_name)
    assert code == 0, summary
    last = status(f"{task_name}-3")
    assert "earlier runs named like" in (last["estimates_from"] or ""), last
    assert last["estimated_time_s"] == 60.0  # the floor over two runs of about a second, not the default 10m


def test_what_cannot_be_chained_or_swept_is_refused(on_systemd: None, task_name: str) -> None:
    for flags, said in ((["--after=no-such-task"], "no task named"), ([f"--after={task_name}"], "itself"),
                        (["--array=5-1"], "range"), (["--array=1-3%0"], "at least 1"),
                        (["--retry_on=bad_luck"], "retry_on"), (["--retries=-1"], "retries"),
                        (["--after=a:sometimes"], "condition")):
        refused = babysit("run", f"--name={task_name}", "--command=true", *flags)
        assert refused.returncode == 2 and said in refused.stderr, (flags, refused.stderr)
    assert babysit("status", f"--name={task_name}").returncode == 2  # nothing was created


def test_chains_and_sweeps_through_the_dbus_api(on_systemd: None, task_name: str) -> None:
    def call(*args: str) -> str:
        done = subprocess.run(["busctl", "--user", "call", "org.babysit", "/org/babysit/Scheduler",
                               "org.babysit.Scheduler", "Run", "a{sv}b", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    sweep, after = f"{task_name}-s", f"{task_name}-a"
    assert call("4", "name", "s", sweep, "command", "s", "true", "cwd", "s", "/", "array", "s", "1-2", "false") == \
        f's "{sweep}"'
    assert call("5", "name", "s", after, "command", "s", "true", "cwd", "s", "/", "after", "as", "1", sweep,
                "retries", "u", "1", "false") == f's "{after}"'
    code, (result,), _ = wait(after)
    assert (code, result["after"], result["attempts"]) == (0, [sweep], 2), result  # one edge for the whole sweep


def test_wait_follows_a_retry_that_starts_after_it_attached(on_systemd: None, task_name: str, gate: Gate) -> None:
    second = f"{gate.path}.second"
    run(task_name, gate.then(f"test -e {second} || {{ touch {second}; exit 1; }}"), "--retries=1", "--retry_on=failed")
    waiting = subprocess.Popen([str(BIN / "babysit"), "wait", f"--name={task_name}"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for(lambda: f" {waiting.pid} " in subprocess.run(["busctl", "--user", "list"], capture_output=True,
                                                           text=True).stdout, 30, "the waiter on the bus")
    gate.open()
    out, err = waiting.communicate(timeout=120)
    result = json.loads(out)
    assert (waiting.returncode, result["status"], result["attempt"]) == (0, "completed", 2), (out, err)
    assert '"event": "retry"' in err and '"exit_code": 1' in err, err
