"""One journal follower for all babysit units: when each task last printed a line."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

from babysit.protocol import DAEMON_UNIT, UNIT_PREFIX

log = logging.getLogger("babysitd")
ARGV = ["journalctl", "--user", "--follow", "--lines=0", "--output=json", "--output-fields=_SYSTEMD_USER_UNIT"]


ZERO = re.compile(r"0+(\.0+)?\s*[a-z]*")  # a duration or count of zero, with or without its unit
# journald.conf and its drop-ins; a drop-in in a later directory replaces one of the same name
JOURNALD_CONF = Path("/etc/systemd/journald.conf")
JOURNALD_DROP_IN_DIRS = (Path("/usr/lib/systemd/journald.conf.d"), Path("/run/systemd/journald.conf.d"),
                         Path("/etc/systemd/journald.conf.d"))


def rate_limit(texts: list[str]) -> tuple[str, str]:
    """journald's effective RateLimitIntervalSec and RateLimitBurst from its config files, in order."""
    values = {"RateLimitIntervalSec": "30s", "RateLimitBurst": "10000"}  # journald's defaults
    for text in texts:
        section = ""
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[Journal]" and "=" in line and not line.startswith(("#", ";")):
                key, value = (part.strip() for part in line.split("=", 1))
                if key in values:
                    values[key] = value or values[key]
    return values["RateLimitIntervalSec"], values["RateLimitBurst"]


def rate_limit_warning(texts: list[str]) -> str | None:
    """What to tell the user when journald may drop lines of a chatty task."""
    interval, burst = rate_limit(texts)
    if ZERO.fullmatch(interval) or ZERO.fullmatch(burst):  # either at 0 turns rate limiting off
        return None
    # systemd applies LogRateLimitIntervalSec= of system units only; for user units journald's own limit holds
    return (f"journald keeps at most about {burst} lines per {interval} of each task (its RateLimitBurst and "
            "RateLimitIntervalSec; per-unit limits do not apply to user units), so a chattier task loses lines; "
            "fix (as root): RateLimitIntervalSec=0 under [Journal] in /etc/systemd/journald.conf.d/babysit.conf, "
            "then systemctl restart systemd-journald")


def journald_config_texts() -> list[str]:
    """journald.conf, then its drop-ins in the order journald reads them."""
    drop_ins: dict[str, Path] = {}
    for directory in JOURNALD_DROP_IN_DIRS:
        if directory.is_dir():
            drop_ins.update({p.name: p for p in directory.glob("*.conf")})
    files = [JOURNALD_CONF] + [drop_ins[name] for name in sorted(drop_ins)]
    return [f.read_text(errors="replace") for f in files if f.is_file()]


def task_unit_of(line: str) -> str | None:
    """The babysit task unit that wrote a journal entry (one line of journalctl's JSON), if any."""
    try:
        unit = json.loads(line).get("_SYSTEMD_USER_UNIT")
    except (json.JSONDecodeError, AttributeError):
        return None
    if isinstance(unit, str) and unit.startswith(UNIT_PREFIX) and unit != DAEMON_UNIT:
        return unit
    return None


async def last_line_at(unit: str) -> float | None:
    """When the unit's latest journal entry was written (epoch seconds), read from journald itself."""
    process = await asyncio.create_subprocess_exec(
        "journalctl", "--user", f"_SYSTEMD_USER_UNIT={unit}", "--lines=1", "--output=json",
        "--output-fields=_SYSTEMD_USER_UNIT", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await process.communicate()
    try:
        return int(json.loads(out.splitlines()[-1])["__REALTIME_TIMESTAMP"]) / 1e6
    except (IndexError, KeyError, ValueError, json.JSONDecodeError):
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
