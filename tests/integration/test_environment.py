"""The session is real: systemd applies caps, journald keeps output, signals arrive unpolled."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from babysit.executors.systemd.manager import SERVICE, Systemd, unit_path
from tests.integration.conftest import UnitSignals, ended
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

MiB = 1 << 20
HOG = "chunks = []\nfor _ in range(20): chunks.append(b'x' * (16 << 20))  # filled, so resident\nprint('survived', flush=True)"


def exec_start(*argv: str) -> list[tuple[str, list[str], bool]]:
    return [(argv[0], list(argv), False)]


def unit_output(unit: str) -> str:
    """A unit's lines, found by unit or by identifier, as babysit finds a task's (see protocol.output_matches)."""
    argv = ["journalctl", "--user", f"_SYSTEMD_USER_UNIT={unit}", "+", f"SYSLOG_IDENTIFIER={unit}", "-o", "cat",
            "--no-pager"]
    return subprocess.run(argv, capture_output=True, text=True).stdout


async def test_memory_max_oom_kills_a_hog(systemd: Systemd, signals: UnitSignals, unit_name: str, python3: str) -> None:
    # The same 320 MiB hog is killed under a 64 MiB MemoryMax...
    await systemd.start_transient_unit(unit_name, {"ExecStart": exec_start(python3, "-c", HOG), "MemoryMax": 64 * MiB})
    await signals.until(unit_name, ended, timeout=30)
    service = await systemd.properties(unit_name, SERVICE)
    # cgroup v1 reports a SIGKILL from the OOM killer, cgroup v2 says so outright
    assert (service["Result"], service["ExecMainStatus"]) in (("signal", 9), ("oom-kill", 9)), service

    # ...and completes without it, so the cap is what killed it
    free_unit = unit_name.replace("smoke-", "smoke-free-")
    await systemd.start_transient_unit(free_unit, {"ExecStart": exec_start(python3, "-c", HOG)})
    done = await signals.until(free_unit, ended, timeout=30)
    assert done["ActiveState"] == "inactive"


async def test_output_reaches_the_user_journal(systemd: Systemd, signals: UnitSignals, unit_name: str) -> None:
    token = unit_name.removesuffix(".service")
    script = f"echo out-{token}; echo err-{token} >&2"
    await systemd.start_transient_unit(unit_name, {"ExecStart": exec_start("/bin/sh", "-c", script),
                                                   "SyslogIdentifier": unit_name})
    await signals.until(unit_name, ended, timeout=30)

    # journald writes asynchronously after the unit ends: wait for the lines, bounded
    wait_for(lambda: f"err-{token}" in unit_output(unit_name), 15, "journal lines")
    assert f"out-{token}" in unit_output(unit_name)


async def test_properties_changed_reports_the_end(systemd: Systemd, signals: UnitSignals, unit_name: str) -> None:
    await systemd.start_transient_unit(unit_name, {"ExecStart": exec_start("/bin/sh", "-c", "sleep 0.2; exit 7")})
    # Only the signals are consulted here: no property is read back.
    final = await signals.until(unit_name, lambda p: p.get("ActiveState") == "failed" and "ExecMainStatus" in p, 30)
    assert final["Result"] == "exit-code"
    assert final["ExecMainStatus"] == 7
    states = [c.changed["ActiveState"] for c in signals.seen[unit_path(unit_name)] if "ActiveState" in c.changed]
    assert "active" in states and states[-1] == "failed"


def cpu_controller_dir(control_group: str) -> tuple[Path, str]:
    """The unit's cgroup directory holding its CPU quota, and the quota file (v1 or v2)."""
    for mount in ("cpu", "cpu,cpuacct"):
        v1 = Path("/sys/fs/cgroup", mount) / control_group.lstrip("/")
        if (v1 / "cpu.cfs_quota_us").exists():
            return v1, "cpu.cfs_quota_us"
    return Path("/sys/fs/cgroup") / control_group.lstrip("/"), "cpu.max"


async def test_cpu_quota_is_applied(systemd: Systemd, signals: UnitSignals, unit_name: str, python3: str) -> None:
    burn = ("import time\nend = time.monotonic() + 2\nwhile time.monotonic() < end: pass\n"
            "print('cpu', time.process_time(), flush=True)")
    await systemd.start_transient_unit(unit_name, {
        "ExecStart": exec_start(python3, "-c", burn),
        "CPUQuotaPerSecUSec": 200_000,  # CPUQuota=20%
        "CPUAccounting": True,
        "SyslogIdentifier": unit_name,
    })
    await signals.until(unit_name, lambda p: p.get("ActiveState") == "active", 30)
    control_group = (await systemd.properties(unit_name, SERVICE))["ControlGroup"]
    cgroup, quota_file = cpu_controller_dir(control_group)
    quota = (cgroup / quota_file).read_text().split()
    if quota_file == "cpu.max":
        assert int(quota[0]) / int(quota[1]) == pytest.approx(0.2)
    else:
        period = int((cgroup / "cpu.cfs_period_us").read_text())
        assert int(quota[0]) / period == pytest.approx(0.2)

    await signals.until(unit_name, ended, timeout=30)
    line = wait_for(lambda: next((x for x in unit_output(unit_name).splitlines() if x.startswith("cpu ")), ""), 15,
                    "the burner's report")
    cpu_seconds = float(line.split()[1])
    assert cpu_seconds < 1.0, f"a 2 s busy loop under a 20% quota used {cpu_seconds:.2f} CPU s"
