"""One journal follower for all babysit units: when each task last printed a line."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from babysit.protocol import DAEMON_UNIT, UNIT_PREFIX

log = logging.getLogger("babysitd")
ARGV = ["journalctl", "--user", "--follow", "--lines=0", "--output=json", "--output-fields=_SYSTEMD_USER_UNIT"]


def task_unit_of(line: str) -> str | None:
    """The babysit task unit that wrote a journal entry (one line of journalctl's JSON), if any."""
    try:
        unit = json.loads(line).get("_SYSTEMD_USER_UNIT")
    except (json.JSONDecodeError, AttributeError):
        return None
    if isinstance(unit, str) and unit.startswith(UNIT_PREFIX) and unit != DAEMON_UNIT:
        return unit
    return None


async def follow(on_output: Callable[[str], None], restart_delay_s: float = 1.0) -> None:
    """Call `on_output(unit)` for every line a task prints; journalctl is restarted if it ends."""
    while True:
        process = await asyncio.create_subprocess_exec(*ARGV, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.DEVNULL)
        assert process.stdout is not None
        try:
            async for raw in process.stdout:
                unit = task_unit_of(raw.decode(errors="replace"))
                if unit:
                    on_output(unit)
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
        log.warning("the journal follower ended (status %s); restarting it", process.returncode)
        await asyncio.sleep(restart_delay_s)  # journald itself may be restarting
