"""`babysit top`: a live full-screen view of the running and queued tasks, redrawn on babysitd's signals.

Usage, states and capacity come as signals (PropertiesChanged of each task object, CapacityChanged,
TaskFinished); the clock redraws the countdowns once a second. Only the time since a task's last line
is asked again (every SILENCE_S while tasks run): journald knows it, and nobody signals a printed line.
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
from babysit.protocol import BUS_NAME, SCHEDULER_INTERFACE, TASKS_PATH, complete, task_path
from babysit.quantities import format_duration, format_size
from babysit.systemd import unwrap

REDRAW_S = 1.0  # the countdowns move with the clock
FRAME_S = 0.1
SILENCE_S = 5.0
BAR = 10


def bar(used: float, estimate: float, width: int = BAR) -> Text:
    """Usage against its estimate: full at the estimate, red past it (twice it is a kill)."""
    share = used / estimate if estimate else 0.0
    filled = min(width, round(share * width))
    style = "green" if share <= 1 else "yellow" if share < 2 else "red"
    return Text("█" * filled + "░" * (width - filled), style=style)


def running_row(task: dict[str, Any], now: float, fetched_at: float) -> list[Any]:
    started = datetime.fromisoformat(task["started_at"]).timestamp() if task.get("started_at") else now
    left = task["kill_timeout_s"] - (now - started)
    silent = (task.get("silent_s") or 0.0) + (now - fetched_at)
    interval = task["observability_interval_s"]
    return [
        task["name"], Text("running", style="yellow"),
        Text.assemble(bar(task["mem_bytes"], task["estimated_mem_bytes"]),
                      f" {format_size(task['mem_bytes'])}/{format_size(task['estimated_mem_bytes'])}"),
        Text.assemble(bar(task["cpu_cores"], task["estimated_cpu_cores"], 5),
                      f" {task['cpu_cores']:.1f}/{task['estimated_cpu_cores']:g}"),
        Text(format_duration(max(0.0, left)), style="red" if left < 0.1 * task["kill_timeout_s"] else ""),
        Text(f"{format_duration(silent)}/{format_duration(interval)}", style="red" if silent > interval / 2 else ""),
    ]


def queued_row(task: dict[str, Any]) -> list[Any]:
    waiting = f"#{task.get('queue_position', '?')}: {task.get('waiting_for', '')}"
    return [task["name"], Text("queued", style="cyan"), Text(waiting, overflow="ellipsis"), "", "", ""]


def board(tasks: list[dict[str, Any]], capacity: dict[str, Any], now: float, fetched_at: float) -> Group:
    """The whole screen: the host's figures, then one row per running task, then the queue."""
    running = [t for t in tasks if t["status"] == "running"]
    queued = sorted((t for t in tasks if t["status"] == "queued"), key=lambda t: t.get("queue_position", 0))
    head = Text.assemble(
        ("babysit top", "bold"), f"  {len(running)} running, {len(queued)} queued · free "
        f"{format_size(capacity.get('free_mem_bytes'))} of {format_size(capacity.get('host_mem_bytes'))} · room "
        f"{format_size(capacity.get('available_mem_bytes'))}, {capacity.get('available_cpu_cores', 0):g} cores",
        overflow="ellipsis", no_wrap=True)
    table = Table(expand=True, box=None, pad_edge=False)
    table.add_column("name", ratio=2, no_wrap=True, overflow="ellipsis")
    table.add_column("state", no_wrap=True)
    table.add_column("memory/est", ratio=3, no_wrap=True, overflow="ellipsis")
    table.add_column("cpu/est", ratio=2, no_wrap=True, overflow="ellipsis")
    table.add_column("left", no_wrap=True, justify="right")
    table.add_column("silent", no_wrap=True, justify="right")
    for task in running:
        table.add_row(*running_row(task, now, fetched_at))
    for task in queued:
        table.add_row(*queued_row(task))
    if not running and not queued:
        return Group(head, Text("no task queued or running", style="dim"), Text("q quits", style="dim"))
    return Group(head, table, Text("q quits", style="dim"))


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
    loop = asyncio.get_running_loop()
    with keys() as fd, Live(screen=True, auto_refresh=False, transient=True) as live:
        loop.add_reader(fd, lambda: quit_.set() if os.read(fd, 32).lower().startswith(b"q") else None)
        fetched_at = 0.0
        try:
            while not quit_.is_set():
                now = time.time()
                running = any(t["status"] == "running" for t in state["tasks"].values())
                if state["stale"] or (running and now - fetched_at >= SILENCE_S):
                    state["stale"] = False
                    (listed,) = await client.call("List", "b", [False])
                    (capacity,) = await client.call("Capacity")
                    state["tasks"] = {task_path(t["name"]): complete(t) for t in listed}
                    state["capacity"], fetched_at = capacity, time.time()
                live.update(board(list(state["tasks"].values()), state["capacity"], time.time(), fetched_at),
                            refresh=True)
                changed.clear()
                waits = [asyncio.ensure_future(e.wait()) for e in (changed, quit_)]
                await asyncio.wait(waits, timeout=REDRAW_S, return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits:
                    waiting.cancel()
                await asyncio.sleep(FRAME_S)  # a burst of signals is one redraw
        finally:
            loop.remove_reader(fd)
