"""GPUs as a resource: which devices a task may be given, what its devices show of it, and how it is fenced in.

A GPU goes to one task at a time, as Slurm's gres and the NVIDIA container toolkit hand them out: a training
run that shares a device with another dies of CUDA out-of-memory the moment both peak. A device is free for a
task when no other babysit task holds it and the memory other processes leave on it covers the task's
per-GPU estimate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from babysit.core.protocol import ExceedsCap
from babysit.core.quantities import format_size

# the nodes every CUDA program opens besides its own devices' (the NVIDIA container toolkit's list)
CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")


@dataclass(frozen=True)
class Gpu:
    """One device as NVML shows it now."""

    index: int
    uuid: str
    name: str
    minor: int  # its node is /dev/nvidia<minor>
    total_bytes: int
    used_bytes: int
    utilization_pct: float = 0.0
    processes: Mapping[int, int] = field(default_factory=dict)  # pid -> GPU memory it holds, in bytes

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)

    @property
    def node(self) -> str:
        return f"/dev/nvidia{self.minor}"


@dataclass(frozen=True)
class GpuUse:
    """What a task's processes hold on its devices now."""

    mem_bytes: int = 0  # on its busiest device: the per-GPU estimate is compared with this
    utilization_pct: float = 0.0  # the mean of its devices'


def never_fits(gpus: Sequence[Gpu], count: int, mem_bytes: int) -> None:
    """Refuse a request no device of this host could ever satisfy, even idle."""
    if count <= 0:
        return
    if not gpus:
        raise ExceedsCap("exceeds_cap: --gpus asks for GPUs and babysit sees none on this host (babysit ping "
                         "says why); run it without --gpus, or where NVML shows a GPU")
    big_enough = [g for g in gpus if g.total_bytes >= mem_bytes]
    if len(big_enough) < count:
        largest = max(g.total_bytes for g in gpus)
        raise ExceedsCap(f"exceeds_cap: {count} GPU(s) of {format_size(mem_bytes)} each asked for; this host has "
                         f"{len(gpus)}, {len(big_enough)} of them that large (the largest holds "
                         f"{format_size(largest)}); lower --gpus or --estimated_gpu_mem_bytes")


def assign(gpus: Sequence[Gpu], held: Iterable[str], count: int, mem_bytes: int) -> tuple[str, ...] | None:
    """The devices (UUIDs) a task gets now, or None while too few are free: those not held by another task
    whose free memory covers the estimate, the emptiest first (then by index, so the choice is stable)."""
    taken = set(held)
    free = sorted((g for g in gpus if g.uuid not in taken and g.free_bytes >= mem_bytes),
                  key=lambda g: (-g.free_bytes, g.index))
    return tuple(g.uuid for g in free[:count]) if len(free) >= count else None


def shortfall(gpus: Sequence[Gpu], held: Iterable[str], count: int, mem_bytes: int) -> str:
    """Why a GPU request cannot start now, in words; empty when it can."""
    if count <= 0 or assign(gpus, held, count, mem_bytes) is not None:
        return ""
    taken = set(held)
    unheld = [g for g in gpus if g.uuid not in taken]
    roomy = [g for g in unheld if g.free_bytes >= mem_bytes]
    return (f"not enough GPUs: {count} asked with {format_size(mem_bytes)} free each; {len(gpus) - len(unheld)} "
            f"held by running tasks, {len(unheld) - len(roomy)} of the others short of memory")


def use(gpus: Sequence[Gpu], uuids: Iterable[str], pids: Iterable[int]) -> GpuUse:
    """What these processes (a task's cgroup) hold on these devices (the task's)."""
    mine, theirs = set(uuids), set(pids)
    devices = [g for g in gpus if g.uuid in mine]
    if not devices:
        return GpuUse()
    held = [sum(b for pid, b in g.processes.items() if pid in theirs) for g in devices]
    return GpuUse(max(held), round(sum(g.utilization_pct for g in devices) / len(devices), 1))


def described(gpus: Sequence[Gpu]) -> str:
    """`2 GPUs: 0 NVIDIA H100 (80 GiB), 1 ...`; empty for none."""
    if not gpus:
        return ""
    return f"{len(gpus)} GPU(s): " + ", ".join(f"{g.index} {g.name} ({format_size(g.total_bytes)})" for g in gpus)


def visible_devices(uuids: Sequence[str]) -> str:
    """CUDA_VISIBLE_DEVICES for these devices: by UUID, which no renumbering (or a reboot) changes."""
    return ",".join(uuids)


def device_allow(gpus: Sequence[Gpu], uuids: Iterable[str]) -> list[tuple[str, str]]:
    """DeviceAllow= for a task given these devices: their nodes and the control nodes, read-write."""
    mine = set(uuids)
    return [(node, "rw") for node in (*CONTROL_NODES, *(g.node for g in gpus if g.uuid in mine))]
