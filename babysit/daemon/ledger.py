"""The live tasks by name: queued, running, and finished ones their executor has not let go of yet.

Every change is stored first and published after (to the D-Bus face), so what a client sees has been
stored. Only this class holds the publisher.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from babysit.core.protocol import NoSuchTask, NotRunning, State
from babysit.core.task import Task
from babysit.core.timeline import Timeline
from babysit.daemon.store import Store


class Publisher(Protocol):
    """Where task changes go out (the D-Bus face)."""

    def task_changed(self, task: Task) -> None: ...
    def task_finished(self, task: Task) -> None: ...
    def capacity_changed(self) -> None: ...
    def runaway_risk(self, task: Task, event: dict[str, Any]) -> None: ...


class Ledger:
    def __init__(self, db: Store) -> None:
        self.store = db
        self.publisher: Publisher | None = None  # none until the D-Bus face is made
        self.tasks: dict[str, Task] = {t.name: t for t in db.live()}

    def by_id(self, task_id: int) -> Task | None:
        return next((t for t in self.tasks.values() if t.id == task_id), None)

    def queue(self) -> list[Task]:
        """Queued tasks in submission order."""
        return sorted((t for t in self.tasks.values() if t.state == State.QUEUED), key=lambda t: t.id)

    def running(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.state == State.RUNNING]

    def latest(self, name: str) -> Task:
        """A name's live run, or else its last finished one."""
        task = self.tasks.get(name) or self.store.latest(name)
        if task is None:
            raise NoSuchTask(f"no task named {name!r}")
        return task

    def live(self, name: str) -> Task:
        task = self.latest(name)
        if task.state.terminal:
            raise NotRunning(f"task {name!r} is already {task.state}")
        return task

    def save(self, task: Task, detail: str = "", timeline: Timeline | None = None) -> Task:
        """Store a change of the task's record, then publish it."""
        self.store.save(task, time.time(), detail, timeline)
        self.track(task)  # a finished one stays until its executor let go of it
        return task

    def track(self, task: Task) -> None:
        """Keep and publish a task as it is now: one just stored, or figures that are not stored (usage)."""
        self.tasks[task.name] = task
        self.publish(task)

    def forget(self, task: Task) -> None:
        """A finished task its executor has let go of: its name is free again."""
        self.tasks.pop(task.name, None)
        if self.publisher:
            self.publisher.task_finished(task)

    def publish(self, task: Task) -> None:
        if self.publisher:
            self.publisher.task_changed(task)

    def capacity_changed(self) -> None:
        if self.publisher:
            self.publisher.capacity_changed()

    def runaway_risk(self, task: Task, event: dict[str, Any]) -> None:
        """Kept with the run's events, and signalled to whoever waits."""
        self.store.add_event(task, "runaway_risk", {k: v for k, v in event.items() if k != "event"}, time.time())
        if self.publisher:
            self.publisher.runaway_risk(task, event)
