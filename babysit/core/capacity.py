"""Admission: does a task fit beside the running ones, within the host's budget and its free memory?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from babysit.core.protocol import InvalidArgument
from babysit.core.task import Host


@dataclass(frozen=True)
class Reservation:
    """What a running task holds: its estimates, and the memory it uses now."""

    name: str
    mem_bytes: int
    cpu_cores: float
    mem_used_bytes: int = 0


@dataclass(frozen=True)
class Room:
    mem_bytes: int
    cpu_cores: float

    def as_dict(self) -> dict[str, Any]:
        return {"mem_bytes": self.mem_bytes, "cpu_cores": round(self.cpu_cores, 3)}


@dataclass(frozen=True)
class Decision:
    admit: bool
    requested: Room
    available: Room
    running: Sequence[Reservation]
    queued: Sequence[str] = field(default_factory=tuple)
    reason: str = ""  # why not, in words


def room(host: Host, free_mem_bytes: int, running: Sequence[Reservation]) -> Room:
    """What is left for one more task.

    A running task reserves its estimates, its CPU counted as at most the host's cores. The room left is
    the budget minus the reservations, and never more than the memory actually free once the running
    tasks grow to their estimates.
    """
    still_to_grow = sum(max(0, r.mem_bytes - r.mem_used_bytes) for r in running)
    return Room(
        mem_bytes=max(0, min(host.mem_bytes - sum(r.mem_bytes for r in running), free_mem_bytes - still_to_grow)),
        cpu_cores=max(0.0, host.cores - sum(min(r.cpu_cores, host.cores) for r in running)),
    )


def shortfall(requested: Room, available: Room, queued_ahead: int) -> str:
    """Why a task cannot start now, in words; empty when it can. Tasks already queued go first."""
    reasons = []
    if queued_ahead:
        reasons.append(f"{queued_ahead} queued task(s) go first")
    if requested.mem_bytes > available.mem_bytes:
        reasons.append("not enough memory")
    if requested.cpu_cores > available.cpu_cores + 1e-9:
        reasons.append("not enough CPU")
    return "; ".join(reasons)


def requested_room(host: Host, mem_bytes: int, cpu_cores: float) -> Room:
    """What a task asks for, its CPU counted as at most the host's cores."""
    if mem_bytes <= 0 or cpu_cores <= 0:
        raise InvalidArgument("memory and CPU estimates must be more than 0")
    return Room(mem_bytes, min(cpu_cores, host.cores))


def decide(host: Host, free_mem_bytes: int, running: Sequence[Reservation], mem_bytes: int, cpu_cores: float,
           queued: Sequence[str] = ()) -> Decision:
    """Admit now, or refuse with the figures that explain why."""
    requested, available = requested_room(host, mem_bytes, cpu_cores), room(host, free_mem_bytes, running)
    reason = shortfall(requested, available, len(queued))
    return Decision(not reason, requested, available, tuple(running), tuple(queued), reason)


def refusal(name: str, decision: Decision, estimates_from: str = "") -> dict[str, Any]:
    """The capacity_exceeded object `run` prints on stderr; `estimates_from` when estimates the caller
    left out were learnt from earlier runs (a request the caller never wrote must say where it came from)."""
    mem, cpu = decision.requested.mem_bytes, decision.requested.cpu_cores
    learned = {"estimates_from": estimates_from} if estimates_from else {}
    return {
        "error": "capacity_exceeded",
        "name": name,
        "requested": decision.requested.as_dict(),
        "available": decision.available.as_dict(),
        "running": [{"name": r.name, "mem_bytes": r.mem_bytes, "cpu_cores": r.cpu_cores} for r in decision.running],
        "queued": list(decision.queued),
        "reason": decision.reason,
        "hint": f"babysit wait_for_capacity --mem_bytes={mem} --cpu_cores={cpu:g}, lower the estimates, "
                "or pass --force to queue",
    } | learned


def capacity_report(host: Host, free_mem_bytes: int, running: Sequence[Reservation],
                    queued: Sequence[str]) -> dict[str, Any]:
    """The figures behind every decision, as Capacity() returns them."""
    available = room(host, free_mem_bytes, running)
    return {
        "host_mem_bytes": host.mem_bytes,
        "host_cpu_cores": host.cores,
        "free_mem_bytes": free_mem_bytes,
        "reserved_mem_bytes": sum(r.mem_bytes for r in running),
        "reserved_cpu_cores": round(sum(min(r.cpu_cores, host.cores) for r in running), 3),
        "available_mem_bytes": available.mem_bytes,
        "available_cpu_cores": round(available.cpu_cores, 3),
        "running": [{"name": r.name, "mem_bytes": r.mem_bytes, "cpu_cores": r.cpu_cores,
                     "mem_used_bytes": r.mem_used_bytes} for r in running],
        "queued": list(queued),
    }


def fits(capacity: dict[str, Any], mem_bytes: int, cpu_cores: float) -> Decision:
    """`decide` over the figures of a capacity report (what a client sees of the daemon)."""
    host = Host(capacity["host_mem_bytes"], capacity["host_cpu_cores"])
    running = [Reservation(**r) for r in capacity["running"]]
    return decide(host, capacity["free_mem_bytes"], running, mem_bytes, cpu_cores, capacity["queued"])
