"""Admission: does a task fit beside the running ones, within the host's budget and its free memory?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from babysit.core import gpus as gpu
from babysit.core.gpus import Gpu
from babysit.core.protocol import InvalidArgument
from babysit.core.quantities import format_size
from babysit.core.task import Host


@dataclass(frozen=True)
class Reservation:
    """What a running task holds: its estimates, and the memory it uses now."""

    name: str
    mem_bytes: int
    cpu_cores: float
    mem_used_bytes: int = 0
    gpus: tuple[str, ...] = ()  # the UUIDs of its GPUs


@dataclass(frozen=True)
class Room:
    mem_bytes: int
    cpu_cores: float
    gpus: int = 0  # asked: devices; available: devices free with the memory asked of each
    gpu_mem_bytes: int = 0  # asked: on each device; available: the most any free device has

    def as_dict(self, gpus: bool = False) -> dict[str, Any]:
        """As the JSON shows it; GPU figures where there are any, or where `gpus` asks for them."""
        shown = gpus or self.gpus or self.gpu_mem_bytes
        devices = {"gpus": self.gpus, "gpu_mem_bytes": self.gpu_mem_bytes} if shown else {}
        return {"mem_bytes": self.mem_bytes, "cpu_cores": round(self.cpu_cores, 3)} | devices


@dataclass(frozen=True)
class Decision:
    admit: bool
    requested: Room
    available: Room
    running: Sequence[Reservation]
    queued: Sequence[str] = field(default_factory=tuple)
    reason: str = ""  # why not, in words
    gpus: Sequence[Gpu] = ()  # the devices as they were weighed


def room(host: Host, free_mem_bytes: int, running: Sequence[Reservation], gpus: Sequence[Gpu] = (),
         gpu_mem_bytes: int = 0) -> Room:
    """What is left for one more task (that asks `gpu_mem_bytes` of each GPU).

    A running task reserves its estimates, its CPU counted as at most the host's cores. The room left is
    the budget minus the reservations, and never more than the memory actually free once the running
    tasks grow to their estimates. A GPU is free when no running task holds it (babysit.core.gpus).
    """
    still_to_grow = sum(max(0, r.mem_bytes - r.mem_used_bytes) for r in running)
    held = held_gpus(running)
    unheld = [g for g in gpus if g.uuid not in held]
    return Room(
        mem_bytes=max(0, min(host.mem_bytes - sum(r.mem_bytes for r in running), free_mem_bytes - still_to_grow)),
        cpu_cores=max(0.0, host.cores - sum(min(r.cpu_cores, host.cores) for r in running)),
        gpus=sum(1 for g in unheld if g.free_bytes >= gpu_mem_bytes),
        gpu_mem_bytes=max((g.free_bytes for g in unheld), default=0),
    )


def held_gpus(running: Sequence[Reservation]) -> set[str]:
    return {uuid for r in running for uuid in r.gpus}


def shortfall(requested: Room, available: Room, queued_ahead: int) -> str:
    """Why a task cannot start now, in words; empty when it can. Tasks already queued go first."""
    reasons = []
    if queued_ahead:
        reasons.append(f"{queued_ahead} queued task(s) go first")
    if requested.mem_bytes > available.mem_bytes:
        reasons.append("not enough memory")
    if requested.cpu_cores > available.cpu_cores + 1e-9:
        reasons.append("not enough CPU")
    if requested.gpus > available.gpus:
        reasons.append(f"not enough GPUs ({available.gpus} of {requested.gpus} free with "
                       f"{format_size(requested.gpu_mem_bytes)} each)")
    return "; ".join(reasons)


def requested_room(host: Host, mem_bytes: int, cpu_cores: float, gpus: int = 0, gpu_mem_bytes: int = 0) -> Room:
    """What a task asks for, its CPU counted as at most the host's cores."""
    if mem_bytes <= 0 or cpu_cores <= 0:
        raise InvalidArgument("memory and CPU estimates must be more than 0")
    return Room(mem_bytes, min(cpu_cores, host.cores), gpus, gpu_mem_bytes if gpus else 0)


def decide(host: Host, free_mem_bytes: int, running: Sequence[Reservation], asked: Room,
           queued: Sequence[str] = (), gpus: Sequence[Gpu] | None = ()) -> Decision:
    """Admit now, or refuse with the figures that explain why. GPUs that are None are a cluster's, which its
    scheduler weighs (Slurm's gres), not babysit."""
    requested = requested_room(host, asked.mem_bytes, asked.cpu_cores, asked.gpus, asked.gpu_mem_bytes)
    available = room(host, free_mem_bytes, running, gpus or (), requested.gpu_mem_bytes)
    if gpus is None:
        available = replace(available, gpus=requested.gpus, gpu_mem_bytes=requested.gpu_mem_bytes)
    reason = shortfall(requested, available, len(queued))
    return Decision(not reason, requested, available, tuple(running), tuple(queued), reason, tuple(gpus or ()))


def assignment(decision: Decision) -> tuple[str, ...]:
    """The GPUs an admitted task gets (none where it asks for none)."""
    asked = decision.requested
    if not asked.gpus:
        return ()
    return gpu.assign(decision.gpus, held_gpus(decision.running), asked.gpus, asked.gpu_mem_bytes) or ()


def refusal(name: str, decision: Decision, estimates_from: str = "") -> dict[str, Any]:
    """The capacity_exceeded object `run` prints on stderr; `estimates_from` when estimates the caller
    left out were learnt from earlier runs (a request the caller never wrote must say where it came from)."""
    mem, cpu, devices = decision.requested.mem_bytes, decision.requested.cpu_cores, decision.requested.gpus
    asked_gpus = f" --gpus={devices} --gpu_mem_bytes={decision.requested.gpu_mem_bytes}" if devices else ""
    learned = {"estimates_from": estimates_from} if estimates_from else {}
    return {
        "error": "capacity_exceeded",
        "name": name,
        "requested": decision.requested.as_dict(),
        "available": decision.available.as_dict(gpus=bool(devices)),
        "running": [{"name": r.name, "mem_bytes": r.mem_bytes, "cpu_cores": r.cpu_cores} for r in decision.running],
        "queued": list(decision.queued),
        "reason": decision.reason,
        "hint": f"babysit wait_for_capacity --mem_bytes={mem} --cpu_cores={cpu:g}{asked_gpus}, lower the estimates, "
                "or pass --force to queue",
    } | learned


def capacity_report(host: Host, free_mem_bytes: int, running: Sequence[Reservation],
                    queued: Sequence[str], gpus: Sequence[Gpu] = ()) -> dict[str, Any]:
    """The figures behind every decision, as Capacity() returns them."""
    available = room(host, free_mem_bytes, running, gpus)
    holders = {uuid: r.name for r in running for uuid in r.gpus}
    return {
        "host_mem_bytes": host.mem_bytes,
        "host_cpu_cores": host.cores,
        "free_mem_bytes": free_mem_bytes,
        "reserved_mem_bytes": sum(r.mem_bytes for r in running),
        "reserved_cpu_cores": round(sum(min(r.cpu_cores, host.cores) for r in running), 3),
        "available_mem_bytes": available.mem_bytes,
        "available_cpu_cores": round(available.cpu_cores, 3),
        "running": [{"name": r.name, "mem_bytes": r.mem_bytes, "cpu_cores": r.cpu_cores,
                     "mem_used_bytes": r.mem_used_bytes} | ({"gpus": list(r.gpus)} if r.gpus else {})
                    for r in running],
        "queued": list(queued),
    } | ({"gpus": [gpu_report(g, holders.get(g.uuid)) for g in gpus], "available_gpus": available.gpus}
         if gpus else {})


def gpu_report(g: Gpu, held_by: str | None) -> dict[str, Any]:
    return {"index": g.index, "uuid": g.uuid, "name": g.name, "minor": g.minor, "total_bytes": g.total_bytes,
            "used_bytes": g.used_bytes, "free_bytes": g.free_bytes, "utilization_pct": g.utilization_pct,
            "held_by": held_by or "",
            "processes": [{"pid": pid, "used_bytes": used} for pid, used in sorted(g.processes.items())]}


def fits(capacity: dict[str, Any], asked: Room) -> Decision:
    """`decide` over the figures of a capacity report (what a client sees of the daemon)."""
    host = Host(capacity["host_mem_bytes"], capacity["host_cpu_cores"])
    running = [Reservation(**{**r, "gpus": tuple(r.get("gpus", ()))}) for r in capacity["running"]]
    gpus = [Gpu(g["index"], g["uuid"], g["name"], g["minor"], g["total_bytes"], g["used_bytes"],
                g["utilization_pct"]) for g in capacity.get("gpus", [])]
    return decide(host, capacity["free_mem_bytes"], running, asked, capacity["queued"], gpus)
