"""How a task becomes a transient systemd unit: its properties (plain values; systemd.py types them)."""

from __future__ import annotations

from typing import Any

from babysit.protocol import SLICE
from babysit.task import Caps, Task

USEC = 1_000_000


def description(task: Task) -> str:
    """The unit's Description; the run's id in it tells this run's unit from an older run's."""
    return f"babysit task {task.spec.name} (#{task.id})"


def start_properties(task: Task, stop_grace_s: float) -> dict[str, Any]:
    """Everything StartTransientUnit sets for a task (SPEC 'Caps applied to each unit')."""
    spec = task.spec
    return {
        "Description": description(task),
        "ExecStart": [("/bin/bash", ["/bin/bash", "-c", spec.command], False)],
        "WorkingDirectory": spec.cwd,
        "Environment": [f"{k}={v}" for k, v in spec.env.items()],
        "Slice": SLICE,
        # a finished task stays loaded (active/exited or failed) until babysit has stored its result,
        # so a daemon that was down meanwhile still reads how it ended; babysit then releases the name
        "RemainAfterExit": True,
        "KillMode": "control-group",
        "TimeoutStopUSec": int(stop_grace_s * USEC),
        "MemoryAccounting": True,
        "CPUAccounting": True,
        "TasksAccounting": True,
        "StandardOutput": "journal",
        "StandardError": "journal",
        "SyslogIdentifier": spec.name,
        # no LogRateLimit*: journald honours them for system units only (babysitd warns about its own limit)
        **cap_properties(task.caps),
        "RuntimeMaxUSec": int(task.caps.runtime_max_s * USEC),
    }


def cap_properties(caps: Caps) -> dict[str, Any]:
    """The cgroup caps, which SetUnitProperties can also change on a running unit."""
    return {
        "MemoryMax": caps.memory_max_bytes,
        "CPUQuotaPerSecUSec": int(caps.cpu_quota_pct / 100 * USEC),
    }
