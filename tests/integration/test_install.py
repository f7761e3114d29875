"""Installing like a user: a wheel in a fresh virtualenv, no checkout on the path, then a first task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from babysit.common.config import Config
from babysit.common.host import read_host
from tests.integration.conftest import babysit, systemctl_show
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration]
WHEELHOUSE = Path(__file__).resolve().parents[2] / ".wheelhouse"


def test_the_slice_holds_all_tasks_inside_the_budget(daemon: str) -> None:
    shown = systemctl_show("babysit.slice", "MemoryMax", "CPUQuotaPerSecUSec")
    host = read_host(Config())
    assert shown["MemoryMax"] == str(host.mem_bytes)
    assert shown["CPUQuotaPerSecUSec"] in (f"{host.cores:g}s", f"{int(host.cores * 1000)}ms")


@pytest.fixture
def wheel_venv(tmp_path: Path, daemon: str) -> Iterator[Path]:
    """babysit from its wheel in a new virtualenv; the checkout's daemon is put back afterwards."""
    if not any(WHEELHOUSE.glob("babysit-*.whl")):
        pytest.fail(f"no wheel in {WHEELHOUSE}: `python3 tests/suite.py` builds it")
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-index", f"--find-links={WHEELHOUSE}",
                    "babysit"], check=True, timeout=300)
    yield venv
    assert babysit("daemon-start", timeout=120).returncode == 0  # back to the checkout's daemon


def test_daemon_start_from_an_installed_wheel(wheel_venv: Path, tmp_path: Path, task_name: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{wheel_venv / 'bin'}:/usr/bin:/bin"

    def installed(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["babysit", *args], capture_output=True, text=True, timeout=120, env=env,
                              cwd=tmp_path)

    where = subprocess.run([str(wheel_venv / "bin" / "python"), "-c", "import babysit; print(babysit.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path).stdout
    assert where.startswith(str(wheel_venv))  # not the checkout
    started = installed("daemon-start")
    assert started.returncode == 0, started.stderr
    unit = (Path.home() / ".config/systemd/user/babysitd.service").read_text()
    assert f"ExecStart={wheel_venv / 'bin' / 'python'}" in unit
    assert installed("run", f"--name={task_name}", "--command=echo from-the-wheel").returncode == 0
    waited = installed("wait", f"--name={task_name}")
    assert (waited.returncode, json.loads(waited.stdout)["status"]) == (0, "completed")
    assert installed("log", f"--name={task_name}").stdout.strip() == "from-the-wheel"
    assert sys.executable != str(wheel_venv / "bin" / "python")


def test_babysitd_logs_under_its_own_name(daemon: str) -> None:
    def logged() -> str:
        argv = ["journalctl", "--user", "--identifier=babysitd", "--output=cat", "--no-pager"]
        return subprocess.run(argv, capture_output=True, text=True).stdout

    assert wait_for(lambda: "ready" in logged(), 30, "babysitd's start line under its name")
