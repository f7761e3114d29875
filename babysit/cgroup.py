"""Reading cgroups: the mounted hierarchies, and a task's memory and CPU (stdlib only).

The test session runner imports the parsers too, before any virtualenv exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KNOWN_FLAGS = {"noprefix", "xattr", "clone_children", "cpuset_v2_mode", "none"}


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Map each hierarchy key of /proc/<pid>/cgroup ("memory", "name=systemd", "" for v2) to its path."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip():
            _id, key, path = line.split(":", 2)
            paths[key] = path
    return paths


def parse_mountinfo(text: str) -> dict[str, Path]:
    """Map each cgroup hierarchy key to its mountpoint, from /proc/<pid>/mountinfo."""
    mounts: dict[str, Path] = {}
    for line in text.splitlines():
        pre, _, post = line.partition(" - ")
        fstype, _source, super_options = (post.split(" ") + ["", ""])[:3]
        mountpoint = Path(pre.split(" ")[4])
        if fstype == "cgroup2":
            mounts.setdefault("", mountpoint)
        elif fstype == "cgroup":
            options = [o for o in super_options.split(",") if o not in ("rw", "ro")]
            controllers = [o for o in options if ("=" not in o or o.startswith("name=")) and o not in KNOWN_FLAGS]
            mounts.setdefault(",".join(controllers), mountpoint)
    return mounts


@dataclass(frozen=True)
class Layout:
    """Where a unit's memory and CPU figures live: cgroup v1 controllers or the unified v2 tree."""

    memory_root: Path | None
    cpu_root: Path | None  # v1: the cpuacct hierarchy
    v2: bool

    @classmethod
    def from_mountinfo(cls, text: str) -> Layout:
        mounts = parse_mountinfo(text)
        memory = next((p for k, p in mounts.items() if "memory" in k.split(",")), None)
        cpuacct = next((p for k, p in mounts.items() if "cpuacct" in k.split(",")), None)
        unified = mounts.get("")
        if memory is None and unified is not None and (unified / "cgroup.controllers").exists():
            return cls(unified, unified, v2=True)
        return cls(memory, cpuacct, v2=False)

    @classmethod
    def of_this_machine(cls) -> Layout:
        return cls.from_mountinfo(Path("/proc/self/mountinfo").read_text())


@dataclass(frozen=True)
class Sample:
    mem_bytes: int
    peak_mem_bytes: int | None  # the kernel's own high-water mark, where it keeps one
    cpu_ns: int
    mem_failcnt: int | None  # v1: times the limit was hit


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def parse_cpu_stat(text: str) -> int:
    """CPU nanoseconds from a v2 cpu.stat."""
    fields = dict(line.split() for line in text.splitlines() if line.strip())
    return int(fields.get("usage_usec", 0)) * 1000


def read_sample(layout: Layout, cgroup: str) -> Sample | None:
    """A unit's memory and CPU now; None once its cgroup is gone."""
    rel = cgroup.lstrip("/")
    if layout.v2 and layout.memory_root:
        base = layout.memory_root / rel
        mem = _read_int(base / "memory.current")
        try:
            cpu = parse_cpu_stat((base / "cpu.stat").read_text())
        except OSError:
            return None
        return None if mem is None else Sample(mem, _read_int(base / "memory.peak"), cpu, None)
    if not layout.memory_root:
        return None
    mem_dir = layout.memory_root / rel
    mem = _read_int(mem_dir / "memory.usage_in_bytes")
    if mem is None:
        return None
    cpu = _read_int(layout.cpu_root / rel / "cpuacct.usage") if layout.cpu_root else None
    return Sample(mem, _read_int(mem_dir / "memory.max_usage_in_bytes"), cpu or 0,
                  _read_int(mem_dir / "memory.failcnt"))


def missing_controllers(layout: Layout, manager_cgroup: str, uid: int) -> list[str]:
    """The controllers the user manager cannot use for its units (so MemoryMax/CPUQuota would be ignored)."""
    rel = manager_cgroup.lstrip("/")
    missing = []
    if layout.v2 and layout.memory_root:
        available = (layout.memory_root / rel / "cgroup.controllers")
        present = available.read_text().split() if available.exists() else []
        return [c for c in ("memory", "cpu") if c not in present]
    for controller, root in (("memory", layout.memory_root), ("cpu", layout.cpu_root)):
        directory = root / rel if root else None
        if directory is None or not directory.exists() or directory.stat().st_uid != uid:
            missing.append(controller)
    return missing
