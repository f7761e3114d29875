"""`babysit top`: a live full-screen view of the running and queued tasks, redrawn on babysitd's signals.

Usage, states and capacity come as signals (PropertiesChanged of each task object, CapacityChanged,
TaskFinished); the clock redraws the countdowns once a second. Nobody signals a printed line, so each
redraw asks babysitd for the running tasks (their `silent_s`): it already knows where a task's output
goes (journald, a Slurm job's file) and asks there at most once a second, however many views are open.
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

from babysit.cli.client import Client
from babysit.core.protocol import BUS_NAME, SCHEDULER_INTERFACE, TASKS_PATH, complete
from babysit.core.quantities import format_duration, format_size

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


def short(size: float) -> str:
    return format_size(size, compact=True)


def running_row(task: dict[str, Any], now: float) -> list[Any]:
    silent_s = task.get("silent_s") or 0.0
    left = task["kill_timeout_s"] - active_s(task, now)
    interval = task["observability_interval_s"]
    mem, mem_est, mem_cap = task["mem_bytes"], task["estimated_mem_bytes"], task["memory_max_bytes"]
    cpu, cpu_est, cpu_cap = task["cpu_cores"], task["estimated_cpu_cores"], task["cpu_quota_pct"] / 100
    gpu = (f" gpu {short(task.get('gpu_mem_bytes') or 0)}/{short(task['estimated_gpu_mem_bytes'])}"
           if task.get("gpus") else "")
    return [
        shown_name(task) + gpu,
        Text("paused", style="blue") if task.get("paused_since") else Text("running", style="yellow"),
        Text.assemble(bar(mem, mem_est, mem_cap, BAR), f" {short(mem)}/{short(mem_est)}"),
        Text.assemble(bar(cpu, cpu_est, cpu_cap, 5), f" {cpu:.1f}/{cpu_est:g}"),
        Text(format_duration(max(0.0, left)), style="red" if left < 0.1 * task["kill_timeout_s"] else ""),
        Text(f"{format_duration(silent_s)}/{format_duration(interval)}",
             style="red" if silent_s > interval / 2 else ""),
    ]


def active_s(task: dict[str, Any], now: float) -> float:
    """How long a running task has run, its pauses left out (what its kill_timeout counts)."""
    started = datetime.fromisoformat(task["started_at"]).timestamp() if task.get("started_at") else now
    paused_now = now - datetime.fromisoformat(task["paused_since"]).timestamp() if task.get("paused_since") else 0.0
    return now - started - task.get("paused_s", 0.0) - paused_now


def shown_name(task: dict[str, Any]) -> str:
    """The name, with the attempt of a task that is retried (`train 2/3`)."""
    return f"{task['name']} {task['attempt']}/{task['attempts']}" if task.get("attempts") else task["name"]


def queued_line(task: dict[str, Any]) -> Text:
    """A queued task: its place (and priority, where it has one), what it waits for, and what it asks."""
    priority = f" priority {task['priority']}" if task.get("priority") else ""
    return Text.assemble(
        (f"#{task.get('queue_position', '?')} ", "cyan"), shown_name(task), (priority, "magenta"),
        f"  waiting: {task.get('waiting_for', 'its turn')}; asks {short(task['estimated_mem_bytes'])}, "
        f"{task['estimated_cpu_cores']:g} cores", overflow="ellipsis", no_wrap=True)


def board(tasks: list[dict[str, Any]], capacity: dict[str, Any], now: float) -> Group:
    """The whole screen: the host's figures, then one row per running task, then the queue."""
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
        table.add_row(*running_row(task, now))
    parts: list[Any] = [head]
    if capacity.get("draining"):
        parts.append(Text("admission is drained: nothing queued starts until babysit undrain", style="red"))
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


async def top(client: Client) -> None:
    """Run the view until `q` (or Ctrl-C)."""
    changed, quit_ = asyncio.Event(), asyncio.Event()
    capacity: dict[str, Any] = {}
    capacity_stale = True

    def on_signal(message: Message) -> None:
        nonlocal capacity_stale
        if message.message_type != MessageType.SIGNAL:
            return
        if message.member in ("CapacityChanged", "TaskFinished"):
            capacity_stale = True  # tasks came or went
        changed.set()  # a task's usage or state moved: redraw now, not at the next second

    # subscribe before the first snapshot, so no change falls in between
    client.bus.add_message_handler(on_signal)
    await client.add_match(f"type='signal',sender='{BUS_NAME}',interface='{SCHEDULER_INTERFACE}'")
    await client.add_match(f"type='signal',sender='{BUS_NAME}',path_namespace='{TASKS_PATH}',"
                           "interface='org.freedesktop.DBus.Properties',member='PropertiesChanged'")
    loop = asyncio.get_running_loop()
    with keys() as fd, Live(screen=True, auto_refresh=False, transient=True) as live:
        loop.add_reader(fd, lambda: quit_.set() if os.read(fd, 32).lower().startswith(b"q") else None)
        try:
            while not quit_.is_set():
                changed.clear()
                (listed,) = await client.call("List", "b", [False])  # with each running task's silence
                if capacity_stale:
                    capacity_stale = False
                    (capacity,) = await client.call("Capacity")
                live.update(board([complete(t) for t in listed], capacity, time.time()), refresh=True)
                waits = [asyncio.ensure_future(e.wait()) for e in (changed, quit_)]
                await asyncio.wait(waits, timeout=REDRAW_S, return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits:
                    waiting.cancel()
                await asyncio.sleep(FRAME_S)  # a burst of signals is one redraw
        finally:
            loop.remove_reader(fd)
