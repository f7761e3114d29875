"""Desktop notifications (config `notify = true`): a notification server on the session bus hears of each end.

The server here is a minimal one of the test's own: it implements the freedesktop Notifications
interface's `Notify` (and `GetServerInformation`) and records what it was asked to show.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import pytest
import pytest_asyncio
from dbus_fast.annotations import DBusDict, DBusInt32, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from babysit.common import bus as session_bus
from tests.integration.conftest import babysit, daemon_config
from tests.waiting import wait_event

pytestmark = [pytest.mark.integration]


class NotificationServer(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.freedesktop.Notifications")
        self.shown: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    @dbus_method()
    def Notify(self, app_name: DBusStr, replaces_id: DBusUInt32, app_icon: DBusStr, summary: DBusStr, body: DBusStr,
               actions: Annotated[list[str], DBusSignature("as")], hints: DBusDict,
               expire_timeout: DBusInt32) -> DBusUInt32:
        self.shown.put_nowait((summary, body))
        return self.shown.qsize()

    @dbus_method()
    def GetServerInformation(self) -> Annotated[tuple[str, str, str, str], DBusSignature("ssss")]:
        return ["babysit-tests", "babysit", "1", "1.2"]  # type: ignore[return-value]


@pytest.fixture(scope="module")
def notifying(daemon: str) -> Iterator[None]:
    with daemon_config("notify = true\n"):
        yield


@pytest_asyncio.fixture
async def server() -> AsyncIterator[NotificationServer]:
    bus = await session_bus.connect()
    served = NotificationServer()
    bus.export("/org/freedesktop/Notifications", served)
    await bus.request_name("org.freedesktop.Notifications")
    try:
        yield served
    finally:
        bus.disconnect()


@pytest.mark.usefixtures("notifying")
@pytest.mark.asyncio
async def test_each_end_is_a_notification(server: NotificationServer, task_name: str) -> None:
    done, killed = f"{task_name}-done", f"{task_name}-killed"
    assert (await asyncio.to_thread(babysit, "run", f"--name={done}", "--command=exit 3")).returncode == 0
    summary, body = await wait_event(server.shown.get(), 30, "the notification of the failure")
    assert (summary, body.split(" after")[0]) == (f"babysit: {done} failed", "exit code 3")
    assert (await asyncio.to_thread(babysit, "run", f"--name={killed}", "--command=sleep 600")).returncode == 0
    assert (await asyncio.to_thread(babysit, "kill", f"--name={killed}")).returncode == 0
    summary, body = await wait_event(server.shown.get(), 30, "the notification of the kill")
    assert summary == f"babysit: {killed} killed (user)" and "babysit kill" in body


@pytest.mark.usefixtures("notifying")
def test_without_a_notification_server_nothing_changes(task_name: str) -> None:
    assert babysit("run", f"--name={task_name}", "--command=true").returncode == 0
    assert babysit("wait", f"--name={task_name}").returncode == 0
    assert babysit("ping").returncode == 0
    said = subprocess.run(["journalctl", "--user", "--identifier=babysitd", "--no-pager", "-o", "cat"],
                          capture_output=True, text=True).stdout
    assert f"error while notifying the end of {task_name}" not in said
