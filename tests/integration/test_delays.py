"""Measured delays (figures printed, not asserted): run -> unit active, unit exit -> wait returns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from babysit.core.protocol import unit_name
from tests.integration.conftest import BIN, UnitSignals

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.usefixtures("daemon")]


async def cli(*args: str) -> tuple[int, float]:
    process = await asyncio.create_subprocess_exec(str(BIN / "babysit"), *args, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    await process.communicate()
    return process.returncode or 0, time.monotonic()


async def test_run_to_active_and_exit_to_wait(signals: UnitSignals, task_name: str,
                                              figure: Callable[[str], None]) -> None:
    unit = unit_name(task_name)
    submitted = time.monotonic()
    run = asyncio.ensure_future(cli("run", f"--name={task_name}", "--command=sleep 1"))
    await signals.until(unit, lambda p: p.get("ActiveState") == "active", 30)
    active = time.monotonic()
    assert (await run)[0] == 0
    waiter = asyncio.ensure_future(cli("wait", f"--name={task_name}"))
    # the main process has exited once the unit leaves `running` (for its final accounting, then dead)
    await signals.until(unit, lambda p: p.get("SubState") in ("stop-post", "dead", "failed"), 30)
    exited = time.monotonic()
    code, returned = await waiter
    assert code == 0
    figure(f"babysit run -> unit active: {1000 * (active - submitted):.0f} ms (CLI start included)")
    figure(f"unit exit -> babysit wait returns: {1000 * (returned - exited):.0f} ms (CLI exit included)")
