"""The live tasks by name: queued, running, and finished ones their executor has not let go of yet.

Every change is stored first and published after (to the D-Bus face), so what a client sees has been
stored. Only this class holds the publisher, and only this class writes to the store.

When the store takes no writes (a full disk, an I/O error), changes are kept in memory in their order
and written once it does (`retry`): waiters still get their results, supervision goes on, and `ping`
and `status` say so. A new task is refused meanwhile (StoreUnavailable), since it could not be recorded.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Protocol

from babysit.core.protocol import NoSuchTask, NotRunning, State, StoreUnavailable
from babysit.core.task import Caps, Task, TaskSpec
from babysit.core.timeline import Timeline
from babysit.daemon.store import Store, is_damage, unavailable_because

log = logging.getLogger("babysitd")
Write = Callable[[Store], object]


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
        self.pending: list[Write] = []  # changes the store did not take yet, in order
        self.unstored: dict[str, Task] = {}  # finished runs whose end is among them, by name
        self.unwritable = ""  # why the store takes no writes, while it does not
        # next attempts stored with their run's end, by name, until that run is let go of (forget)
        self.following: dict[str, Task] = {}

    def by_id(self, task_id: int) -> Task | None:
        return next((t for t in self.tasks.values() if t.id == task_id), None)

    def queue(self) -> list[Task]:
        """Queued tasks in their order: higher priority first, then in submission order."""
        return sorted((t for t in self.tasks.values() if t.state == State.QUEUED),
                      key=lambda t: (-t.spec.priority, t.id))

    def running(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.state == State.RUNNING]

    def latest(self, name: str) -> Task:
        """A name's live run, or else its last finished one."""
        task = self.latest_or_none(name)
        if task is None:
            raise NoSuchTask(f"no task named {name!r}")
        return task

    def latest_or_none(self, name: str) -> Task | None:
        return self.tasks.get(name) or self.unstored.get(name) or self.store.latest(name)

    def store_get(self, task_id: int) -> Task | None:
        """A run's stored record, if there is one."""
        return self.store.find(task_id)

    def add_all(self, specs: list[TaskSpec], caps: Caps) -> list[Task]:
        """New runs' records in one commit (a sweep's members): all or none."""
        self.retry()
        if self.pending:
            raise not_started(self.unwritable)
        try:
            tasks = self.store.add_all(specs, [caps] * len(specs), time.time())
        except sqlite3.OperationalError as e:
            raise not_started(unavailable_because(self.store.path, e)) from e
        for task in tasks:
            self.track(task)
        return tasks

    def live(self, name: str) -> Task:
        task = self.latest(name)
        if task.state.terminal:
            raise NotRunning(f"task {name!r} is already {task.state}")
        return task

    def save(self, task: Task, detail: str = "", timeline: Timeline | None = None) -> Task:
        """Store a change of the task's record (or keep it, while the store takes no writes), then publish it."""
        at = time.time()
        self.write(lambda db: db.save(task, at, detail, timeline))
        self.track(task)  # a finished one stays until its executor let go of it
        return task

    def end(self, task: Task, detail: str, timeline: Timeline | None, following: tuple[TaskSpec, Caps] | None) -> Task:
        """Store a run's end and its next attempt (where it is retried) as one change, then publish the end.
        The attempt joins the live tasks once its run is let go of (forget), or once the store takes the
        change, if that is later: kept in memory meanwhile, like any change the store does not take yet."""
        at = time.time()

        def change(db: Store) -> None:
            db.save(task, at, detail, timeline, following)
            attempt = db.after(task.id, task.name) if following else None
            if attempt is not None:
                self.arrived(attempt)

        self.write(change)
        self.track(task)
        return task

    def arrived(self, attempt: Task) -> None:
        """A next attempt is stored: it joins the live tasks when its name is free."""
        if attempt.name in self.tasks:
            self.following[attempt.name] = attempt
        else:
            self.track(attempt)

    def update(self, task: Task, **changes: Any) -> Task | None:
        """Change a live run as it is now, not as it was when the caller read it: what happened during an
        await (a kill asked for, an end) stays. None when it has ended meanwhile, and nothing is written."""
        now = self.by_id(task.id)
        if now is None or now.state.terminal:
            return None
        return self.save(now.with_(**changes))

    def add(self, spec: TaskSpec, caps: Caps) -> Task:
        """A new run's record. It needs its id from the store now, after every change kept before it: while
        the store takes no writes, the run is refused (StoreUnavailable), not kept."""
        return self.add_all([spec], caps)[0]

    def write(self, change: Write) -> None:
        """Apply a change to the store, or keep it, after those kept before it, until the store takes writes."""
        if not self.pending:
            try:
                change(self.store)
                return
            except sqlite3.OperationalError as e:
                if is_damage(e):
                    raise
                self.unwritable = unavailable_because(self.store.path, e)
                log.warning("%s: babysit keeps its changes in memory and writes them once it can", self.unwritable)
        self.pending.append(change)

    def retry(self) -> None:
        """Write what was kept, in order, as far as the store takes it now."""
        while self.pending:
            try:
                self.pending[0](self.store)
            except sqlite3.OperationalError as e:
                if is_damage(e):
                    raise
                return  # still no room: the next try
            except sqlite3.Error:  # a change that can never be written must not hold up the rest
                log.exception("a change kept for the store cannot be written; it is dropped")
            self.pending.pop(0)
        if self.unwritable:
            log.info("the store takes writes again: every change kept meanwhile is written")
            self.unwritable = ""
            self.unstored.clear()

    def track(self, task: Task) -> None:
        """Keep and publish a task as it is now: one just stored, or figures that are not stored (usage)."""
        self.tasks[task.name] = task
        self.publish(task)

    def forget(self, task: Task) -> None:
        """A finished task its executor has let go of: its name is free again."""
        if self.tasks.get(task.name, task).id == task.id:
            self.tasks.pop(task.name, None)
        if self.pending:  # its end is not stored yet: status and wait still find it here
            self.unstored[task.name] = task
        if self.publisher:
            self.publisher.task_finished(task)
        attempt = self.following.pop(task.name, None)
        if attempt is not None:
            self.track(attempt)

    def publish(self, task: Task) -> None:
        if self.publisher:
            self.publisher.task_changed(task)

    def setting(self, key: str, value: str | None) -> None:
        """Keep one of babysitd's own settings (None: forget it), like any change: in order, and in memory
        while the store takes no writes."""
        self.write(lambda db: db.settings.set(key, value))

    def add_event(self, task: Task, kind: str, data: dict[str, Any]) -> None:
        at = time.time()
        self.write(lambda db: db.add_event(task, kind, data, at))

    def save_timeline(self, task: Task, timeline: Timeline) -> None:
        self.write(lambda db: db.save_timeline(task, timeline))

    def capacity_changed(self) -> None:
        if self.publisher:
            self.publisher.capacity_changed()

    def runaway_risk(self, task: Task, event: dict[str, Any]) -> None:
        """Kept with the run's events, and signalled to whoever waits."""
        self.add_event(task, "runaway_risk", {k: v for k, v in event.items() if k != "event"})
        if self.publisher:
            self.publisher.runaway_risk(task, event)


def not_started(why: str) -> StoreUnavailable:
    return StoreUnavailable(f"{why}; the task is not started (try again once there is room)")
