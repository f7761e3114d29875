"""`babysit wait`: blocking until tasks end, driven by their objects' PropertiesChanged signals.

One wait follows any number of names: a task's (its latest run, through its retries) or a sweep's (every
member). The match rules go in before the snapshot, so nothing that happens in between is missed; events
that happened before are replayed first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dbus_fast import Message, MessageType

from babysit.cli.client import DBUS, Client
from babysit.common.bus import unwrap
from babysit.core.protocol import BUS_NAME, SCHEDULER_INTERFACE, TASKS_PATH, State, complete, task_path

Report = dict[str, Any]
PROPERTIES = f"type='signal',sender='{BUS_NAME}',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged'"
RISKS = f"type='signal',sender='{BUS_NAME}',interface='{SCHEDULER_INTERFACE}',member='RunawayRisk'"
OWNER = f"type='signal',sender='{DBUS}',member='NameOwnerChanged',arg0='{BUS_NAME}'"


@dataclass
class Target:
    """A name waited for: one task, or a sweep and its members."""

    name: str
    members: list[str]
    sweep: bool
    results: dict[str, Report] = field(default_factory=dict)  # each member's final result, once it has one

    @property
    def done(self) -> bool:
        return len(self.results) == len(self.members)


def final(report: Report) -> bool:
    """Whether a run's report is the last of its name: terminal, with no attempt to follow."""
    return State(report["status"]).terminal and not report.get("next_attempt")


class Waiter:
    def __init__(self, client: Client, on_event: Callable[[Report], None] | None = None,
                 on_retry: Callable[[Report], None] | None = None,
                 on_progress: Callable[[Report], None] | None = None,
                 on_attached: Callable[[Report], None] | None = None) -> None:
        self.client = client
        self.on_event = on_event  # each runaway_risk event, once
        self.on_retry = on_retry  # an attempt that ended, with the next one queued
        self.on_progress = on_progress  # a single task's usage as it changes
        self.on_attached = on_attached  # a single task's first snapshot
        self.queue: asyncio.Queue[tuple[str, Any, Any]] = asyncio.Queue()
        self.seen: set[tuple[Any, ...]] = set()
        self.by_path: dict[str, tuple[Target, str]] = {}  # a member's object path -> its target and name
        self.watched: set[str] = set()  # the members' names
        self.rules: set[str] = set()

    async def wait(self, names: list[str], any_: bool = False) -> list[Report]:
        """The results of every name (a sweep's summary) once all have ended; with `any_`, of those that ended
        when the first did."""
        self.client.bus.add_message_handler(self.handle)
        await self.listen([f"{PROPERTIES},path='{task_path(name)}'" for name in names]
                          + [f"{RISKS},arg0='{name}'" for name in names] + [OWNER])
        targets = [await self.snapshot(name) for name in names]
        while not (any(t.done for t in targets) if any_ else all(t.done for t in targets)):
            kind, where, value = await self.queue.get()
            if kind == "state":
                await self.changed(where, value)
            elif kind == "event":
                self.emit(value)
            elif kind == "owner":  # babysitd went away or came back: ask again (activation restarts it)
                for target in targets:
                    await self.refresh(target)
        return [await self.result(t) for t in targets if t.done]

    def handle(self, message: Message) -> None:
        if message.message_type != MessageType.SIGNAL:
            return
        if message.member == "PropertiesChanged" and (message.path or "").startswith(TASKS_PATH):
            self.queue.put_nowait(("state", message.path, unwrap(message.body[1])))
        elif message.member == "RunawayRisk" and message.body:
            self.queue.put_nowait(("event", message.body[0], unwrap(message.body[1])))
        elif message.member == "NameOwnerChanged" and message.body[0] == BUS_NAME:
            self.queue.put_nowait(("owner", None, message.body[2]))

    async def listen(self, rules: list[str]) -> None:
        for rule in rules:
            if rule not in self.rules:
                self.rules.add(rule)
                await self.client.add_match(rule)

    async def snapshot(self, name: str) -> Target:
        """What a name is now (a task, or a sweep and its members), and the events its runs had. The match rules
        went in first; a sweep's members may be many, so for a sweep every task object's are matched (and the
        sweep is read again after)."""
        report = await self.client.status(name)
        if "results" in report:
            await self.listen([f"{PROPERTIES},path_namespace='{TASKS_PATH}'", RISKS])
            report = await self.client.status(name)
        target = Target(name, [], "results" in report)
        members = [complete(m) for m in report["results"]] if target.sweep else [report]
        if self.on_attached and not target.sweep:
            self.on_attached(report)
        target.members = [m["name"] for m in members]
        self.watched.update(target.members)
        for member in members:
            self.by_path[task_path(member["name"])] = (target, member["name"])
            if final(member):
                target.results[member["name"]] = member
        for event in (await self.client.call("Events", "s", [name]))[0]:
            if event.get("event") == "runaway_risk":
                self.emit(event)
        return target

    async def refresh(self, target: Target) -> None:
        for member in target.members:
            if member not in target.results:
                report = await self.client.status(member)
                if final(report):
                    target.results[member] = report

    async def changed(self, path: str, changed: Report) -> None:
        found = self.by_path.get(path)
        if found is None or found[1] in found[0].results:
            return
        target, member = found
        if self.on_progress and "Usage" in changed:
            self.on_progress(changed["Usage"])
        if not (changed.get("State") and State(changed["State"]).terminal):
            return
        # the terminal JSON comes with the change: the waiting user is spared a Status round trip
        report = complete(changed["Result"]) if changed.get("Result") else await self.client.status(member)
        if report.get("next_attempt"):
            if self.on_retry:
                self.on_retry(report)
        elif State(report["status"]).terminal:
            target.results[member] = report

    def emit(self, event: Report) -> None:
        key = (event.get("name"), event.get("dim"), event.get("at"))
        if self.on_event and key not in self.seen and event.get("name") in self.watched:
            self.seen.add(key)
            self.on_event(event)

    async def result(self, target: Target) -> Report:
        """A task's final result; a sweep's summary, as babysitd rolls it up."""
        if target.sweep:
            return await self.client.status(target.name)
        return target.results[target.name]
