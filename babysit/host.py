"""The machine's capacity, read from /proc and the CPU affinity mask."""

from __future__ import annotations

import os
from pathlib import Path

from babysit.config import Config
from babysit.task import Host


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
    cores = len(os.sched_getaffinity(0))
    return Host(
        mem_bytes=int(meminfo()["MemTotal"] * config.mem_budget_pct / 100),
        cores=max(1, int(cores * config.cpu_budget_pct / 100)),
    )
