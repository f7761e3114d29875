"""The `babysit` command: parses flags, calls babysitd over D-Bus, renders. Nothing else."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import typer

from babysit import __version__
from babysit.cli.client import Client, DaemonBusy, DaemonNotRunning, variant_dict
from babysit.cli.waiting import Waiter
from babysit.core.protocol import (
    DRAINED,
    HISTORY_KEYS,
    BabysitError,
    CapacityExceeded,
    ExitCode,
    State,
    complete,
    output_matches,
    terminal_only,
)
from babysit.core.quantities import format_duration, format_size, parse_duration, parse_size

app = typer.Typer(no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
                  help="Supervised background runner: long jobs under systemd caps, admitted only when the host has room.")
T = TypeVar("T")


def fail(message: str, code: ExitCode) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(int(code))


def call(work: Callable[[Client], Awaitable[T]], first_use: bool = True) -> T:
    """Run one client conversation; errors become one line on stderr and the SPEC's exit code.

    On first use (no babysitd installed for this user yet) it is installed and started, then the
    conversation runs again; later, D-Bus activation starts the daemon by itself.
    """

    async def conversation() -> T:
        client = await Client.connect()
        client.on_busy = say_busy
        try:
            try:
                return await work(client)
            except DaemonNotRunning:
                from babysit.cli.install import install_and_start, installed

                if not first_use or installed():
                    raise
                typer.echo("babysit: first use: installing and starting babysitd", err=True)
                await install_and_start(client, quiet=True)
                return await work(client)
        finally:
            client.close()

    try:
        return asyncio.run(conversation())
    except CapacityExceeded as e:
        raise fail(str(e), e.exit_code) from None  # the message is the JSON object
    except BabysitError as e:
        raise fail(f"babysit: {e}", e.exit_code) from None
    except DaemonBusy as e:
        raise fail(f"babysit: {e}", ExitCode.NEGATIVE) from None
    except DaemonNotRunning:
        from babysit.cli.install import why_not_running

        why = why_not_running()
        raise fail("babysit daemon not running (start it with: babysit daemon-start)" + (f"\n{why}" if why else ""),
                   ExitCode.NEGATIVE) from None


def say_busy(member: str, waited: float) -> None:
    typer.echo(f"babysit: babysitd is busy; still waiting for its answer to {member} ({waited:.0f}s so far; "
               "see journalctl --user -u babysitd)", err=True)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"babysit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """babysit: run long jobs under systemd caps, admitted only when the host has room."""


Name = typer.Option(..., "--name", help="Task name: 1-64 of A-Z a-z 0-9 . _ -")


@app.command()
def run(
    name: str = Name,
    command: str = typer.Option(..., "--command", help="Shell command, run as `bash -c CMD`."),
    estimated_time: str = typer.Option(None, "--estimated_time", "--estimated-time", help="e.g. 10m (default 10m)"),
    kill_timeout: str = typer.Option(None, "--kill_timeout", "--kill-timeout", help="default 2x estimated_time"),
    observability_interval: str = typer.Option(None, "--observability_interval", "--observability-interval",
                                               help="kill after this long without output (default 5m)"),
    mem_pct_limit: float = typer.Option(None, "--mem_pct_limit", "--mem-pct-limit", help="per-task cap, % of RAM (40)"),
    cpu_pct_limit: float = typer.Option(None, "--cpu_pct_limit", "--cpu-pct-limit", help="per-task cap, % of cores (90)"),
    estimated_mem_bytes: str = typer.Option(None, "--estimated_mem_bytes", "--estimated-mem-bytes", help="e.g. 4G"),
    estimated_cpu_cores: float = typer.Option(None, "--estimated_cpu_cores", "--estimated-cpu-cores", help="e.g. 4"),
    cwd: str = typer.Option(None, "--cwd", help="working directory (default: the current one)"),
    force: bool = typer.Option(False, "--force", help="queue it when the host has no room now"),
    buffering: str = typer.Option(None, "--buffering",
                                  help="line (default): C/C++ programs' stdout is line-buffered, so their output "
                                       "shows at once; default: leave buffering to the programs (binary output)"),
    after: str = typer.Option(None, "--after", help="start only once these tasks completed: NAME[,NAME...]; "
                                                    "NAME:any waits for any end"),
    retries: int = typer.Option(None, "--retries", help="attempts after the first (default 0); a resource kill's "
                                                        "retry asks for what its kill_hint said"),
    retry_on: str = typer.Option(None, "--retry_on", "--retry-on",
                                 help="ends that are retried (default oom,mem_2x_sustained,cpu_2x_sustained,timeout,"
                                      "pressure; also failed, observability_stall, unknown)"),
    array: str = typer.Option(None, "--array", help="a sweep: one task NAME-<i> per index, e.g. 1-100, 0,3,7, "
                                                    "1-100%4 (at most 4 at once); {index} in the command and "
                                                    "$BABYSIT_ARRAY_INDEX hold the index"),
    priority: int = typer.Option(None, "--priority", help="higher goes first in the queue (default 0)"),
    stop_signal: str = typer.Option(None, "--stop_signal", "--stop-signal",
                                    help="what a stop sends first (default SIGTERM), SIGKILL after the grace"),
    stop_grace: str = typer.Option(None, "--stop_grace", "--stop-grace",
                                   help="time between the stop signal and SIGKILL (default: the configured 10s)"),
    warn_signal: str = typer.Option(None, "--warn_signal", "--warn-signal",
                                    help="SIG@DURATION, e.g. SIGUSR1@5m: sent that long before a kill_timeout stop, "
                                         "and when a 2x window opens: time to save work"),
    gpus: int = typer.Option(None, "--gpus", help="GPUs of its own (CUDA_VISIBLE_DEVICES by UUID)"),
    estimated_gpu_mem_bytes: str = typer.Option(None, "--estimated_gpu_mem_bytes", "--estimated-gpu-mem-bytes",
                                                help="memory it uses on each GPU, e.g. 20G (default 4G)"),
) -> None:
    """Start a supervised task in the background (non-blocking); a chain step with --after, a sweep with --array.

    Example: babysit run --name=train --command='uv run python -u train.py' --estimated_time=2h --estimated_mem_bytes=8G
    """
    spec = variant_dict({
        "name": name, "command": command, "cwd": os.path.abspath(cwd or os.getcwd()), "env": dict(os.environ),
        "estimated_time": estimated_time, "kill_timeout": kill_timeout,
        "observability_interval": observability_interval, "mem_pct_limit": mem_pct_limit,
        "cpu_pct_limit": cpu_pct_limit, "estimated_mem_bytes": estimated_mem_bytes,
        "estimated_cpu_cores": estimated_cpu_cores, "buffering": buffering, "after": after, "retries": retries,
        "retry_on": retry_on, "array": array, "priority": priority, "stop_signal": stop_signal,
        "stop_grace": stop_grace, "warn_signal": warn_signal, "gpus": gpus,
        "estimated_gpu_mem_bytes": estimated_gpu_mem_bytes,
    })

    async def submit(c: Client) -> tuple[str, str | None]:
        queued = await c.submit(spec, force)
        if array:
            return queued, None
        shown = await c.status(queued)
        if shown.get("waiting_for") == DRAINED:
            typer.echo(f"babysit: admission is drained: {queued} waits until `babysit undrain`", err=True)
        return queued, shown.get("estimates_from")  # some were left to earlier runs

    from babysit.core.task import unusable_env_names

    dropped = unusable_env_names(os.environ)
    if dropped:
        typer.echo(f"babysit: not passed to the task (no task can take these names): {', '.join(dropped)}", err=True)
    queued, learned = call(submit)
    typer.echo(f"queued: {queued}" + (f" (estimates from {learned})" if learned else ""))


@app.command()
def wait(
    names: list[str] = typer.Option(..., "--name", help="a task or a sweep; repeat for several"),
    any_: bool = typer.Option(False, "--any", help="return when the first of them ends"),
) -> None:
    """Block until the tasks are terminal; their result JSON goes to stdout (one object per name, a sweep's
    summary for a sweep), runaway_risk events and retries to stderr.

    Exit 0 only when every one completed. Example: babysit wait --name=train
    """
    line = StatusLine(names[0]) if sys.stderr.isatty() and len(names) == 1 else None

    def on_event(event: dict[str, Any]) -> None:
        if line:
            line.clear()
        typer.echo(json.dumps(event), err=True)

    def on_retry(result: dict[str, Any]) -> None:  # an attempt ended, and the next is queued
        on_event({"event": "retry", **terminal_only(result)})

    def attached(report: dict[str, Any]) -> None:
        if line:
            line.report = report
            line.show(report)

    async def wait_with_status(c: Client) -> list[dict[str, Any]]:
        waiter = Waiter(c, on_event, on_retry, line.show if line else None, attached)
        return await waiter.wait(list(dict.fromkeys(names)), any_)

    results = call(wait_with_status)
    if line:
        line.clear()
    for result in results:
        if "results" in result:  # a sweep's summary
            print_json({**result, "results": [terminal_only(complete(m)) for m in result["results"]]})
        else:
            print_json(terminal_only(result))
    completed = all(result["status"] == State.COMPLETED for result in results)
    raise typer.Exit(int(ExitCode.OK if completed else ExitCode.NEGATIVE))


class StatusLine:
    """One live line on stderr while `wait` blocks on a terminal; stdout stays the clean JSON."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.report: dict[str, Any] = {}

    def show(self, usage: dict[str, Any]) -> None:
        r = {**self.report, **usage}
        if not r:
            return
        started = r.get("started_at")
        elapsed = datetime.now().timestamp() - datetime.fromisoformat(started).timestamp() if started else 0
        text = (f"{self.name}: {r.get('status', 'running')}  {format_duration(max(elapsed, 0))}/"
                f"{format_duration(r['estimated_time_s'])}  mem {format_size(r.get('mem_bytes', 0))}/"
                f"{format_size(r.get('peak_mem_bytes'))}/{format_size(r['estimated_mem_bytes'])}  "
                f"cpu {r.get('cpu_cores', 0):.1f}/{r['estimated_cpu_cores']:g}")
        sys.stderr.write("\r\033[K" + text)
        sys.stderr.flush()

    def clear(self) -> None:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


@app.command("wait_for_capacity")
def wait_for_capacity(
    mem_bytes: str = typer.Option(..., "--mem_bytes", "--mem-bytes", help="memory estimate, e.g. 4G"),
    cpu_cores: float = typer.Option(..., "--cpu_cores", "--cpu-cores", help="CPU estimate in cores"),
    timeout: str = typer.Option(None, "--timeout", help="give up after this long, e.g. 10m"),
    gpus: int = typer.Option(0, "--gpus", help="GPUs of its own"),
    gpu_mem_bytes: str = typer.Option(None, "--gpu_mem_bytes", "--gpu-mem-bytes", help="free on each GPU, e.g. 20G"),
) -> None:
    """Block until a task with these estimates would be admitted now; exit 1 on timeout.

    Example: babysit wait_for_capacity --mem_bytes=8G --cpu_cores=2 --timeout=30m
    """
    try:
        mem, limit = parse_size(mem_bytes), parse_duration(timeout) if timeout else None
        gpu_mem = parse_size(gpu_mem_bytes) if gpu_mem_bytes else 0
    except BabysitError as e:
        raise fail(f"babysit: {e}", e.exit_code) from None
    if cpu_cores <= 0 or gpus < 0:
        raise fail("babysit: --cpu_cores must be more than 0, and --gpus not below 0", ExitCode.USAGE)
    if not call(lambda c: c.wait_for_capacity(mem, cpu_cores, limit, gpus, gpu_mem)):
        raise fail(f"babysit: no room for {mem_bytes} / {cpu_cores:g} cores within {timeout}", ExitCode.NEGATIVE)
    typer.echo("capacity: available")


app.command("wait-for-capacity", hidden=True)(wait_for_capacity)


@app.command()
def status(name: str = Name, as_json: bool = typer.Option(False, "--json", help="JSON on stdout")) -> None:
    """Everything known about a task. Example: babysit status --name=train --json"""

    async def fetch(c: Client) -> dict[str, Any]:
        report = await c.status(name)
        report["events"] = (await c.call("Events", "s", [name]))[0]
        warnings = (await c.call("Capacity"))[0].get("warnings")
        if warnings:
            report["warnings"] = warnings  # what does not hold on this machine, each with its fix
        return report

    report = call(fetch)
    if as_json or not sys.stdout.isatty():
        print_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    from babysit.cli.charts import usage_charts
    from babysit.cli.shown import literal

    timeline = report.pop("timeline", None) or {}
    table = Table(show_header=False, box=None)
    for key, value in report.items():
        shown = json.dumps(value) if isinstance(value, list | dict) else str(value)
        table.add_row(literal(key, "bold"), literal(shown))
    for label, chart in usage_charts(report, timeline):
        table.add_row(literal(label, "bold"), chart)
    Console().print(table)


STATE_STYLE = {"queued": "cyan", "held": "cyan", "running": "yellow", "paused": "blue", "completed": "green",
               "failed": "red", "killed": "red", "unknown": "magenta"}
COLUMNS = ("name", "state", "elapsed/est", "mem now/peak/est", "cpu/est (gpu mem/est)", "since output")


def row(task: dict[str, Any]) -> tuple[str, ...]:
    elapsed = task.get("elapsed_s")
    return (
        task["name"],
        "paused" if task.get("paused_since") else "held" if task.get("held") else task["status"],
        f"{format_duration(elapsed) if elapsed else '-'}/{format_duration(task['estimated_time_s'])}",
        f"{format_size(task['mem_bytes'])}/{format_size(task['peak_mem_bytes'])}/"
        f"{format_size(task['estimated_mem_bytes'])}",
        f"{task['cpu_cores']:.1f}/{task['estimated_cpu_cores']:g}" + (
            f" · {task['gpus']} GPU {format_size(task.get('gpu_mem_bytes') or 0)}/"
            f"{format_size(task['estimated_gpu_mem_bytes'])}" if task.get("gpus") else ""),
        f"{task['silent_s']:.0f}s" if task["status"] == "running" else "-",
    )


@app.command("list")
def list_(
    all_: bool = typer.Option(False, "--all", help="include finished tasks"),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout"),
) -> None:
    """Tasks with their usage against estimates. Example: babysit list --all"""
    tasks = [complete(t) for t in call(lambda c: c.call("List", "b", [all_]))[0]]
    if as_json:
        print_json(tasks)
        return
    print_table(COLUMNS, rolled_up(tasks))


def rolled_up(tasks: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """A row per task; one per sweep, where its members are counted by state (in the first member's place)."""
    from babysit.core.workflow import rollup

    sweeps: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        if task.get("group"):
            sweeps.setdefault(task["group"], []).append(task)
    rows, shown = [], set()
    for task in tasks:
        group = task.get("group")
        if not group:
            rows.append(row(task))
        elif group not in shown:
            shown.add(group)
            members = sweeps[group]
            counts = rollup(m["status"] for m in members)
            said = ", ".join(f"{n} {state}" for state, n in counts.counts.items())
            rows.append((f"{group} (sweep of {len(members)})", f"{counts.status} ({said})", "-", "-", "-", "-"))
    return rows


def print_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A table: rich on a terminal (the state column coloured), aligned plain text otherwise."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        from babysit.cli.shown import literal

        state = columns.index("state")
        table = Table(*columns)
        for r in rows:
            style = STATE_STYLE.get(r[state].split()[0], "")
            table.add_row(*(literal(cell, style if i == state else "") for i, cell in enumerate(r)))
        Console().print(table)
        return
    # one iterable per column (header included): with no task, max() must not get a lone int
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]
    for r in [columns, *rows]:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


HISTORY_COLUMNS = ("submitted", "name", "state", "elapsed/est", "peak mem/est", "p95 cpu/est (gpu peak)")


def history_row(run: dict[str, Any]) -> tuple[str, ...]:
    elapsed, p95 = run.get("elapsed_s"), run.get("p95_cpu_cores")
    submitted = datetime.fromisoformat(run["submitted_at"]).astimezone().strftime("%Y-%m-%d %H:%M")
    return (
        submitted,
        run["name"],
        run["status"] + (f" ({run['kill_reason']})" if run.get("kill_reason") else "")
        + (f", attempt {run['attempt']}/{run['attempts']}" if run.get("attempts") else ""),
        f"{format_duration(elapsed) if elapsed is not None else '-'}/{format_duration(run['estimated_time_s'])}",
        f"{format_size(run.get('peak_mem_bytes'))}/{format_size(run['estimated_mem_bytes'])}",
        f"{'-' if p95 is None else f'{p95:.1f}'}/{run['estimated_cpu_cores']:g}"
        + (f" · gpu peak {format_size(run['peak_gpu_mem_bytes'])}" if run.get("peak_gpu_mem_bytes") else ""),
    )


@app.command()
def history(
    name: str = typer.Option("", "--name", help="only the runs of this name (default: every name)"),
    limit: int = typer.Option(20, "--limit", min=1, help="the newest this many runs"),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout"),
) -> None:
    """Finished runs against their estimates: elapsed, peak memory, p95 CPU cores. Example: babysit history --name=train"""
    runs = [{k: run.get(k) for k in HISTORY_KEYS} for run in call(lambda c: c.call("History", "su", [name, limit]))[0]]
    if as_json:
        print_json(runs)
        return
    print_table(HISTORY_COLUMNS, [history_row(r) for r in runs])


@app.command()
def estimate(
    name: str = Name,
    command: str = typer.Option(..., "--command", help="the command `run` would be given"),
    cwd: str = typer.Option(None, "--cwd", help="working directory (default: the current one)"),
    gpus: int = typer.Option(None, "--gpus", help="as `run` would be given: its GPU memory is learnt too"),
) -> None:
    """The estimates `run` would take from earlier runs, as JSON; nothing runs. Example: babysit estimate --name=train --command='python train.py'"""
    spec = variant_dict({"name": name, "command": command, "cwd": os.path.abspath(cwd or os.getcwd()), "gpus": gpus})
    print_json(call(lambda c: c.call("Estimate", "a{sv}", [spec]))[0])


@app.command()
def top() -> None:
    """A live full-screen view of running and queued tasks against their estimates; q quits. Example: babysit top"""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise fail("babysit top needs a terminal; a script reads babysit list --json", ExitCode.USAGE)
    from babysit.cli.top import top as view

    try:
        call(view)
    except KeyboardInterrupt:
        pass


@app.command()
def kill(name: str = Name) -> None:
    """Stop a running task gracefully (SIGTERM, then SIGKILL), or drop a queued one. Example: babysit kill --name=train"""
    call(lambda c: c.call("Kill", "s", [name]))
    typer.echo(f"killing: {name}")


@app.command()
def adjust(
    name: str = Name,
    estimated_mem_bytes: str = typer.Option(None, "--estimated_mem_bytes", "--estimated-mem-bytes"),
    estimated_cpu_cores: float = typer.Option(None, "--estimated_cpu_cores", "--estimated-cpu-cores"),
    estimated_time: str = typer.Option(None, "--estimated_time", "--estimated-time"),
    kill_timeout: str = typer.Option(None, "--kill_timeout", "--kill-timeout"),
    observability_interval: str = typer.Option(None, "--observability_interval", "--observability-interval"),
    priority: int = typer.Option(None, "--priority", help="a queued task's place: higher goes first"),
    estimated_gpu_mem_bytes: str = typer.Option(None, "--estimated_gpu_mem_bytes", "--estimated-gpu-mem-bytes"),
) -> None:
    """Change the estimates (or the priority) of a queued or running task; caps of a running unit change live.

    Example: babysit adjust --name=train --estimated_mem_bytes=12G
    """
    changes = variant_dict({"estimated_mem_bytes": estimated_mem_bytes, "estimated_cpu_cores": estimated_cpu_cores,
                            "estimated_time": estimated_time, "kill_timeout": kill_timeout,
                            "observability_interval": observability_interval, "priority": priority,
                            "estimated_gpu_mem_bytes": estimated_gpu_mem_bytes})
    if not changes:
        raise fail("babysit: adjust needs at least one estimate to change", ExitCode.USAGE)
    call(lambda c: c.call("Adjust", "sa{sv}", [name, changes]))
    typer.echo(f"adjusted: {name}")


@app.command()
def hold(name: str = Name) -> None:
    """Keep a queued task (or a sweep's queued members) back: never admitted until released.

    Example: babysit hold --name=eval
    """
    call(lambda c: c.call("Hold", "s", [name]))
    typer.echo(f"held: {name}")


@app.command()
def release(name: str = Name) -> None:
    """Put a held task back in its place in the queue. Example: babysit release --name=eval"""
    call(lambda c: c.call("Release", "s", [name]))
    typer.echo(f"released: {name}")


@app.command()
def pause(name: str = Name) -> None:
    """Freeze a running task: its kill_timeout, stall watch and 2x windows stand still; it keeps its room.

    Example: babysit pause --name=train
    """
    call(lambda c: c.call("Pause", "s", [name]))
    typer.echo(f"paused: {name}")


@app.command()
def resume(name: str = Name) -> None:
    """Thaw a paused task; its deadlines go on from where they stood. Example: babysit resume --name=train"""
    call(lambda c: c.call("Resume", "s", [name]))
    typer.echo(f"resumed: {name}")


@app.command()
def drain() -> None:
    """Admit no queued task until `babysit undrain`; running tasks go on, new ones queue. Example: babysit drain"""
    call(lambda c: c.call("Drain", "b", [True]))
    typer.echo("drained: queued and new tasks wait; running ones go on (babysit undrain lets them start)")


@app.command()
def undrain() -> None:
    """Let admission go on after `babysit drain`. Example: babysit undrain"""
    call(lambda c: c.call("Drain", "b", [False]))
    typer.echo("admitting again")


@app.command()
def log(
    name: str = Name,
    tail: int = typer.Option(15, "--tail", help="lines to show"),
    follow: bool = typer.Option(False, "--follow", "-f", help="stream until the task is terminal"),
    raw: bool = typer.Option(False, "--raw", help="on a terminal too, the bytes as the task wrote them "
                                                  "(escape sequences included)"),
) -> None:
    """The task's output, from journald (or its Slurm job's file). Example: babysit log --name=train --tail=50 -f

    On a terminal, control characters are shown as \\xNN, so output cannot drive the terminal; pipes get it as is.
    """
    report = call(lambda c: c.status(name))
    if "results" in report:
        raise fail(f"babysit: {name} is a sweep of {report['members']} tasks; read one member's output with "
                   f"babysit log --name={report['results'][0]['name']}", ExitCode.USAGE)
    out = Output(sys.stdout.isatty() and not raw)
    if report.get("output_file"):
        _log_file(name, Path(report["output_file"]), tail, follow and not State(report["status"]).terminal, out)
        return
    # --all: journalctl shows a line with control characters as "[N B blob data]" otherwise
    base = ["journalctl", "--user", *output_matches(name), "-o", "cat", "--all", "--no-pager"]
    argv = list(base)
    if report.get("started_at"):
        argv.append(f"--since=@{int(datetime.fromisoformat(report['started_at']).timestamp())}")
    if not follow or State(report["status"]).terminal:
        raise typer.Exit(out.relay([*argv, "-n", str(tail)]))
    with subprocess.Popen([*argv, "-n", str(tail), "-f", "-o", "json"], stdout=subprocess.PIPE, text=True) as journal:
        cursor = {"last": ""}

        async def relay_until_terminal(c: Client) -> None:
            relay = asyncio.get_running_loop().run_in_executor(None, _relay, journal, cursor, out)
            await Waiter(c).wait([name])
            await _until_quiet(cursor)
            journal.terminate()
            await relay

        call(relay_until_terminal)
    # the lines journald stored after the follower stopped
    catch_up = [*base, "--after-cursor", cursor["last"]] if cursor["last"] else [*argv, "-n", str(tail)]
    out.relay(catch_up)


class Output:
    """Where `log` writes a task's output: as it is, or made printable (shown.printable) for a terminal."""

    def __init__(self, printable: bool) -> None:
        self.printable = printable

    def write(self, data: bytes) -> None:
        if self.printable:
            from babysit.cli.shown import printable

            data = printable(data.decode(errors="replace")).encode()
        sys.stdout.buffer.write(data)
        sys.stdout.flush()

    def relay(self, argv: list[str]) -> int:
        """Run a command, its stdout through write(); its exit status."""
        if not self.printable:
            return subprocess.run(argv).returncode
        done = subprocess.run(argv, stdout=subprocess.PIPE)
        self.write(done.stdout)
        return done.returncode


def _log_file(name: str, path: Path, tail: int, follow: bool, out: Output) -> None:
    """The last `tail` lines of a task's output file; with `follow`, what it adds until the task is terminal."""
    try:
        output = path.open("rb")
    except FileNotFoundError:  # a job still pending has written nothing yet
        output = None
    if output:
        lines = output.read().splitlines(keepends=True)
        out.write(b"".join(lines[-tail:]) if tail else b"")
    if not follow:
        return
    done = asyncio.Event()

    async def relay_until_terminal(c: Client) -> None:
        async def relay() -> None:
            nonlocal output
            # A file's growth signals nothing over D-Bus, so it is read while the task runs. Not inotify: the
            # job writes on a compute node, and inotify on this login node never hears of a write made
            # over NFS by another host. One read() of nothing new is all a turn costs.
            while True:
                output = output or (path.open("rb") if path.exists() else None)
                if output and (chunk := output.read()):
                    out.write(chunk)
                elif done.is_set():
                    return
                await asyncio.sleep(0.2)

        relaying = asyncio.ensure_future(relay())
        await Waiter(c).wait([name])
        done.set()
        await relaying

    call(relay_until_terminal)


async def _until_quiet(cursor: dict[str, str], quiet_s: float = 0.25, limit_s: float = 5.0) -> None:
    """Follow until journald has been quiet for a moment: it stores a unit's last lines at its own pace
    after the unit ended, and before systemd 256 nothing says when it is done with them."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        seen = cursor["last"]
        await asyncio.sleep(quiet_s)
        if cursor["last"] == seen:
            return


def _relay(journal: subprocess.Popen, cursor: dict[str, str], out: Output) -> None:
    """Print the messages of journalctl's JSON lines, keeping the cursor of the last one."""
    assert journal.stdout is not None
    for line in journal.stdout:
        if not line.endswith("\n"):
            break  # cut off when the follower was stopped: the catch-up after the cursor prints it
        entry = json.loads(line)
        cursor["last"] = entry["__CURSOR"]
        message = entry.get("MESSAGE") or ""
        if isinstance(message, list):  # journald's JSON gives non-UTF-8 messages as byte arrays
            message = bytes(message).decode(errors="replace")
        out.write(f"{message}\n".encode())


@app.command()
def ping() -> None:
    """Is babysitd up? `pong <version>`, or exit 1 (never starts it, never hangs). Example: babysit ping"""

    async def ping_and_check(c: Client) -> tuple[str, dict[str, Any]]:
        (version,) = await c.call("Ping", autostart=False, timeout=5, patient=False)
        (capacity,) = await c.call("Capacity", autostart=False, timeout=5, patient=False)
        return version, capacity

    version, capacity = call(ping_and_check, first_use=False)
    typer.echo(f"pong {version}")
    typer.echo(f"gpus: {capacity.get('gpu_note') or 'none'}", err=True)  # stdout stays one line, for scripts
    warnings = capacity.get("warnings", [])
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)


@app.command("daemon-start")
def daemon_start() -> None:
    """Install the user unit, slice and D-Bus activation file for this installation, and start babysitd.

    Idempotent. Example: babysit daemon-start
    """
    from babysit.cli.install import install_and_start

    call(install_and_start, first_use=False)


skill_app = typer.Typer(no_args_is_help=True, help="The skill document and hook for coding agents.")
app.add_typer(skill_app, name="skill")


@skill_app.command("install")
def skill_install(
    directory: Path = typer.Option(None, "--dir", help="one directory for Claude Code's copy (SKILL.md and the "
                                                       "hook), instead of the usual places"),
    project: Path = typer.Option(None, "--project", help="a project's .claude/skills and .agents/skills"),
) -> None:
    """Install SKILL.md and the no-sleep hook for Claude Code (~/.claude/skills/babysit) and the other agents
    (~/.agents/skills/babysit); says how each finds them. Safe to repeat; never replaces another skill.

    Example: babysit skill install --project=.
    """
    from babysit.cli.skill import Occupied, Target, install, notes, targets

    chosen = [Target(directory, claude=True)] if directory else targets(Path.home(), project)
    try:
        written = install(chosen)
    except Occupied as e:
        raise fail(f"babysit: {e}", ExitCode.NEGATIVE) from None
    for one in written:
        typer.echo(f"{'installed' if one.changed else 'unchanged'} {one.path}")
    for line in notes(chosen, Path.home()):
        typer.echo(line)


def main() -> None:
    """The `babysit` command. Once a verb has said its answer, the process ends at once: unwinding the
    interpreter (the event loop, the bus, every module) took longer than `wait` takes to hear a task end."""
    try:
        app()
    except SystemExit as done:
        code = 0 if done.code is None else done.code
        if not isinstance(code, int):
            print(code, file=sys.stderr)  # how sys.exit("message") reports
            code = 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass  # its reader is gone (`babysit list | head -1`)
        os._exit(code)
