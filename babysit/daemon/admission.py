"""What admission weighs a task against, read once per decision: the executor's room and free memory, and
what the running tasks hold (core.capacity decides)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from babysit.core.capacity import Decision, Reservation, Room, capacity_report, decide
from babysit.core.gpus import Gpu
from babysit.core.task import Estimates, Host, Task
from babysit.daemon.ledger import Ledger
from babysit.executors.base import Executor


Snapshot = tuple[Host, int, list[Reservation], tuple[Gpu, ...] | None]  # what room_now() reads


def reservation(task: Task) -> Reservation:
    """What a running task holds on one host: its estimates (it may grow into them)."""
    return Reservation(task.name, task.spec.estimates.mem_bytes, task.spec.estimates.cpu_cores, task.usage.mem_bytes,
                       task.gpus)


class Admission:
    def __init__(self, ledger: Ledger, executor: Executor, ahead: Callable[[], list[str]]) -> None:
        self.ledger = ledger
        self.executor = executor
        self.ahead = ahead  # the queued tasks that go first: those free to start (not waiting for others)

    def room_now(self) -> tuple[Host, int, list[Reservation], tuple[Gpu, ...] | None]:
        """The room, the free memory, what running tasks hold, and the GPUs now: what running tasks hold as
        their estimates say on one host, as the cluster says where the executor knows (a cluster's
        allocations include other users' jobs)."""
        capacity = self.executor.capacity()
        held = self.reservations() if capacity.held is None else list(capacity.held)
        return capacity.host, capacity.free_mem_bytes, held, capacity.gpus

    def reservations(self) -> list[Reservation]:
        return [reservation(t) for t in self.ledger.running()]

    def decide(self, e: Estimates, ahead: list[str] | None = None, room: Snapshot | None = None) -> Decision:
        """Whether a task of these estimates fits now, behind the queue (or behind `ahead`), in the room read
        now (or in `room`, read once for a whole drain)."""
        queued = self.ahead() if ahead is None else ahead
        host, free, held, gpus = room or self.room_now()
        return decide(host, free, held, Room(e.mem_bytes, e.cpu_cores, e.gpus, e.gpu_mem_bytes), queued, gpus)

    def hands_over(self, decision: Decision) -> bool:
        """Whether a task goes to its executor now: it fits, or the executor keeps a queue of its own (Slurm)."""
        return decision.admit or self.executor.queues

    def report(self, warnings: list[str]) -> dict[str, Any]:
        """`Capacity`: the room, the free memory, the queue, and what does not hold here."""
        host, free, held, gpus = self.room_now()
        return capacity_report(host, free, held, self.ahead(), gpus or ()) | {"warnings": warnings}
