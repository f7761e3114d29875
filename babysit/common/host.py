"""The machine: its capacity, read from /proc and the CPU affinity mask, and its identity."""

from __future__ import annotations

import os
import re
from pathlib import Path

from babysit.common.config import Config
from babysit.core.task import Host


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        parts = value.split()
        info[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return info


def read_host(config: Config) -> Host:
    """The host as babysit may use it: RAM and cores, within the configured budgets."""
    mem = int(meminfo()["MemTotal"] * config.mem_budget_pct / 100)
    cores = len(os.sched_getaffinity(0)) * config.cpu_budget_pct / 100
    return Host(
        mem_bytes=min(mem, config.mem_budget_bytes or mem),
        cores=min(cores, config.cpu_budget_cores or cores),
    )


def free_mem_bytes() -> int:
    """Memory the kernel can hand out now without swapping (MemAvailable)."""
    return meminfo()["MemAvailable"]


MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))  # machine-id(5), then D-Bus's copy


def machine_id() -> str | None:
    """This machine's id (machine-id(5)): unlike its host name, DHCP and `hostnamectl` do not change it, and
    login nodes that share a home do not share it. None where there is none."""
    for path in MACHINE_ID_FILES:
        try:
            found = path.read_text().strip().lower()
        except OSError:
            continue
        if re.fullmatch(r"[0-9a-f]{32}", found):
            return found
    return None
