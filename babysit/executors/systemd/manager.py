"""The part of systemd's D-Bus API babysit uses, typed: the daemon sees plain values, never a Variant."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from babysit.common.bus import unwrap
from babysit.core.protocol import label_escape

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit"

# D-Bus types of the unit properties babysit sets (systemd.resource-control(5), systemd.exec(5)).
PROPERTY_SIGNATURES: dict[str, str] = {
    "Description": "s",
    "AddRef": "b",
    "ExecStart": "a(sasb)",
    "ExecStopPost": "a(sasb)",
    "WorkingDirectory": "s",
    "Environment": "as",
    "Slice": "s",
    "CollectMode": "s",
    "KillMode": "s",
    "KillSignal": "i",
    "SendSIGKILL": "b",
    "TimeoutStopUSec": "t",
    "RuntimeMaxUSec": "t",
    "MemoryAccounting": "b",
    "CPUAccounting": "b",
    "TasksAccounting": "b",
    "MemoryMax": "t",
    "MemorySwapMax": "t",
    "CPUQuotaPerSecUSec": "t",
    "StandardOutput": "s",
    "StandardError": "s",
    "StandardOutputFileToAppend": "s",
    "StandardErrorFileToAppend": "s",
    "SyslogIdentifier": "s",
    "RemainAfterExit": "b",
    "DevicePolicy": "s",
    "DeviceAllow": "a(ss)",
    "PrivateUsers": "b",
    "PrivateDevices": "b",
    "BindPaths": "a(ssbt)",
}


def unit_path(unit: str) -> str:
    """The object path of a unit, as systemd names it."""
    return f"{UNIT_PATH_PREFIX}/{label_escape(unit)}"


def typed_properties(properties: Mapping[str, Any]) -> list[tuple[str, Variant]]:
    """Unit properties as StartTransientUnit/SetUnitProperties want them: name, Variant."""
    return [(name, Variant(PROPERTY_SIGNATURES[name], value)) for name, value in properties.items()]


@dataclass(frozen=True)
class UnitChange:
    """One PropertiesChanged signal from a unit object."""

    path: str
    interface: str  # org.freedesktop.systemd1.Unit, .Service, ...
    changed: dict[str, Any]


class Systemd:
    """The user manager, over an already connected bus."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    async def call(self, path: str, interface: str, member: str, signature: str = "", body: list | None = None) -> list:
        """One method call to systemd; a D-Bus error reply raises DBusError."""
        reply = await self.bus.call(
            Message(destination=SYSTEMD, path=path, interface=interface, member=member,
                    signature=signature, body=body or [])
        )
        if reply.message_type == MessageType.ERROR:
            raise DBusError._from_message(reply)
        return unwrap(reply.body)

    async def subscribe(self, on_change: Callable[[UnitChange], None]) -> None:
        """Deliver every unit's PropertiesChanged to `on_change`.

        The match rule is in place before systemd is asked to emit, so a caller that reads a snapshot
        after this returns cannot miss a change made in between.
        """
        rule = (f"type='signal',sender='{SYSTEMD}',interface='{PROPERTIES}',"
                f"member='PropertiesChanged',path_namespace='{UNIT_PATH_PREFIX}'")

        def handler(message: Message) -> None:
            path = message.path or ""
            if (message.message_type == MessageType.SIGNAL and message.member == "PropertiesChanged"
                    and message.interface == PROPERTIES and path.startswith(UNIT_PATH_PREFIX)):
                interface, changed, _invalidated = message.body
                on_change(UnitChange(path, interface, unwrap(changed)))

        self.bus.add_message_handler(handler)
        await self.bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                    interface="org.freedesktop.DBus", member="AddMatch", signature="s", body=[rule]))
        await self.call(MANAGER_PATH, MANAGER, "Subscribe")  # systemd emits unit signals only to subscribers

    async def start_transient_unit(self, unit: str, properties: Mapping[str, Any]) -> str:
        """Start a transient unit; returns the job's object path."""
        (job,) = await self.call(MANAGER_PATH, MANAGER, "StartTransientUnit", "ssa(sv)a(sa(sv))",
                                 [unit, "fail", typed_properties(properties), []])
        return job

    async def set_unit_properties(self, unit: str, properties: Mapping[str, Any]) -> None:
        """Change properties of a live unit (cgroup ones apply at once), for its runtime only."""
        await self.call(MANAGER_PATH, MANAGER, "SetUnitProperties", "sba(sv)",
                        [unit, True, typed_properties(properties)])

    async def get_unit(self, unit: str) -> str | None:
        """The object path of a loaded unit, or None (unlike GetAll on a path, this never loads one)."""
        try:
            (path,) = await self.call(MANAGER_PATH, MANAGER, "GetUnit", "s", [unit])
        except DBusError as e:
            if e.type == "org.freedesktop.systemd1.NoSuchUnit":
                return None
            raise
        return path

    async def manager_property(self, name: str) -> Any:
        (value,) = await self.call(MANAGER_PATH, PROPERTIES, "Get", "ss", [MANAGER, name])
        return value

    async def stop_unit(self, unit: str) -> None:
        await self.call(MANAGER_PATH, MANAGER, "StopUnit", "ss", [unit, "replace"])

    async def kill_unit(self, unit: str, signo: int) -> None:
        """A signal to every process of the unit (the main one and its children)."""
        await self.call(MANAGER_PATH, MANAGER, "KillUnit", "ssi", [unit, "all", signo])

    async def freeze_unit(self, unit: str, frozen: bool) -> None:
        """FreezeUnit or ThawUnit: the cgroup v2 freezer (NotSupported where the unit's cgroup has none)."""
        await self.call(MANAGER_PATH, MANAGER, "FreezeUnit" if frozen else "ThawUnit", "s", [unit])

    async def reset_failed_unit(self, unit: str) -> None:
        await self.call(MANAGER_PATH, MANAGER, "ResetFailedUnit", "s", [unit])

    async def unref_unit(self, unit: str) -> None:
        """Drop this connection's reference (AddRef): an inactive unit is then unloaded."""
        await self.call(unit_path(unit), UNIT, "Unref")

    async def properties(self, unit: str, interface: str = "") -> dict[str, Any]:
        """All properties of `interface` on a loaded unit ("" for all its interfaces)."""
        (props,) = await self.call(unit_path(unit), PROPERTIES, "GetAll", "s", [interface])
        return props

    async def unit_properties(self, unit: str) -> dict[str, Any]:
        """What babysit reads of a task's unit: its Unit and Service properties together."""
        return {**await self.properties(unit, UNIT), **await self.properties(unit, SERVICE)}

    async def list_units(self, pattern: str) -> list[tuple[str, str, str]]:
        """(name, active state, sub state) of the loaded units matching a glob."""
        (units,) = await self.call(MANAGER_PATH, MANAGER, "ListUnitsByPatterns", "asas", [[], [pattern]])
        return [(u[0], u[3], u[4]) for u in units]
