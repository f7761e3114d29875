"""The one session-bus connection of a babysit process, made to wait, not die, when the bus is slow.

dbus-fast's asyncio writer (5.2, like dbus-next before it: python-dbus-next#153, still open) treats
EAGAIN from `send` as a fatal error and drops the connection: under a burst (hundreds of signals and
a large List reply while dbus-daemon is busy) babysitd lost its bus and every pending call with it.
EAGAIN only means the socket's send buffer is full. The writer already knows how to wait for a
partial write (it keeps the rest and asks the loop for "writable"); a send that would block is a
partial write of zero bytes, so that is what the socket below reports to it.
"""

from __future__ import annotations

import socket
from typing import Any

from dbus_fast import BusType, Variant
from dbus_fast.aio import MessageBus


class WaitingSocket:
    """The bus socket as dbus-fast's writer sees it: a send that would block has sent nothing yet."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: Any) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0  # the writer keeps the rest and waits until the socket is writable

    def __getattr__(self, name: str) -> Any:
        # sendmsg (only used to pass file descriptors, which babysit never negotiates) and the rest
        return getattr(self._sock, name)


def wait_when_full(bus: MessageBus) -> MessageBus:
    """Make a connected bus wait for room in its socket instead of disconnecting."""
    writer = getattr(bus, "_writer", None)
    if writer is None or not isinstance(getattr(writer, "sock", None), socket.socket):
        # the pinned dbus-fast range has this shape; a new one must be checked again (tests/unit/test_bus.py)
        raise RuntimeError("dbus-fast's writer has changed: re-check babysit.common.bus against it")
    writer.sock = WaitingSocket(writer.sock)
    return bus


async def connect(bus_type: BusType = BusType.SESSION, address: str | None = None) -> MessageBus:
    """A connected bus (the session bus unless `address` says otherwise) that survives back-pressure."""
    bus = MessageBus(bus_address=address) if address else MessageBus(bus_type=bus_type)
    return wait_when_full(await bus.connect())


def unwrap(value: Any) -> Any:
    """A D-Bus value with every Variant, at any depth, replaced by its plain value."""
    kind = type(value)  # exact types, most common first: a List of a long queue holds tens of thousands
    if kind is Variant:
        value = value.value
        kind = type(value)
    if kind is dict:
        return {k: unwrap(v) for k, v in value.items()}
    if kind is list:
        return [unwrap(v) for v in value]
    return value
