"""The CLI's side of the bus: one connection, typed calls, and waiting on a task's signals."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from babysit.common import bus as session_bus
from babysit.common.bus import unwrap
from babysit.core.protocol import (
    BUS_NAME,
    ERRORS,
    SCHEDULER_INTERFACE,
    SCHEDULER_PATH,
    BabysitError,
    complete,
)

DBUS = "org.freedesktop.DBus"
# what the bus says when no babysitd answers (and activation, if installed, did not start one)
NOT_RUNNING = {f"{DBUS}.Error.ServiceUnknown", f"{DBUS}.Error.NameHasNoOwner", f"{DBUS}.Error.NoReply",
               f"{DBUS}.Error.Spawn.ChildExited", f"{DBUS}.Error.Spawn.Failed", f"{DBUS}.Error.TimedOut",
               f"{DBUS}.Error.Disconnected", "org.freedesktop.systemd1.NoSuchUnit"}
# how long a call waits before it asks the bus whether babysitd is still there (then it waits on, or says
# it is gone); tests shorten it
CALL_TIMEOUT_S = float(os.environ.get("BABYSIT_CALL_TIMEOUT_S", "30"))
OWNER_TIMEOUT_S = 5.0  # the bus itself answers GetNameOwner at once


class DaemonNotRunning(Exception):
    """No babysitd answers on the session bus."""


class DaemonBusy(Exception):
    """babysitd is there (it owns its bus name) but has not answered in time: it is busy, not gone."""


class AnswerLost(DaemonNotRunning):
    """babysitd went away while handling the call: it may or may not have been carried out."""


def variant_dict(values: dict[str, Any]) -> dict[str, Variant]:
    """CLI values for an a{sv} argument: strings stay strings (the daemon parses them), bools are b."""
    out = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = Variant("b", value)
        elif isinstance(value, dict):
            out[key] = Variant("a{ss}", value)
        else:
            out[key] = Variant("s", str(value))
    return out


class Client:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        # told each time a call has waited another timeout for a daemon that is there but busy
        self.on_busy: Callable[[str, float], None] = lambda member, waited: None

    @classmethod
    async def connect(cls) -> Client:
        try:
            return cls(await session_bus.connect())
        except (OSError, ValueError, DBusError) as e:
            raise DaemonNotRunning(f"no session bus ({e})") from None

    def close(self) -> None:
        self.bus.disconnect()

    async def call(self, member: str, signature: str = "", body: list | None = None, *, autostart: bool = True,
                   timeout: float = CALL_TIMEOUT_S, patient: bool = True, destination: str = BUS_NAME,
                   path: str = SCHEDULER_PATH, interface: str = SCHEDULER_INTERFACE) -> list:
        """A method call; babysit's errors come back as their exception types.

        When no answer comes within `timeout`, the bus says whether babysitd is still there: if it is not,
        DaemonNotRunning; if it is, a `patient` call waits on (telling on_busy each time), another raises
        DaemonBusy. A busy daemon is never reported as not running, and the call is never sent twice.
        """
        message = Message(destination=destination, path=path, interface=interface, member=member,
                          signature=signature, body=body or [],
                          flags=MessageFlag.NONE if autostart else MessageFlag.NO_AUTOSTART)
        answer = asyncio.ensure_future(self.bus.call(message))
        waited = 0.0
        while not answer.done():
            await asyncio.wait([answer], timeout=timeout)
            if answer.done():
                break
            waited += timeout
            owner = await self.owner(destination) if destination == BUS_NAME else None
            if owner is None:
                answer.cancel()
                raise DaemonNotRunning(f"no answer to {member} within {waited:.0f}s")
            if not patient:
                answer.cancel()
                raise DaemonBusy(f"babysitd ({owner} on the session bus) is up but has not answered {member} "
                                 f"within {waited:.0f}s: it is busy; try again, or see journalctl --user -u babysitd")
            self.on_busy(member, waited)
        reply = answer.result()
        if reply.message_type == MessageType.ERROR:
            name, text = reply.error_name or "", (reply.body or [""])[0]
            if name in ERRORS:
                raise ERRORS[name](text)
            if name == f"{DBUS}.Error.NoReply":
                raise AnswerLost(text)
            if name in NOT_RUNNING:
                raise DaemonNotRunning(text)
            raise BabysitError(f"{name}: {text}")
        return unwrap(reply.body)

    async def owner(self, name: str) -> str | None:
        """The unique bus name that owns `name` now; None when nobody does (or the bus does not say in time)."""
        message = Message(destination=DBUS, path="/org/freedesktop/DBus", interface=DBUS, member="GetNameOwner",
                          signature="s", body=[name])
        try:
            reply = await asyncio.wait_for(self.bus.call(message), OWNER_TIMEOUT_S)
        except TimeoutError:
            return None
        return str(reply.body[0]) if reply.message_type == MessageType.METHOD_RETURN else None

    async def submit(self, spec: dict[str, Variant], force: bool, retry_for: float = CALL_TIMEOUT_S) -> str:
        """Run a task exactly once: a call whose answer was lost (babysitd died) is repeated with the same
        request id, which the daemon recognises, until `retry_for` seconds have passed."""
        # random like a uuid4, without importing uuid (and platform) on the hot `run` verb
        spec = {"request_id": Variant("s", os.urandom(16).hex()), **spec}
        deadline = time.monotonic() + retry_for
        while True:
            try:
                (name,) = await self.call("Run", "a{sv}b", [spec, force])
                return name
            except AnswerLost:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)  # systemd or D-Bus activation is bringing babysitd back

    async def status(self, name: str) -> dict[str, Any]:
        (status,) = await self.call("Status", "s", [name])
        return complete(status)

    async def add_match(self, rule: str) -> None:
        await self.call("AddMatch", "s", [rule], destination=DBUS, path="/org/freedesktop/DBus", interface=DBUS)

    async def wait_for_capacity(self, mem_bytes: int, cpu_cores: float, timeout: float | None,
                                gpus: int = 0, gpu_mem_bytes: int = 0, recheck_s: float = 2.0) -> bool:
        """True once a task with these estimates would be admitted now; False at the timeout.

        Woken by the daemon's CapacityChanged; memory freed outside babysit sends no signal, so the
        figures are also read again every `recheck_s`.
        """
        from babysit.core.capacity import Room, fits  # the capacity model only for this verb: the others start faster

        changed = asyncio.Event()

        def handler(message: Message) -> None:
            if message.message_type == MessageType.SIGNAL and message.member == "CapacityChanged":
                changed.set()

        self.bus.add_message_handler(handler)
        await self.add_match(f"type='signal',sender='{BUS_NAME}',interface='{SCHEDULER_INTERFACE}',"
                             "member='CapacityChanged'")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            changed.clear()
            (capacity,) = await self.call("Capacity")
            if fits(capacity, Room(mem_bytes, cpu_cores, gpus, gpu_mem_bytes)).admit:
                return True
            left = recheck_s if deadline is None else min(recheck_s, deadline - time.monotonic())
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                pass
