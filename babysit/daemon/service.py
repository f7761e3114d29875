"""The D-Bus face of babysitd: org.babysit.Scheduler and one org.babysit.Task object per task name.

It calls the scheduler through `Verbs` (the scheduler does not know it) and is the ledger's Publisher.
Domain errors become D-Bus error names here and only here; any other exception is a bug.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, Protocol

from dbus_fast import Message, MessageType, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusDict, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.constants import NameFlag, PropertyAccess
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal
from dbus_fast.signature import get_signature_tree

from babysit.common.background import Background
from babysit.core import report
from babysit.core.protocol import (
    BUS_NAME,
    SCHEDULER_INTERFACE,
    SCHEDULER_PATH,
    TASK_INTERFACE,
    BabysitError,
    State,
    task_path,
)
from babysit.core.task import Task

DBusDictList = Annotated[list[dict[str, Variant]], DBusSignature("aa{sv}")]
NOTIFICATIONS = "org.freedesktop.Notifications"
NOTIFY_TIMEOUT_S = 5.0
log = logging.getLogger("babysitd")


class Verbs(Protocol):
    """What the D-Bus face asks of the scheduler: one method per verb."""

    def ping(self) -> str: ...
    async def run(self, wire: Mapping[str, Any], force: bool) -> str: ...
    async def kill(self, name: str) -> None: ...
    async def adjust(self, name: str, changes: Mapping[str, Any]) -> None: ...
    async def hold(self, name: str, held: bool) -> None: ...
    async def drain(self, on: bool) -> None: ...
    async def pause(self, name: str, paused: bool) -> None: ...
    def status(self, name: str) -> dict[str, Any]: ...
    def list_tasks(self, include_terminal: bool) -> AsyncIterator[list[tuple[Task, dict[str, Any]]]]: ...
    def history(self, name: str, limit: int) -> list[dict[str, Any]]: ...
    def estimate(self, wire: Mapping[str, Any]) -> dict[str, Any]: ...
    def capacity(self) -> dict[str, Any]: ...
    def events(self, name: str) -> list[dict[str, Any]]: ...


SCALARS = {bool: "b", int: "x", float: "d", str: "s"}  # by exact type: a bool is an int too
# Parsed once; a Variant built from its Python type needs no check against it (List of a long queue
# makes tens of thousands).
SCALAR_TYPES = {kind: get_signature_tree(signature).types[0] for kind, signature in SCALARS.items()}


def to_variant(value: Any) -> Variant:
    """A plain value as a Variant; D-Bus has no null, so callers drop None first."""
    scalar = SCALAR_TYPES.get(type(value))
    if scalar:  # nearly every value: one lookup instead of a chain of isinstance
        return Variant(scalar, value, False)
    for kind, signature in SCALARS.items():  # their subclasses (enums)
        if isinstance(value, kind):
            return Variant(signature, kind(value))
    if isinstance(value, dict):
        return Variant("a{sv}", to_dict(value))
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return Variant("as", list(value))
    if isinstance(value, list | tuple):
        return Variant("av", [to_variant(v) for v in value])
    raise TypeError(f"no D-Bus type for {type(value).__name__}")


def to_dict(values: dict[str, Any]) -> dict[str, Variant]:
    return {k: to_variant(v) for k, v in values.items() if v is not None}


@contextmanager
def bus_errors() -> Iterator[None]:
    """Domain errors to their D-Bus names."""
    try:
        yield
    except BabysitError as e:
        raise DBusError(e.dbus_name, str(e)) from e


class Records:
    """Tasks' records in `List` (`report.listed`) as Variants; a queued task's is made once.

    While a task waits its record does not change (its place in the queue is not part of it), and a
    List of a long queue would otherwise rebuild tens of thousands of Variants each time.
    """

    def __init__(self) -> None:
        self.queued: dict[int, tuple[Task, dict[str, Variant]]] = {}  # by run id

    def of(self, task: Task, now: float) -> dict[str, Variant]:
        if task.state != State.QUEUED:
            return to_dict(report.listed(task, now))
        kept = self.queued.get(task.id)
        if kept is None or kept[0] is not task:
            kept = self.queued[task.id] = (task, to_dict(report.listed(task, now)))
        return kept[1]

    def changed(self, task: Task) -> None:
        if task.state != State.QUEUED:
            self.queued.pop(task.id, None)


class SchedulerInterface(ServiceInterface):
    def __init__(self, scheduler: Verbs) -> None:
        super().__init__(SCHEDULER_INTERFACE)
        self.scheduler = scheduler
        self.records = Records()

    @dbus_method()
    def Ping(self) -> DBusStr:
        with bus_errors():
            return self.scheduler.ping()

    @dbus_method()
    async def Run(self, spec: DBusDict, force: DBusBool) -> DBusStr:
        with bus_errors():
            return await self.scheduler.run({k: v.value for k, v in spec.items()}, force)

    @dbus_method()
    async def Kill(self, name: DBusStr):  # type: ignore[no-untyped-def]  # dbus-fast reads "-> None" as an out arg
        with bus_errors():
            await self.scheduler.kill(name)

    @dbus_method()
    async def Adjust(self, name: DBusStr, changes: DBusDict):  # type: ignore[no-untyped-def]  # as Kill
        with bus_errors():
            await self.scheduler.adjust(name, {k: v.value for k, v in changes.items()})

    @dbus_method()
    async def Hold(self, name: DBusStr):  # type: ignore[no-untyped-def]  # as Kill
        with bus_errors():
            await self.scheduler.hold(name, True)

    @dbus_method()
    async def Release(self, name: DBusStr):  # type: ignore[no-untyped-def]  # as Kill
        with bus_errors():
            await self.scheduler.hold(name, False)

    @dbus_method()
    async def Pause(self, name: DBusStr):  # type: ignore[no-untyped-def]  # as Kill
        with bus_errors():
            await self.scheduler.pause(name, True)

    @dbus_method()
    async def Resume(self, name: DBusStr):  # type: ignore[no-untyped-def]  # as Kill
        with bus_errors():
            await self.scheduler.pause(name, False)

    @dbus_method()
    async def Drain(self, on: DBusBool):  # type: ignore[no-untyped-def]  # as Kill
        with bus_errors():
            await self.scheduler.drain(on)

    @dbus_method()
    def Status(self, name: DBusStr) -> DBusDict:
        with bus_errors():
            return to_dict(self.scheduler.status(name))

    @dbus_method()
    async def List(self, all: DBusBool) -> DBusDictList:  # noqa: A002 (the D-Bus argument's name)
        now = time.time()
        return [self.records.of(task, now) | to_dict(now_known)
                async for batch in self.scheduler.list_tasks(all) for task, now_known in batch]

    @dbus_method()
    def History(self, name: DBusStr, limit: DBusUInt32) -> DBusDictList:
        with bus_errors():
            return [to_dict(run) for run in self.scheduler.history(name, limit)]

    @dbus_method()
    def Estimate(self, spec: DBusDict) -> DBusDict:
        with bus_errors():
            return to_dict(self.scheduler.estimate({k: v.value for k, v in spec.items()}))

    @dbus_method()
    def Capacity(self) -> DBusDict:
        return to_dict(self.scheduler.capacity())

    @dbus_method()
    def Events(self, name: DBusStr) -> DBusDictList:
        with bus_errors():
            return [to_dict(e) for e in self.scheduler.events(name)]

    @dbus_signal()
    def RunawayRisk(self, name: str, event: dict[str, Variant]) -> Annotated[tuple[str, dict[str, Variant]], DBusSignature("sa{sv}")]:
        return name, event

    @dbus_signal()
    def CapacityChanged(self, capacity: dict[str, Variant]) -> DBusDict:
        return capacity

    @dbus_signal()
    def TaskFinished(self, name: str, result: dict[str, Variant]) -> Annotated[tuple[str, dict[str, Variant]], DBusSignature("sa{sv}")]:
        return name, result


class TaskInterface(ServiceInterface):
    """One task name's latest run; its PropertiesChanged drive `babysit wait`."""

    def __init__(self, task: Task) -> None:
        super().__init__(TASK_INTERFACE)
        self.task = task
        self.values = self.snapshot(task)

    @staticmethod
    def snapshot(task: Task) -> dict[str, Any]:
        u = task.usage
        return {
            "Name": task.name,
            "State": str(task.state),
            # no silent_s: it changes every moment, and Status computes it when asked
            "Usage": to_dict({"mem_bytes": u.mem_bytes, "peak_mem_bytes": u.peak_mem_bytes,
                              "cpu_seconds": u.cpu_seconds, "cpu_cores": u.cpu_cores}),
            "Result": to_dict(report.result(task, time.time())) if task.state.terminal else {},
        }

    def update(self, task: Task) -> None:
        self.task = task
        new = self.snapshot(task)
        changed = {k: v for k, v in new.items() if v != self.values[k]}
        self.values = new
        if changed:
            self.emit_properties_changed(changed)

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self.values["Name"]

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return self.values["State"]

    @dbus_property(access=PropertyAccess.READ)
    def Usage(self) -> DBusDict:
        return self.values["Usage"]

    @dbus_property(access=PropertyAccess.READ)
    def Result(self) -> DBusDict:
        return self.values["Result"]


class BusService:
    """Exports the scheduler and the task objects; the daemon's Publisher.

    Changes are coalesced: whatever happens to a task within one turn of the event loop goes out as
    one PropertiesChanged, and capacity as one CapacityChanged, so a burst of task ends does not turn
    into a burst of messages on a bus that is already busy.
    """

    def __init__(self, bus: MessageBus, scheduler: Verbs, notify: bool) -> None:
        self.bus = bus
        self.verbs = scheduler
        self.interface = SchedulerInterface(scheduler)
        self.notify_ends = notify  # config `notify`
        self.objects: dict[str, TaskInterface] = {}
        self.changed: dict[str, Task] = {}  # by name: the latest of each task not yet published
        self.finished: list[Task] = []
        self.capacity_stale = False
        self.flush_scheduled = False
        self.background = Background()

    async def export(self) -> None:
        """Export the scheduler, then own the bus name (which fails if another babysitd has it)."""
        self.bus.export(SCHEDULER_PATH, self.interface)
        reply = await self.bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise SystemExit(f"babysitd: {BUS_NAME} is already owned by another daemon")

    def task_changed(self, task: Task) -> None:
        self.interface.records.changed(task)
        unsent = self.changed.get(task.name)
        if unsent and unsent.id != task.id:  # a run's end goes out before the next run of its name (a retry)
            self.flush()
        if task.name not in self.objects:  # exported at once: a waiter's Status finds it, its changes signal
            self.objects[task.name] = TaskInterface(task)
            self.bus.export(task_path(task.name), self.objects[task.name])
            return
        self.changed[task.name] = task
        self.flush_soon()

    def task_finished(self, task: Task) -> None:
        self.task_changed(task)
        self.finished.append(task)
        self.flush_soon()

    def capacity_changed(self) -> None:
        self.capacity_stale = True
        self.flush_soon()

    def runaway_risk(self, task: Task, event: dict[str, Any]) -> None:
        self.interface.RunawayRisk(task.name, to_dict(event))

    async def notify(self, task: Task) -> None:
        """A desktop notification of the task's end, where a notification server runs (config `notify`)."""
        summary, body = report.notification(task)
        message = Message(destination=NOTIFICATIONS, path="/org/freedesktop/Notifications", interface=NOTIFICATIONS,
                          member="Notify", signature="susssasa{sv}i",
                          body=["babysit", 0, "", summary, body, [], {}, -1])
        try:
            reply = await asyncio.wait_for(self.bus.call(message), NOTIFY_TIMEOUT_S)
        except TimeoutError:
            reply = None
        if reply is None or reply.message_type == MessageType.ERROR:
            # no notification server here (a headless host): nothing to tell, and nothing else to do
            log.debug("no desktop notification for %s: %s", task.name, reply.error_name if reply else "no answer")

    def flush_soon(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Publish what changed since the last flush: task properties, then ends, then capacity."""
        self.flush_scheduled = False
        changed, self.changed = self.changed, {}
        finished, self.finished = self.finished, []
        for name, task in changed.items():
            self.objects[name].update(task)
        now = time.time()
        for task in finished:
            self.interface.TaskFinished(task.name, to_dict(report.result(task, now)))
            current = self.objects.get(task.name)
            if current and current.task.id == task.id:  # (not if a new run of the name has it already)
                # its last PropertiesChanged went out above; Status still answers for the finished run
                self.bus.unexport(task_path(task.name), current)
                del self.objects[task.name]
            if self.notify_ends:
                self.background.run(self.notify(task), f"notifying the end of {task.name}")
        if self.capacity_stale:
            self.capacity_stale = False
            self.interface.CapacityChanged(to_dict(self.verbs.capacity()))
