"""Where this process sits in each cgroup hierarchy, and making/removing the runner's own cgroups."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

# The parsers are the product's own (stdlib only), shared so both read cgroups the same way.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from babysit.executors.systemd.cgroup import parse_mountinfo, parse_proc_cgroup  # noqa: E402


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy and this process's place in it."""

    key: str  # "memory", "name=systemd", "" for the unified (v2) hierarchy
    mountpoint: Path  # where the hierarchy is mounted
    path: str  # this process's cgroup, relative to the hierarchy root

    @property
    def dir(self) -> Path:
        """The directory of this process's cgroup."""
        return self.mountpoint / self.path.lstrip("/")

    @property
    def is_cpuset(self) -> bool:
        return "cpuset" in self.key.split(",")

    @property
    def mount_options(self) -> str | None:
        """`-o` options that mount this hierarchy again; None for the unified one."""
        if self.key == "":
            return None
        if self.key.startswith("name="):
            return f"none,{self.key}"
        return self.key


def hierarchies(proc_cgroup: str, mountinfo: str) -> list[Hierarchy]:
    """Every mounted hierarchy this process belongs to (unmounted ones cannot be used)."""
    mounts = parse_mountinfo(mountinfo)
    return [
        Hierarchy(key=key, mountpoint=mounts[key], path=path)
        for key, path in parse_proc_cgroup(proc_cgroup).items()
        if key in mounts
    ]


def current_hierarchies(pid: str = "self") -> list[Hierarchy]:
    """`hierarchies` for a live process."""
    return hierarchies(Path(f"/proc/{pid}/cgroup").read_text(), Path(f"/proc/{pid}/mountinfo").read_text())


def make_child(parent: Path, name: str, cpuset: bool) -> Path:
    """Create cgroup `parent/name`; a cpuset child gets its parent's CPUs and memory nodes."""
    child = parent / name
    child.mkdir(exist_ok=True)
    if cpuset:
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if not (child / knob).read_text().strip():
                (child / knob).write_text((parent / knob).read_text())
    return child


def join(cgroup: Path) -> None:
    """Move the calling process into `cgroup`."""
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))


def remove_tree(cgroup: Path) -> list[Path]:
    """rmdir a cgroup and its descendants bottom-up; return the ones that could not go."""
    left: list[Path] = []
    if not cgroup.exists():
        return left
    for dirpath, _dirs, _files in os.walk(cgroup, topdown=False):
        try:
            os.rmdir(dirpath)
        except OSError:
            left.append(Path(dirpath))
    return left
