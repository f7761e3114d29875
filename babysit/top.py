"""`babysit top`: a live full-screen view of the running and queued tasks, redrawn on babysitd's signals.

Usage, states and capacity come as signals (PropertiesChanged of each task object, CapacityChanged,
TaskFinished); the clock redraws the countdowns once a second. The time since a task's last line is
read from journald at each redraw (microseconds, on this machine): nobody signals a printed line, and
babysitd is not asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import time
import tty
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from dbus_fast import Message, MessageType
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from babysit.client import Client
from babysit.journal import LastOutput
from babysit.protocol import BUS_NAME, SCHEDULER_INTERFACE, TASKS_PATH, complete, task_path
from babysit.quantities import format_duration, format_size
from babysit.systemd import unwrap

REDRAW_S = 1.0  # the countdowns move with the clock
FRAME_S = 0.1
BAR = 8


def bar(used: float, estimate: float, cap: float, width: int) -> Text:
    """Usage on a scale up to the cap, with the estimate marked: green within it, yellow past it, red at
    twice it (where a kill looms)."""
    scale = max(cap, estimate, used) or 1.0
    filled, mark = round(used / scale * width), min(width - 1, round(estimate / scale * width))
    share = used / estimate if estimate else 0.0
    style = "green" if share <= 1 else "yellow" if share < 2 else "red"
    cells = ["█" if i < filled else "┃" if i == mark else "░" for i in range(width)]
    return Text("".join(cells), style=style)


def short_size(size: float) -> str:
    """`816K`, `64M`, `3.2G`: a size in few columns."""
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor:
            value = size / factor
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return f"{size:.0f}B"


def running_row(task: dict[str, Any], now: float, silent_s: float) -> list[Any]:
    started = datetime.fromisoformat(task["started_at"]).timestamp() if task.get("started_at") else now
    left = task["kill_timeout_s"] - (now - started)
    interval = task["observability_interval_s"]
    mem, mem_est, mem_cap = task["mem_bytes"], task["estimated_mem_bytes"], task["memory_max_bytes"]
    cpu, cpu_est, cpu_cap = task["cpu_cores"], task["estimated_cpu_cores"], task["cpu_quota_pct"] / 100
    return [
        task["name"], Text("running", style="yellow"),
        Text.assemble(bar(mem, mem_est, mem_cap, BAR), f" {short_size(mem)}/{short_size(mem_est)}"),
        Text.assemble(bar(cpu, cpu_est, cpu_cap, 5), f" {cpu:.1f}/{cpu_est:g}"),
        Text(format_duration(max(0.0, left)), style="red" if left < 0.1 * task["kill_timeout_s"] else ""),
        Text(f"{format_duration(silent_s)}/{format_duration(interval)}",
             style="red" if silent_s > interval / 2 else ""),
    ]


def queued_line(task: dict[str, Any]) -> Text:
    """A queued task: its place, what it waits for, and what it asks."""
    return Text.assemble(
        (f"#{task.get('queue_position', '?')} ", "cyan"), task["name"],
        f"  waiting: {task.get('waiting_for', 'its turn')}; asks {short_size(task['estimated_mem_bytes'])}, "
        f"{task['estimated_cpu_cores']:g} cores", overflow="ellipsis", no_wrap=True)


def board(tasks: list[dict[str, Any]], capacity: dict[str, Any], now: float,
          silences: dict[str, float]) -> Group:
    """The whole screen: the host's figures, then one row per running task (`silences`: seconds since
    each one's last line), then the queue."""
    running = [t for t in tasks if t["status"] == "running"]
    queued = sorted((t for t in tasks if t["status"] == "queued"), key=lambda t: t.get("queue_position", 0))
    head = Text.assemble(
        ("babysit top", "bold"), f"  {len(running)} running, {len(queued)} queued · free "
        f"{format_size(capacity.get('free_mem_bytes'))} of {format_size(capacity.get('host_mem_bytes'))} · room "
        f"{format_size(capacity.get('available_mem_bytes'))}, {capacity.get('available_cpu_cores', 0):g} cores",
        overflow="ellipsis", no_wrap=True)
    # the figures keep their widths (a running row fits 80 columns); the name takes what is left
    table = Table(expand=True, box=None, pad_edge=False)
    table.add_column("name", ratio=1, no_wrap=True, overflow="ellipsis")
    table.add_column("state", width=7, no_wrap=True, overflow="ellipsis")
    table.add_column("memory ┃est", width=BAR + 12, no_wrap=True, overflow="ellipsis")
    table.add_column("cpu ┃est", width=5 + 8, no_wrap=True, overflow="ellipsis")
    table.add_column("left", width=6, no_wrap=True, justify="right")
    table.add_column("silent", width=8, no_wrap=True, justify="right")
    for task in running:
        table.add_row(*running_row(task, now, silences.get(task["name"], 0.0)))
    parts: list[Any] = [head]
    if running:
        parts.append(table)
    if queued:
        parts += [Text("queue", style="bold"), *(queued_line(t) for t in queued)]
    if not running and not queued:
        parts.append(Text("no task queued or running", style="dim"))
    return Group(*parts, Text("q quits", style="dim"))


@contextlib.contextmanager
def keys() -> Iterator[int]:
    """The terminal's keys one by one, unechoed, while the view runs."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def silences(tasks: list[dict[str, Any]], journal: LastOutput, now: float) -> dict[str, float]:
    """Seconds since each running task's last line (or its start), as journald (or a Slurm job's output
    file) has them now."""
    found = {}
    for task in tasks:
        if task["status"] == "running" and task.get("started_at"):
            started = datetime.fromisoformat(task["started_at"]).timestamp()
            found[task["name"]] = now - max(started, last_line_at(task, journal) or started)
    return found


def last_line_at(task: dict[str, Any], journal: LastOutput) -> float | None:
    if not task.get("output_file"):
        return journal.at(task["name"])
    with contextlib.suppress(OSError):
        return os.stat(task["output_file"]).st_mtime
    return None


async def top(client: Client) -> None:
    """Run the view until `q` (or Ctrl-C)."""
    changed, quit_ = asyncio.Event(), asyncio.Event()
    state: dict[str, Any] = {"tasks": {}, "stale": True}

    def on_signal(message: Message) -> None:
        if message.message_type != MessageType.SIGNAL:
            return
        if message.member in ("CapacityChanged", "TaskFinished"):
            state["stale"] = True  # tasks came or went: one List brings the rest
        elif message.member == "PropertiesChanged" and (message.path or "").startswith(TASKS_PATH):
            task = state["tasks"].get(message.path)
            changes = unwrap(message.body[1])
            if task is None or "State" in changes:
                state["stale"] = True
            elif "Usage" in changes:
                task.update({k: v for k, v in changes["Usage"].items() if k in ("mem_bytes", "cpu_cores")})
        changed.set()

    # subscribe before the first snapshot, so no change falls in between
    client.bus.add_message_handler(on_signal)
    await client.add_match(f"type='signal',sender='{BUS_NAME}',interface='{SCHEDULER_INTERFACE}'")
    await client.add_match(f"type='signal',sender='{BUS_NAME}',path_namespace='{TASKS_PATH}',"
                           "interface='org.freedesktop.DBus.Properties',member='PropertiesChanged'")
    loop, journal = asyncio.get_running_loop(), LastOutput()
    with keys() as fd, Live(screen=True, auto_refresh=False, transient=True) as live:
        loop.add_reader(fd, lambda: quit_.set() if os.read(fd, 32).lower().startswith(b"q") else None)
        try:
            while not quit_.is_set():
                if state["stale"]:
                    state["stale"] = False
                    (listed,) = await client.call("List", "b", [False])
                    (capacity,) = await client.call("Capacity")
                    state["tasks"] = {task_path(t["name"]): complete(t) for t in listed}
                    state["capacity"] = capacity
                tasks, now = list(state["tasks"].values()), time.time()
                live.update(board(tasks, state["capacity"], now, silences(tasks, journal, now)), refresh=True)
                changed.clear()
                waits = [asyncio.ensure_future(e.wait()) for e in (changed, quit_)]
                await asyncio.wait(waits, timeout=REDRAW_S, return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits:
                    waiting.cancel()
                await asyncio.sleep(FRAME_S)  # a burst of signals is one redraw
        finally:
            loop.remove_reader(fd)
            journal.close()
