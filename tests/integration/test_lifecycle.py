"""A task's life end to end through the CLI: run, wait, log, list, status, kill, and bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from babysit.core.protocol import unit_name
from tests.integration.conftest import babysit, journal, session_control, systemctl_show
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("daemon")]


def wait_json(name: str, timeout: float = 60) -> tuple[int, dict]:
    done = babysit("wait", f"--name={name}", timeout=timeout)
    return done.returncode, json.loads(done.stdout)


def state_of(name: str) -> str:
    return json.loads(babysit("status", f"--name={name}", "--json").stdout)["status"]


def test_run_wait_and_log_a_completed_task(task_name: str) -> None:
    started = babysit("run", f"--name={task_name}", "--command=echo hi; sleep 1; echo bye")
    # no estimates given: where this command ran before in this directory, run also says what it learnt
    assert started.returncode == 0 and started.stdout.strip().split(" (estimates from ")[0] == f"queued: {task_name}"
    code, result = wait_json(task_name)
    assert code == 0
    assert result["status"] == "completed" and result["exit_code"] == 0
    assert result["unit"] == unit_name(task_name)
    assert result["log_cmd"] == f"journalctl --user -u babysit-{task_name}"
    assert 1.0 <= result["elapsed_s"] < 30
    wait_for(lambda: "bye" in journal(task_name), 15, "bye in the journal")
    log = babysit("log", f"--name={task_name}", "--tail=15")
    assert log.returncode == 0 and log.stdout.split() == ["hi", "bye"]


@pytest.mark.timeout(120)
def test_lines_journald_reads_after_the_task_ended_are_still_its_own(task_name: str) -> None:
    """A busy journald reads a short task's line after the task exited, when the writer's cgroup (its
    unit) can no longer be read: `babysit log` still finds the line, by the identifier systemd sent."""
    session_control("pause-journald")
    try:
        assert babysit("run", f"--name={task_name}", "--command=echo short-lived-line").returncode == 0
        assert babysit("wait", f"--name={task_name}").returncode == 0
    finally:
        session_control("resume-journald")
    wait_for(lambda: babysit("log", f"--name={task_name}").stdout.split() == ["short-lived-line"], 15,
             "the line in babysit log")


def test_a_failing_command_is_failed_with_its_exit_code(task_name: str) -> None:
    babysit("run", f"--name={task_name}", "--command=echo oops >&2; exit 3")
    code, result = wait_json(task_name)
    assert code == 1
    assert (result["status"], result["exit_code"], result["signal"]) == ("failed", 3, None)


def test_kill_stops_a_running_task(task_name: str) -> None:
    babysit("run", f"--name={task_name}", "--command=echo started; exec sleep 300")
    wait_for(lambda: state_of(task_name) == "running", 30, "running")
    killed = babysit("kill", f"--name={task_name}")
    assert killed.returncode == 0, killed.stderr
    code, result = wait_json(task_name)
    assert code == 1
    assert list(result)[:2] == ["kill_reason", "kill_hint"]
    assert (result["status"], result["kill_reason"]) == ("killed", "user")
    assert "babysit kill" in result["kill_hint"]
    # the unit is released, so the name can run again
    wait_for(lambda: systemctl_show(unit_name(task_name), "LoadState")["LoadState"] == "not-found", 30, "unit gone")
    again = babysit("run", f"--name={task_name}", "--command=true")
    assert again.returncode == 0, again.stderr
    assert wait_json(task_name)[0] == 0
    history = json.loads(babysit("list", "--all", "--json").stdout)
    assert [t["status"] for t in history if t["name"] == task_name] == ["killed", "completed"]


def test_a_live_name_is_refused(task_name: str) -> None:
    assert babysit("run", f"--name={task_name}", "--command=sleep 300").returncode == 0
    second = babysit("run", f"--name={task_name}", "--command=true")
    assert second.returncode == 2
    assert "still queued or running" in second.stderr
    babysit("kill", f"--name={task_name}")
    assert wait_json(task_name)[1]["kill_reason"] == "user"


def test_the_task_gets_the_callers_environment_and_directory(task_name: str, tmp_path: Path) -> None:
    env = {**__import__("os").environ, "BABYSIT_PROBE": "from-the-caller"}
    babysit("run", f"--name={task_name}", '--command=echo "probe=$BABYSIT_PROBE"; echo "cwd=$PWD"',
            env=env, cwd=str(tmp_path))
    assert wait_json(task_name)[0] == 0
    wait_for(lambda: "cwd=" in journal(task_name), 15, "output")
    output = journal(task_name)
    assert "probe=from-the-caller" in output
    assert f"cwd={tmp_path}" in output


def test_list_and_status_show_a_running_task(task_name: str) -> None:
    babysit("run", f"--name={task_name}", "--command=exec sleep 300", "--estimated_mem_bytes=256M",
            "--estimated_time=1m")
    wait_for(lambda: state_of(task_name) == "running", 30, "running")
    listed = babysit("list")
    assert listed.returncode == 0 and task_name in listed.stdout and "running" in listed.stdout
    status = json.loads(babysit("status", f"--name={task_name}", "--json").stdout)
    assert status["estimated_mem_bytes"] == 256 << 20
    assert status["memory_max_bytes"] == 3 * (256 << 20)
    assert status["estimated_time_s"] == 60 and status["kill_timeout_s"] == 120
    shown = systemctl_show(unit_name(task_name), "MemoryMax", "Slice", "RuntimeMaxUSec")
    assert shown["MemoryMax"] == str(3 * (256 << 20))
    assert shown["Slice"] == "babysit.slice"
    babysit("kill", f"--name={task_name}")
    wait_json(task_name)


def busctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["busctl", "--user", *args], capture_output=True, text=True, timeout=30)


def test_busctl_submits_and_lists(task_name: str) -> None:
    called = busctl("call", "org.babysit", "/org/babysit/Scheduler", "org.babysit.Scheduler", "Run", "a{sv}b",
                    "3", "name", "s", task_name, "command", "s", "echo via-busctl", "estimated_time", "s", "1m",
                    "false")
    assert called.returncode == 0, called.stderr
    assert called.stdout.strip() == f's "{task_name}"'
    assert wait_json(task_name)[0] == 0
    listed = busctl("call", "org.babysit", "/org/babysit/Scheduler", "org.babysit.Scheduler", "List", "b", "true")
    assert listed.returncode == 0 and task_name in listed.stdout


def canonical(element) -> list[tuple]:  # noqa: ANN001
    return sorted((e.tag, tuple(sorted(e.attrib.items())), len(list(e))) for e in element.iter())


def test_live_introspection_equals_the_xml_file(task_name: str) -> None:
    import xml.etree.ElementTree as ET

    shipped = ET.parse(Path(__file__).resolve().parents[2] / "dbus" / "org.babysit.Scheduler.xml").getroot()
    live = ET.fromstring(busctl("introspect", "--xml-interface", "org.babysit", "/org/babysit/Scheduler").stdout)
    for interface in ("org.babysit.Scheduler",):
        assert canonical(live.find(f"interface[@name='{interface}']")) == \
            canonical(shipped.find(f"interface[@name='{interface}']"))
    babysit("run", f"--name={task_name}", "--command=sleep 60")
    path = "/org/babysit/Scheduler/tasks/" + task_name.replace("-", "_2d")
    task = ET.fromstring(busctl("introspect", "--xml-interface", "org.babysit", path).stdout)
    assert canonical(task.find("interface[@name='org.babysit.Task']")) == \
        canonical(shipped.find("interface[@name='org.babysit.Task']"))
    babysit("kill", f"--name={task_name}")
    assert wait_json(task_name)[1]["status"] == "killed"
    # a finished run's object leaves the bus (babysit's state stays bounded); Status still answers for it
    gone = busctl("introspect", "--xml-interface", "org.babysit", path).stdout
    assert "org.babysit.Task" not in gone, gone


def babysit_units() -> set[str]:
    out = subprocess.run(["systemctl", "--user", "list-units", "--all", "--plain", "--no-legend", "babysit-*"],
                         capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.mark.parametrize("name", ["../x", "a b", "x;rm", "", "x" * 65, "ünï", "-lead", ".hidden", "a/b"])
def test_invalid_names_are_refused_and_change_nothing(name: str) -> None:
    before = (babysit_units(), babysit("list", "--all", "--json").stdout)
    refused = babysit("run", f"--name={name}", "--command=touch /tmp/should-not-run")
    assert refused.returncode == 2
    assert "invalid task name" in refused.stderr
    assert (babysit_units(), babysit("list", "--all", "--json").stdout) == before


@pytest.mark.parametrize("flag", ["--estimated_time=soon", "--estimated_time=-5m", "--estimated_mem_bytes=4X",
                                  "--estimated_mem_bytes=0", "--kill_timeout=1h30", "--observability_interval=0s",
                                  "--estimated-cpu-cores=-1", "--mem_pct_limit=150"])
def test_invalid_estimates_are_refused(flag: str, task_name: str) -> None:
    refused = babysit("run", f"--name={task_name}", "--command=true", flag)
    assert refused.returncode == 2, refused.stdout
    assert refused.stderr.count("\n") == 1  # one clear line, no traceback
    assert "no task named" in babysit("status", f"--name={task_name}").stderr  # nothing was recorded


def test_unknown_tasks_and_malformed_calls(task_name: str) -> None:
    for verb in ("wait", "status", "kill", "log"):
        missing = babysit(verb, f"--name={task_name}")
        assert missing.returncode == 2 and "no task named" in missing.stderr, (verb, missing.stderr)
    scheduler = ["org.babysit", "/org/babysit/Scheduler", "org.babysit.Scheduler"]
    wrong_signature = busctl("call", *scheduler, "Run", "s", "hello")
    assert wrong_signature.returncode != 0
    wrong_type = busctl("call", *scheduler, "Run", "a{sv}b", "2", "name", "i", "5", "command", "s", "true", "false")
    assert "invalid task name 5" in wrong_type.stderr
    unknown_field = busctl("call", *scheduler, "Run", "a{sv}b", "3", "name", "s", task_name, "command", "s", "true",
                           "sudo", "b", "true", "false")
    assert "unknown spec fields: sudo" in unknown_field.stderr
    assert babysit("ping").returncode == 0


def test_log_follow_streams_until_the_task_ends(task_name: str) -> None:
    babysit("run", f"--name={task_name}", "--command=for i in 1 2 3 4 5; do echo line-$i; sleep 0.3; done")
    followed = babysit("log", f"--name={task_name}", "--follow", timeout=60)
    assert followed.returncode == 0, followed.stderr
    assert [line for line in followed.stdout.split() if line.startswith("line-")] == [f"line-{i}" for i in range(1, 6)]
    assert state_of(task_name) == "completed"
