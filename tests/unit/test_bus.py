"""Back-pressure on the bus socket: a peer that stops reading must make babysit wait, never disconnect.

The peer is a minimal D-Bus server on a local socket: it authenticates the client, answers Hello, and
then reads nothing until told to, so the client's send buffer fills up and `send` meets EAGAIN.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from babysit.common import bus as babysit_bus

BIG = 4 << 20  # far more than the socket buffers on both sides hold
HELLO_REPLY_SERIAL = 1


class SilentPeer:
    """A D-Bus peer that accepts one client, then reads only when `drain` is called."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.server.setblocking(False)
        self.conn: socket.socket | None = None

    async def accept_and_authenticate(self) -> None:
        loop = asyncio.get_running_loop()
        self.conn, _ = await loop.sock_accept(self.server)
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        buffered = b""
        while b"BEGIN\r\n" not in buffered:
            buffered += await loop.sock_recv(self.conn, 4096)
            if b"AUTH" in buffered and b"OK" not in buffered and buffered.endswith(b"\r\n"):
                await loop.sock_sendall(self.conn, b"OK 0123456789abcdef0123456789abcdef\r\n")
                buffered += b"OK"  # answered once
        # the client sent Hello right after BEGIN; it must be answered for connect() to return
        reply = Message(message_type=MessageType.METHOD_RETURN, reply_serial=HELLO_REPLY_SERIAL,
                        destination=":1.7", signature="s", body=[":1.7"], serial=1)
        await loop.sock_sendall(self.conn, bytes(reply._marshall(False)))

    async def drain(self, total: int, timeout: float = 30.0) -> int:
        """Read until `total` bytes (after the handshake) have arrived; returns what was read."""
        loop = asyncio.get_running_loop()
        assert self.conn is not None
        received = 0
        async with asyncio.timeout(timeout):
            while received < total:
                chunk = await loop.sock_recv(self.conn, 1 << 16)
                if not chunk:
                    break
                received += len(chunk)
        return received

    def close(self) -> None:
        if self.conn:
            self.conn.close()
        self.server.close()


@pytest_asyncio.fixture
async def peer(tmp_path: Path) -> AsyncIterator[SilentPeer]:
    silent = SilentPeer(tmp_path / "bus")
    yield silent
    silent.close()


async def connect_client(peer: SilentPeer, patched: bool) -> MessageBus:
    address = f"unix:path={peer.path}"
    accepted = asyncio.ensure_future(peer.accept_and_authenticate())
    if patched:
        client = await babysit_bus.connect(address=address)
    else:
        client = await MessageBus(bus_address=address).connect()
    await accepted
    # the Hello is read; make the client's own buffer small so it fills at once
    client._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return client


def signal_of(size: int) -> Message:
    return Message.new_signal("/org/babysit/Test", "org.babysit.Test", "Blob", "s", ["x" * size])


class CountingSocket:
    """The real socket, counting the sends that met a full buffer (EAGAIN)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.would_block = 0

    def send(self, data: bytes) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            self.would_block += 1
            raise

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


@pytest.mark.asyncio
async def test_unpatched_dbus_fast_drops_the_connection_on_eagain(peer: SilentPeer) -> None:
    """The upstream defect this module works around; if this starts failing, upstream fixed it."""
    client = await connect_client(peer, patched=False)
    client.send(signal_of(BIG))  # partly written; the writer waits for room
    with pytest.raises(OSError):  # EAGAIN on the direct write, then the socket is closed under it
        await asyncio.wait_for(client.send(signal_of(100)), 10)
    assert not client.connected


@pytest.mark.asyncio
async def test_a_full_socket_means_waiting_then_every_byte_arrives(peer: SilentPeer) -> None:
    client = await connect_client(peer, patched=True)
    counting = CountingSocket(client._writer.sock._sock)
    client._writer.sock._sock = counting
    big, small = signal_of(BIG), signal_of(100)
    sent = [client.send(big), client.send(small)]
    for _ in range(3):
        await asyncio.sleep(0)  # the loop runs the writer while the peer reads nothing
    assert counting.would_block >= 1  # the socket really was full
    assert client.connected and not any(f.done() for f in sent)  # waiting for room, not failed
    size = len(big._marshall(False)) + len(small._marshall(False))
    received, _ = await asyncio.gather(peer.drain(size), asyncio.wait_for(asyncio.gather(*sent), 30))
    assert received == size
    assert client.connected
    client.disconnect()


def test_the_patch_refuses_a_writer_it_does_not_know() -> None:
    class Unknown:
        _writer = object()

    with pytest.raises(RuntimeError, match="re-check babysit.common.bus"):
        babysit_bus.wait_when_full(Unknown())  # type: ignore[arg-type]
