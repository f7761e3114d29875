"""What differs on a stock v2 host (systemd as PID 1, logind, lingering, unified cgroups), through the CLI.

These run inside the VM tier's guest as the lingering user `tester`, in a login session of theirs.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from babysit.core.protocol import DAEMON_UNIT, unit_name
from tests.host.test_readme import quickstart
from tests.integration.conftest import Gate, babysit, status, systemctl_show
from tests.waiting import wait_for

pytestmark = [pytest.mark.vm]
CGROUP_ROOT = Path("/sys/fs/cgroup")
MiB = 1 << 20
UID = os.getuid()
STATE = Path.home() / "vm-tier-state.json"  # what the first boot leaves for the second


def task_cgroup(name: str) -> Path:
    return CGROUP_ROOT / systemctl_show(unit_name(name), "ControlGroup")["ControlGroup"].lstrip("/")


@pytest.mark.timeout(900)  # a virtualenv with pip alone takes half a minute in the guest
def test_the_quick_start_verbatim_as_a_new_user(tmp_path: Path) -> None:
    """A new user with a fresh virtualenv; pip reads the guest's wheelhouse (the guest has no network)."""
    script = "\n".join(["set -euo pipefail", f"python3 -m venv {tmp_path}/venv && . {tmp_path}/venv/bin/activate",
                        "cd ~/babysit", *quickstart()])
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/mnt/share/wheels",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert '"status": "completed"' in done.stdout
    assert done.stdout.rstrip().splitlines()[-2:] == ["hi", "bye"]


def test_daemon_start_finds_the_stock_delegation_and_lingering() -> None:
    started = babysit("daemon-start", timeout=120)
    assert started.returncode == 0, started.stderr
    assert "controller" not in started.stderr and "enable-linger" not in started.stdout + started.stderr, started
    assert "journald keeps at most about 10000 lines per 30s" in started.stderr  # Debian's stock journald
    manager = CGROUP_ROOT / f"user.slice/user-{UID}.slice/user@{UID}.service"
    assert {"cpu", "memory"} <= set((manager / "cgroup.controllers").read_text().split())
    linger = subprocess.run(["loginctl", "show-user", str(UID), "--property=Linger"], capture_output=True, text=True)
    assert linger.stdout.strip() == "Linger=yes"
    pong = babysit("ping")
    assert pong.returncode == 0 and "controller" not in pong.stderr, pong


def test_caps_land_in_memory_max_and_cpu_max(task_name: str) -> None:
    started = babysit("run", f"--name={task_name}", "--command=sleep 120", "--estimated_mem_bytes=100M",
                      "--estimated_cpu_cores=0.5", "--cpu_pct_limit=25")
    assert started.returncode == 0, started.stderr
    try:
        wait_for(lambda: status(task_name)["status"] == "running", 60, "the task to run")
        shown, cgroup = status(task_name), task_cgroup(task_name)
        assert (cgroup / "memory.max").read_text().strip() == str(shown["memory_max_bytes"]) == str(300 * MiB)
        quota, period = (cgroup / "cpu.max").read_text().split()
        assert int(quota) / int(period) * 100 == pytest.approx(shown["cpu_quota_pct"], abs=1)
        assert str(CGROUP_ROOT / f"user.slice/user-{UID}.slice/user@{UID}.service/babysit.slice") in str(cgroup)
    finally:
        babysit("kill", f"--name={task_name}")


def test_an_exact_peak_from_memory_peak(task_name: str) -> None:
    """A task that touches 80 MiB and frees it: the kernel's memory.peak, not a sample, gives the peak."""
    command = "/usr/bin/python3 -c \"b = b'x' * (80 << 20); del b; import time; time.sleep(2)\""
    assert babysit("run", f"--name={task_name}", f"--command={command}").returncode == 0
    done = babysit("wait", f"--name={task_name}", timeout=120)
    result = json.loads(done.stdout)
    assert (done.returncode, result["status"]) == (0, "completed"), result
    assert 80 * MiB <= result["peak_mem_bytes"] < 160 * MiB, result
    assert result["cpu_seconds"] is not None and result["cpu_seconds"] > 0


def test_only_the_runaway_is_killed(task_name: str) -> None:
    """An OOM kill ends the hog alone: another task, a unit outside babysit and this login session go on."""
    neighbour, outside = f"{task_name}-neighbour", f"outside-{task_name}"
    assert babysit("run", f"--name={neighbour}", "--command=while true; do echo .; sleep 1; done",
                   "--estimated_cpu_cores=0.1", "--estimated_mem_bytes=32M").returncode == 0
    subprocess.run(["systemd-run", "--user", "--quiet", f"--unit={outside}", "--collect", "sleep", "600"], check=True)
    try:
        hog = "/usr/bin/python3 -c \"b = b'x' * (400 << 20)\""
        assert babysit("run", f"--name={task_name}", f"--command={hog}", "--estimated_mem_bytes=64M").returncode == 0
        done = babysit("wait", f"--name={task_name}", timeout=120)
        assert json.loads(done.stdout)["kill_reason"] == "oom", done.stdout
        assert status(neighbour)["status"] == "running"
        assert systemctl_show(f"{outside}.service", "ActiveState")["ActiveState"] == "active"
        session = os.environ["XDG_SESSION_ID"]  # pam_systemd's: this test runs in a logind session
        shown = subprocess.run(["loginctl", "show-session", session, "--property=State"], capture_output=True,
                               text=True)
        assert shown.stdout.strip() in ("State=active", "State=online"), shown
    finally:
        babysit("kill", f"--name={neighbour}")
        subprocess.run(["systemctl", "--user", "stop", f"{outside}.service"])


def test_a_task_outlives_systemctl_restart_babysitd(task_name: str, gate: Gate) -> None:
    assert babysit("run", f"--name={task_name}", f"--command={gate.then('echo done')}").returncode == 0
    wait_for(lambda: status(task_name)["status"] == "running", 60, "the task to run")
    pid = systemctl_show(unit_name(task_name), "MainPID")["MainPID"]
    subprocess.run(["systemctl", "--user", "restart", DAEMON_UNIT], check=True, timeout=60)
    assert systemctl_show(unit_name(task_name), "MainPID")["MainPID"] == pid  # the same process, untouched
    gate.open()
    done = babysit("wait", f"--name={task_name}", timeout=120)
    assert (done.returncode, json.loads(done.stdout)["status"]) == (0, "completed"), done


def test_a_user_without_delegated_controllers_is_warned_and_run_refuses() -> None:
    """The second user's slice disables the memory and cpu controllers: caps could not be applied, and
    babysit says so."""
    plain = ["sudo", "--user=plain", "env", "HOME=/home/plain", "XDG_RUNTIME_DIR=/run/user/1001",
             "DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/1001/bus", "/home/tester/venv/bin/babysit"]
    started = subprocess.run([*plain, "daemon-start"], capture_output=True, text=True, timeout=120, cwd="/tmp")
    assert started.returncode == 0, started.stderr
    assert "controller delegated" in started.stderr and "Delegate=yes" in started.stderr, started.stderr
    refused = subprocess.run([*plain, "run", "--name=capless", "--command=true"], capture_output=True, text=True,
                             timeout=60, cwd="/tmp")
    assert refused.returncode != 0 and "Delegate=yes" in refused.stderr, refused


def test_tasks_stopped_by_a_user_manager_restart_are_unknown_and_babysit_comes_back(task_name: str) -> None:
    """Restarting user@UID.service stops every task with it; D-Bus activation brings babysitd back,
    and each task that was running is reported `unknown`, saying what stopped it."""
    assert babysit("run", f"--name={task_name}", "--command=sleep 600").returncode == 0
    wait_for(lambda: status(task_name)["status"] == "running", 60, "the task to run")
    subprocess.run(["sudo", "systemctl", "restart", f"user@{UID}.service"], check=True, timeout=120)
    wait_for(lambda: Path(f"/run/user/{UID}/bus").exists(), 60, "the new session bus")
    result = status(task_name)  # the first call activates babysitd
    assert result["status"] == "unknown", result
    assert "user manager" in result["detail"], result
    assert babysit("ping").returncode == 0


@pytest.mark.before_reboot
def test_before_reboot_a_task_runs() -> None:
    name = f"across-reboot-{uuid.uuid4().hex[:6]}"
    assert babysit("run", f"--name={name}", "--command=echo started; sleep 3600").returncode == 0
    wait_for(lambda: status(name)["status"] == "running", 60, "the task to run")
    STATE.write_text(json.dumps({"running": name}))


@pytest.mark.after_reboot
def test_after_a_reboot_the_task_that_ran_is_unknown_and_says_why() -> None:
    name = json.loads(STATE.read_text())["running"]
    result = status(name)  # babysitd is not enabled at boot: this activates it
    assert result["status"] == "unknown", result
    assert "user manager" in result["detail"], result
    assert systemctl_show(DAEMON_UNIT, "ActiveState")["ActiveState"] == "active"
    log = babysit("log", f"--name={name}")
    assert "started" in log.stdout, log
