"""Reading cgroups: the mounted hierarchies, and a task's memory and CPU (stdlib only).

The test session runner imports the parsers too, before any virtualenv exists.
"""

from __future__ import annotations

import os
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
    # hybrid hosts: the unified tree holds every unit too, and its cpu.stat counts CPU with no controller
    unified_root: Path | None = None

    @classmethod
    def from_mountinfo(cls, text: str) -> Layout:
        mounts = parse_mountinfo(text)
        memory = next((p for k, p in mounts.items() if "memory" in k.split(",")), None)
        cpuacct = next((p for k, p in mounts.items() if "cpuacct" in k.split(",")), None)
        unified = mounts.get("")
        if memory is None and unified is not None and (unified / "cgroup.controllers").exists():
            return cls(unified, unified, v2=True, unified_root=unified)
        return cls(memory, cpuacct, v2=False, unified_root=unified)

    @classmethod
    def of_this_machine(cls) -> Layout:
        return cls.from_mountinfo(Path("/proc/self/mountinfo").read_text())

    def memory_dir(self, cgroup: str) -> Path | None:
        return self.memory_root / cgroup.lstrip("/") if self.memory_root else None

    def cpu_files(self, cgroup: str) -> list[Path]:
        """Where a cgroup's total CPU time is counted, best first (a file may be missing on a host)."""
        rel = cgroup.lstrip("/")
        files = [self.unified_root / rel / "cpu.stat"] if self.unified_root else []
        if self.cpu_root and not self.v2:
            files.append(self.cpu_root / rel / "cpuacct.usage")
        return files


@dataclass(frozen=True)
class Sample:
    mem_bytes: int
    peak_mem_bytes: int | None  # the kernel's own high-water mark, where it keeps one
    cpu_ns: int
    mem_failcnt: int | None  # v1: times the limit was hit
    oom_kills: int = 0  # v1 memory.oom_control / v2 memory.events: processes the OOM killer ended


class CgroupFiles:
    """A unit's cgroup files, each opened once and re-read in place: pread at offset 0 makes the kernel
    render the figure afresh, at a sixth of the cost of open/read/close each tick."""

    def __init__(self) -> None:
        self._fds: dict[Path, int | None] = {}  # None: not there (an optional file, on this host)

    def read(self, path: Path) -> str | None:
        """The file's text now; None where it does not exist or its cgroup is gone."""
        if path not in self._fds:
            try:
                self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._fds[path] = None
        fd = self._fds[path]
        if fd is None:
            return None
        try:
            return os.pread(fd, 4096, 0).decode()
        except OSError:
            return None

    def close(self) -> None:
        for fd in self._fds.values():
            if fd is not None:
                os.close(fd)
        self._fds.clear()


def _first_int(text: str | None) -> int | None:
    try:
        return int((text or "").split()[0])
    except (ValueError, IndexError):
        return None


def _read_int(files: CgroupFiles, path: Path) -> int | None:
    return _first_int(files.read(path))


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (cpu.stat, memory.events, memory.oom_control)."""
    pairs = (line.split() for line in text.splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].lstrip("-").isdigit()}


def _oom_kills(files: CgroupFiles, path: Path) -> int:
    return parse_flat_keyed(files.read(path) or "").get("oom_kill", 0)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_proc_stat_cpu(text: str) -> int:
    """CPU clock ticks of a process and its reaped children, from /proc/<pid>/stat."""
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return utime + stime + cutime + cstime


def processes(layout: Layout, cgroup: str) -> list[int]:
    """The PIDs in a unit's cgroup now (its GPU processes are found by them); [] once it is gone."""
    if not layout.memory_root:
        return []
    try:
        return [int(pid) for pid in (layout.memory_root / cgroup.lstrip("/") / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def processes_cpu_ns(cgroup_dir: Path) -> int:
    """CPU time of the processes now in a cgroup: for v1 hosts where the unit has no cpuacct cgroup
    (cpu and cpuacct mounted apart, which systemd does not account). Time of processes that ended
    and were not reaped by one of them is lost."""
    total = 0
    try:
        pids = (cgroup_dir / "cgroup.procs").read_text().split()
    except OSError:
        return 0
    for pid in pids:
        try:
            total += parse_proc_stat_cpu(Path(f"/proc/{pid}/stat").read_text())
        except (OSError, IndexError, ValueError):
            pass  # it ended meanwhile
    return total * 1_000_000_000 // CLOCK_TICKS


def parse_cpu_stat(text: str) -> int:
    """CPU nanoseconds from a v2 cpu.stat."""
    return parse_flat_keyed(text).get("usage_usec", 0) * 1000


def _read_cpu_ns(files: CgroupFiles, path: Path) -> int | None:
    """CPU nanoseconds from a cpu.stat (v2, or the unified tree of a hybrid host) or a v1 cpuacct.usage."""
    text = files.read(path)
    if text is None:
        return None
    return parse_cpu_stat(text) if path.name == "cpu.stat" else _first_int(text)


def read_sample(layout: Layout, cgroup: str, files: CgroupFiles) -> Sample | None:
    """A unit's memory and CPU now, through its open `files`; None while or once its cgroup is not there."""
    rel = cgroup.lstrip("/")
    if layout.v2 and layout.memory_root:
        base = layout.memory_root / rel
        mem = _read_int(files, base / "memory.current")
        cpu_text = files.read(base / "cpu.stat")
        if mem is None or cpu_text is None:
            files.close()  # not there yet, or gone: look again next time
            return None
        return Sample(mem, _read_int(files, base / "memory.peak"), parse_cpu_stat(cpu_text), None,
                      _oom_kills(files, base / "memory.events"))
    if not layout.memory_root:
        return None
    mem_dir = layout.memory_root / rel
    mem = _read_int(files, mem_dir / "memory.usage_in_bytes")
    if mem is None:
        files.close()
        return None
    cpu = next((ns for ns in (_read_cpu_ns(files, f) for f in layout.cpu_files(cgroup)) if ns is not None), None)
    if cpu is None:
        cpu = processes_cpu_ns(mem_dir)
    return Sample(mem, _read_int(files, mem_dir / "memory.max_usage_in_bytes"), cpu,
                  _read_int(files, mem_dir / "memory.failcnt"), _oom_kills(files, mem_dir / "memory.oom_control"))


def missing_controllers(layout: Layout, manager_cgroup: str, uid: int) -> list[str]:
    """The controllers the user manager cannot use for its units (so MemoryMax/CPUQuota would be ignored)."""
    rel = manager_cgroup.lstrip("/")
    missing = []
    if layout.v2 and layout.memory_root:
        directory = layout.memory_root / rel
        if not directory.is_dir() or directory.stat().st_uid != uid:
            # not delegated: the parent may enable a controller here for its own accounting, but the
            # manager cannot pass it on to its units' cgroups
            return ["memory", "cpu"]
        available = directory / "cgroup.controllers"
        present = available.read_text().split() if available.exists() else []
        return [c for c in ("memory", "cpu") if c not in present]
    for controller, root in (("memory", layout.memory_root), ("cpu", layout.cpu_root)):
        if root is None or not (root / rel).exists() or (root / rel).stat().st_uid != uid:
            missing.append(controller)
    return missing


class OomNotifier:
    """cgroup v1: the kernel's OOM notification for one cgroup, through an eventfd (signal-driven).

    The cgroup is gone by the time systemd reports the unit failed, so the evidence has to be caught
    when it happens. The eventfd also fires when the cgroup is removed: a wake while the cgroup still
    exists, or more than one wake, is an OOM.
    """

    def __init__(self, memory_dir: Path) -> None:
        self.dir = memory_dir
        self.fired = False
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        control = os.open(memory_dir / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            (memory_dir / "cgroup.event_control").write_text(f"{self.fd} {control}")
        except OSError:
            os.close(self.fd)
            raise
        finally:
            os.close(control)

    def on_readable(self) -> None:
        try:
            wakes = os.eventfd_read(self.fd)
        except BlockingIOError:
            return
        if wakes >= 2 or self.dir.exists():
            self.fired = True

    def close(self) -> None:
        os.close(self.fd)


def oom_notifier(layout: Layout, cgroup: str) -> OomNotifier | None:
    """An OOM notifier for a unit's cgroup on v1; None on v2 (systemd says Result=oom-kill) or if gone."""
    if layout.v2 or not layout.memory_root:
        return None
    try:
        return OomNotifier(layout.memory_root / cgroup.lstrip("/"))
    except OSError:
        return None
